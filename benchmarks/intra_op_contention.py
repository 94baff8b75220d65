"""A model's steps on a CPU that another process shares, by torch's intra-op thread count.

    python3 benchmarks/intra_op_contention.py --model cifar10_committee --out OUT [--reps 40] [--threads 1,2]

For each thread count, the model runs to its final exit at batch 1, ``--reps`` times, alone and then beside
one process that spins on a core (as the node's receivers, the cameras and DDS take cores while it serves).
Writes ``OUT/intra_op_contention.json``: per configuration the p50 / p90 / max of a frame's full depth, ms,
the first fifth of the reps left out as warm-up, and the ratio of each to the same thread count alone.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import torch

from delen_ros.core.arrivals import percentiles
from delen_ros.core.preprocess import preprocess
from delen_ros.core.runner import StageRunner
from delen_ros.core.zoo import load_model


def full_depth_ms(runner: StageRunner, x0: torch.Tensor, num_exits: int, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x = runner.to_input(x0)
        for k in range(num_exits):
            x = runner.stage(k, x)
            runner.head(k, x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times[reps // 5:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', default='cifar10_committee')
    ap.add_argument('--threads', default='1,2', help='comma-separated intra-op thread counts')
    ap.add_argument('--reps', type=int, default=40)
    ap.add_argument('--out', required=True)
    args = ap.parse_args()
    model = load_model(args.model, device='cpu')
    runner = StageRunner(model, device='cpu')
    h, w = model.info.input_size
    noise = np.random.default_rng(0).integers(0, 256, (h, w) if model.info.in_channels == 1 else (h, w, 3), dtype=np.uint8)
    x0 = preprocess([noise], model.info)
    rows = {}
    for threads in (int(t) for t in args.threads.split(',')):
        torch.set_num_threads(threads)
        alone = None
        for busy in (False, True):
            spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass']) if busy else None
            try:
                time.sleep(0.2 if busy else 0.0)
                p50, p90 = percentiles(full_depth_ms(runner, x0, model.num_exits, args.reps), (50, 90))
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            row = {'threads': threads, 'beside_busy_process': busy, 'p50_ms': round(p50, 2), 'p90_ms': round(p90, 2)}
            if alone is not None:
                row.update(p50_over_alone=round(p50 / alone['p50_ms'], 2), p90_over_alone=round(p90 / alone['p90_ms'], 2))
            else:
                alone = row
            rows[f'{threads}_{"busy" if busy else "alone"}'] = row
            print(row, flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'intra_op_contention.json').write_text(json.dumps({
        'model': args.model, 'cpus': len(os.sched_getaffinity(0)), 'cpu': torch.backends.cpu.get_cpu_capability(),
        'reps': args.reps, 'rows': rows}, indent=1) + '\n')


if __name__ == '__main__':
    main()
