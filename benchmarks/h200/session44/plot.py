"""Session 44, issue 10's mixed set at configure on two H200 hosts whose hypervisors took 0.01-3.6 % of their
CPU: session 43's demotion rule (the default: demote only while apps other than the misfits miss) against
the rule before it (``DELEN_DEMOTE_FOR_OWN_MISSES=1``), interleaved, with two runs through ``~/set_bounds``
(call 1); the default against no demotion at all (``DELEN_DEMOTE_NEVER=1``), interleaved (call 2).

    python benchmarks/h200/session44/plot.py     (writes summary.json and session44.png beside it)
"""
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # benchmarks/
from mixed_plots import admitted_run, steal_panels  # noqa: E402
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
            row = admitted_run(HERE / call / name / 'e2e.json')
            out.append({'call': call, 'host': host, 'run': f'{host}:{name}', 'arm': ARMS[name[0]]} | row)
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
    steal_panels(runs, dict(zip(ARMS.values(), ('C3', 'C0', 'C1', 'C2'))), HERE / 'session44.png',
                 edge_label='black edge: an app demoted; square: host B',
                 marker=lambda r: 'o' if r['host'] == 'A' else 's')

if __name__ == '__main__':
    main()
