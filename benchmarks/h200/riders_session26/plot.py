"""Plots for benchmarks/h200/riders_session26 (run from the repository root):

    python3 benchmarks/h200/riders_session26/plot.py

worst_kept.png: per run, the worst kept app's share of frames within its bound (e2e.json files), for the
five calls; riders.png: the 10 ms apps' node-side latency in the traced pair of the riders A/B
(results.json, taken from the node's flight recorder), frames the scheduler marked late in red."""
from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # benchmarks/
from mixed_plots import TITLE, latency_panels, rows, strip  # noqa: E402

RUNS = ('1', '2', '3', '4', '5')


def riders_panel(ax, name: str) -> str:
    label = {'At': 'A: late frames in idle time only', 'Bt': 'B: late frames ride'}[name]
    ten = [r for r in rows(HERE / 'riders_ab' / name / 'results.json') if r['bound_ms'] == 10.0]
    for late, colour in ((0, 'tab:blue'), (1, 'tab:red')):
        pick = [r for r in ten if r['marked_late'] == late]
        ax.scatter([r['start_ms'] / 1e3 for r in pick], [r['node_latency_ms'] for r in pick],
                   s=8 if late else 3, color=colour, label='marked late' if late else 'on time')
    ax.legend(fontsize=7, loc='upper right')
    over = sum(r['node_latency_ms'] > 10.0 for r in ten)
    return f'{label}: 10 ms apps, node-side latency ({over} of {len(ten)} over 10 ms)'


if __name__ == '__main__':
    strip({
        'call 1, A: status tick\non the executor (default)': [HERE / f'status_ab/A_{i}/e2e.json' for i in RUNS],
        'call 1, B: status tick\non the worker': [HERE / f'status_ab/B_{i}/e2e.json' for i in RUNS],
        'call 2, A: late frames\nin idle time only': [HERE / f'riders_ab/A_{i}/e2e.json' for i in RUNS],
        'call 2, B: late frames\nride (default now)': [HERE / f'riders_ab/B_{i}/e2e.json' for i in RUNS],
        'call 3: defaults\n(riders)': [HERE / f'defaults/M_{i}/e2e.json' for i in RUNS[:4]],
        'call 4: defaults\n(allowance 1 ms)': [HERE / f'allowance/a10_{i}/e2e.json' for i in RUNS + ('6',)],
        'call 4: delivery\nallowance 1.5 ms': [HERE / f'allowance/a15_{i}/e2e.json' for i in RUNS + ('6',)],
        'call 5: final\ncode': [HERE / f'final/F_{i}/e2e.json' for i in RUNS],
    }, HERE / 'worst_kept.png', width=12, title=f'{TITLE} (session 26)')
    latency_panels(('At', 'Bt'), HERE / 'riders.png',
                   's since the first result (2 s warm-up, 10 s measured, 2 s drain)', riders_panel)
