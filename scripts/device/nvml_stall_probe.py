"""Do NVML energy reads hold up CUDA work in the same process? (session 19: one node on two H200s answered
30-71 % of 64 cameras' frames with an NVML meter per GPU, 93-96 % with energy estimated;
benchmarks/h200/multi_gpu_session19)

Run THERE from the repository root, after the offline set-up (pynvml importable, as the node's):
    python3 scripts/device/nvml_stall_probe.py [OUT_JSON]
For 1 GPU and, where there are two, 2 GPUs: one serving thread per GPU (a small fp16 matmul, then a
blocking CUDA event waited for, as the engine's worker waits), for ``SECONDS`` (3) s each with no meter
read, then with the node's ``NvmlMeter`` read on a thread of its own per GPU every 0.1 s (the
``EnergyScaler``'s period), then every 0.01 s; then the two GPUs again, each in a process of its own (the
one-node-per-GPU layout, which was not held up). Per run: each serving thread's turns (p50, p99, longest,
turns over 5 ms) and each meter read's duration. One JSON line per run; the file holds them all.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import torch

from delen_ros.core.arrivals import percentile
from delen_ros.core.energy import NvmlMeter

SECONDS = float(os.environ.get('SECONDS_PER_RUN', '3'))


def serve(device: int, stop: threading.Event, turns: list[float]) -> None:
    torch.cuda.set_device(device)
    a = torch.randn(1024, 1024, device=device, dtype=torch.half)
    stream = torch.cuda.Stream(device=device)
    with torch.cuda.stream(stream):
        while not stop.is_set():
            t = time.perf_counter()
            a @ a
            done = torch.cuda.Event(blocking=True)
            done.record(stream)
            done.synchronize()
            turns.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.0005)   # the worker's own Python between turns


def read_meter(device: int, period_s: float, stop: threading.Event, reads: list[float]) -> None:
    meter = NvmlMeter(device_index=device)
    try:
        while not stop.wait(period_s):
            t = time.perf_counter()
            meter.energy_mj()
            reads.append((time.perf_counter() - t) * 1e3)
    finally:
        meter.close()


def run(gpus: int, period_s: float | None, *, first: int = 0) -> dict:
    """GPUs ``first`` .. ``first + gpus - 1`` served by threads of this process (reported as gpu0, ...)."""
    stop = threading.Event()
    turns = {d: [] for d in range(gpus)}
    reads = {d: [] for d in range(gpus)}
    threads = [threading.Thread(target=serve, args=(first + d, stop, turns[d])) for d in range(gpus)]
    if period_s is not None:
        threads += [threading.Thread(target=read_meter, args=(first + d, period_s, stop, reads[d]))
                    for d in range(gpus)]
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join()
    row = {'gpus': gpus, 'meter_period_s': period_s, 'seconds': SECONDS}
    for d in range(gpus):
        tt, rr = turns[d][10:], reads[d]   # the first turns pay lazy initialisation
        row[f'gpu{d}'] = {'turns': len(tt), 'turn_ms_p50': round(percentile(tt, 50), 3),
                          'turn_ms_p99': round(percentile(tt, 99), 3), 'turn_ms_max': round(max(tt), 2),
                          'turns_over_5ms': sum(v > 5 for v in tt),
                          'reads': len(rr), 'read_ms_p50': round(percentile(rr, 50), 3) if rr else None,
                          'read_ms_max': round(max(rr), 2) if rr else None}
    return row


def _one_gpu_process(device: int, period_s: float | None, queue) -> None:
    """A process of its own serving GPU ``device`` (and reading its meter): the one-node-per-GPU layout."""
    row = run(1, period_s, first=device)
    queue.put((device, row['gpu0']))


def run_two_processes(period_s: float | None) -> dict:
    import multiprocessing
    ctx = multiprocessing.get_context('spawn')   # a fresh CUDA context and NVML per process
    queue = ctx.Queue()
    procs = [ctx.Process(target=_one_gpu_process, args=(d, period_s, queue)) for d in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    return {'gpus': 2, 'processes': 2, 'meter_period_s': period_s, 'seconds': SECONDS,
            **{f'gpu{d}': results[d] for d in sorted(results)}}


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else None
    rows = []
    for gpus in sorted({1, min(2, torch.cuda.device_count())}):
        for period_s in (None, 0.1, 0.01):
            rows.append(run(gpus, period_s))
            print(json.dumps(rows[-1]), flush=True)
    if torch.cuda.device_count() >= 2:   # the same two GPUs, one process each
        for period_s in (None, 0.1, 0.01):
            rows.append(run_two_processes(period_s))
            print(json.dumps(rows[-1]), flush=True)
    if out:
        with open(out, 'w') as f:
            json.dump({'meta': {'torch': torch.__version__, 'gpus': torch.cuda.device_count(),
                                'gpu': torch.cuda.get_device_name(0)}, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
