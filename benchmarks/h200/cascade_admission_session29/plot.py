"""summary.json and worst_kept.png from the runs in call6/ and call7/ (python3 plot.py, from this folder, with the project installed: `source .venv/delen_env.sh`).

Per run: the worst app kept with the others (not demoted, not refused), judged within every bound (an app
with an accuracy bound by the node's bounds_met too), the apps demoted, and the accuracy apps' mean accuracy.
A runs: the shipped admission; B runs: DELEN_CASCADE_ADMISSION=0 (session 28's); S runs: ~/set_bounds.
"""
import json
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from delen_ros.tools.e2e_report import within_all_bounds  # noqa: E402

HERE = pathlib.Path(__file__).parent


def run_summary(path: pathlib.Path) -> dict:
    out = {}
    for name, c in json.loads(path.read_text())['configs'].items():
        refused = c.get('refused') or {}
        apps = c['apps']
        kept = {k: within_all_bounds(a) for k, a in apps.items() if not a.get('node_demoted_share') and k not in refused}
        worst = min(kept, key=kept.get)
        accuracy = [a['accuracy'] for a in apps.values() if a.get('min_accuracy') and a.get('accuracy') is not None]
        out[name] = {'worst_kept': [worst, round(kept[worst], 4)],
                     'demoted': sorted(k for k, a in apps.items() if a.get('node_demoted_share')),
                     'refused': sorted(refused),
                     'accuracy_apps_mean': round(sum(accuracy) / len(accuracy), 4) if accuracy else None}
    return out


def main() -> None:
    runs = {f'{call.name}/{run.name}': run_summary(run / 'e2e.json')
            for call in sorted(HERE.glob('call*')) for run in sorted(call.iterdir()) if (run / 'e2e.json').exists()}
    (HERE / 'summary.json').write_text(json.dumps(runs, indent=1) + '\n')
    pairs = []
    for key, r in runs.items():
        call, name = key.split('/')
        if name.startswith('A'):
            other = runs.get(f'{call}/B{name[1:]}')
            if other:
                pairs.append((name[1:], r['delen_n16']['worst_kept'][1], other['delen_n16']['worst_kept'][1]))
    pairs.sort(key=lambda p: int(p[0]))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(pairs))
    ax.plot(xs, [100 * a for _, a, _ in pairs], 'o-', label='shipped (cascade priced at its deepest needed exit)')
    ax.plot(xs, [100 * b for _, _, b in pairs], 's--', label='DELEN_CASCADE_ADMISSION=0 (session 28)')
    ax.axhline(99, color='grey', lw=0.8)
    ax.set_xticks(list(xs), [f'pair {p}' for p, _, _ in pairs])
    ax.set_ylabel('worst kept app within its bounds, %')
    ax.set_title('H200, 16 cameras x 30 Hz, 8 x 10 ms + 8 x 33 ms @ 0.9415 (apps parameter)', fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / 'worst_kept.png', dpi=110)


if __name__ == '__main__':
    main()
