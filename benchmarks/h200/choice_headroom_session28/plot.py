"""Plot and summary for benchmarks/h200/choice_headroom_session28 (run from the repository root):

    python3 benchmarks/h200/choice_headroom_session28/plot.py

worst_kept.png: per run, the worst kept app's share of frames within its bound (e2e.json files), by
setting; summary.json: the same runs' figures, by setting."""
from __future__ import annotations

import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # benchmarks/
from mixed_plots import strip  # noqa: E402

TITLE = ('H200, cifar10_committee, 16 cameras x 30 Hz: 8 apps at 10 ms (as accurate as allowed), '
         '8 at 33 ms + accuracy >= 0.9415 (session 28)')


def runs(call: str, *names: str) -> list[pathlib.Path]:
    return [HERE / call / n / 'e2e.json' for n in names]


GROUPS = {
    'call 1: session 27\n(policy keeps allowance)': runs('call1_allowance_ab', 'A1', 'A2', 'A3', 'A4'),
    'call 1: policy limit\nthe whole bound': runs('call1_allowance_ab', 'B1', 'B2', 'B3', 'B4'),
    'call 2: session 27': runs('call2_delivery_allowance', 'R1', 'R2'),
    'call 2: delivery\nallowance 1.5 / 2 ms': runs('call2_delivery_allowance', 'D15a', 'D15b', 'D2a', 'D2b', 'D2c'),
    'call 3: session 27': runs('call3_optional_last_ab', 'RN1', 'N2', 'N3', 'N4', 'N5'),
    'call 3: optional\nsteps last (rejected)': runs('call3_optional_last_ab', 'RO1', 'O2', 'O3', 'O4', 'O5'),
    'call 4: headroom 0\n(session 27)': runs('call4_headroom_ab', 'RZ1', 'Z2', 'Z3', 'Z4', 'Z5', 'Z6'),
    'call 4: headroom 0.1\n(default now)': runs('call4_headroom_ab', 'RH1', 'H2', 'H3', 'H4', 'H5', 'H6'),
    'call 5: headroom 0.1\n(default now)': runs('call5_headroom_0.2', 'P1', 'P2', 'P3', 'P4'),
}


def figures(path: pathlib.Path) -> dict:
    config = json.loads(path.read_text())['configs']['delen_n16']
    total, apps = config['total'], config['apps']
    ten = [a for a in apps.values() if a['bound_ms'] < 20]
    scored = sum(a['scored'] for a in ten)
    return {'run': f'{path.parent.parent.name}/{path.parent.name}',
            'worst_kept_pct': 100 * total['attainment_min_app_kept'],
            'worst_app_pct': 100 * total['attainment_min_app'], 'apps_demoted': len(total['apps_demoted']),
            'all_frames_within_pct': 100 * total['attainment'],
            'ten_ms_apps_accuracy': sum(a['accuracy'] * a['scored'] for a in ten) / scored}


if __name__ == '__main__':
    summary = {}
    for label, files in GROUPS.items():
        rows = [figures(f) for f in files]
        kept = [r['worst_kept_pct'] for r in rows]
        summary[label.replace('\n', ' ')] = {
            'runs': rows, 'worst_kept_median_pct': statistics.median(kept),
            'runs_at_99_pct': sum(k >= 99.0 for k in kept), 'run_count': len(rows)}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    strip(GROUPS, HERE / 'worst_kept.png', width=14, title=TITLE)
