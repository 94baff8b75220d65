"""Session 37's result outlet on the H200: every saturation run's results/s over the engine alone at the same load
(each call's ``n1/engine_bench.json``), arms interleaved; and the 30 Hz runs' latency.

    python benchmarks/h200/outlet_session37/plot.py     (writes summary.json and outlet.png beside it)
"""
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
ARMS = {'n': 'outlet (result_outlet:=auto, shipped)', 'o': 'the node publishes (result_outlet:=node)'}


def _configs(run: pathlib.Path) -> dict:
    return json.loads((run / 'e2e.json').read_text())['configs']


def main() -> None:
    saturation = []
    for call in ('call1_saturation', 'call4_saturation_slow_host'):
        sat = HERE / call
        engine = json.loads((sat / 'n1' / 'engine_bench.json').read_text())['scenarios']['overload']['batched']['served_hz']
        for run in sorted((p for p in sat.iterdir() if p.is_dir()), key=lambda p: (p.name[1:], p.name[0] != 'n')):
            for name, c in _configs(run).items():
                t = c['total']
                saturation.append({'call': call, 'run': run.name, 'arm': ARMS[run.name[0]],
                                   'policy': name.split('_n')[0], 'results_hz': round(t['results_hz'], 1),
                                   'engine_hz': round(engine, 1), 'ratio': round(t['results_hz'] / engine, 3),
                                   'final_exit_share': round(t['exit_mix'][-1], 3)})
    light = []
    for run in sorted((HERE / 'call3_30hz').iterdir()):
        for name, c in _configs(run).items():
            t = c.get('total') or {}
            if not t or name.startswith('echo'):
                continue
            light.append({'run': run.name, 'arm': ARMS[run.name[-1]], 'config': name,
                          'within_bound': round(t['attainment'], 4), 'p50_ms': round(t['e2e_p50_ms'], 2),
                          'p99_ms': round(t['e2e_p99_ms'], 2),
                          'publish_to_write_p50_ms': round(t['delivery_split_ms']['write'][0], 3),
                          'node_cpu_ms_per_frame': round(t['resources']['cpu_ms_per_frame'], 2)})
    (HERE / 'summary.json').write_text(json.dumps({'saturation': saturation, 'cameras_30hz': light}, indent=1))
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={'width_ratios': [3, 2]})
    for i, r in enumerate(saturation):
        ax.bar(i, r['ratio'], color='tab:blue' if r['policy'] == 'always_final' else 'tab:orange',
               hatch=None if r['run'][0] == 'n' else '//', edgecolor='k', lw=0.4)
    ax.axhline(0.9, color='grey', ls='--', lw=0.8)
    ax.set_xticks(range(len(saturation)), [f"{r['call'][4]}:{r['run']}\n{r['policy'][:6]}" for r in saturation],
                  fontsize=6)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel('results/s ÷ engine alone, same load')
    ax.set_title('32 cameras x 120 Hz, 33 ms, calls 1 and 4 (hatched: the node publishes; plain: the outlet)',
                 fontsize=9)
    for k, (name, marker) in enumerate((('delen_n32', 'o'), ('always_final_n32', 's'))):
        for arm, colour in (('n', 'tab:green'), ('o', 'tab:red')):
            pts = [r['p50_ms'] for r in light if r['config'] == name and r['run'][-1] == arm]
            bx.plot([k] * len(pts), pts, marker, color=colour, label=f"{ARMS[arm].split(' (')[0]}" if k == 0 else None)
    bx.set_xticks([0, 1], ['delen', 'always_final'])
    bx.set_xlim(-0.5, 1.5)
    bx.set_ylabel('stamp -> result p50, ms')
    bx.set_title('32 cameras x 30 Hz, two runs an arm', fontsize=9)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / 'outlet.png', dpi=90)


if __name__ == '__main__':
    main()
