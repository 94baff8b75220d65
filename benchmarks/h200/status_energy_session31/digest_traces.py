"""traces.json from the flight-recorder traces of the traced runs (DELEN_TRACE; the raw traces, 1-2 MB
compressed each, are not committed). Per run:

- the status timer's ticks: the executor thread's CPU time in each (the GIL it held: wall and CPU
  time agree within 0.1 ms), apart for the ticks that publish /diagnostics;
- the energy meter's reads (NVML, on the node's energy thread): how many, how long;
- for each span kind that can hold the worker up (meter, status, gc, recheck): the kept 10 ms apps'
  results from 6 s on (after the cuDNN trials) that overlapped one, how many of them took 9 ms or more
  in the node (the deadline: the bound less the 1 ms delivery allowance), and their mean latency, against
  the same for the results that overlapped none.

    python3 digest_traces.py call1_status/RA=/tmp/s31/c1/raw/RA call1_status/RB=... call2_energy/RA=...
"""
import glob
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).parent


def ms(span: dict) -> float:
    return (span['end_ns'] - span['start_ns']) / 1e6


def digest(run: str, folder: str) -> dict:
    spans = [json.loads(line) for line in open(glob.glob(f'{folder}/trace_*.jsonl')[0])]
    config = json.loads((HERE / run / 'e2e.json').read_text())['configs']['delen_n16']
    kept = {a for a in config['apps'] if a not in config['total']['apps_demoted']}
    t0 = min(s['start_ns'] for s in spans if s['kind'] == 'result')
    results = [s for s in spans if s['kind'] == 'result' and s.get('app') in kept and s['bound_ms'] == 10.0
               and (s['start_ns'] - t0) / 1e9 >= 6.0]
    out = {'status_ticks': {}, 'meter_reads': {}, 'kept_10ms_results_from_6s': len(results), 'overlap': {}}
    for closing, label in ((False, 'report'), (True, 'diagnostics')):
        cpu = [s['cpu_us'] / 1e3 for s in spans if s['kind'] == 'status' and bool(s.get('closing')) == closing]
        out['status_ticks'][label] = {'ticks': len(cpu), 'cpu_ms_p50': round(statistics.median(cpu), 2),
                                      'cpu_ms_max': round(max(cpu), 2)}
    reads = [ms(s) for s in spans if s['kind'] == 'meter']
    out['meter_reads'] = {'reads': len(reads), 'ms_p50': round(statistics.median(reads), 2),
                          'ms_max': round(max(reads), 2)}
    for kind in ('meter', 'status', 'gc', 'recheck'):
        others = [(s['start_ns'], s['end_ns']) for s in spans if s['kind'] == kind]
        groups = {True: [], False: []}
        for r in results:
            hit = any(min(r['end_ns'], e) > max(r['start_ns'], b) for b, e in others)
            groups[hit].append(ms(r))
        out['overlap'][kind] = {
            ('overlapping' if hit else 'not'): {'results': len(v), 'at_9ms_or_more': sum(x >= 9.0 for x in v),
                                                'mean_ms': round(statistics.fmean(v), 2) if v else None}
            for hit, v in groups.items()}
    return out


def main() -> None:
    runs = dict(arg.split('=', 1) for arg in sys.argv[1:])
    (HERE / 'traces.json').write_text(json.dumps({run: digest(run, folder) for run, folder in runs.items()},
                                                 indent=1) + '\n')


if __name__ == '__main__':
    main()
