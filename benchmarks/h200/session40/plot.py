"""Session 40 on H200 hosts: issue 10's mixed set at configure, two scheduling changes in interleaved A/Bs
(a batch that counts the frames it leaves out, calls 1; a step by choice that yields to pressed waiting
work, calls 2 and 4), against the CPU the hypervisor stole in each run; issue 8's saturation with the
yield rule (call 3).

    python benchmarks/h200/session40/plot.py     (writes summary.json and session40.png beside it)
"""
import json
import pathlib
import statistics

HERE = pathlib.Path(__file__).resolve().parent
ARMS = {'L': 'DELEN_BATCH_LOOKAHEAD=1', 'G': 'as shipped before session 40', 'R': 'DELEN_BATCH_LOOKAHEAD=1, traced',
        'Y': 'choice yields (shipped)', 'N': 'DELEN_CHOICE_YIELDS=0 (before session 40)'}
CONFIGURE_CALLS = ('call1_lookahead', 'call2_yields', 'call4_yields')


def _config(run: pathlib.Path) -> dict:
    return next(iter(json.loads((run / 'e2e.json').read_text())['configs'].values()))


def at_configure() -> list[dict]:
    """Every run of the mixed set (16 apps in the node's parameter): the worst app within its bounds at the
    recorder, the frames that missed, the host's stolen CPU, the frames stopped for pressed waiting work,
    and how unevenly the 10 ms apps reached their exits (final-exit share, lowest and highest app)."""
    out = []
    for call in CONFIGURE_CALLS:
        for run in sorted((p for p in (HERE / call).iterdir() if p.is_dir()), key=lambda p: int(p.name[1:])):
            c = _config(run)
            apps, t = c['apps'], c['total']
            worst = min(apps, key=lambda a: apps[a]['attainment'])
            final = [apps[a]['exit_mix'][-1] for a in apps if apps[a]['bound_ms'] == 10.0]
            out.append({'call': call, 'run': run.name, 'arm': ARMS[run.name[0]], 'worst_app': worst,
                        'worst_within': round(apps[worst]['attainment'], 4),
                        'worst_exit0_share': round(apps[worst]['exit_mix'][0], 3),
                        'missed_frames': sum(round((1 - a['attainment']) * a['sent']) for a in apps.values()),
                        'worst_kept_within': round(t['attainment_min_app_kept'], 4),
                        'host_cpu_steal_share': round(t.get('host_cpu_steal_share') or 0.0, 5),
                        'stops_yielded': t.get('node_stops_yielded', 0),
                        'final_exit_share_10ms_apps': [round(min(final), 3), round(max(final), 3)]})
    return out


def arms(runs: list[dict]) -> dict:
    out = {}
    for arm in sorted({r['arm'] for r in runs}):
        rows = [r for r in runs if r['arm'] == arm]
        out[arm] = {'runs': len(rows), 'every_app_99': sum(r['worst_within'] >= 0.99 for r in rows),
                    'missed_frames_median': statistics.median(r['missed_frames'] for r in rows),
                    'worst_within_median': statistics.median(r['worst_within'] for r in rows)}
    return out


def saturation() -> list[dict]:
    """Call 3: y arms as shipped (a step by choice yields), n arms with ``DELEN_CHOICE_YIELDS=0``."""
    call = HERE / 'call3_saturation_yields'
    engine = json.loads((call / 'y1' / 'engine_bench.json').read_text())['scenarios']['overload']['batched']['served_hz']
    out = []
    for run in sorted((p for p in call.iterdir() if p.is_dir()), key=lambda p: (p.name[1:], p.name[0] != 'y')):
        t = _config(run)['total']
        out.append({'run': run.name, 'arm': ARMS['Y' if run.name[0] == 'y' else 'N'],
                    'results_hz': round(t['results_hz'], 1), 'engine_hz': round(engine, 1),
                    'ratio': round(t['results_hz'] / engine, 3), 'final_exit_share': round(t['exit_mix'][-1], 3),
                    'host_cpu_steal_share': round(t.get('host_cpu_steal_share') or 0.0, 5)})
    return out


def main() -> None:
    runs = at_configure()
    untraced = [r for r in runs if not r['run'].startswith('R')]
    summary = {'at_configure': runs, 'arms': arms(untraced), 'saturation': saturation(),
               'every_app_99_untraced': f"{sum(r['worst_within'] >= 0.99 for r in untraced)} of {len(untraced)}"}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={'width_ratios': [1.6, 1]})
    for key, marker in (('G', 'o'), ('L', 's'), ('N', 'v'), ('Y', '^'), ('R', 'x')):
        rows = [r for r in runs if r['run'][0] == key]
        a.scatter([max(r['host_cpu_steal_share'], 1e-5) * 100 for r in rows], [100 * r['worst_within'] for r in rows],
                  marker=marker, label=ARMS[key], zorder=3)
    a.axhline(99, color='r', linestyle=':')
    a.set_xscale('log')
    a.set_xlabel("the host's CPU stolen by the hypervisor during the run, % (log)")
    a.set_ylabel('worst app within its bounds, % (at the recorder)')
    a.set_title('16 cameras × 30 Hz, mixed set at configure: 39 runs, 4 arms')
    a.legend(fontsize=7, loc='lower left')
    sat = summary['saturation']
    for arm, colour in ((ARMS['Y'], 'C3'), (ARMS['N'], 'C2')):
        rows = [r for r in sat if r['arm'] == arm]
        b.bar([r['run'] for r in rows], [r['ratio'] for r in rows], color=colour, label=arm)
        for r in rows:
            b.annotate(f"{100 * r['host_cpu_steal_share']:.1f} %", (r['run'], r['ratio']), textcoords='offset points',
                       xytext=(0, 3), fontsize=7, ha='center')
    b.axhline(0.9, color='r', linestyle=':')
    b.set_ylim(0.6, 1.0)
    b.set_ylabel(f"results/s ÷ the engine alone ({sat[0]['engine_hz']:.0f}/s)")
    b.set_title('32 cameras × 120 Hz, delen, 33 ms (labels: CPU stolen)')
    b.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(HERE / 'session40.png', dpi=110)


if __name__ == '__main__':
    main()
