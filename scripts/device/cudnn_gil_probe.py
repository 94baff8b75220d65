"""Does cuDNN's first use of a shape hold the GIL, and can its set-up run without it? (issue 8)

Run THERE from the repository root (torch with CUDA; the network wheel importable):
    python3 scripts/device/cudnn_gil_probe.py [OUT_JSON]
Each variant uses its own batch size, so cuDNN's per-thread plan cache is cold for it. A worker
thread (as the node's capture thread) does the variant's work while the main thread ticks every
0.5 ms (as the node's serving threads would run Python); the longest tick is how long the worker
kept the GIL. Variants:
  eager:   the stages' eager forward on cuDNN (what the capture's warm-up does today)
  ops:     every convolution of the stages called once through its ``torch.ops.aten`` op
           (recorded from a native pass), then the eager forward on cuDNN
  script:  the same through a TorchScript function, then the eager forward
``MODE=parallel``: cuDNN's first use in several threads at once (per batch size, per stage), after a
serving loop's longest replay alone and beside cuDNN's set-up on another thread (``MODE=stall``:
only that). ``MODE=driver``: the worker's and the receivers' other CUDA calls, each timed, alone and
beside cuDNN's set-up.
It prints one JSON line per variant: seconds, the longest tick, ticks over 20 ms, the eager
forward's seconds after the warm-up.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from delen_ros.core.runner import conv_backend, warm_cuda_libraries
from delen_ros.core.zoo import load_model

MODEL = os.environ.get('MODEL', 'cifar10_lite0')


class _Recorder(TorchDispatchMode):
    """Records every convolution (the op and its arguments) of the code it wraps."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default):
            self.calls.append((func, tuple(a.clone() if isinstance(a, torch.Tensor) and a is args[0] else a
                                           for a in args)))
        return func(*args, **(kwargs or {}))


@torch.jit.script
def _scripted_conv2d(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride: List[int],
                     padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    return torch.conv2d(x, w, b, stride, padding, dilation, groups)


_CONV2D_DEFAULTS = (None, [1, 1], [0, 0], [1, 1], 1)   # bias, stride, padding, dilation, groups: left out when default


class Ticker:
    def __init__(self):
        self.max_gap = 0.0
        self.over_20ms = 0

    def run_while(self, worker: threading.Thread) -> None:
        worker.start()
        while worker.is_alive():
            t = time.perf_counter()
            time.sleep(0.0005)
            gap = time.perf_counter() - t
            self.max_gap = max(self.max_gap, gap)
            self.over_20ms += gap > 0.020
        worker.join()


def stage_inputs(model, batch: int, h: int, w: int) -> list[torch.Tensor]:
    """Zero inputs of every stage's shape at ``batch`` (from a native pass)."""
    x = torch.zeros(batch, model.info.in_channels, h, w, device='cuda', dtype=torch.half)
    inputs = [x.contiguous(memory_format=torch.channels_last)]
    with torch.inference_mode(), conv_backend(False):
        for stage in model.stages[:-1]:
            inputs.append(torch.zeros_like(stage(inputs[-1])))
    torch.cuda.synchronize()
    return inputs


def parallel(model, h: int, w: int) -> list[dict]:
    """cuDNN's first use in several threads at once: (a) one batch size per thread, every stage;
    (b) one stage per thread, one batch size. Wall and CPU seconds against the threads' own."""
    rows = []
    for label, jobs in (('sizes', [(b, None) for b in (12, 20, 28, 30)]), ('stages', [(2, k) for k in range(4)]),
                        ('one_thread_sizes', None)):
        if jobs is None:   # the baseline: the same kind of work, one thread, fresh sizes
            jobs = [(b, None) for b in (10, 18)]
            threads_n = 1
        else:
            threads_n = len(jobs)
        prepared = {b: stage_inputs(model, b, h, w) for b in {b for b, _ in jobs}}
        per_thread: list[float] = []

        def run(job_list) -> None:
            for b, k in job_list:
                t = time.perf_counter()
                with torch.inference_mode(), conv_backend(True):
                    for i, stage in enumerate(model.stages):
                        if k is None or k == i:
                            stage(prepared[b][i])
                    torch.cuda.synchronize()
                per_thread.append(time.perf_counter() - t)

        cpu0, t0 = time.process_time(), time.perf_counter()
        groups = [[j] for j in jobs] if threads_n > 1 else [jobs]
        threads = [threading.Thread(target=run, args=(g,)) for g in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows.append({'variant': f'parallel_{label}', 'threads': threads_n, 'jobs': jobs,
                     'wall_s': round(time.perf_counter() - t0, 3), 'cpu_s': round(time.process_time() - cpu0, 3),
                     'per_job_s': [round(v, 3) for v in per_thread]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def serving_stall(model, h: int, w: int) -> list[dict]:
    """A serving loop (native graphs of every stage at batch 1, replayed and waited for, as the
    node's worker: device memory taken for a frame and each output, a result copied back each turn) alone for 1 s, then while another thread sets cuDNN
    up for a fresh batch size, then while it captures cuDNN graphs of a fresh size and times their
    replays (the runner's background trial)."""
    from delen_ros.core.runner import _Graph
    x = stage_inputs(model, 1, h, w)
    with torch.inference_mode():
        graphs = [_Graph(stage, x[k], 1, pool=None, as_float=False, cudnn=False) for k, stage in enumerate(model.stages)]
    stream = torch.cuda.Stream()
    rows = []
    for label, batch in (('alone', 0), ('beside_cudnn_setup', 26), ('beside_cudnn_capture', 22)):
        times: list[float] = []
        frames: list[torch.Tensor] = []
        done = threading.Event()
        setup_s: list[float] = []

        def setup() -> None:
            inputs = stage_inputs(model, batch, h, w)
            t = time.perf_counter()
            with torch.inference_mode():
                if label == 'beside_cudnn_setup':
                    with conv_backend(True):
                        for k, stage in enumerate(model.stages):
                            stage(inputs[k])
                else:   # what the runner's background trial does: capture on cuDNN, then time replays
                    capture_stream, own = torch.cuda.Stream(), torch.cuda.Stream()
                    with torch.cuda.stream(own):
                        for k, stage in enumerate(model.stages):
                            graph = _Graph(stage, inputs[k], batch, pool=torch.cuda.graph_pool_handle(),
                                           as_float=False, stream=capture_stream, cudnn=True)
                            own.synchronize()
                            for _ in range(3):
                                graph.replay_ms()
                torch.cuda.synchronize()
            setup_s.append(time.perf_counter() - t)
            done.set()

        helper = threading.Thread(target=setup) if label != 'alone' else None
        if helper:
            helper.start()
        t_end = time.perf_counter() + 1.0
        with torch.cuda.stream(stream):
            while (not done.is_set()) if helper else time.perf_counter() < t_end:
                t = time.perf_counter()
                frames.append(torch.empty(480 * 640 * 3, dtype=torch.uint8, device='cuda'))   # a frame's upload
                for g in graphs:
                    g.graph.replay()
                    g.static_out[:1].clone()   # each output copied out of the graph, as the runner's
                g.static_out[:1].cpu()   # a result back to the host, as the worker's
                frames.clear()
                stream.synchronize()
                times.append(time.perf_counter() - t)
        if helper:
            helper.join()
        times.sort()
        rows.append({'variant': f'stall_{label}', 'iterations': len(times),
                     'p50_ms': round(times[len(times) // 2] * 1e3, 3), 'max_ms': round(times[-1] * 1e3, 1),
                     'over_5ms': sum(t > 0.005 for t in times), 'setup_s': [round(v, 3) for v in setup_s]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def driver_ops_stall(model, h: int, w: int) -> list[dict]:
    """The node's other CUDA calls while serving, each timed on its own, alone and beside cuDNN's
    set-up of a fresh batch size on another thread: graph replays waited for, a new pinned host
    buffer (a staging buffer's growth: cudaHostAlloc), an upload from pinned memory with its event
    queried, a new event, a new stream, host memory registered with CUDA (a frame ring's)."""
    import numpy as np
    from delen_ros.core.runner import _Graph
    x = stage_inputs(model, 1, h, w)
    with torch.inference_mode():
        graphs = [_Graph(stage, x[k], 1, pool=None, as_float=False, cudnn=False) for k, stage in enumerate(model.stages)]
    stream = torch.cuda.Stream()
    cudart = torch.cuda.cudart()
    frame = 480 * 640 * 3
    staged = torch.empty(frame, dtype=torch.uint8, pin_memory=True)
    rows = []
    for label, batch in (('alone', 0), ('beside_cudnn_setup', 14), ('beside_cudnn_setup_2', 6)):
        worst: dict[str, float] = {}
        kept: list = []
        registered: list = []
        done = threading.Event()
        setup_s: list[float] = []

        def setup() -> None:
            inputs = stage_inputs(model, batch, h, w)
            t = time.perf_counter()
            with torch.inference_mode(), conv_backend(True):
                for k, stage in enumerate(model.stages):
                    stage(inputs[k])
                torch.cuda.synchronize()
            setup_s.append(time.perf_counter() - t)
            done.set()

        def timed(name: str, fn) -> None:
            t = time.perf_counter()
            fn()
            worst[name] = max(worst.get(name, 0.0), time.perf_counter() - t)

        def register() -> None:
            buf = np.empty(frame, np.uint8)
            cudart.cudaHostRegister(buf.ctypes.data, buf.nbytes, 0)
            registered.append(buf)

        def upload() -> None:
            dev = staged.to('cuda', non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            event.query()
            del dev

        helper = threading.Thread(target=setup) if label != 'alone' else None
        if helper:
            helper.start()
        t_end = time.perf_counter() + 1.5
        i = 0
        with torch.cuda.stream(stream):
            while (not done.is_set()) if helper else time.perf_counter() < t_end:
                i += 1
                timed('replay', lambda: ([g.graph.replay() for g in graphs], stream.synchronize()))
                timed('upload', upload)
                timed('event', lambda: torch.cuda.Event().record())
                if i % 10 == 0 and len(kept) < 200:
                    # a size of its own each time: the caching host allocator cannot hand a cached block back
                    timed('pinned_alloc', lambda: kept.append(torch.empty(frame + 4096 * len(kept), dtype=torch.uint8,
                                                                           pin_memory=True)))
                if i % 50 == 0:
                    timed('stream', lambda: torch.cuda.Stream())
                    if len(registered) < 40:
                        timed('host_register', register)
                time.sleep(0.0005)
        if helper:
            helper.join()
        for buf in registered:
            cudart.cudaHostUnregister(buf.ctypes.data)
        rows.append({'variant': f'driver_{label}', 'iterations': i, 'setup_s': [round(v, 3) for v in setup_s],
                     'worst_ms': {k: round(v * 1e3, 2) for k, v in sorted(worst.items())}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    out_path = sys.argv[1] if len(sys.argv) > 1 else None
    t_ctx = time.perf_counter()
    warm_cuda_libraries('cuda')
    ctx_s = time.perf_counter() - t_ctx
    model = load_model(MODEL).prepare('cuda', dtype=torch.half, channels_last=True)
    size = model.info.input_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    if os.environ.get('MODE') == 'driver':
        rows = driver_ops_stall(model, h, w)
        if out_path:
            with open(out_path, 'w') as f:
                json.dump({'meta': {'torch': torch.__version__}, 'rows': rows}, f, indent=1)
        return
    if os.environ.get('MODE') in ('parallel', 'stall'):
        rows = serving_stall(model, h, w) + (parallel(model, h, w) if os.environ['MODE'] == 'parallel' else [])
        if out_path:
            with open(out_path, 'w') as f:
                json.dump({'meta': {'libraries_s': round(ctx_s, 3), 'env': {k: v for k, v in os.environ.items()
                                                                            if k.startswith(('CUDA_', 'CUDNN'))}},
                           'rows': rows}, f, indent=1)
        return
    rows = []
    for variant, batch in (('eager', 32), ('ops', 24), ('script', 16), ('eager', 8), ('ops', 4)):
        x = torch.zeros(batch, model.info.in_channels, h, w, device='cuda', dtype=torch.half).contiguous(memory_format=torch.channels_last)
        result: dict = {'variant': variant, 'batch': batch}

        def work() -> None:
            with torch.inference_mode():
                t0 = time.perf_counter()
                if variant != 'eager':
                    recorder = _Recorder()
                    with conv_backend(False), recorder:
                        y = x
                        for stage in model.stages:
                            y = stage(y)
                    torch.cuda.synchronize()
                    result['recorded_convs'] = len(recorder.calls)
                    t1 = time.perf_counter()
                    result['record_s'] = round(t1 - t0, 3)
                    with conv_backend(True):
                        for func, args in recorder.calls:
                            if variant == 'ops' or func is not torch.ops.aten.conv2d.default:
                                func(*args)
                            else:
                                _scripted_conv2d(*args, *_CONV2D_DEFAULTS[len(args) - 2:])
                    torch.cuda.synchronize()
                    result['prewarm_s'] = round(time.perf_counter() - t1, 3)
                t2 = time.perf_counter()
                with conv_backend(True):
                    y = x
                    stage_s = []
                    for stage in model.stages:
                        ts = time.perf_counter()
                        y = stage(y)
                        torch.cuda.synchronize()
                        stage_s.append(round(time.perf_counter() - ts, 3))
                result['eager_cudnn_s'] = round(time.perf_counter() - t2, 3)
                result['eager_stage_s'] = stage_s
                result['total_s'] = round(time.perf_counter() - t0, 3)

        ticker = Ticker()
        ticker.run_while(threading.Thread(target=work, name='probe'))
        result.update(max_tick_ms=round(ticker.max_gap * 1e3, 1), ticks_over_20ms=ticker.over_20ms)
        print(json.dumps(result), flush=True)
        rows.append(result)
    meta = {'torch': torch.__version__, 'cudnn': torch.backends.cudnn.version(), 'gpu': torch.cuda.get_device_name(),
            'model': MODEL}
    if out_path:
        with open(out_path, 'w') as f:
            json.dump({'meta': meta, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
