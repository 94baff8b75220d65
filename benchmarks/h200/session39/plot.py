"""Session 39 on H200 hosts: issue 10's mixed set at configure, run after run (calls 1, 2, 4, 5), and issue 8's
saturation with frames of apps that are behind stopped at the first exit meeting their bounds (call 3, A/B).

    python benchmarks/h200/session39/plot.py     (writes summary.json and session39.png beside it)
"""
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
NO_CHOICE = 'no step by choice when behind (shipped)'
CHOICE = 'steps by choice when behind (DELEN_CHOICE_WHEN_BEHIND=1)'
CONFIGURE_CALLS = ('call1_configure_cold', 'call2_configure_prefault', 'call4_configure', 'call5_configure_traced')


def _e2e(run: pathlib.Path) -> dict:
    return json.loads((run / 'e2e.json').read_text())


def _in_order(call: str) -> list[pathlib.Path]:
    """A call's runs in the order they ran (their e2e.json's start)."""
    runs = [p for p in (HERE / call).iterdir() if p.is_dir()]
    return sorted(runs, key=lambda p: _e2e(p)['meta'].get('started') or p.name)


def at_configure() -> list[dict]:
    """Every run of the mixed set with its 16 apps in the node's parameter: the worst app within its bounds at
    the recorder and as the node judged it, the apps the node demoted (told, served after the others) and the
    worst of those it kept, the host's stolen CPU, when the background graphs settled."""
    out = []
    for call in CONFIGURE_CALLS:
        for i, run in enumerate(_in_order(call)):
            c = next(iter(_e2e(run)['configs'].values()))
            apps, t = c['apps'], c['total']
            worst = min(apps, key=lambda a: apps[a]['attainment'])
            out.append({'call': call, 'run': run.name, 'order': i + 1, 'worst_app': worst,
                        'worst_within': round(apps[worst]['attainment'], 4),
                        'worst_node_bounds_met': round(apps[worst]['node_bounds_met_share'], 4),
                        'demoted': t.get('apps_demoted') or [],
                        'worst_kept_within': round(t['attainment_min_app_kept'], 4),
                        'queue_p99_ms': round(t['timeline_p99_ms']['queue'], 2),
                        'host_cpu_steal_share': t.get('host_cpu_steal_share'),
                        'graphs_settled_s': (c.get('node_graphs_settled_s') or [None])[0],
                        'outlet_lag_p99_ms_median': (t.get('node_outlet_lag_p99_ms') or {}).get('median')})
    return out


def saturation() -> list[dict]:
    """Call 3: the n arms as shipped (a frame of an app that is behind takes no step by choice), the b arms
    with ``DELEN_CHOICE_WHEN_BEHIND=1`` (steps by choice all the same, as before session 39)."""
    call = HERE / 'call3_saturation_choice_behind'
    engine = json.loads((call / 'n1' / 'engine_bench.json').read_text())['scenarios']['overload']['batched']['served_hz']
    out = []
    for run in sorted((p for p in call.iterdir() if p.is_dir()), key=lambda p: (p.name[1:], p.name[0] != 'n')):
        t = next(iter(_e2e(run)['configs'].values()))['total']
        out.append({'run': run.name, 'arm': NO_CHOICE if run.name[0] == 'n' else CHOICE,
                    'results_hz': round(t['results_hz'], 1), 'engine_hz': round(engine, 1),
                    'ratio': round(t['results_hz'] / engine, 3), 'final_exit_share': round(t['exit_mix'][-1], 3)})
    return out


def main() -> None:
    summary = {'at_configure': at_configure(), 'saturation': saturation()}
    runs = summary['at_configure']
    untraced = [r for r in runs if r['call'] != 'call5_configure_traced']
    summary['at_configure_met'] = {
        'every_app': f"{sum(r['worst_within'] >= 0.99 for r in untraced)} of {len(untraced)} untraced runs",
        'every_kept_app': f"{sum(r['worst_kept_within'] >= 0.99 for r in untraced)} of {len(untraced)}",
        'traced': f"{sum(r['worst_within'] >= 0.99 for r in runs) - sum(r['worst_within'] >= 0.99 for r in untraced)}"
                  f" of {len(runs) - len(untraced)}"}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={'width_ratios': [2.2, 1]})
    x = 0
    for call in CONFIGURE_CALLS:
        rows = [r for r in runs if r['call'] == call]
        xs = list(range(x, x + len(rows)))
        a.scatter(xs, [100 * r['worst_within'] for r in rows], label=call.split('_', 1)[1].replace('_', ' '), zorder=3)
        a.scatter(xs, [100 * r['worst_kept_within'] for r in rows], marker='_', s=200, color='k', zorder=4)
        for xi, r in zip(xs, rows):
            a.annotate(r['run'], (xi, 100 * r['worst_within']), textcoords='offset points', xytext=(0, 5),
                       fontsize=7, ha='center')
        x += len(rows) + 1
    a.axhline(99, color='r', linestyle=':', label='99 %')
    a.set_ylabel('worst app within its bounds, %\n(at the recorder; –: worst app the node kept)')
    a.set_title('16 cameras × 30 Hz, mixed set at configure, run by run')
    a.set_xticks([])
    a.legend(fontsize=7, loc='lower left')
    sat = summary['saturation']
    for arm, colour in ((CHOICE, 'C0'), (NO_CHOICE, 'C1')):
        rows = [r for r in sat if r['arm'] == arm]
        b.bar([r['run'] for r in rows], [r['ratio'] for r in rows], color=colour, label=arm)
    b.axhline(0.9, color='r', linestyle=':')
    b.set_ylim(0.6, 1.0)
    b.set_ylabel('results/s ÷ the engine alone (3 822/s)')
    b.set_title('32 cameras × 120 Hz, delen, 33 ms')
    b.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(HERE / 'session39.png', dpi=110)


if __name__ == '__main__':
    main()
