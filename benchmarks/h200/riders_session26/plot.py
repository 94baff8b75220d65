"""Plots for benchmarks/h200/riders_session26 (run from the repository root):

    python3 benchmarks/h200/riders_session26/plot.py

worst_kept.png: per run, the worst kept app's share of frames within its bound (e2e.json files), for the
five calls; riders.png: the 10 ms apps' node-side latency in the traced pair of the riders A/B
(results.json, taken from the node's flight recorder), frames the scheduler marked late in red."""
from __future__ import annotations

import json
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
RUNS = ('1', '2', '3', '4', '5')


def worst_kept(path: pathlib.Path) -> float:
    return 100 * json.loads(path.read_text())['configs']['delen_n16']['total']['attainment_min_app_kept']


def strip() -> None:
    groups = {
        'call 1, A: status tick\non the executor (default)': [HERE / f'status_ab/A_{i}/e2e.json' for i in RUNS],
        'call 1, B: status tick\non the worker': [HERE / f'status_ab/B_{i}/e2e.json' for i in RUNS],
        'call 2, A: late frames\nin idle time only': [HERE / f'riders_ab/A_{i}/e2e.json' for i in RUNS],
        'call 2, B: late frames\nride (default now)': [HERE / f'riders_ab/B_{i}/e2e.json' for i in RUNS],
        'call 3: defaults\n(riders)': [HERE / f'defaults/M_{i}/e2e.json' for i in RUNS[:4]],
        'call 4: defaults\n(allowance 1 ms)': [HERE / f'allowance/a10_{i}/e2e.json' for i in RUNS + ('6',)],
        'call 4: delivery\nallowance 1.5 ms': [HERE / f'allowance/a15_{i}/e2e.json' for i in RUNS + ('6',)],
        'call 5: final\ncode': [HERE / f'final/F_{i}/e2e.json' for i in RUNS],
    }
    fig, ax = plt.subplots(figsize=(12, 4))
    for i, (name, files) in enumerate(groups.items()):
        ys = [worst_kept(f) for f in files]
        ax.scatter([i] * len(ys), ys, s=30)
    ax.axhline(99, color='grey', ls='--', lw=1)
    ax.set_xticks(range(len(groups)), groups.keys(), fontsize=8)
    ax.set_ylabel('worst kept app within bound, %')
    ax.set_title('H200, cifar10_lite0, 16 cameras x 30 Hz: 8 apps at 10 ms, 8 at 33 ms + accuracy >= 0.9306 '
                 '(session 26)', fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / 'worst_kept.png', dpi=110)


def riders() -> None:
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True, sharey=True)
    for ax, name, label in zip(axes, ('At', 'Bt'), ('A: late frames in idle time only', 'B: late frames ride')):
        data = json.loads((HERE / 'riders_ab' / name / 'results.json').read_text())
        col = {c: i for i, c in enumerate(data['columns'])}
        rows = [r for r in data['rows'] if r[col['bound_ms']] == 10.0]
        for late, colour in ((0, 'tab:blue'), (1, 'tab:red')):
            pick = [r for r in rows if r[col['marked_late']] == late]
            ax.scatter([r[col['start_ms']] / 1e3 for r in pick], [r[col['node_latency_ms']] for r in pick],
                       s=3 if not late else 8, color=colour, label='marked late' if late else 'on time')
        over = sum(r[col['node_latency_ms']] > 10.0 for r in rows)
        ax.axhline(10, color='grey', ls='--', lw=1)
        ax.set_title(f'{label}: 10 ms apps, node-side latency ({over} of {len(rows)} over 10 ms)', fontsize=9)
        ax.set_ylabel('ms')
        ax.legend(fontsize=7, loc='upper right')
    axes[-1].set_xlabel('s since the first result (2 s warm-up, 10 s measured, 2 s drain)')
    fig.tight_layout()
    fig.savefig(HERE / 'riders.png', dpi=110)


if __name__ == '__main__':
    strip()
    riders()
