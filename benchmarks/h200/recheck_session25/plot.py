"""Plots for benchmarks/h200/recheck_session25 (run from the repository root):

    python3 benchmarks/h200/recheck_session25/plot.py

worst_kept.png: per run, the worst kept app's share of frames within its bound (e2e.json files);
timeline.png: the 10 ms apps' node-side latency over 3 s of a traced run, with the admission re-checks
marked, before (A: on the status tick's thread) and after (B: on the worker)."""
from __future__ import annotations

import gzip
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # benchmarks/
from mixed_plots import latency_panels, strip  # noqa: E402


def timeline_panel(ax, name: str) -> str:
    label = {'A_4': 'A: re-check on the status tick\'s thread', 'B_4': 'B: re-check on the worker'}[name]
    with gzip.open(HERE / 'ab_recheck' / f'{name}_trace.jsonl.gz', 'rt') as f:
        spans = [json.loads(line) for line in f]
    results = [s for s in spans if s['kind'] == 'result']
    t0 = min(s['start_ns'] for s in results) + 4e9
    xs, ys = [], []
    for s in results:
        x = (s['end_ns'] - t0) / 1e9
        if s.get('bound_ms') == 10.0 and 0 <= x <= 3:
            xs.append(x)
            ys.append((s['end_ns'] - s['start_ns']) / 1e6)
    ax.scatter(xs, ys, s=3)
    for s in spans:
        if s['kind'] == 'recheck' and 0 <= (s['start_ns'] - t0) / 1e9 <= 3:
            ax.axvspan((s['start_ns'] - t0) / 1e9, (s['end_ns'] - t0) / 1e9 + 0.004, color='red', alpha=0.4)
    return f'{label}: 10 ms apps, node-side latency; red: re-checks'


if __name__ == '__main__':
    strip({
        'before (session 24)': sorted(HERE.glob('../mixed_gil_session24/gil_ab/a*/e2e.json')),
        'before, traced (25)': sorted(HERE.glob('traced_before/m*/e2e.json')),
        'before, 2nd call\n(reserve A/B, off)': sorted(HERE.glob('ab_reserve/r0_*/e2e.json')),
        'A: re-check on the\nstatus thread': sorted(HERE.glob('ab_recheck/A_*/e2e.json')),
        'B: re-check on\nthe worker': sorted(HERE.glob('ab_recheck/B_*/e2e.json')),
        'C: B + plan reserve\n(removed)': sorted(HERE.glob('ab_recheck/C_*/e2e.json')),
        'defaults now\n(= B)': sorted(HERE.glob('defaults/m_*/e2e.json')),
    }, HERE / 'worst_kept.png')
    latency_panels(('A_4', 'B_4'), HERE / 'timeline.png', 's (4 s into the run)', timeline_panel)
