import sys, re, collections
def parse(path):
    maps = []
    cur = None
    for line in open(path):
        first = line.split(' ', 1)[0]
        if not first.endswith(':'):
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) > 5 else ''
            lo, hi = (int(x, 16) for x in parts[0].split('-'))
            cur = {'name': name, 'size': (hi - lo) // 1024, 'perms': parts[1]}
            maps.append(cur)
        elif first in ('Rss:', 'Pss:', 'Anonymous:', 'Shared_Clean:', 'Private_Dirty:'):
            cur[first[:-1]] = int(line.split()[1])
    return maps
def cat(m):
    n = m['name']
    if n.startswith('/dev/shm/'): return 'shm:' + re.sub(r'_[0-9a-f]{8,}.*|\d+$', '*', n[9:])
    if n == '[heap]': return '[heap]'
    if n.startswith('[stack'): return '[stack]'
    if n == '': 
        s = m['size']
        if s in (65536, 131072, 132096) or (s % 65536 == 0 and s >= 65536): return 'anon:64MB-arena-like'
        if 8184 <= s <= 8200: return 'anon:8MB-thread-stack'
        if s >= 1024: return 'anon:big(>=1MB)'
        return 'anon:small(<1MB)'
    if n.startswith('/'):
        if '.so' in n: return 'file:.so'
        return 'file:other'
    return n
def summary(path):
    agg = collections.defaultdict(lambda: collections.Counter())
    for m in parse(path):
        c = cat(m); agg[c]['Rss'] += m.get('Rss', 0); agg[c]['n'] += 1; agg[c]['size'] += m['size']; agg[c]['Pss'] += m.get('Pss',0)
    return agg
a, b = summary(sys.argv[1]), summary(sys.argv[2])
print(f"{'category':40s} {'n1 Rss':>9} {'n8 Rss':>9} {'dRss':>8} {'n1 #':>5} {'n8 #':>5} {'n1 PSS':>8} {'n8 PSS':>8}")
for k in sorted(set(a) | set(b), key=lambda k: -(b[k]['Rss'] - a[k]['Rss'])):
    print(f"{k:40s} {a[k]['Rss']/1024:9.1f} {b[k]['Rss']/1024:9.1f} {(b[k]['Rss']-a[k]['Rss'])/1024:8.1f} {a[k]['n']:5d} {b[k]['n']:5d} {a[k]['Pss']/1024:8.1f} {b[k]['Pss']/1024:8.1f}")
print('total', sum(v['Rss'] for v in a.values())/1024, sum(v['Rss'] for v in b.values())/1024)
