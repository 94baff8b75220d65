"""Served results/s against frames/s offered, at and beyond one H200's capacity (issue 8: served
≥ 0.9 × the engine alone), from committed end-to-end runs: 32 cameras × 60-150 Hz, full depth.

Each series is one configuration over the sessions' calls; every point is one run's ``e2e.json``
(results at the recorder, every frame sent counted). The engine alone (``delen_bench``) is the
reference line, from the runs that measured it. Writes ``saturation.json`` and ``saturation.png``.

    python benchmarks/saturation.py --out benchmarks/h200/e2e_session12
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
H200 = REPO / 'benchmarks' / 'h200'

# label -> run folders (relative to benchmarks/h200), one point each
SERIES = {
    'one node, session 11 (every frame uploaded on arrival)': [
        'e2e_session11/call3/sat_60', 'e2e_session11/call3/sat_90', 'e2e_session11/call3/sat_120'],
    'one node, session 12 call 1: same code but DELEN_UPLOAD_WHEN_BEHIND=1 (A/B)': [
        'e2e_session12/call1/ahead_90', 'e2e_session12/call1/ahead_120'],
    'one node, session 12 call 1: frames of apps the worker is behind wait for it': [
        'e2e_session12/call1/sat_60', 'e2e_session12/call1/sat_90', 'e2e_session12/call1/sat_120'],
    'one node, session 12 calls 2-4: + those frames copied in place as one batch': [
        'e2e_session12/call2/sat_60', 'e2e_session12/call2/sat_90', 'e2e_session12/call2/sat_120',
        'e2e_session12/call3/sat_120', 'e2e_session12/call3/sat_150', 'e2e_session12/call4/sat_120'],
    'four nodes, session 11': ['e2e_session11/call2/nodes4', 'e2e_session11/call3/nodes4'],
    'four nodes, session 12 call 3': ['e2e_session12/call3/nodes4'],
}
ENGINE_RUNS = ['e2e_session11/call3/sat_60', 'e2e_session12/call1/sat_60', 'e2e_session12/call2/sat_60',
               'e2e_session12/call3/sat_120', 'e2e_session12/call4/new']


def _point(folder: str) -> dict:
    report = json.loads((H200 / folder / 'e2e.json').read_text())
    [config] = [c for c in report['configs'].values() if not c['name'].startswith('echo')]
    total = config['total']
    return {'run': folder, 'offered_hz': round(total['sent_hz'], 1), 'results_hz': round(total['results_hz'], 1),
            'answered': total['answered_share'], 'within_bound': total['attainment'],
            'worst_app_within': total['attainment_min_app']}


def _engine_hz(folder: str) -> float | None:
    path = H200 / folder / 'e2e.json'
    reference = json.loads(path.read_text()).get('engine_reference') if path.exists() else None
    return reference['batched_served_hz'] if reference else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    engine = [hz for hz in map(_engine_hz, ENGINE_RUNS) if hz]
    series = {label: [_point(f) for f in folders if (H200 / f / 'e2e.json').exists()] for label, folders in SERIES.items()}
    engine_hz = sum(engine) / len(engine)
    for points in series.values():
        for point in points:
            point['x_engine'] = round(point['results_hz'] / engine_hz, 3)
    report = {'engine_alone_hz': engine, 'engine_alone_mean_hz': engine_hz, 'target_x_engine': 0.9, 'series': series}
    (out / 'saturation.json').write_text(json.dumps(report, indent=1))

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    top = max(p['offered_hz'] for points in series.values() for p in points) * 1.05
    ax.plot([0, top], [0, top], color='0.8', lw=1, label='every frame served')
    ax.axhline(engine_hz, color='k', ls='--', lw=1, label=f'engine alone, no ROS ({engine_hz:.0f}/s)')
    ax.axhline(0.9 * engine_hz, color='k', ls=':', lw=1, label='0.9 × engine (target)')
    for label, points in series.items():
        points = sorted(points, key=lambda q: q['offered_hz'])
        ax.plot([q['offered_hz'] for q in points], [q['results_hz'] for q in points], 'o-', label=label)
    ax.set_xlabel('frames offered per second (32 cameras, 640×480)')
    ax.set_ylabel('results per second at the result topics')
    ax.set_title('H200, cifar10_lite0 at full depth: served against offered')
    ax.set_xlim(0, top)
    ax.set_ylim(0, engine_hz * 1.1)
    ax.legend(fontsize=7, loc='upper left')
    fig.tight_layout()
    fig.savefig(out / 'saturation.png', dpi=110)
    for label, points in series.items():
        print(label)
        for q in sorted(points, key=lambda q: q['offered_hz']):
            print(f"   {q['offered_hz']:7.0f} offered -> {q['results_hz']:7.0f} results/s ({q['x_engine']:.2f} x engine), "
                  f"within bound {q['within_bound']:.1%}  [{q['run']}]")
    return 0


if __name__ == '__main__':
    sys.exit(main())
