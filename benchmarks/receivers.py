"""The node's receiver processes, C (``delen_receiver``) against Python, in the same run.

    python benchmarks/receivers.py --out benchmarks/cpu/receivers      (needs the set-up's build)
    python benchmarks/receivers.py --kinds native,native_in_slot --out benchmarks/cpu/receivers_in_slot

Kinds: ``python``; ``native`` (the C receiver: each frame taken into a buffer, then copied into its
ring slot); ``native_in_slot`` (the C receiver with ``DELEN_RECEIVER_IN_SLOT=1``: taken straight into
the slot).

The real node (fashion_mnist on the CPU, ``ingress_processes`` receivers) serves ``--cameras`` apps
while a peer publishes 640x480 rgb8 frames at ``--rate`` Hz on each camera; each receiver kind runs
``--rounds`` times, alternating. Per run: frames sent and answered, CPU time per frame sent of the
node process and of its receivers (from /proc), and latency (the result's ``latency_ms``, from the
image stamp). Writes ``receivers.json`` and ``receivers.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / 'test')]   # this checkout first, as the tests

from delen_ros.tools.processes import descendants  # noqa: E402
from delen_ros.tools.thread_cpu import parse_stat  # noqa: E402


def _cpu_s(pid: int) -> float:
    return parse_stat(pathlib.Path(f'/proc/{pid}/stat').read_text())[1]


def run(kind: str, *, cameras: int, rate_hz: float, seconds: float, receivers: int, workdir: pathlib.Path) -> dict:
    from ros_helpers import ImageFeeder, node_and_peer, register_cameras
    from delen_ros.ros.conversions import array_to_image
    os.environ['DELEN_RECEIVER'] = 'python' if kind == 'python' else 'native'
    if kind == 'native_in_slot':
        os.environ['DELEN_RECEIVER_IN_SLOT'] = '1'
    else:
        os.environ.pop('DELEN_RECEIVER_IN_SLOT', None)
    topics = [f'/bench/cam{i}' for i in range(cameras)]
    with node_and_peer(workdir, ingress_processes=receivers) as (node, peer):
        collectors = register_cameras(peer, topics)
        frame = array_to_image(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
        feeder = ImageFeeder(peer, {t: [frame] for t in topics}, rate_hz=rate_hz, reliable=True)
        time.sleep(3.0)                                   # discovery, first rings
        pid = node.proc.pid
        kids = descendants(pid)
        node0, kids0 = _cpu_s(pid), sum(_cpu_s(k) for k in kids)
        sent0, t0 = sum(feeder.published.values()), time.monotonic_ns()
        time.sleep(seconds)
        node1, kids1 = _cpu_s(pid), sum(_cpu_s(k) for k in kids)
        sent = sum(feeder.published.values()) - sent0
        feeder.stop()
        time.sleep(1.0)
        got = [m for c in collectors for m in c.messages(since_ns=t0)]
        log = node.log()
    latency = np.array([m.latency_ms for m in got]) if got else np.array([np.nan])
    return {'kind': kind, 'receiver_said': next((k for k in ('C', 'Python') if f'{k} receiver process' in log), '?'),
            'sent': sent, 'results': len(got), 'node_cpu_ms_per_frame': 1e3 * (node1 - node0) / sent,
            'receivers_cpu_ms_per_frame': 1e3 * (kids1 - kids0) / sent,
            'latency_p50_ms': float(np.percentile(latency, 50)), 'latency_p99_ms': float(np.percentile(latency, 99))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cameras', type=int, default=4)
    p.add_argument('--rate', type=float, default=30.0)
    p.add_argument('--seconds', type=float, default=8.0)
    p.add_argument('--receivers', type=int, default=2)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'out' / 'receivers')
    p.add_argument('--kinds', default='python,native', help='alternated in each round: python, native, native_in_slot')
    args = p.parse_args(argv)
    kinds = args.kinds.split(',')
    from delen_ros.ros.ingress import native_receiver
    if native_receiver() is None:
        print('receivers: no built delen_receiver (run scripts/setup.sh)', file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(args.rounds):
        for kind in kinds:
            res = run(kind, cameras=args.cameras, rate_hz=args.rate, seconds=args.seconds, receivers=args.receivers,
                      workdir=args.out / 'work' / f'{kind}{r}')
            print(json.dumps(res), flush=True)
            runs.append(res)

    def mean(kind: str, key: str) -> float:
        return float(np.mean([x[key] for x in runs if x['kind'] == kind]))
    summary = {k: {key: mean(k, key) for key in ('receivers_cpu_ms_per_frame', 'node_cpu_ms_per_frame',
                                                  'latency_p50_ms', 'latency_p99_ms')} for k in kinds}
    if 'python' in summary and 'native' in summary:
        summary['receiver_cpu_ratio_native_to_python'] = (summary['native']['receivers_cpu_ms_per_frame']
                                                          / summary['python']['receivers_cpu_ms_per_frame'])
    if 'native_in_slot' in summary and 'native' in summary:
        summary['receiver_cpu_ratio_in_slot_to_native'] = (summary['native_in_slot']['receivers_cpu_ms_per_frame']
                                                           / summary['native']['receivers_cpu_ms_per_frame'])
    report = {'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs', 'args': {
        k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
        'runs': runs, 'summary': summary}
    (args.out / 'receivers.json').write_text(json.dumps(report, indent=1) + '\n')
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        names = {'python': 'Python', 'native': 'C', 'native_in_slot': 'C, into the slot'}
        labels, colours = [names[k] for k in kinds], [f'C{i}' for i in range(len(kinds))]
        axes[0].bar(labels, [summary[k]['receivers_cpu_ms_per_frame'] for k in kinds], color=colours)
        axes[0].set_title('receivers: CPU ms per frame', fontsize=10)
        axes[1].bar(labels, [summary[k]['latency_p50_ms'] for k in kinds], color=colours)
        axes[1].set_title('latency p50, stamp → result, ms', fontsize=10)
        fig.suptitle(f'{args.cameras} cameras, 640x480 @ {args.rate:g} Hz, {args.receivers} receivers', fontsize=10)
        fig.tight_layout()
        fig.savefig(args.out / 'receivers.png', dpi=90)
    except ImportError:
        pass
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
