"""Warm-up before serving: graph capture, kernel choice and the latency corrector's first measurements.

The first calls of a stage pay for lazy allocation, kernel selection or graph capture; done here, at
configure, the first served frames do not.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from .preprocess import preprocess
from .runner import step_with_look

if TYPE_CHECKING:
    from .multi_exit import ModelInfo
    from .policies import LatencyCorrector
    from .profile import Profile
    from .runner import StageRunner

__all__ = ['warm_up', 'warm_cpu_batch_sizes']


def warm_up(runner: 'StageRunner', info: 'ModelInfo', profile: 'Profile', corrector: 'LatencyCorrector', *,
            max_batch: int, reps: int = 3, background_capture: bool | None = None) -> None:
    """Run every step ``reps`` times on a noise frame at batch 1, before serving.

    On CUDA the runner's own ``warmup`` comes first: with CUDA graphs it captures batch 1 now and,
    with ``background_capture`` (``None``: the runner's default), leaves the larger sizes to a
    thread started at the end, once batch 1 is timed; the engine serves meanwhile, a batch of
    a size not captured yet running as several replays of those that are. ``background_capture=False``:
    every size is captured here, before serving (the old behaviour, for benchmarks of steady state).
    The fastest of the later reps, timed as the worker times a step (``step_with_look``: the
    exit graph where there is one, softmax and transfer included), seeds ``corrector``, so that the first real frames are predicted from this device
    rather than from the profile alone -- the fastest, because a stall here must not lock tight
    apps out.
    """
    device = getattr(runner, 'device', torch.device('cpu'))
    cuda = device.type == 'cuda'
    # the runner's GPU current for everything here (its streams, syncs and captures): a node on cuda:1
    # configured with cuda:0 current otherwise
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        _warm_up(runner, info, profile, corrector, cuda=cuda, max_batch=max_batch, reps=reps,
                 background_capture=background_capture)


def _warm_up(runner: 'StageRunner', info: 'ModelInfo', profile: 'Profile', corrector: 'LatencyCorrector', *,
             cuda: bool, max_batch: int, reps: int, background_capture: bool | None) -> None:
    if (cuda or getattr(runner, 'cuda_graphs', False)) and hasattr(runner, 'warmup'):
        # graph capture and kernel choice happen now: batch 1 or every size
        if background_capture is None:
            runner.warmup()
        else:
            runner.warmup(background=background_capture)
    h, w = info.input_size
    # A noise image, not zeros: all-zero activations can go subnormal and run 100x slower on CPUs.
    noise = np.random.default_rng(0).integers(0, 256, (h, w) if info.in_channels == 1 else (h, w, 3),
                                              dtype=np.uint8)
    x0 = preprocess([noise], info)
    best = [math.inf] * profile.num_exits
    for rep in range(reps):
        x = runner.to_input(x0)
        for k in range(profile.num_exits):
            t0 = time.perf_counter_ns()
            x, look = step_with_look(runner, k, x)
            look.cpu()
            runner.synchronize()
            if rep > 0 or reps == 1:
                best[k] = min(best[k], (time.perf_counter_ns() - t0) / 1e6)
    for k, ms in enumerate(best):
        corrector.update(k, 1, ms, profile.step_ms(k, 1))
    # after the timing above: the capture thread competes with it for the GIL and the GPU
    start_capture = getattr(runner, 'start_background_capture', None)
    if start_capture is not None:
        start_capture()
    if not cuda:
        warm_cpu_batch_sizes(runner, x0, num_exits=profile.num_exits, max_batch=max_batch)


def warm_cpu_batch_sizes(runner: 'StageRunner', x0: torch.Tensor, *, num_exits: int, max_batch: int,
                         budget_s: float = 3.0) -> None:
    """On CPU, run every step once at each batch size up to ``max_batch`` (within ``budget_s``).

    A size's first call builds its kernels (oneDNN primitives) and maps their code: at batch 8
    on this 2-core VM, +11 ms for fashion_mnist and +58 ms for cifar10_lite0 over the next
    calls. Done here, the first busy second does not pay for it, and the node's memory does not
    grow with its camera count for it (~8 MB of libtorch pages; benchmarks/cpu/memory_growth).
    """
    deadline = time.monotonic() + budget_s
    for b in range(2, max_batch + 1):
        if time.monotonic() > deadline:
            break
        x = runner.to_input(x0.expand(b, *x0.shape[1:]).contiguous())
        for k in range(num_exits):
            x = runner.stage(k, x)
            runner.head(k, x)
