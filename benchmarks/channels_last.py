#!/usr/bin/env python3
"""The runner's memory format on this machine's CPU: NCHW against channels-last (NHWC), every shipped
model, each stage and each head timed as the engine runs them, A/B interleaved in one process. Full depth
and the first exit's share of it are as a frame run straight to that exit sees them (its stages and its own
head). Writes ``OUT/channels_last.json`` and prints a table.

    PYTHONPATH=$PWD python benchmarks/channels_last.py --out benchmarks/cpu/channels_last
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import torch

from delen_ros.core import zoo
from delen_ros.core.profile import device_slug
from delen_ros.core.runner import StageRunner


def step_times_ms(runners: dict[str, StageRunner], x: torch.Tensor, reps: int, skip: int
                  ) -> dict[str, tuple[list[float], list[float]]]:
    """Median time of each stage and each head per runner (ms), the runners interleaved rep by rep."""
    num_exits = next(iter(runners.values())).model.num_exits
    samples = {name: ([[] for _ in range(num_exits)], [[] for _ in range(num_exits)]) for name in runners}
    for _ in range(reps):
        for name, runner in runners.items():
            stages, heads = samples[name]
            h = runner.to_input(x)
            for k in range(num_exits):
                t = time.perf_counter()
                h = runner.stage(k, h)
                t2 = time.perf_counter()
                runner.head(k, h)
                stages[k].append((t2 - t) * 1e3)
                heads[k].append((time.perf_counter() - t2) * 1e3)
    return {name: tuple([statistics.median(s[skip:]) for s in part] for part in parts)
            for name, parts in samples.items()}


def exit_latency_ms(stages: list[float], heads: list[float]) -> list[float]:
    """Batch-1 style latency to each exit run directly: its stages and its own head only."""
    return [sum(stages[:k + 1]) + heads[k] for k in range(len(stages))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--models', default='fashion_mnist,cifar10_resnet9,cifar10_lite0,efficientnet_lite0')
    p.add_argument('--batches', default='1,8')
    p.add_argument('--reps', type=int, default=30)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.models.split(','):
        runners = {fmt: StageRunner(zoo.load_model(model_name), device='cpu', channels_last=(fmt == 'nhwc'))
                   for fmt in ('nchw', 'nhwc')}
        info = runners['nchw'].model.info
        for batch in (int(b) for b in args.batches.split(',')):
            x = torch.randn(batch, info.in_channels, *info.input_size)
            times = step_times_ms(runners, x, args.reps, skip=min(5, args.reps // 4))
            row = {'model': model_name, 'batch': batch}
            for fmt, (stages, heads) in times.items():
                exits = exit_latency_ms(stages, heads)
                row[fmt] = {'stage_ms': [round(v, 4) for v in stages], 'head_ms': [round(v, 4) for v in heads],
                            'exit_ms': [round(v, 4) for v in exits], 'full_ms': round(exits[-1], 4),
                            'first_share': round(exits[0] / exits[-1], 4)}
            row['ratio_nhwc'] = round(row['nhwc']['full_ms'] / row['nchw']['full_ms'], 4)
            rows.append(row)
            print(f"{model_name:20s} batch {batch}: NCHW {row['nchw']['full_ms']:8.2f} ms (first exit "
                  f"{row['nchw']['first_share']:.3f}), NHWC {row['nhwc']['full_ms']:8.2f} ms (first exit "
                  f"{row['nhwc']['first_share']:.3f}): {row['ratio_nhwc']:.2f}x", flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {'device': device_slug('cpu'), 'machine': platform.processor() or platform.machine(),
            'torch': torch.__version__, 'threads': args.threads, 'reps': args.reps,
            'date': time.strftime('%Y-%m-%d'), 'note': 'medians of each stage and head, interleaved A/B, the runner as '
            'the engine uses it (batch norms folded); exit_ms: its stages and its own head'}
    (out / 'channels_last.json').write_text(json.dumps({'meta': meta, 'rows': rows}) + '\n')


if __name__ == '__main__':
    main()
