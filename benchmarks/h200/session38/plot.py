"""Session 38 on one H200 host: issue 10's mixed set registered through ~/set_bounds with requests held for their
neighbours' first frames (S, shipped) or not (Z, admission_settle_s:=0); saturation with the result outlet (n) or the
node publishing (o); 16 cameras x 30 Hz with the echo node; the mixed set at configure (call 4).

    python benchmarks/h200/session38/plot.py     (writes summary.json and session38.png beside it)
"""
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def _e2e(run: pathlib.Path) -> dict:
    return json.loads((run / 'e2e.json').read_text())


def _runs(call: str) -> list[pathlib.Path]:
    return sorted((p for p in (HERE / call).iterdir() if p.is_dir()), key=lambda p: (p.name[-1], p.name))


def admission() -> list[dict]:
    out = []
    for run in sorted((HERE / 'call1_admission_service').iterdir(), key=lambda p: (p.name[1:], p.name[0])):
        d = _e2e(run)
        for name, a in d['admission'].items():
            c = d['configs'][name]
            out.append({'run': run.name, 'arm': 'held (shipped)' if run.name[0] == 'S' else 'admission_settle_s:=0',
                        'admitted': len(a['admitted']['apps']), 'refused': sorted(a['refused']),
                        'worst_kept_app': a['admitted']['worst_app'],
                        'worst_kept_within': round(a['admitted']['worst_within'], 4), 'met': a['admitted']['met'],
                        'requests_held': c.get('held_requests')})
    return out


def saturation() -> list[dict]:
    call = HERE / 'call2_saturation'
    engine = json.loads((call / 'n1' / 'engine_bench.json').read_text())['scenarios']['overload']['batched']['served_hz']
    out = []
    for run in sorted((p for p in call.iterdir() if p.is_dir()), key=lambda p: (p.name[1:], p.name[0] != 'n')):
        for name, c in _e2e(run)['configs'].items():
            t = c['total']
            out.append({'run': run.name, 'arm': 'outlet' if run.name[0] == 'n' else 'node publishes',
                        'policy': name.split('_n')[0], 'results_hz': round(t['results_hz'], 1),
                        'engine_hz': round(engine, 1), 'ratio': round(t['results_hz'] / engine, 3)})
    return out


def cameras_16() -> list[dict]:
    out = []
    for run in sorted((HERE / 'call3_16cams_30hz').iterdir()):
        for name, c in _e2e(run)['configs'].items():
            t = c.get('total') or {}
            if not t:
                continue
            row = {'run': run.name, 'arm': 'outlet' if run.name[-1] == 'n' else 'node publishes', 'config': name,
                   'within_bound': round(t['attainment'], 4), 'p50_ms': round(t['e2e_p50_ms'], 2),
                   'p99_ms': round(t['e2e_p99_ms'], 2),
                   'node_cpu_ms_per_frame': round(t['resources']['cpu_ms_per_frame'], 2)}
            if not name.startswith('echo'):
                row.update(overhead_p50_ms=round(t['overhead_p50_ms'], 2), overhead_p99_ms=round(t['overhead_p99_ms'], 2))
            out.append(row)
    return out


def at_configure() -> list[dict]:
    """Call 4: the mixed set with its apps in the node's parameter (G; F: through ~/set_bounds, then every app
    forced in at configure), each app within its bounds at the recorder and as the node judged it."""
    out = []
    for run in sorted((HERE / 'call4_mixed_configure').iterdir(), key=lambda p: (p.name[1:], p.name[0])):
        d = _e2e(run)
        for name, c in d['configs'].items():
            apps = c['apps']
            worst = min(apps, key=lambda a: apps[a].get('attainment', 1.0))
            out.append({'run': run.name, 'config': name, 'refused': sorted(c.get('refused') or {}),
                        'worst_app': worst, 'worst_within': round(apps[worst]['attainment'], 4),
                        'worst_node_bounds_met': round(apps[worst]['node_bounds_met_share'], 4),
                        'delivery_split_p50_p99_ms': {k: [round(x, 2) for x in v[:2]]
                                                      for k, v in c['total']['delivery_split_ms'].items()}})
    return out


def outlet_lag() -> list[dict]:
    """Call 5 (a second host): the mixed set at configure, N the outlet keeping its measured lag (shipped), U the
    outlet without (DELEN_OUTLET_LAG=0), O the node publishing."""
    arms = {'N': 'outlet, lag kept', 'U': 'outlet, lag not kept', 'O': 'node publishes'}
    out = []
    for name in ('N1', 'O1', 'U1', 'N2', 'O2'):
        c = next(iter(_e2e(HERE / 'call5_outlet_lag' / name)['configs'].values()))
        apps = c['apps']
        worst = min(apps, key=lambda a: apps[a].get('attainment', 1.0))
        out.append({'run': name, 'arm': arms[name[0]], 'worst_app': worst,
                    'worst_within': round(apps[worst]['attainment'], 4),
                    'worst_node_bounds_met': round(apps[worst]['node_bounds_met_share'], 4),
                    'write_p50_p99_ms': [round(x, 2) for x in c['total']['delivery_split_ms']['write'][:2]]})
    return out


def main() -> None:
    summary = {'admission_service': admission(), 'saturation': saturation(), 'cameras_16_30hz': cameras_16(),
               'mixed_at_configure': at_configure(), 'outlet_lag': outlet_lag()}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1))
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(14, 4.2))
    adm = summary['admission_service']
    ax.bar(range(len(adm)), [100 * r['worst_kept_within'] for r in adm],
           color=['tab:green' if r['run'][0] == 'S' else 'tab:grey' for r in adm])
    ax.axhline(99, color='k', ls='--', lw=0.8)
    ax.set_ylim(95, 100.5)
    ax.set_xticks(range(len(adm)), [f"{r['run']}\n{len(r['refused'])} refused" for r in adm], fontsize=7)
    ax.set_ylabel('worst admitted app within its bound, %')
    ax.set_title('mixed set via ~/set_bounds (S held, Z not)', fontsize=9)
    sat = summary['saturation']
    bx.bar(range(len(sat)), [r['ratio'] for r in sat],
           color=['tab:blue' if r['policy'] == 'always_final' else 'tab:orange' for r in sat],
           hatch=None, edgecolor='k', lw=0.4)
    bx.axhline(0.9, color='grey', ls='--', lw=0.8)
    bx.set_ylim(0.7, 1.0)
    bx.set_xticks(range(len(sat)), [f"{r['run']}\n{r['policy'][:6]}" for r in sat], fontsize=6)
    bx.set_ylabel('results/s ÷ engine alone')
    bx.set_title('32 cameras x 120 Hz (n outlet, o node publishes)', fontsize=9)
    light = [r for r in summary['cameras_16_30hz'] if 'overhead_p50_ms' in r]
    cx.bar([i - 0.2 for i in range(len(light))], [r['overhead_p50_ms'] for r in light], 0.4, label='p50')
    cx.bar([i + 0.2 for i in range(len(light))], [r['overhead_p99_ms'] for r in light], 0.4, label='p99')
    cx.axhline(2, color='tab:blue', ls='--', lw=0.8)
    cx.axhline(5, color='tab:orange', ls='--', lw=0.8)
    cx.set_xticks(range(len(light)), [f"{r['run']}\n{r['config'].split('_n')[0][:6]}" for r in light], fontsize=7)
    cx.set_ylabel('node overhead over the echo, ms')
    cx.set_title('16 cameras x 30 Hz', fontsize=9)
    cx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / 'session38.png', dpi=110)


if __name__ == '__main__':
    main()
