"""Per result (camera, DDS sequence number), the transport delay (reception - source timestamp, ms) at the bench's
recorder and at shadow_recorder.py, where either is over 20 ms.

    python compare.py WORKDIR/<config> SHADOW.json
"""
import json, sys
w, sh = sys.argv[1], sys.argv[2]
r = json.load(open(f'{w}/recorder.json')); f = {n: i for i, n in enumerate(r['fields'])}
main = {}
for ti, rows in enumerate(r['rows']):
    for row in rows:
        main[(ti, row[f['pub_seq']])] = (row[f['src_ns']], row[f['rx_ns']])
shadow = {(i, s): (src, rx) for i, s, src, rx, cb in json.load(open(sh))}
t0 = min(v[0] for v in main.values())
for k in sorted(set(main) | set(shadow), key=lambda k: (main.get(k) or shadow.get(k))[0]):
    a, b = main.get(k), shadow.get(k)
    ta = (a[1] - a[0]) / 1e6 if a else None
    tb = (b[1] - b[0]) / 1e6 if b else None
    if (ta or 0) > 20 or (tb or 0) > 20:
        src = (a or b)[0]
        print(f'topic {k[0]} seq {k[1]} src +{(src - t0)/1e9:.3f}s recorder {ta if ta is None else round(ta,1)} shadow {tb if tb is None else round(tb,1)}')
print('matched', len(set(main) & set(shadow)), 'main', len(main), 'shadow', len(shadow))
