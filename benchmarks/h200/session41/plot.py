"""Session 41 on H200 hosts: issue 10's mixed set at configure under the three choice-yield rules, interleaved
(calls 1 and 2, 30 runs) and five more runs of the new default on a third host (call 4), against the CPU the
hypervisor stole in each run; issue 8's saturation under the new default (call 3).

    python benchmarks/h200/session41/plot.py     (writes summary.json and session41.png beside it)
"""
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # benchmarks/
from mixed_plots import saturation_bars  # noqa: E402
MODES = {'W': 'waiting', 'Y': 'pressed', 'P': 'pressed', 'D': 'demand'}   # Y: pressed as shipped then, P: by env
CONFIGURE_CALLS = ('call1_yields', 'call2_yields', 'call4_waiting')
FLOOR = 91.0   # % within: the plot's floor
LOW_THEFT = 0.004
QUIET_ROUND_PCT = 0.13   # at most 2 ticks of 1 600 stolen in the node's worst 1 s round (16 cores x 100 Hz)   # session 40: at or above 0.4 % stolen 1 run in 6 met the target


def _config(run: pathlib.Path) -> dict:
    return next(iter(json.loads((run / 'e2e.json').read_text())['configs'].values()))


def at_configure() -> list[dict]:
    """Every run of the mixed set: the worst app within its bounds at the recorder, the frames that missed, the
    host's stolen CPU, the frames stopped for waiting work, and what the 10 ms apps (no accuracy bound) and the
    33 ms apps (accuracy >= 0.9415) scored on the frames they were sent."""
    out = []
    for call in CONFIGURE_CALLS:
        for run in sorted((p for p in (HERE / call).iterdir() if p.is_dir()), key=lambda p: int(p.name[1:])):
            c = _config(run)
            apps, t = c['apps'], c['total']
            worst = min(apps, key=lambda a: apps[a]['attainment'])
            ten = [a for a in apps.values() if a['bound_ms'] == 10.0]
            other = [a for a in apps.values() if a['bound_ms'] != 10.0]
            out.append({'call': call, 'run': run.name, 'mode': MODES[run.name[0]], 'worst_app': worst,
                        'worst_within': round(apps[worst]['attainment'], 4),
                        'missed_frames': sum(round((1 - a['attainment']) * a['sent']) for a in apps.values()),
                        'host_cpu_steal_share': round(t.get('host_cpu_steal_share') or 0.0, 5),
                        'node_saw_stolen_pct_max': (t.get('node_host_cpu_stolen_pct') or {}).get('max'),
                        'stops_yielded': t.get('node_stops_yielded', 0),
                        'accuracy_10ms_apps': round(statistics.mean(a['accuracy'] for a in ten), 4),
                        'accuracy_33ms_apps': round(statistics.mean(a['accuracy'] for a in other), 4),
                        'p99_ms_10ms_apps_max': round(max(a['e2e_p99_ms'] for a in ten), 2)})
    return out


def modes(runs: list[dict]) -> dict:
    out = {}
    for mode in ('waiting', 'pressed', 'demand'):
        rows = [r for r in runs if r['mode'] == mode]
        low = [r for r in rows if r['host_cpu_steal_share'] < LOW_THEFT]
        # the node's own worst round (/diagnostics): its jiffies count steps of 1/1600 of the host (0.0625 %)
        quiet = [r for r in rows if (r['node_saw_stolen_pct_max'] or 0.0) <= QUIET_ROUND_PCT]
        out[mode] = {'runs': len(rows), 'every_app_99': sum(r['worst_within'] >= 0.99 for r in rows),
                     'missed_frames_median': statistics.median(r['missed_frames'] for r in rows),
                     'runs_below_0.4pct_stolen': len(low),
                     'every_app_99_below_0.4pct_stolen': sum(r['worst_within'] >= 0.99 for r in low),
                     'runs_node_saw_at_most_2_ticks': len(quiet),
                     'every_app_99_node_saw_at_most_2_ticks': sum(r['worst_within'] >= 0.99 for r in quiet),
                     'accuracy_10ms_apps_median': statistics.median(r['accuracy_10ms_apps'] for r in rows),
                     'accuracy_33ms_apps_median': statistics.median(r['accuracy_33ms_apps'] for r in rows)}
    return out


def saturation() -> list[dict]:
    """Call 3: w arms as shipped ('waiting'), p arms with ``DELEN_CHOICE_YIELDS=pressed``."""
    call = HERE / 'call3_saturation'
    engine = json.loads((call / 'w1' / 'engine_bench.json').read_text())['scenarios']['overload']['batched']['served_hz']
    out = []
    for run in sorted((p for p in call.iterdir() if p.is_dir()), key=lambda p: (p.name[1:], p.name[0] != 'w')):
        t = _config(run)['total']
        out.append({'run': run.name, 'mode': 'waiting' if run.name[0] == 'w' else 'pressed',
                    'results_hz': round(t['results_hz'], 1), 'engine_hz': round(engine, 1),
                    'ratio': round(t['results_hz'] / engine, 3), 'final_exit_share': round(t['exit_mix'][-1], 3),
                    'stops_yielded': t.get('node_stops_yielded', 0),
                    'host_cpu_steal_share': round(t.get('host_cpu_steal_share') or 0.0, 5)})
    return out


def main() -> None:
    runs = at_configure()
    summary = {'at_configure': runs, 'modes': modes(runs), 'saturation': saturation()}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={'width_ratios': [1.5, 1, 1]})
    for mode, marker, colour in (('waiting', '^', 'C3'), ('pressed', 'o', 'C0'), ('demand', 's', 'C2')):
        rows = [r for r in runs if r['mode'] == mode]
        a.scatter([max(r['host_cpu_steal_share'], 1e-5) * 100 for r in rows],
                  [max(100 * r['worst_within'], FLOOR) for r in rows], marker=marker, color=colour, label=f"{mode}{' (shipped)' if mode == 'waiting' else ''}", zorder=3)
        b.scatter([r['accuracy_10ms_apps'] for r in rows], [r['missed_frames'] for r in rows], marker=marker,
                  color=colour, label=mode, zorder=3)
    for r in runs:   # off the scale: drawn on its floor, named
        if 100 * r['worst_within'] < FLOOR:
            a.annotate(f"{r['run']}: {100 * r['worst_within']:.1f} %", (100 * r['host_cpu_steal_share'], FLOOR),
                       textcoords='offset points', xytext=(-20, 6), fontsize=7)
    a.set_ylim(FLOOR - 0.5, 100.5)
    a.axhline(99, color='r', linestyle=':')
    a.axvline(100 * LOW_THEFT, color='grey', linestyle=':')
    a.set_xscale('log')
    a.set_xlabel("the host's CPU stolen by the hypervisor during the run, % (log)")
    a.set_ylabel('worst app within its bounds, % (at the recorder)')
    a.set_title(f'16 cameras × 30 Hz, mixed set at configure: {len(runs)} runs', fontsize=10)
    a.legend(fontsize=8, loc='lower left')
    b.set_yscale('symlog', linthresh=10)
    b.set_xlabel('10 ms apps (no accuracy bound): accuracy, mean')
    b.set_ylabel('frames missed in the run (all apps)')
    b.set_title('the price: accuracy of apps with no accuracy bound', fontsize=10)
    b.legend(fontsize=8)
    sat = summary['saturation']
    saturation_bars(c, sat, ['C3' if r['mode'] == 'waiting' else 'C0' for r in sat],
                    'saturation, 32 cams × 120 Hz (w: waiting, p: pressed)')
    fig.tight_layout()
    fig.savefig(HERE / 'session41.png', dpi=110)


if __name__ == '__main__':
    main()
