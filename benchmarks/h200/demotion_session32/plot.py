"""summary.json and worst_app.png from the runs in call1_final/, call2_phases/ and call3_gate/ (python3 plot.py,
from this folder, with the project installed: `source .venv/delen_env.sh`).

Per run of the mixed set (16 cameras x 30 Hz, 8 apps at 10 ms and 8 at 33 ms with accuracy >= 0.9415): the worst
app kept with the others (not demoted, not refused) judged within every bound, the worst of all the apps served
(demoted ones too: a demoted app is an admitted app the node told it may miss), how many apps the node demoted, and
the mean accuracy of the 10 ms apps. Under `~/set_bounds` (call 1's S runs) the row is the registered run's
(`delen_n16_service`); its forced run (every app, admission off) is `forced_worst`.
"""
import json
import pathlib
import statistics

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from delen_ros.tools.e2e_report import kept_within  # noqa: E402

HERE = pathlib.Path(__file__).parent
ARMS = {'call1_final': {'A': 'apps at configure (9b47e34)', 'S': 'through ~/set_bounds (9b47e34)'},
        'call2_phases': {'A': 'default (9b47e34)', 'D': '--phase drift', 'N': 'admission_control:=false'},
        'call3_gate': {'G': 'demoted only on misses (34f93cb)', 'O': 'DELEN_DEMOTE_ON_MISSES=0 (before)'}}


def worst_all(config: dict) -> float:
    """The lowest share of frames within the latency bound over every app served (refused apps excluded)."""
    refused = set(config.get('refused') or {})
    return min(a['attainment'] for name, a in config['apps'].items() if name not in refused)


def run_summary(path: pathlib.Path) -> dict:
    configs = json.loads(path.read_text())['configs']
    c = configs.get('delen_n16_service', configs['delen_n16'])
    kept = kept_within(c)
    worst = min(kept, key=kept.get)
    fast = [a.get('accuracy') for a in c['apps'].values() if a['bound_ms'] == 10.0 and a.get('accuracy') is not None]
    out = {'worst_kept': [worst, round(kept[worst], 4)], 'worst_served': round(worst_all(c), 4),
           'demoted': len(c['total'].get('apps_demoted') or []), 'refused': sorted(c.get('refused') or {}),
           'accuracy_10ms_apps': round(statistics.fmean(fast), 4) if fast else None}
    if 'delen_n16_service' in configs:
        out['forced_worst'] = round(worst_all(configs['delen_n16']), 4)
    return out


def main() -> None:
    runs = {f'{call}/{run.name}': run_summary(run / 'e2e.json')
            for call in ARMS for run in sorted((HERE / call).iterdir()) if (run / 'e2e.json').exists()}
    (HERE / 'summary.json').write_text(json.dumps(runs, indent=1) + '\n')
    fig, axes = plt.subplots(1, len(ARMS), figsize=(15, 3.8), sharey=True)
    for ax, (call, arms) in zip(axes, ARMS.items()):
        for i, (arm, label) in enumerate(arms.items()):
            rows = [r for key, r in runs.items() if key.startswith(f'{call}/{arm}')]
            x = [i + 0.08 * (j - len(rows) / 2) for j in range(len(rows))]
            ax.scatter(x, [100 * r['worst_kept'][1] for r in rows], marker='o', label='worst kept' if i == 0 else None,
                       color='C0')
            ax.scatter(x, [100 * r['worst_served'] for r in rows], marker='x', label='worst served' if i == 0 else None,
                       color='C3')
        ax.set_xticks(range(len(arms)), list(arms.values()), fontsize=7)
        ax.axhline(99, color='grey', lw=0.8)
        ax.set_title(call, fontsize=9)
        ax.legend(fontsize=7, loc='lower left')
    axes[0].set_ylabel('share of frames within bound, %')
    axes[0].set_ylim(25, 101)
    fig.suptitle('H200 (a fresh machine per call), 16 cameras x 30 Hz, 8 x 10 ms + 8 x 33 ms @ 0.9415', fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / 'worst_app.png', dpi=110)


if __name__ == '__main__':
    main()
