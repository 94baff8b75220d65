"""The network folded for inference against the network as trained, through the runner, in one process.

``StageRunner(fold_batch_norms=...)`` (core/fold.py: batch norms folded into the convolutions, symmetric "same"
padding moved into them): each model's full depth (every stage, then the final head, as one chain; on CUDA
as the node replays it, CUDA graphs with the node's defaults) at each batch size, the two runners taking
turns in rounds so that a machine's drift hits both alike. Reports the median per runner and the folded /
unfolded ratio, and checks that both give the same classes.

    python benchmarks/fold_ab.py --out benchmarks/cpu/fold_ab                     # this CPU
    python benchmarks/fold_ab.py --device cuda --out OUT                          # a GPU: graphs, fp16
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import statistics
import sys
import time

import torch

from delen_ros.core.runner import StageRunner
from delen_ros.core.zoo import load_model


def full_depth_ms(runner: StageRunner, x: torch.Tensor, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        h = runner.to_input(x)
        for k in range(runner.num_exits):
            h = runner.stage(k, h)
        runner.head(runner.num_exits - 1, h)
        runner.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='cifar10_lite0,fashion_mnist,cifar10_resnet9')
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch-sizes', default=None, help='default: 1,8 on CPU, 1,8,32 on CUDA')
    p.add_argument('--rounds', type=int, default=5, help='turns each runner takes')
    p.add_argument('--runs', type=int, default=20, help='timed chains per turn')
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    cuda = args.device.startswith('cuda')
    sizes = [int(b) for b in (args.batch_sizes or ('1,8,32' if cuda else '1,8')).split(',')]
    report = {'device': args.device, 'torch': torch.__version__, 'threads': torch.get_num_threads(),
              'gpu': torch.cuda.get_device_name(0) if cuda else None, 'rounds': args.rounds, 'runs': args.runs,
              'models': {}}
    for name in args.models.split(','):
        base = load_model(name)
        options = {'cuda_graphs': True, 'background_capture': False, 'graph_sizes': sizes} if cuda else {}
        runners = {folded: StageRunner(copy.deepcopy(base), device=args.device, max_batch=max(sizes),
                                       fold_batch_norms=folded, **options) for folded in (False, True)}
        entry = {'folded': vars(runners[True].folded) if runners[True].folded else None, 'batches': {}}
        torch.manual_seed(0)
        for b in sizes:
            x = torch.rand(b, base.info.in_channels, *base.info.input_size)
            times = {False: [], True: []}
            classes = {}
            for folded, runner in runners.items():   # warm (graphs captured, caches filled), and the answers
                full_depth_ms(runner, x, 3)
                with torch.inference_mode():
                    h = runner.to_input(x)
                    for k in range(runner.num_exits):
                        h = runner.stage(k, h)
                    classes[folded] = runner.head(runner.num_exits - 1, h).float().argmax(1).cpu()
            for _ in range(args.rounds):
                for folded, runner in runners.items():
                    times[folded] += full_depth_ms(runner, x, args.runs)
            med = {f: statistics.median(t) for f, t in times.items()}
            entry['batches'][b] = {'unfolded_ms': round(med[False], 4), 'folded_ms': round(med[True], 4),
                                   'ratio': round(med[True] / med[False], 3),
                                   'same_classes': float((classes[False] == classes[True]).float().mean())}
            print(name, b, entry['batches'][b], flush=True)
        report['models'][name] = entry
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'fold_ab.json').write_text(json.dumps(report, indent=1) + '\n')
    print('wrote', out / 'fold_ab.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
