"""Session 44, issue 10's mixed set at configure on two H200 hosts whose hypervisors took 0.01-3.6 % of their
CPU: session 43's demotion rule (the default: demote only while apps other than the misfits miss) against
the rule before it (``DELEN_DEMOTE_FOR_OWN_MISSES=1``), interleaved, with two runs through ``~/set_bounds``
(call 1); the default against no demotion at all (``DELEN_DEMOTE_NEVER=1``), interleaved (call 2).

    python benchmarks/h200/session44/plot.py     (writes summary.json and session44.png beside it)
"""
import json
import pathlib
import statistics

HERE = pathlib.Path(__file__).resolve().parent
ARMS = {'N': 'default (session 43 rule)', 'O': 'rule before session 43', 'D': 'never demote',
        'S': 'through ~/set_bounds (default)'}
ORDER = {'call1_demotion': ('A', 'N1 O1 N2 O2 N3 O3 N4 O4 S1 S2 N5 O5'.split()),   # host, runs as they ran
         'call2_never': ('B', 'N1 D1 N2 D2 N3 D3 N4 D4 N5 D5 N6 D6'.split())}


def mixed_runs() -> list[dict]:
    """Each run: the worst admitted app (one that got results) within all its bounds at the recorder, the admitted
    apps' frames missed, the apps the node demoted at some time in the window, the CPU the hypervisor stole."""
    out = []
    for call, (host, names) in ORDER.items():
        for name in names:
            c = next(iter(json.loads((HERE / call / name / 'e2e.json').read_text())['configs'].values()))
            t = c['total']
            admitted = {k: a for k, a in c['apps'].items() if a['answered']}
            worst = min(admitted, key=lambda k: admitted[k]['attainment'])
            out.append({'call': call, 'host': host, 'run': f'{host}:{name}', 'arm': ARMS[name[0]],
                        'admitted': len(admitted),
                        'demoted': sorted(k for k, a in admitted.items() if (a.get('node_demoted_share') or 0) > 0),
                        'worst_app': worst, 'worst_within': round(admitted[worst]['attainment'], 4),
                        'every_admitted_app_99': admitted[worst]['attainment'] >= 0.99,
                        'missed_frames': sum(round((1 - a['attainment']) * a['sent']) for a in admitted.values()),
                        'host_cpu_steal_share': round(t.get('host_cpu_steal_share') or 0.0, 5),
                        'node_saw_stolen_worst_core_pct_max': (t.get('node_host_cpu_stolen_pct') or {}).get('worst_core_max'),
                        'node_cpu_ms_per_frame': round(t['resources']['cpu_ms_per_frame'], 2)})
    return out


def arms(runs: list[dict]) -> dict:
    out = {}
    for host, arm in sorted({(r['host'], r['arm']) for r in runs}):
        rows = [r for r in runs if (r['host'], r['arm']) == (host, arm)]
        out[f'host {host}, {arm}'] = {
            'runs': len(rows), 'every_admitted_app_99': sum(r['every_admitted_app_99'] for r in rows),
            'runs_with_a_demotion': sum(bool(r['demoted']) for r in rows),
            'missed_frames': [r['missed_frames'] for r in rows],
            'host_cpu_steal_pct': [round(100 * r['host_cpu_steal_share'], 2) for r in rows],
            'node_cpu_ms_per_frame_median': statistics.median(r['node_cpu_ms_per_frame'] for r in rows)}
    return out


def main() -> None:
    runs = mixed_runs()
    summary = {'mixed_set': runs, 'arms': arms(runs)}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    colours = dict(zip(ARMS.values(), ('C3', 'C0', 'C1', 'C2')))
    for r in runs:
        x = 100 * r['host_cpu_steal_share']
        style = dict(color=colours[r['arm']], marker='o' if r['host'] == 'A' else 's', s=45,
                     edgecolors='k' if r['demoted'] else 'none', linewidths=1.5)
        a.scatter(x, 100 * r['worst_within'], **style)
        b.scatter(x, max(r['missed_frames'], 0.5), **style)
    a.axhline(99, color='r', linestyle=':')
    a.set_ylabel('worst admitted app within its bounds, %')
    b.set_yscale('log')
    b.set_ylabel('frames the admitted apps missed, of ~4 800 (0 drawn at 0.5)')
    for ax in (a, b):
        ax.set_xlabel('host CPU stolen by the hypervisor over the run, %')
    for arm, colour in colours.items():
        a.scatter([], [], color=colour, label=arm)
    a.scatter([], [], color='w', edgecolors='k', label='black edge: an app demoted; square: host B')
    fig.legend(*a.get_legend_handles_labels(), fontsize=8, loc='lower center', ncol=5)
    fig.suptitle('16 cameras × 30 Hz, 8 × 10 ms + 8 × 33 ms @ 0.9415, apps at configure (S: through ~/set_bounds)',
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))   # the legend below the panels: no point under it
    fig.savefig(HERE / 'session44.png', dpi=110)


if __name__ == '__main__':
    main()
