"""Where a lone frame's launch goes on the host: each call of ``Engine._launch``'s path timed alone, batch 1.

    python3 benchmarks/launch_parts.py --model cifar10_committee --device cuda --out OUT   [--reps 2000]

On an H200 a lone frame's launch (its input ready -> its steps queued) took 0.34-0.40 ms for one stage and
head and about 30 µs more per further stage (``benchmarks/h200/session45/lone_frame_clone_ab``); handing the
stages their inputs uncopied changed nothing. This times, per rep, on the host (``perf_counter_ns``, the
device synchronised between reps, never inside a timed call):

* ``stage_k``: ``runner.stage(k, x)`` (graph: a copy into its input, the replay, a copy of its output);
  ``replay_k``: the bare replay of that stage's graph; ``copy_in_k`` / ``clone_k``: the copies alone;
* ``head``: ``runner.head(final, x)``; ``softmax_max``: ``torch.softmax(logits, 1).max(1)``;
* ``to_pinned``: the two results' copies to pinned memory (a pipelined launch); ``event``: a blocking
  event made and recorded.

Medians in µs, and the sum of the calls ``Engine._launch`` makes for the first exit and for the final one.
Writes ``OUT/launch_parts.json``. On a CPU the stages run eagerly (no graphs): a check that it runs.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from typing import Callable

import torch

from delen_ros.core import zoo
from delen_ros.core.engine import make_runner
from delen_ros.core.runner import to_pinned


def _timed(fn: Callable[[], object], sync: Callable[[], None], reps: int) -> float:
    """Median host µs of ``fn()`` over ``reps`` calls, the device idle before each."""
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return round(statistics.median(times) / 1e3, 2)


@torch.inference_mode()   # the runner's graphs hold inference tensors: copying into them needs it too
def parts(model_name: str, device: str, reps: int) -> dict:
    model = zoo.load_model(model_name, device=device)
    cuda = device.startswith('cuda')
    runner = make_runner(model, device=device, max_batch=1, options={'cuda_graphs': True} if cuda else {})
    runner.warmup([1])
    sync = runner.synchronize if cuda else (lambda: None)
    h, w = model.info.input_size
    x = runner.to_input(torch.rand(1, model.info.in_channels, h, w))
    inputs = [x]
    for k in range(model.num_exits):   # each stage's input, computed once
        inputs.append(runner.stage(k, inputs[-1]))
    final = model.num_exits - 1
    out: dict[str, float] = {}
    for k in range(model.num_exits):
        out[f'stage_{k}'] = _timed(lambda k=k: runner.stage(k, inputs[k]), sync, reps)
        graph = getattr(runner, '_graphs', {}).get(('stage', k, 1))
        if graph is not None:
            out[f'replay_{k}'] = _timed(graph.graph.replay, sync, reps)
            out[f'copy_in_{k}'] = _timed(lambda g=graph, k=k: g.static_in.copy_(inputs[k]), sync, reps)
            out[f'clone_{k}'] = _timed(graph.static_out.clone, sync, reps)
    out['head'] = _timed(lambda: runner.head(final, inputs[-1]), sync, reps)
    logits = runner.head(final, inputs[-1])
    out['softmax_max'] = _timed(lambda: torch.softmax(logits.float(), dim=1).max(dim=1), sync, reps)
    if cuda:
        confidence, class_id = torch.softmax(logits.float(), dim=1).max(dim=1)
        out['to_pinned'] = _timed(lambda: (to_pinned(confidence), to_pinned(class_id)), sync, reps)
        out['event'] = _timed(lambda: torch.cuda.Event(blocking=True).record(), sync, reps)
    out['launch_first_exit'] = round(out['stage_0'] + out['head'] + out['softmax_max'], 2)
    out['launch_final_exit'] = round(sum(out[f'stage_{k}'] for k in range(model.num_exits)) + out['head']
                                     + out['softmax_max'], 2)
    return {'model': model_name, 'device': device, 'reps': reps, 'torch': torch.__version__,
            'note': 'host µs per call, median; launch_*: the sum of the calls Engine._launch makes (the head is '
                    "the final exit's for both: a first exit's head costs about as much)", 'us': out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='cifar10_committee')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--reps', type=int, default=2000)
    ap.add_argument('--out', required=True)
    args = ap.parse_args(argv)
    report = parts(args.model, args.device, args.reps)
    print(json.dumps(report['us']), flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'launch_parts.json').write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
