"""Where each thread of a node was, bin by bin: a py-spy speedscope file (samples in time order)
as a timeline, to place a spell that a whole-window profile averages away.

    python benchmarks/spy_timeline.py spy_<pid>.json [--bin-ms 100] [--threads delen-engine,delen-ingress]

Recorded by ``SPY_ORDERED=1 bash scripts/device/spy_nodes.sh`` (py-spy ``-f speedscope --idle``,
200 Hz): each thread's samples are consecutive, each weighing its sampling interval, so a sample's
time is the sum of the weights before it. Per bin and thread it prints the most frequent place:
the innermost frame of delen_ros and the innermost frame of all (what the thread was inside), with
its share of the bin's samples.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys


def _place(stack: list[int], frames: list[dict]) -> str:
    """``ours <- leaf`` for one sample: speedscope stacks run from the root to the leaf."""
    named = [frames[i] for i in stack]
    leaf = named[-1] if named else {'name': '?', 'file': '', 'line': 0}
    ours = next((f for f in reversed(named) if 'delen_ros' in (f.get('file') or '')), None)

    def short(f: dict) -> str:
        return f"{f['name']} ({(f.get('file') or '').rsplit('/', 1)[-1]}:{f.get('line')})"
    return short(leaf) if ours is None or ours is leaf else f'{short(ours)} <- {short(leaf)}'


def timeline(spy: dict, *, bin_ms: float, threads: list[str]) -> list[tuple[float, str, str, float]]:
    """``(bin start s, thread, place, share)`` for the wanted threads' bins."""
    frames = spy['shared']['frames']
    rows = []
    for profile in spy['profiles']:
        name = re.search(r'"(.*)"', profile['name'])
        thread = name.group(1) if name else profile['name']
        if threads and thread not in threads:
            continue
        bins: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        t = 0.0
        for stack, weight in zip(profile['samples'], profile['weights']):
            bins[int(t * 1000.0 // bin_ms)][_place(stack, frames)] += 1
            t += weight
        for b in sorted(bins):
            place, n = bins[b].most_common(1)[0]
            rows.append((b * bin_ms / 1000.0, thread, place, n / sum(bins[b].values())))
    return sorted(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('spy', help='py-spy speedscope JSON')
    p.add_argument('--bin-ms', type=float, default=100.0)
    p.add_argument('--threads', default='delen-engine,delen-ingress,MainThread',
                   help='comma-separated thread names; empty: all')
    args = p.parse_args(argv)
    with open(args.spy) as f:
        spy = json.load(f)
    for start, thread, place, share in timeline(spy, bin_ms=args.bin_ms,
                                                threads=[t for t in args.threads.split(',') if t]):
        print(f'{start:6.2f} s  {thread:14s} {share:4.0%}  {place}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
