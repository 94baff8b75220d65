"""Session 47 on H200 hosts: a lone frame's CUDA calls cut down -- exit graphs (``StageRunner.exit_step``: stage,
head and the exit's look in one replay at batch 1) and whole-factor growth inside the normalising kernel -- against
both off (``DELEN_EXIT_GRAPHS=0 DELEN_FOLD_GROWTH=0``), in issue 9's engine bench and ``benchmarks/lone_frame.py``;
and issue 10's mixed set with the exit graphs on (N) and off (X).

    python benchmarks/h200/session47/plot.py     (writes summary.json and session47.png beside it)
"""
import json
import pathlib
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # benchmarks/
from mixed_plots import admitted_run, arm_summary  # noqa: E402

# (folder, arm) in the order run: calls 1-2 on one host (call 2 "before" first), call 5 on a second host
BENCH_RUNS = (('call1', 'new'), ('call1', 'before'), ('call2', 'before'), ('call2', 'new'),
              ('call5_a', 'new'), ('call5_b', 'new'))
LONE_RUNS = ('call1', 'call2')
LONE_ARMS = ('new', 'no_exit_graphs', 'before')
MIXED = 'N1 X1 N2 X2 N3 N4 N5 N6 N7 N8 N9'.split()   # calls 4 (N1-N3, X1-X2) and 5 (N4-N9), one host
ARMS = {'N': 'exit graphs (shipped)', 'X': 'DELEN_EXIT_GRAPHS=0'}


def engine_bench() -> list[dict]:
    """Per run and scenario: the accuracy-bound app's median latency under both policies, its exits and accuracy,
    the latency-bound apps' bounds (from the run's own served-latency probe) and attainment."""
    out = []
    for folder, arm in BENCH_RUNS:
        d = json.loads((HERE / folder / f'bench_{arm}' / 'bench.json').read_text())
        for scenario, s in d['scenarios'].items():
            final, acc = s['always_final']['apps']['arm'], s['delen']['apps']['arm']
            bounded = {a: s['delen']['apps'][a] for a in ('nav', 'inspect')}
            out.append({'run': f'{folder}/{arm}', 'arm': arm, 'scenario': scenario,
                        'always_final_p50_ms': round(final['latency_p50_ms'], 3),
                        'delen_p50_ms': round(acc['latency_p50_ms'], 3),
                        'lower_by': round(1 - acc['latency_p50_ms'] / final['latency_p50_ms'], 3),
                        'exit_counts': acc['exit_counts'], 'accuracy': round(acc['accuracy'], 4),
                        'latency_bounds_ms': {a: round(v['bounds']['max_latency_ms'], 3) for a, v in bounded.items()},
                        'latency_apps_worst': round(min(v['latency_attainment'] for v in bounded.values()), 4),
                        'energy_ratio_est': round(d['targets']['energy_ratio_vs_always_final'], 3),
                        'metered_dynamic_ratio_all_apps': round(d['targets']['metered_dynamic_energy_ratio_all_apps'], 3)})
    return out


def lone_frames() -> list[dict]:
    out = []
    for folder in LONE_RUNS:
        for arm in LONE_ARMS:
            d = json.loads((HERE / folder / f'lone_{arm}' / 'lone_frame.json').read_text())
            for policy in ('delen', 'always_final'):
                out.append({'run': folder, 'arm': arm, 'policy': policy} |
                           {k: round(d[policy][k], 3) for k in ('submit', 'wake', 'input', 'launch', 'wait', 'total')})
    return out


def mixed_runs() -> list[dict]:
    return [{'run': name, 'arm': ARMS[name[0]]} | admitted_run(HERE / 'mixed' / name / 'e2e.json') for name in MIXED]


def main() -> None:
    bench, lone, runs = engine_bench(), lone_frames(), mixed_runs()
    summary = {'engine_bench': bench, 'lone_frame': lone, 'mixed_set': runs, 'arms': arm_summary(runs)}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, row in enumerate(bench):
        left.bar(i, row['lower_by'] * 100, color='C0' if row['arm'] == 'new' else 'C1')
        left.text(i, row['lower_by'] * 100 + 0.5, f"{100 * row['latency_apps_worst']:.1f}", ha='center', fontsize=6)
    left.axhline(40, color='k', ls='--', lw=1, label='target: 40 % lower')
    left.set_xticks(range(len(bench)), [f"{r['run']}\n{r['scenario']}" for r in bench], fontsize=5, rotation=60)
    left.set_ylabel('arm median latency below always_final, %')
    left.set_title('engine bench: blue exit graphs + folded growth, orange both off\n'
                   '(numbers: worst latency-bound app within bound, %)', fontsize=8)
    left.legend(fontsize=7)
    parts = ('submit', 'wake', 'input', 'launch', 'wait')
    rows = [r for r in lone if r['policy'] == 'delen']
    bottom = [0.0] * len(rows)
    for j, part in enumerate(parts):
        mid.bar(range(len(rows)), [r[part] for r in rows], bottom=bottom, color=f'C{j}', label=part)
        bottom = [b + r[part] for b, r in zip(bottom, rows)]
    mid.set_xticks(range(len(rows)), [f"{r['run']}\n{r['arm']}" for r in rows], fontsize=6)
    mid.set_ylabel('ms (medians of 192 frames)')
    mid.set_title('a lone frame to the first exit (delen), by phase', fontsize=8)
    mid.legend(fontsize=6)
    for j, arm in enumerate(sorted({r['arm'] for r in runs})):
        sel = [r for r in runs if r['arm'] == arm]
        right.scatter([j] * len(sel), [100 * r['worst_within'] for r in sel], color=f'C{j}', label=arm)
    right.axhline(99, color='r', ls=':')
    right.set_xticks([0, 1], sorted({r['arm'] for r in runs}), fontsize=7)
    right.set_ylabel('worst admitted app within its bounds, %')
    right.set_title('mixed set, 16 cameras x 30 Hz (node over DDS)', fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / 'session47.png', dpi=110)


if __name__ == '__main__':
    main()
