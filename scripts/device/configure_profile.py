"""Where a CUDA configure's seconds go (issue 8: configure -> first result <= 5 s).

Run THERE after the offline set-up (ROS environment sourced), from the repository root:
    python3 scripts/device/configure_profile.py [OUT_JSON]
It builds what the node's configure builds (``assembly.build``, the node's default parameters,
``MODEL`` / ``MAX_BATCH`` from the environment), then starts the engine as activate does, serves one
frame (``FRAME_HW``, default ``480,640``, as a camera's) and waits for the background graph capture.
It prints one JSON line: the seconds of ``import torch``, the CUDA context, each configure phase,
the first served frame (from configure's start and from the process's), the background capture's
duration (``background_capture_s``, after the first frame, while serving), and each CUDA graph's
capture (its eager warm-up included) by stage / head, batch size and thread (``background``).
``BACKGROUND_CAPTURE=0``: every size captured in configure, as before. ``CUDNN_TRIALS=serving``: the
node's ``cudnn_trials:=serving`` (the larger sizes' cuDNN trials in the background, after the first frame). ``DELEN_NATIVE_FIRST=0``:
graphs captured on cuDNN from the start (the runner's default captures with PyTorch's own
convolutions first and tries cuDNN per graph afterwards; ``background_capture_wall_s`` includes the
background's trial, ``conv_backends`` says how they came out). Run it under ``py-spy record`` for the rest.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time

t0 = time.perf_counter()
# what the node's start does in the background (delen_ros/ros/run.py preload_cuda_libraries): cuDNN /
# cuBLAS; WARM_LIBRARIES=0: leave them to configure (the GPU's idle power is read in configure since session 24)
warm = os.environ.get('WARM_LIBRARIES', '1') != '0'
t_before_import = time.perf_counter()
import torch  # noqa: E402 - timed

if os.environ.get('CUDNN', '1') == '0':   # A/B: PyTorch's own convolutions (no cuDNN set-up per shape)
    torch.backends.cudnn.enabled = False

t_import = time.perf_counter()
torch.zeros(1, device='cuda')
torch.cuda.synchronize()
t_cuda = time.perf_counter()
if warm:
    from delen_ros.core.runner import warm_cuda_libraries  # noqa: E402
    warm_cuda_libraries('cuda')
t_libraries = time.perf_counter()

import numpy as np  # noqa: E402

from delen_ros.core import runner  # noqa: E402
from delen_ros.core.bounds import Bounds  # noqa: E402
from delen_ros.ros import assembly, params  # noqa: E402

graphs: list[dict] = []
_original = runner._Graph.__init__


def _timed(self, module, example, batch, **kwargs):
    background = threading.current_thread().name == 'delen-capture'
    # the capture thread's own stream only: a device-wide wait there would time the worker's work too
    sync = torch.cuda.current_stream().synchronize if background else torch.cuda.synchronize
    sync()
    start = time.perf_counter()
    _original(self, module, example, batch, **kwargs)
    sync()
    graphs.append({'module': type(module).__name__, 'batch': batch, 'background': background,
                   'cudnn': kwargs.get('cudnn', True), 's': round(time.perf_counter() - start, 4)})


runner._Graph.__init__ = _timed
background_capture = os.environ.get('BACKGROUND_CAPTURE', '1') != '0'
_runner_init = runner.StageRunner.__init__


def _init(self, *args, **kwargs):
    kwargs.setdefault('background_capture', background_capture)
    _runner_init(self, *args, **kwargs)


runner.StageRunner.__init__ = _init
defaults = params.NodeParams(**{name: spec[0] for name, spec in params._SPECS.items()})
p = dataclasses.replace(defaults, model=os.environ.get('MODEL', 'cifar10_lite0'), device='cuda',
                        max_batch=int(os.environ.get('MAX_BATCH', '32')),
                        cudnn_trials=os.environ.get('CUDNN_TRIALS', defaults.cudnn_trials),
                        conv_kernels=os.environ.get('CONV_KERNELS', defaults.conv_kernels))
first_result = threading.Event()
t_build = time.perf_counter()
served = assembly.build(p, on_result=lambda *a, **k: first_result.set(), log=lambda text: print(text, file=sys.stderr))
t_done = time.perf_counter()
engine = served.engine
engine.start(warm_up=False)   # as activate does
engine.set_app('probe', Bounds())
h, w = (int(v) for v in os.environ.get('FRAME_HW', '480,640').split(','))
frame = np.random.default_rng(0).integers(0, 256, (h, w, 3) if served.model.info.in_channels == 3 else (h, w),
                                          dtype=np.uint8)
engine.submit(['probe'], frame)
served_first = first_result.wait(60)
t_first = time.perf_counter()
stage_runner = engine._runner
capture_done = stage_runner.wait_background_capture(timeout=300) if hasattr(stage_runner, 'capture_state') else None
t_captured = time.perf_counter()   # the thread's end: its cuDNN trials included
state = stage_runner.capture_state() if hasattr(stage_runner, 'capture_state') else None
backends = stage_runner.conv_backends() if hasattr(stage_runner, 'conv_backends') else {}
trials = stage_runner.cudnn_trials() if hasattr(stage_runner, 'cudnn_trials') else {}


def _full_depth_ms(batch: int, reps: int = 100) -> float:
    """Median ms of one full-depth pass (every stage and head) at ``batch``, as the worker runs it."""
    info = served.model.info
    x0 = stage_runner.to_input(torch.zeros(batch, info.in_channels, *info.input_size))
    times = []
    for _ in range(reps):
        stage_runner.synchronize()
        start = time.perf_counter()
        x = x0
        for k in range(stage_runner.num_exits):
            x = stage_runner.stage(k, x)
            stage_runner.head(k, x)
        stage_runner.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return round(sorted(times)[len(times) // 2], 3)


steady = {b: _full_depth_ms(b) for b in getattr(stage_runner, 'graph_sizes', (1,))}
out = {'env': {k: os.environ.get(k) for k in ('CUDA_MODULE_LOADING', 'MODEL', 'MAX_BATCH', 'BACKGROUND_CAPTURE',
                                                'FRAME_HW', 'CUDNN', 'WARM_LIBRARIES', 'DELEN_NATIVE_FIRST',
                                                'CUDNN_TRIALS', 'CONV_KERNELS')},
       'import_torch_s': round(t_import - t_before_import, 3),
       'cuda_context_s': round(t_cuda - t_import, 3), 'full_depth_ms_by_batch': steady,
       'cuda_libraries_s': round(t_libraries - t_cuda, 3),
       'imports_delen_s': round(t_build - t_libraries, 3), 'build_s': round(t_done - t_build, 3),
       'phases_s': {k: round(v, 3) for k, v in served.phases.items()},
       'first_result': served_first,
       'first_result_s': round(t_first - t_build, 3),          # configure's start -> the first result
       'first_result_total_s': round(t_first - t0, 3),         # process start (before import torch) -> it
       'first_frame_s': round(t_first - t_done, 3),            # activate + the first frame's service
       'background_capture_s': round(state.seconds, 3) if state else None,   # on its thread, while serving
       'background_capture_done': capture_done, 'background_capture_error': state.error if state else None,
       'background_capture_wall_s': round(t_captured - t_done, 3),   # configure's end -> the capture's end
       'conv_backends': {f'{kind}{k}@{b}': v for (kind, k, b), v in sorted(backends.items())},
       'cudnn_trials_ms': {f'{kind}{k}@{b}': [round(v, 4) for v in t] for (kind, k, b), t in sorted(trials.items())},
       'graph_sizes': list(getattr(stage_runner, 'graph_sizes', ())), 'graph_count': engine.graph_count(),
       'graphs': graphs, 'graphs_s': round(sum(g['s'] for g in graphs), 3),
       'graphs_foreground_s': round(sum(g['s'] for g in graphs if not g['background']), 3),
       'graphs_background_s': round(sum(g['s'] for g in graphs if g['background']), 3),
       'total_s': round(t_captured - t0, 3)}
served.close()
line = json.dumps(out)
print(line)
if len(sys.argv) > 1:
    with open(sys.argv[1], 'w') as f:
        f.write(line + '\n')
