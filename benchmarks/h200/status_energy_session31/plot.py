"""summary.json and worst_kept.png from the runs in call1_status/, call2_energy/, call3_lookahead/ and
call4_ticker/ (python3 plot.py, from this folder, with the project installed: `source .venv/delen_env.sh`).

Per run: the worst app kept with the others (not demoted, not refused), judged within every bound (an
accuracy-bound app by the node's bounds_met too), how many apps were demoted, who was refused, the mean
accuracy of the 10 ms apps and of the accuracy-bound apps, and the mean energy per result of each kind.
The plot pairs each call's runs by number: call 1 A (the status round of session 31: 8 report ticks and
/diagnostics in a tick of its own) / B (DELEN_STATUS_PARTS=4 DELEN_DIAGNOSTICS_APART=0, session 30's);
call 2 A (energy_window_s 1 s, now the default) / B (energy_window_s:=0.1, as before); call 3 D (default,
cameras drifting) / L (the same with arrival_lookahead:=true); call 4 A (the status round on a thread of
its own, now the default) / E (DELEN_STATUS_ON_EXECUTOR=1: an rclpy timer, as before). R-prefixed runs were traced (DELEN_TRACE);
RA and RB pair as pair R.
"""
import json
import pathlib
import statistics

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from delen_ros.tools.e2e_report import kept_within  # noqa: E402

HERE = pathlib.Path(__file__).parent
PAIRS = {'call1_status': ('A', 'B', '8 report ticks + /diagnostics apart', 'session 30: 4 ticks, /diagnostics in the last'),
         'call2_energy': ('A', 'B', 'energy_window_s 1 s (default)', 'energy_window_s 0.1 s (before)'),
         'call3_lookahead': ('D', 'L', 'default (drifting cameras)', 'arrival_lookahead:=true'),
         'call4_ticker': ('A', 'E', 'status ticks on a thread (default)', 'DELEN_STATUS_ON_EXECUTOR=1 (before)')}


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 4) if values else None


def run_summary(path: pathlib.Path) -> dict:
    c = json.loads(path.read_text())['configs']['delen_n16']
    refused, apps = c.get('refused') or {}, c['apps']
    demoted = set(c['total'].get('apps_demoted', []))
    kept = kept_within(c)
    worst = min(kept, key=kept.get)
    fast = [a for a in apps.values() if a['bound_ms'] == 10.0]
    accurate = [a for a in apps.values() if a.get('min_accuracy')]
    return {'worst_kept': [worst, round(kept[worst], 4)], 'demoted': len(demoted), 'refused': sorted(refused),
            'accuracy_10ms_apps': mean([a.get('accuracy') for a in fast]),
            'accuracy_apps_mean': mean([a.get('accuracy') for a in accurate]),
            'energy_mj_10ms_apps': mean([a.get('energy_mj_per_result') for a in fast]),
            'energy_mj_accuracy_apps': mean([a.get('energy_mj_per_result') for a in accurate])}


def arm_and_pair(name: str) -> tuple[str, str]:
    """'A3' -> ('A', '3'); a traced run 'RA' -> ('A', 'R')."""
    return (name[1], 'R') if name.startswith('R') else (name[0], name[1:])


def main() -> None:
    runs = {f'{call.name}/{run.name}': run_summary(run / 'e2e.json')
            for call in sorted(HERE.glob('call*')) for run in sorted(call.iterdir()) if (run / 'e2e.json').exists()}
    (HERE / 'summary.json').write_text(json.dumps(runs, indent=1) + '\n')
    fig, axes = plt.subplots(1, len(PAIRS), figsize=(17, 3.6), sharey=True)
    for ax, (call, (a, b, a_label, b_label)) in zip(axes, PAIRS.items()):
        names = {key.split('/')[1]: r for key, r in runs.items() if key.startswith(call + '/')}
        arm = {x: {arm_and_pair(n)[1]: r['worst_kept'][1] for n, r in names.items() if arm_and_pair(n)[0] == x}
               for x in (a, b)}
        pairs = sorted(set(arm[a]) & set(arm[b]), key=lambda k: (k == 'R', k))
        xs = range(len(pairs))
        ax.plot(xs, [100 * arm[a][k] for k in pairs], 'o-', label=a_label)
        ax.plot(xs, [100 * arm[b][k] for k in pairs], 's--', label=b_label)
        ax.axhline(99, color='grey', lw=0.8)
        ax.set_xticks(list(xs), [f'pair {k}' for k in pairs])
        ax.set_title(call, fontsize=9)
        ax.legend(fontsize=7, loc='lower left')
    axes[0].set_ylabel('worst kept app within its bounds, %')
    fig.suptitle('H200 (a fresh machine per call), 16 cameras x 30 Hz, 8 x 10 ms + 8 x 33 ms @ 0.9415', fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / 'worst_kept.png', dpi=110)


if __name__ == '__main__':
    main()
