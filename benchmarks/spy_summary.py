"""Where a node's threads spend their samples, from py-spy's raw output (``scripts/device/spy_nodes.sh``
writes one ``spy_<pid>.txt`` per node: one ``stack count`` line per stack, threads included).

Per thread: its samples (py-spy leaves out idle threads: a thread waiting for the GIL, a lock or a
pipe is not sampled), then every function that appears on at least ``--min-share`` of them,
inclusive (a function counts once per stack), and the leaves.

    python benchmarks/spy_summary.py spy_8303.txt [--threads 3] [--min-share 0.04] > summary.txt
"""
from __future__ import annotations

import argparse
import collections
import re
import sys

_THREAD = re.compile(r'thread \([^)]*\): ?(.*)')


def _name(frame: str) -> str:
    """``function (path/file.py:line)`` -> ``function file.py``."""
    function, _, where = frame.partition(' (')
    return f"{function} {where.rsplit('/', 1)[-1].split(':')[0]}".strip()


def summarise(path: str, *, threads: int, min_share: float) -> str:
    per_thread: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip('\n').rpartition(' ')
            if not stack:
                continue
            n, frames = int(count), stack.split(';')
            match = _THREAD.match(frames[0])
            thread = (match.group(1) if match else frames[0]) or 'unnamed'
            per_thread[thread] += n
            for name in {_name(f) for f in frames[1:]}:
                inclusive[thread, name] += n
            leaves[thread, _name(frames[-1])] += n
    out = [f'{path}: samples per thread {dict(per_thread.most_common())}']
    for thread, total in per_thread.most_common(threads):
        out.append(f'-- {thread}: {total} samples; inclusive')
        out += [f'   {n:6d} {name}' for (t, name), n in inclusive.most_common() if t == thread and n >= min_share * total]
        out.append('   leaves')
        out += [f'   {n:6d} {name}' for (t, name), n in leaves.most_common() if t == thread and n >= min_share * total]
    return '\n'.join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('paths', nargs='+')
    p.add_argument('--threads', type=int, default=3, help='busiest threads shown')
    p.add_argument('--min-share', type=float, default=0.04, help='functions below this share of a thread are left out')
    args = p.parse_args(argv)
    print('\n\n'.join(summarise(path, threads=args.threads, min_share=args.min_share) for path in args.paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
