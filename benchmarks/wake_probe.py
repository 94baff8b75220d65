"""How much slower a thread's CUDA and Python calls are just after it waited, and what keeps them fast.

    python3 benchmarks/wake_probe.py --out OUT [--reps 200]

``host_ops.py`` found every host call of a lone frame 5-15x slower after 20 ms asleep than in a hot
loop. This times one small piece of work (a softmax and its maximum on the GPU, a graph replay, an
event record: four launches) after waits of several lengths, waited in three ways: asleep
(``time.sleep``), spinning in Python, and asleep while this process holds ``/dev/cpu_dma_latency``
at 0 µs (Linux PM QoS: idle CPUs stay in their shallowest idle state; tuned's ``latency-performance``
profile does the same). Writes ``OUT/wake_probe.json``; prints the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import struct
import sys
import time

import torch


def _read(path: str) -> str:
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError as exc:
        return f'({type(exc).__name__})'


def host_idle_settings() -> dict[str, str]:
    """What the kernel says about CPU idle states and clocks (for the report)."""
    base = '/sys/devices/system/cpu'
    states = sorted(pathlib.Path(f'{base}/cpu0/cpuidle').glob('state*'))
    return {
        'cpuidle_driver': _read(f'{base}/cpuidle/current_driver'),
        'cpuidle_governor': _read(f'{base}/cpuidle/current_governor_ro'),
        'cpu0_idle_states': ', '.join(f"{_read(f'{s}/name')}({_read(f'{s}/latency')}us)" for s in states),
        'cpufreq_governor': _read(f'{base}/cpu0/cpufreq/scaling_governor'),
        'kernel': platform.release(),
    }


class DmaLatency:
    """Holds ``/dev/cpu_dma_latency`` at ``us`` while open (the kernel drops the request on close)."""

    def __init__(self, us: int = 0):
        self.us, self._fd = us, None

    def __enter__(self):
        try:
            self._fd = os.open('/dev/cpu_dma_latency', os.O_WRONLY)
            os.write(self._fd, struct.pack('i', self.us))
        except OSError as exc:
            print(f'cpu_dma_latency: {exc}', file=sys.stderr)
            self._fd = None
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--reps', type=int, default=200)
    ap.add_argument('--out', required=True)
    args = ap.parse_args(argv)
    dev = torch.device('cuda')
    logits = torch.randn(1, 10, device=dev)
    g_in = torch.zeros(8, device=dev)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_in.mul_(2)
    event = torch.cuda.Event()

    def work():
        torch.softmax(logits, dim=1).max(dim=1)
        graph.replay()
        event.record()

    def timed(gap_s: float, how: str) -> float:
        times = []
        for _ in range(args.reps):
            if how == 'spin':
                end = time.perf_counter() + gap_s
                while time.perf_counter() < end:
                    pass
            elif gap_s > 0:
                time.sleep(gap_s)
            t0 = time.perf_counter_ns()
            work()
            times.append((time.perf_counter_ns() - t0) / 1e3)
            event.synchronize()
        return round(statistics.median(times), 2)

    for _ in range(50):
        work()
    torch.cuda.synchronize()
    report = {'host': host_idle_settings(), 'reps': args.reps, 'us': {}}
    gaps = (0.0, 0.0002, 0.001, 0.005, 0.02)
    for gap in gaps:
        report['us'][f'sleep {gap * 1e3:g} ms'] = timed(gap, 'sleep')
    for gap in (0.005, 0.02):
        report['us'][f'spin {gap * 1e3:g} ms'] = timed(gap, 'spin')
    with DmaLatency(0) as qos:
        report['dma_latency_held'] = qos.held
        for gap in gaps[1:]:
            report['us'][f'sleep {gap * 1e3:g} ms, cpu_dma_latency 0'] = timed(gap, 'sleep')
    print(json.dumps(report['host'], indent=1))
    for name, us in report['us'].items():
        print(f'{us:9.2f} µs  {name}')
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'wake_probe.json').write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
