"""float32 against bfloat16 on a CPU, through the runner the node serves with (session 33).

Per model, full depth (every stage and head in turn, as a frame that reaches the final exit) at each batch
size, timed through ``StageRunner`` in both precisions in the same process, in turn, on ``--threads`` torch
threads (1: the node's default on this 2-core machine): median of ``--reps`` after warm-up, and the ratio.
With ``--accuracy`` (a CIFAR-10 model and ``DELEN_CIFAR10`` set), top-1 per exit on the test photos in both
precisions (the softmax in float32, as the engine takes it).

    DELEN_CIFAR10=<npz> python benchmarks/precision_ab.py --out benchmarks/cpu/bfloat16 \\
        --models fashion_mnist,cifar10_resnet9,cifar10_lite0,cifar10_lite2,cifar10_committee,efficientnet_lite0 \\
        --accuracy cifar10_committee                                            (about 8 min on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from delen_ros.core import datasets  # noqa: E402
from delen_ros.core.preprocess import preprocess  # noqa: E402
from delen_ros.core.profile import cpu_name  # noqa: E402
from delen_ros.core.runner import StageRunner  # noqa: E402
from delen_ros.core.zoo import load_model  # noqa: E402

PRECISIONS = ('float32', 'bfloat16')


def full_depth_ms(runner: StageRunner, x: torch.Tensor, reps: int) -> tuple[float, list[float]]:
    """Median full depth and median of each step (stage + head), ms."""
    steps = []
    with torch.inference_mode():
        for _ in range(reps + 5):
            t = [time.perf_counter()]
            h = x
            for k in range(runner.num_exits):
                h = runner.stage(k, h)
                runner.head(k, h)
                t.append(time.perf_counter())
            steps.append([(b - a) * 1e3 for a, b in zip(t, t[1:])])
    steps = steps[5:]
    return statistics.median(sum(s) for s in steps), [statistics.median(c) for c in zip(*steps)]


def exit_accuracy(runner: StageRunner, images: list, labels: np.ndarray, batch: int = 64) -> list[float]:
    info = runner.model.info
    right = np.zeros(runner.num_exits)
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            h = runner.to_input(preprocess(images[i:i + batch], info))
            for k in range(runner.num_exits):
                h = runner.stage(k, h)
                pred = torch.softmax(runner.head(k, h).float(), dim=1).argmax(dim=1).numpy()
                right[k] += int((pred == labels[i:i + batch]).sum())
    return [float(r / len(images)) for r in right]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', default='cifar10_resnet9,cifar10_committee')
    p.add_argument('--batches', default='1,8')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--reps', type=int, default=30)
    p.add_argument('--accuracy', default='', help='comma-separated models to score on the CIFAR-10 test photos')
    p.add_argument('--accuracy-threads', type=int, default=2)
    p.add_argument('--out', required=True)
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {'cpu': cpu_name(), 'torch': torch.__version__, 'threads': args.threads,
              'amx': bool(getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)()), 'models': {}}
    for name in [m for m in args.models.split(',') if m]:
        torch.set_num_threads(args.threads)
        entry = report['models'].setdefault(name, {})
        for batch in (int(b) for b in args.batches.split(',')):
            row = {}
            for precision in PRECISIONS:
                runner = StageRunner(load_model(name), device='cpu', precision=precision)
                info = runner.model.info
                image = np.zeros((240, 320, 3) if info.in_channels == 3 else (240, 320), np.uint8)
                x = runner.to_input(preprocess([image] * batch, info))
                total, steps = full_depth_ms(runner, x, args.reps)
                row[precision] = {'full_depth_ms': round(total, 3), 'steps_ms': [round(s, 3) for s in steps]}
            row['ratio'] = round(row['bfloat16']['full_depth_ms'] / row['float32']['full_depth_ms'], 3)
            entry[f'batch{batch}'] = row
            print(f"{name} batch {batch}: float32 {row['float32']['full_depth_ms']:.2f} ms, bfloat16 "
                  f"{row['bfloat16']['full_depth_ms']:.2f} ms ({row['ratio']:.2f}x)", flush=True)
        if name in args.accuracy.split(','):
            torch.set_num_threads(args.accuracy_threads)
            data = datasets.eval_set(name)
            for precision in PRECISIONS:
                runner = StageRunner(load_model(name), device='cpu', precision=precision)
                entry[f'accuracy_{precision}'] = exit_accuracy(runner, data.images, np.asarray(data.labels))
                print(f'{name} {precision} top-1 per exit: {entry[f"accuracy_{precision}"]}', flush=True)
            entry['accuracy_note'] = data.note
    (out / 'precision_ab.json').write_text(json.dumps(report, indent=1) + '\n')
    plot(report, out / 'precision_ab.png')


def plot(report: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(report['models'])
    batches = sorted({k for e in report['models'].values() for k in e if k.startswith('batch')}, key=lambda b: int(b[5:]))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(batches)
    for i, b in enumerate(batches):
        ratios = [report['models'][n].get(b, {}).get('ratio', np.nan) for n in names]
        ax.bar(np.arange(len(names)) + i * width, ratios, width, label=b.replace('batch', 'batch '))
    ax.axhline(1.0, color='grey', lw=0.8)
    ax.set_xticks(np.arange(len(names)) + width * (len(batches) - 1) / 2, names, fontsize=7)
    ax.set_ylabel('bfloat16 / float32 full-depth time')
    ax.set_title(f"{report['cpu']}, {report['threads']} torch thread(s), AMX {report['amx']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == '__main__':
    main()
