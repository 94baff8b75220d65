"""Session 45, issue 10's mixed set at configure on one H200 host (16 cores) that stole 0.01-3 % of its CPU:
session 44's re-check (the default, N: demote only apps short of device time) against demoting on the host's
tails too (T: ``DELEN_DEMOTE_ON_HOST_TAILS=1``, session 43's rule), interleaved over three device calls on one
warm machine, three runs through ``~/set_bounds`` (S) and one traced default run (R1).

    python benchmarks/h200/session45/plot.py     (writes summary.json and session45.png beside it)
"""
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # benchmarks/
from mixed_plots import admitted_run, steal_panels  # noqa: E402
ARMS = {'N': 'default (demote apps short of device time)', 'R': 'default (demote apps short of device time)',
        'T': 'demote on host tails too (session 43 rule)', 'S': 'through ~/set_bounds (default)'}
ORDER = ('N1 T1 N2 T2 N3 T3 N4 T4 N5 T5 N6 T6 N7 T7',                  # call 1
         'N8 T8 S1 N9 T9 S2 N10 T10 S3',                               # call 3 (call 2: e2e_committee, engine_bench)
         'T11 N11 T12 N12 R1 T13 N13')                                 # call 4


def mixed_runs() -> list[dict]:
    """Each run: the worst admitted app (one that got results) within all its bounds at the recorder, the admitted
    apps' frames missed, the apps the node demoted at some time in the window, the CPU the hypervisor stole."""
    out = []
    for call, names in zip((1, 3, 4), ORDER):
        for name in names.split():
            row = admitted_run(HERE / 'mixed' / name / 'e2e.json')
            out.append({'call': call, 'run': name, 'arm': ARMS[name[0]]} | row)
    return out


def arms(runs: list[dict]) -> dict:
    out = {}
    for arm in sorted({r['arm'] for r in runs}):
        rows = [r for r in runs if r['arm'] == arm]
        quiet = [r for r in rows if r['host_cpu_steal_share'] < 0.001]
        out[arm] = {
            'runs': len(rows), 'every_admitted_app_99': sum(r['every_admitted_app_99'] for r in rows),
            'runs_stolen_under_0.1pct': len(quiet),
            'every_admitted_app_99_stolen_under_0.1pct': sum(r['every_admitted_app_99'] for r in quiet),
            'runs_with_a_demotion': sum(bool(r['demoted']) for r in rows),
            'admitted': [r['admitted'] for r in rows],
            'missed_frames': [r['missed_frames'] for r in rows],
            'missed_frames_median': statistics.median(r['missed_frames'] for r in rows),
            'host_cpu_steal_pct': [round(100 * r['host_cpu_steal_share'], 2) for r in rows],
            'node_cpu_ms_per_frame_median': statistics.median(r['node_cpu_ms_per_frame'] for r in rows)}
    return out


def e2e_committee() -> dict:
    """Call 2: the committee at 16 and 32 cameras x 30 Hz, 33 ms, both policies and the echo node."""
    rows = json.loads((HERE / 'e2e_committee' / 'e2e.json').read_text())['configs']
    keep = {}
    for name, c in rows.items():
        t = c['total']
        keep[name] = {k: t.get(k) for k in ('answered', 'attainment', 'p50_ms', 'p99_ms', 'overhead_p50_ms',
                                            'overhead_p99_ms') if k in t}
        keep[name]['node_cpu_ms_per_frame'] = round(t['resources']['cpu_ms_per_frame'], 2) if 'resources' in t else None
    return keep


def main() -> None:
    runs = mixed_runs()
    summary = {'mixed_set': runs, 'arms': arms(runs), 'e2e_committee': e2e_committee()}
    (HERE / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    steal_panels(runs, {ARMS['N']: 'C0', ARMS['T']: 'C3', ARMS['S']: 'C2'}, HERE / 'session45.png',
                 edge_label='black edge: an app demoted', log_x=True)

if __name__ == '__main__':
    main()
