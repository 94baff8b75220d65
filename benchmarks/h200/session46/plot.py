"""Session 46 on one H200 host (16 cores, 0.01-0.04 % of its CPU stolen): the device preprocessing's resize
made cv2.INTER_AREA's (``core/area_resize.py``) against the bilinear growth before, in issue 9's engine bench;
and issue 10's mixed set with the frame reader's bursts uploaded together (B: ``DELEN_BATCH_UPLOADS=1``)
against one upload a frame (N, shipped; R1 traced).

    python benchmarks/h200/session46/plot.py     (writes summary.json and session46.png beside it)
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

BENCH_RUNS = ('new_1', 'before_1', 'before_2', 'new_2')   # in the order run: call 1, then call 3
MIXED = 'N1 B1 N2 B2 N3 B3 N4 B4 N5 B5 R1'.split()          # call 2, in this order
ARMS = {'N': 'one upload a frame (shipped)', 'R': 'one upload a frame (shipped)', 'B': 'DELEN_BATCH_UPLOADS=1'}


def engine_bench() -> list[dict]:
    """Per run and scenario: the accuracy-bound app's median latency under both policies, its exits and accuracy."""
    out = []
    for run in BENCH_RUNS:
        d = json.loads((HERE / 'engine_bench' / run / 'bench.json').read_text())
        for scenario, s in d['scenarios'].items():
            final, arm = s['always_final']['apps']['arm'], s['delen']['apps']['arm']
            out.append({'run': run, 'resize': 'bilinear growth (before)' if run.startswith('before') else 'INTER_AREA',
                        'scenario': scenario, 'always_final_p50_ms': round(final['latency_p50_ms'], 3),
                        'delen_p50_ms': round(arm['latency_p50_ms'], 3),
                        'lower_by': round(1 - arm['latency_p50_ms'] / final['latency_p50_ms'], 3),
                        'exit_counts': arm['exit_counts'], 'accuracy': round(arm['accuracy'], 4),
                        'latency_apps_worst': round(min(s['delen']['apps'][a]['latency_attainment']
                                                        for a in ('nav', 'inspect')), 4),
                        'energy_ratio_est': round(d['targets']['energy_ratio_vs_always_final'], 3)})
    return out


def mixed_runs() -> list[dict]:
    return [{'run': name, 'arm': ARMS[name[0]]} | admitted_run(HERE / 'mixed' / name / 'e2e.json') for name in MIXED]


def main() -> None:
    bench, runs = engine_bench(), mixed_runs()
    summary = {'engine_bench': bench, 'mixed_set': runs, 'arms': arm_summary(runs)}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, row in enumerate(bench):
        colour = 'C1' if row['resize'].startswith('bilinear') else 'C0'
        left.bar(i, row['lower_by'] * 100, color=colour)
        left.text(i, row['lower_by'] * 100 + 0.5, f"{row['exit_counts'][0]}", ha='center', fontsize=7)
    left.axhline(40, color='k', ls='--', lw=1, label='target: 40 % lower')
    left.set_xticks(range(len(bench)), [f"{r['run']}\n{r['scenario']}" for r in bench], fontsize=7)
    left.set_ylabel('arm median latency below always_final, %')
    left.set_title('engine bench: orange bilinear growth, blue INTER_AREA\n(numbers: frames of 300 at the first exit)',
                   fontsize=9)
    left.legend(fontsize=8)
    for j, arm in enumerate(sorted({r['arm'] for r in runs})):
        rows = [r for r in runs if r['arm'] == arm]
        right.scatter([j] * len(rows), [r['missed_frames'] for r in rows], color=f'C{j}', label=arm)
    right.set_xticks([0, 1], sorted({r['arm'] for r in runs}), fontsize=8)
    right.set_ylabel('frames missed of 4 800 (16 apps, 10 s)')
    right.set_title('mixed set, 16 cameras x 30 Hz', fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / 'session46.png', dpi=110)


if __name__ == '__main__':
    main()
