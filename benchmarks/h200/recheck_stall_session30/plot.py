"""summary.json and worst_kept.png from the runs in call1_trials/, call2_recheck/ and call3_priority/
call4_margin_order/ (python3 plot.py, from this folder, with the project installed: `source .venv/delen_env.sh`).

Per run and configuration: the worst app kept with the others (not demoted, not refused), judged within
every bound (an accuracy-bound app by the node's bounds_met too), how many were demoted, who was refused,
and the mean accuracy of the 10 ms apps and of the accuracy-bound apps. The plot pairs each call's runs:
call 1 A (shipped then) / T (cuDNN trials before serving), call 2 N (re-check without GIL yields on the
worker) / Y (DELEN_RECHECK_YIELDS=1), call 3 A (the worker's stream at the highest priority, now the
default) / B (DELEN_STREAM_PRIORITY=0), call 4 A (a learnt choice margin and demoted apps after late frames,
the defaults now) / C (DELEN_CHOICE_MARGIN=0 DELEN_DEMOTED_LAST=0). R-prefixed runs were traced (DELEN_TRACE)
and pair as the A run.
"""
import json
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from delen_ros.tools.e2e_report import kept_within  # noqa: E402

HERE = pathlib.Path(__file__).parent
PAIRS = {'call1_trials': ('A', 'T', 'shipped then', 'cuDNN trials before serving'),
         'call2_recheck': ('N', 'Y', 're-check: no GIL yields on the worker', 'DELEN_RECHECK_YIELDS=1'),
         'call3_priority': ('A', 'B', 'worker stream at highest priority', 'DELEN_STREAM_PRIORITY=0'),
         'call4_margin_order': ('A', 'C', 'choice margin, demoted apps last', 'DELEN_CHOICE_MARGIN=0 DELEN_DEMOTED_LAST=0')}


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def run_summary(path: pathlib.Path) -> dict:
    out = {}
    for name, c in json.loads(path.read_text())['configs'].items():
        refused = c.get('refused') or {}
        apps = c['apps']
        demoted = set(c['total'].get('apps_demoted', []))
        kept = kept_within(c)
        worst = min(kept, key=kept.get)
        out[name] = {'worst_kept': [worst, round(kept[worst], 4)], 'demoted': len(demoted), 'refused': sorted(refused),
                     'accuracy_10ms_apps': mean([a.get('accuracy') for a in apps.values() if a['bound_ms'] == 10.0]),
                     'accuracy_apps_mean': mean([a.get('accuracy') for a in apps.values() if a.get('min_accuracy')])}
    return out


def main() -> None:
    runs = {f'{call.name}/{run.name}': run_summary(run / 'e2e.json')
            for call in sorted(HERE.glob('call*')) for run in sorted(call.iterdir()) if (run / 'e2e.json').exists()}
    (HERE / 'summary.json').write_text(json.dumps(runs, indent=1) + '\n')
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), sharey=True)
    for ax, (call, (a, b, a_label, b_label)) in zip(axes, PAIRS.items()):
        pairs = []
        for key, r in runs.items():
            c, name = key.split('/')
            if c != call or not (name.startswith(a) or name.startswith('R' + a)) or name.startswith('RN'):
                continue
            number = name.lstrip('RA' if a == 'A' else 'R' + a).lstrip(a)
            other = runs.get(f'{call}/{b}{number}')
            if other:
                pairs.append((number, r['delen_n16']['worst_kept'][1], other['delen_n16']['worst_kept'][1]))
        pairs.sort()
        xs = range(len(pairs))
        ax.plot(xs, [100 * p[1] for p in pairs], 'o-', label=a_label)
        ax.plot(xs, [100 * p[2] for p in pairs], 's--', label=b_label)
        ax.axhline(99, color='grey', lw=0.8)
        ax.set_xticks(list(xs), [f'pair {p[0]}' for p in pairs])
        ax.set_title(call, fontsize=9)
        ax.legend(fontsize=7, loc='lower left')
    axes[0].set_ylabel('worst kept app within its bounds, %')
    fig.suptitle('H200, 16 cameras x 30 Hz, 8 x 10 ms + 8 x 33 ms @ 0.9415, apps admitted at configure', fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / 'worst_kept.png', dpi=110)


if __name__ == '__main__':
    main()
