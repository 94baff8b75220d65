"""What each host-side call on a lone frame's way costs the calling thread, on one GPU host.

    python3 benchmarks/host_ops.py --out OUT [--model cifar10_committee] [--reps 2000]

A lone frame's 1.1 ms of host time (``benchmarks/lone_frame.py``) is spread over some fifty Python
and torch calls. This times each kind of call in a loop (median of ``--reps``, µs of the calling
thread's wall clock; the GPU idle or nearly so), then the engine's own pieces for one
frame: the upload ahead, the device preprocessing, a graph step (stage and head), the softmax and
its maximum, the copy back and the wait. Writes ``OUT/host_ops.json``.
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

from delen_ros.core import zoo
from delen_ros.core.engine import make_runner
from delen_ros.core.preprocess import DevicePreprocessor


def _time(fn, reps: int, gap_s: float = 0.0) -> float:
    """Median µs of one call of ``fn`` over ``reps`` calls (timed in groups of ten); with ``gap_s``,
    each call timed alone after that long asleep (as a lone frame finds the host)."""
    for _ in range(20):
        fn()
    if gap_s > 0:
        times = []
        for _ in range(reps):
            time.sleep(gap_s)
            t0 = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - t0) / 1e3)
        torch.cuda.synchronize()
        return round(statistics.median(times), 2)
    times = []
    for _ in range(max(1, reps // 10)):
        t0 = time.perf_counter_ns()
        for _ in range(10):
            fn()
        times.append((time.perf_counter_ns() - t0) / 10e3)
    return round(statistics.median(times), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='cifar10_committee')
    ap.add_argument('--reps', type=int, default=2000)
    ap.add_argument('--out', required=True)
    args = ap.parse_args(argv)
    dev = torch.device('cuda')
    reps = args.reps
    small = torch.zeros(8, device=dev)
    logits = torch.randn(1, 10, device=dev)
    frame32 = np.random.randint(0, 255, (32, 32, 3), np.uint8)
    frame640 = np.random.randint(0, 255, (480, 640, 3), np.uint8)
    pinned32 = torch.from_numpy(frame32).pin_memory()
    stream = torch.cuda.Stream()
    done = torch.cuda.Event()
    done.record()
    done.synchronize()
    g_in = torch.zeros(8, device=dev)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_in.mul_(2)
    def stream_context():
        with torch.cuda.stream(stream):
            pass

    def inference_mode():
        with torch.inference_mode():
            pass

    ops = {
        'python call': lambda: None,
        'torch.cuda.Event()': lambda: torch.cuda.Event(),
        'Event(blocking=True)': lambda: torch.cuda.Event(blocking=True),
        'event.record()': lambda: done.record(),
        'event.query() done': lambda: done.query(),
        'event.synchronize() done': lambda: done.synchronize(),
        'with torch.cuda.stream(s)': stream_context,
        'torch.cuda.current_stream()': lambda: torch.cuda.current_stream(dev),
        'stream.wait_event(e)': lambda: torch.cuda.current_stream(dev).wait_event(done),
        'inference_mode enter/exit': inference_mode,
        'tensor.record_stream(s)': lambda: small.record_stream(stream),
        'pinned 3 KB .to(cuda, non_blocking)': lambda: pinned32.to(dev, non_blocking=True),
        'empty pinned 8 floats': lambda: torch.empty(8, pin_memory=True),
        'device copy_ 8 floats': lambda: g_in.copy_(small),
        'clone 8 floats': lambda: small.clone(),
        'slice [:1]': lambda: logits[:1],
        'unsqueeze+permute': lambda: logits.unsqueeze(-1).permute(0, 2, 1),
        '.float() of float': lambda: logits.float(),
        'softmax': lambda: torch.softmax(logits, dim=1),
        'max(dim=1)': lambda: logits.max(dim=1),
        'graph.replay() trivial': lambda: graph.replay(),
        'np.copyto 3 KB': lambda: np.copyto(pinned32.numpy(), frame32),
        'pinned 8 .tolist()': lambda: torch.zeros(8).tolist(),
        'stream.synchronize() idle': lambda: torch.cuda.current_stream(dev).synchronize(),
    }
    report = {'torch': torch.__version__, 'device': torch.cuda.get_device_name(dev), 'reps': reps,
              'ops_us': {name: _time(fn, reps) for name, fn in ops.items()}}
    # The engine's own pieces, one frame at a time.
    model = zoo.load_model(args.model, device='cuda')
    runner = make_runner(model, device='cuda', max_batch=8, options={'cuda_graphs': True})
    runner.warmup([1])
    pre = DevicePreprocessor(model.info, dev, dtype=runner.dtype,
                             memory_format=torch.channels_last if runner.channels_last else torch.contiguous_format)
    up32, up640 = pre.upload(frame32), pre.upload(frame640)
    x = pre([up32])
    feats = runner.stage(0, x)
    head = runner.head(0, feats)

    def step():
        f = runner.stage(0, x)
        lg = runner.head(0, f)
        c, k = torch.softmax(lg[:1].float(), dim=1).max(dim=1)
        return c, k

    def look():
        c, k = step()
        c, k = runner.to_host(c), runner.to_host(k)
        runner.synchronize()
        return c.tolist(), k.tolist()

    pieces = {
        'upload 32x32 frame': lambda: pre.upload(frame32),
        'upload 640x480 frame': lambda: pre.upload(frame640),
        'preprocess uploaded 32x32 (to 160)': lambda: pre([up32]),
        'preprocess uploaded 640x480 (to 160)': lambda: pre([up640]),
        'runner.to_input': lambda: runner.to_input(x),
        'runner.stage(0) graph': lambda: runner.stage(0, x),
        'runner.head(0) graph': lambda: runner.head(0, feats),
        'softmax+max of head': lambda: torch.softmax(head[:1].float(), dim=1).max(dim=1),
        'step: stage+head+softmax+max': step,
        'look: step+to_host+sync+tolist': look,
    }
    report['engine_us'] = {name: _time(fn, min(reps, 500)) for name, fn in pieces.items()}
    # the same after 20 ms asleep: caches, branch predictors and the core's clock as a lone frame finds them
    report['engine_after_sleep_us'] = {name: _time(fn, 100, gap_s=0.02) for name, fn in pieces.items()}
    report['ops_after_sleep_us'] = {name: _time(fn, 100, gap_s=0.02) for name, fn in ops.items()
                                    if name in ('torch.cuda.Event()', 'event.record()', 'device copy_ 8 floats',
                                                'softmax', 'graph.replay() trivial', 'python call')}
    torch.cuda.synchronize()
    for section in ('ops_us', 'engine_us', 'engine_after_sleep_us', 'ops_after_sleep_us'):
        print('--', section)
        for name, us in report[section].items():
            print(f'{us:9.2f} µs  {name}')
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'host_ops.json').write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
