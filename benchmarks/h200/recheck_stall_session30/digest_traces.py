"""traces.json from the flight-recorder traces of the traced runs (DELEN_TRACE; the raw traces, 1-2 MB
compressed each, are not committed): per run, the admission re-check's spans (start from the first result,
wall ms), the background cuDNN trials' spans, and each late result of a kept app (the node's latency
within 1 ms of its bound or over it, from 2 s on) with the milliseconds of each other span kind that
overlapped it.

    python3 digest_traces.py call1_trials/RA=/tmp/s30/c1/x/RA/raw/w call2_recheck/RN=... call3_priority/RA1=...
"""
import collections
import glob
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).parent


def digest(run: str, folder: str) -> dict:
    spans = [json.loads(line) for line in open(glob.glob(f'{folder}/trace_*.jsonl')[0])]
    results = [s for s in spans if s['kind'] == 'result']
    t0 = min(s['start_ns'] for s in results)
    config = json.loads((HERE / run / 'e2e.json').read_text())['configs']['delen_n16']
    kept = {a for a in config['apps'] if a not in config['total']['apps_demoted']}

    def at(ns: int) -> float:
        return round((ns - t0) / 1e9, 3)

    late = []
    for r in results:
        latency = (r['end_ns'] - r['start_ns']) / 1e6
        if r.get('app') not in kept or latency < r['bound_ms'] - 1.0 or at(r['start_ns']) < 2.0:
            continue
        overlap = collections.defaultdict(float)
        for s in spans:
            if s['kind'] not in ('result', 'publish'):
                o = min(r['end_ns'], s['end_ns']) - max(r['start_ns'], s['start_ns'])
                if o > 0:
                    overlap[s['kind']] += o / 1e6
        late.append({'at_s': at(r['start_ns']), 'app': r['app'], 'bound_ms': r['bound_ms'],
                     'latency_ms': round(latency, 2), 'exit': r.get('exit'),
                     'queue_ms': round((r['served_ns'] - r['start_ns']) / 1e6, 2) if r.get('served_ns') else None,
                     'compute_ms': round(r['compute_ns'] / 1e6, 2),
                     'overlapping_ms': {k: round(v, 2) for k, v in sorted(overlap.items(), key=lambda kv: -kv[1])}})
    return {'recheck': [[at(s['start_ns']), round((s['end_ns'] - s['start_ns']) / 1e6, 2)]
                        for s in spans if s['kind'] == 'recheck'],
            'cudnn_trials': [[at(s['start_ns']), at(s['end_ns'])] for s in spans if s['kind'] == 'cudnn_trial'],
            'late_kept_results': late}


def main() -> None:
    out = {}
    for arg in sys.argv[1:]:
        run, folder = arg.split('=', 1)
        out[run] = digest(run, folder)
    (HERE / 'traces.json').write_text(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__':
    main()
