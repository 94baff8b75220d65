"""Session 43 on one H200 host: issue 10's mixed set at configure with the arrival look-ahead against the
default (call 1, interleaved, and four more default runs in call 4), through ``~/set_bounds`` (call 4), the
admission part with every refused request run anyway (call 2); issue 8's saturation (call 3). Call 5: the
default and ``~/set_bounds`` on a second host whose hypervisor took more of its CPU.

    python benchmarks/h200/session43/plot.py     (writes summary.json and session43.png beside it)
"""
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # benchmarks/
from mixed_plots import saturation_bars  # noqa: E402
ARMS = {'W': 'default', 'R': 'default, traced', 'L': 'arrival_lookahead', 'S': 'through ~/set_bounds'}
FLOOR = 90.0   # % within: the plot's floor
ORDER = {'call1_lookahead': ('A', 'R1 L1 W1 L2 W2 L3 W3 L4 W4 L5 W5 L6 W6 L7 W7'.split()),   # host, runs as they ran
         'call4_service': ('A', 'S1 W8 S2 W9 S3 W10 S4 W11'.split()),
         'call5_second_host': ('B', 'W1 W2 S1 W3 W4 W5 S2 W6 W7 W8'.split())}


def _config(run: pathlib.Path) -> dict:
    return next(iter(json.loads((run / 'e2e.json').read_text())['configs'].values()))


def mixed_runs() -> list[dict]:
    """Each mixed-set run: the worst admitted app (one that got results) within all its bounds at the recorder,
    the admitted apps' frames missed, the node's CPU per frame sent and the CPU the hypervisor stole."""
    out = []
    for call, (host, names) in ORDER.items():
        for run in (HERE / call / name for name in names):
            c = _config(run)
            t, res = c['total'], c['total']['resources']
            admitted = {k: a for k, a in c['apps'].items() if a['answered']}
            worst = min(admitted, key=lambda k: admitted[k]['attainment'])
            ten = [a for a in admitted.values() if a['bound_ms'] == 10.0]
            out.append({'call': call, 'host': host, 'run': f'{host}:{run.name}', 'arm': ARMS[run.name[0]],
                        'admitted': len(admitted), 'demoted': len(t.get('apps_demoted') or []),
                        'worst_app_flagged_share': admitted[worst].get('node_flagged_share'),
                        'worst_app': worst, 'worst_within': round(admitted[worst]['attainment'], 4),
                        'every_admitted_app_99': admitted[worst]['attainment'] >= 0.99,
                        'missed_frames': sum(round((1 - a['attainment']) * a['sent']) for a in admitted.values()),
                        'host_cpu_steal_share': round(t.get('host_cpu_steal_share') or 0.0, 5),
                        'node_saw_stolen_pct_max': (t.get('node_host_cpu_stolen_pct') or {}).get('max'),
                        'node_saw_stolen_worst_core_pct_max': (t.get('node_host_cpu_stolen_pct') or {}).get('worst_core_max'),
                        'stops_yielded': t.get('node_stops_yielded', 0),
                        'accuracy_10ms_apps': round(statistics.mean(a['accuracy'] for a in ten), 4),
                        'node_cpu_ms_per_frame': round(res['cpu_ms_per_frame'], 2),
                        'node_cpu_ms_per_frame_by_thread': {k: round(v, 2) for k, v in
                                                            res['cpu_ms_per_frame_by_thread'].items()}})
    return out


def arms(runs: list[dict]) -> dict:
    out = {}
    for host, arm in sorted({(r['host'], r['arm']) for r in runs}):
        rows = [r for r in runs if (r['host'], r['arm']) == (host, arm)]
        out[f'host {host}, {arm}'] = {'runs': len(rows), 'every_admitted_app_99': sum(r['every_admitted_app_99'] for r in rows),
                    'missed_frames_median': statistics.median(r['missed_frames'] for r in rows),
                    'host_cpu_steal_share': [min(r['host_cpu_steal_share'] for r in rows),
                                             max(r['host_cpu_steal_share'] for r in rows)],
                    'accuracy_10ms_apps_median': statistics.median(r['accuracy_10ms_apps'] for r in rows),
                    'node_cpu_ms_per_frame': [min(r['node_cpu_ms_per_frame'] for r in rows),
                                              max(r['node_cpu_ms_per_frame'] for r in rows)]}
    return out


def refusals() -> list[dict]:
    """Call 2: the refused requests of each ``--register service`` run, forced in under ``param``."""
    out = []
    for run in sorted(p for p in (HERE / 'call2_admission').iterdir() if p.is_dir()):
        configs = json.loads((run / 'e2e.json').read_text())['configs']
        service = next(c for name, c in configs.items() if name.endswith('_service'))
        forced = next(c for name, c in configs.items() if not name.endswith('_service'))
        admitted = {k: a for k, a in service['apps'].items() if a['answered']}
        for app in sorted(set(service['apps']) - set(admitted)):
            within = forced['apps'][app]['attainment']
            out.append({'run': run.name, 'app': app, 'bound_ms': forced['apps'][app]['bound_ms'],
                        'forced_within': round(within, 4), 'refusal_right': within < 0.99,
                        'admitted_worst_within': round(min(a['attainment'] for a in admitted.values()), 4)})
    return out


def saturation() -> list[dict]:
    call = HERE / 'call3_saturation'
    engine = json.loads((call / 'w1' / 'engine_bench.json').read_text())['scenarios']['overload']['batched']['served_hz']
    return [{'run': run.name, 'results_hz': round(_config(run)['total']['results_hz'], 1), 'engine_hz': round(engine, 1),
             'ratio': round(_config(run)['total']['results_hz'] / engine, 3),
             'node_cpu_ms_per_frame': round(_config(run)['total']['resources']['cpu_ms_per_frame'], 2)}
            for run in sorted(p for p in call.iterdir() if p.is_dir())]


def main() -> None:
    runs = mixed_runs()
    summary = {'mixed_set': runs, 'arms': arms(runs), 'refusals': refusals(), 'saturation': saturation()}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw={'width_ratios': [2.2, 1, 0.8]})
    colours = {'default': 'C3', 'default, traced': 'C1', 'arrival_lookahead': 'C0', 'through ~/set_bounds': 'C2'}
    for i, r in enumerate(runs):
        a.bar(i, max(100 * r['worst_within'], FLOOR) - FLOOR, bottom=FLOOR, color=colours[r['arm']],
              hatch='//' if r['host'] == 'B' else None)
        if 100 * r['worst_within'] < FLOOR:   # off the scale: its figure written at the floor
            a.annotate(f"{100 * r['worst_within']:.0f} %", (i, FLOOR - 0.2), ha='center', va='top', fontsize=7,
                       rotation=90)
    a.set_xticks(range(len(runs)), [r['run'] for r in runs], fontsize=6, rotation=90)
    a.axhline(99, color='r', linestyle=':')
    a.set_ylim(FLOOR - 4, 100.3)   # below the floor: the off-scale figures and the legend
    a.set_ylabel('worst admitted app within its bounds, %')
    a.set_title('16 cameras × 30 Hz, 8 × 10 ms + 8 × 33 ms @ 0.9415, in run order (hatched: host B)', fontsize=10)
    a.legend(handles=[Patch(color=colour, label=arm) for arm, colour in colours.items()], fontsize=8,
             loc='lower right', ncol=4)
    ref = summary['refusals']
    b.bar(range(len(ref)), [100 * r['forced_within'] for r in ref], color='C2')
    b.axhline(99, color='r', linestyle=':')
    b.set_xticks(range(len(ref)), [f"{r['app']}\n{r['run'][-1] if r['run'][-1].isdigit() else 1}" for r in ref],
                 fontsize=7)
    b.set_ylim(0, 102)
    b.set_ylabel('refused 5 ms request forced in: within, %')
    b.set_title('admission (5 / 10 / 33 ms): every refusal run anyway', fontsize=10)
    saturation_bars(c, summary['saturation'], ['C3'] * len(summary['saturation']), 'saturation, 32 cams × 120 Hz')
    fig.tight_layout()
    fig.savefig(HERE / 'session43.png', dpi=110)


if __name__ == '__main__':
    main()
