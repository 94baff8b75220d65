"""The stage runner: a multi-exit model's stages and heads on one device, one call per step.

The engine serves through it and ``delen_profile`` times through it, so that a profile measures
exactly what the engine runs: same device, dtype, memory format and (optionally) CUDA graphs.

On CUDA the defaults are float16 and channels-last (cuDNN's fast NHWC kernels); on CPU float32.
Eager execution of a small batch on a GPU is bound by kernel launches (EfficientNet-Lite0 batch 1:
3.0 ms eager vs 0.5 ms as a CUDA graph on an H200), so ``cuda_graphs=True`` captures each (stage or
head, exit, batch size) once and replays it: inputs are copied into the graph's static buffer, a
smaller batch is padded up to the next captured size, and outputs are copied out (the static output
is overwritten by the next replay, while a request's features may be kept for later).

A size is captured on its first use, or by :meth:`StageRunner.warmup` before serving. Capturing is
slow (each module first runs eagerly at the new shape, and cuDNN chooses its kernels then: 0.3-2 s
a stage on an H200), so ``warmup`` can capture only the smallest size at once and leave the others
to a background thread (:meth:`StageRunner.start_background_capture`). Until a size is captured, a
batch that would pad up to it runs as several replays of the sizes captured already
(:func:`replay_plan`); never as an eager call of a new shape on the serving thread, which would pay
the kernel choice there.

Native first (``native_first``, the default with a background capture): cuDNN's set-up per shape is
nearly all of a capture's time, and PyTorch's own convolutions need none (H200, cifar10_lite0: the
eight batch-1 graphs in 0.14 s instead of 2.0-3.8 s). So ``warmup`` captures every size with cuDNN
off, then captures the larger sizes again with cuDNN, and each graph keeps whichever of the two
replays faster (native convolutions are as fast at batch 1 on an H200, 4x slower at 32). Big
batches then never run as chains of batch-1 replays while cuDNN sets up (the first 1-4 s of a
32-camera window on an H200 lost frames so). Batch 1 stays native unless ``trial_smallest`` asks for
its trial in the background: on an H200 it won 6 % at full depth at best (0.768 ms native), and its
cuDNN set-up held the GIL for the first 5-10 s of service beside the worker (py-spy: a third of the
node's Python samples in a 32-camera window), which cost frames.

Where the larger sizes' trials run (``trials_while_serving``): ``warmup`` ran them before serving
until session 18, which made ``cifar10_lite0``'s configure 4.4-5.7 s of warm-up on an H200 (cuDNN's
set-up, 0.5-1.8 s a stage at batch 32); in the background, the warm-up is 0.3 s and the trials end
~5 s into service, batch 32 running natively meanwhile (1.9 -> 3.9 ms at full depth). At 32 cameras x
30 Hz, 4 of 6 runs lost nothing, 2 lost 0.2-1 s of frames (up to 1.3 s late) while the trials ran,
against none of 4 with the trials before serving (session 18). Since session 21 the native graphs run the
1x1 convolutions as matrix products (``native_linear``: batch 32 full depth 1.7 ms, not 5.4) on a network
folded for inference, and the trials take ~2 s: the node's default is ``cudnn_trials:=serving`` (configure ->
first result 0.4-0.6 s; 32 cameras x 30 Hz at least 99 / 99 % in 8 of 8 node runs of session 22, 6 of them
100 / 100 %, two losing 0.4-0.5 % of frames while the trials ran, against 100 / 100 % and 100 / 99.7 % with the
trials before serving, which then configured in 4.8-5.6 s from a cold start), ``cudnn_trials:=configure`` the
trials before serving.

Pointwise as matmul (``pointwise_matmul``, the node's ``conv_kernels:=matmul``, session 20): the model's
1x1 convolutions become cuBLAS matrix products (``core/pointwise.py``), the rest run on PyTorch's own
kernels, NCHW, and cuDNN is never used: every size is captured in milliseconds and nothing is tried,
before serving or while (H200, ``cifar10_lite0`` full depth at batch 32: 2.25 ms, against cuDNN's 1.37
and PyTorch's convolutions' 6.1). The quick start: its slower steps cost tight bounds.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor, nn

from .flight_recorder import RECORDER
from .fold import FoldCount, fold_for_inference
from .pointwise import pointwise_as_matmul, pointwise_native_linear
from .thread_names import name_os_thread

if TYPE_CHECKING:
    from .multi_exit import MultiExitModel

__all__ = ['StageRunner', 'CaptureState', 'conv_backend', 'faster_backend', 'resolve_device', 'resolve_precision',
           'dtype_name', 'PRECISIONS', 'warm_cuda_libraries', 'graph_batch_sizes', 'padded_graph_sizes',
           'split_capture_sizes', 'capture_order', 'replay_plan', 'run_until_stopped', 'to_pinned', 'exit_look',
           'step_with_look']

_log = logging.getLogger(__name__)
_DEVICE = re.compile(r'auto|cpu|cuda(:\d+)?')
#: what ``precision`` may name (``'auto'``: :func:`resolve_precision` picks)
PRECISIONS = ('auto', 'float32', 'float16', 'bfloat16')
_Job = TypeVar('_Job')
# One capture under way at a time in the process, whatever runner or thread (PyTorch documents that
# restriction; and torch.cuda.graph's empty_cache, at a capture's start, fails while another capture
# is under way): a background capture, a first use's capture on the serving thread and another
# runner's warm-up take turns, one graph at a time.
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def conv_backend(cudnn: bool) -> Iterator[None]:
    """Convolutions inside run on cuDNN (true) or on PyTorch's own kernels (false).

    The flag is process-wide: it is only set under ``_CAPTURE_LOCK``, around a capture's warm-up and
    capture. Meanwhile the serving thread only replays graphs, which the flag does not touch.
    """
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = cudnn
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before


_libraries_lock = threading.Lock()
_libraries_warm: set[str] = set()


def warm_cuda_libraries(device: str | torch.device = 'cuda') -> bool:
    """Load what a process's first convolution on ``device`` loads (cuDNN and cuBLAS libraries,
    their handles), once per process; whoever calls meanwhile waits for it. False: no CUDA.

    About a second on an H200 host, otherwise paid by configure's first graph capture: the node
    calls this from its start, in the background, and again (a no-op, or a wait) before it captures,
    so that the two never overlap (work on the legacy default stream would break a capture).
    """
    if not torch.cuda.is_available():
        return False
    device = resolve_device(device)   # 'auto' and 'cuda' name the GPU index configure will use
    if device.type != 'cuda':
        return False
    with _libraries_lock:
        if str(device) in _libraries_warm:
            return True
        with torch.cuda.device(device):
            x = torch.randn(2, 16, 8, 8, device=device, dtype=torch.half).contiguous(memory_format=torch.channels_last)
            for w, groups in ((torch.randn(16, 16, 1, 1), 1), (torch.randn(16, 1, 3, 3), 16)):   # pointwise, depthwise
                w = w.to(device, torch.half).contiguous(memory_format=torch.channels_last)
                x = torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2, groups=groups)
            logits = torch.nn.functional.linear(x.mean((2, 3)), torch.randn(10, 16, device=device, dtype=torch.half))
            torch.softmax(logits.float(), dim=1).max(dim=1)[0].cpu()
            torch.cuda.synchronize(device)
        _libraries_warm.add(str(device))
        return True


def resolve_device(device: str | torch.device = 'auto') -> torch.device:
    """``'auto'`` (CUDA if available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` as a ``torch.device``.

    :raises ValueError: another string, or CUDA asked for where there is none (or no GPU N).
    """
    text = str(device)
    if not _DEVICE.fullmatch(text):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if text == 'auto':
        return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')
    dev = torch.device(text)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {text!r} asked for, but CUDA is not available')
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f'device {text!r}: only {torch.cuda.device_count()} CUDA device(s)')
        dev = torch.device('cuda', index)
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of weights and activations that ``precision`` names on ``device``.

    ``'auto'``: float16 on CUDA; on a CPU bfloat16 where it has AMX tiles (oneDNN's bfloat16 kernels
    run on them), else float32. On this project's Xeon (AMX) with one thread, bfloat16 took 0.60x the
    full depth of ``cifar10_resnet9`` at batch 1 and 0.26x at batch 8, 0.77x and 0.40x for
    ``cifar10_committee``; ``fashion_mnist`` at batch 1 is the exception (0.49 -> 0.67 ms: reorders
    cost more than its convolutions). Top-1 on the CIFAR-10 test photos moved by at most 0.1 points
    (``benchmarks/cpu/bfloat16``).

    :raises ValueError: an unknown name, or float16 on a CPU (its kernels are slow there).
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    if precision == 'auto':
        if device.type == 'cuda':
            return torch.float16
        return torch.bfloat16 if _cpu_has_amx() else torch.float32
    if precision == 'float16' and device.type != 'cuda':
        raise ValueError(f'precision float16 needs a CUDA device, got {device}')
    return getattr(torch, precision)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``'bfloat16'``: the name profiles record and :data:`PRECISIONS` use."""
    return str(dtype).removeprefix('torch.')


def _cpu_has_amx() -> bool:
    check = getattr(torch.cpu, '_is_amx_tile_supported', None)   # private, so looked up with care
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def graph_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes a CUDA graph is captured for: powers of two below ``max_batch``, and ``max_batch``.

    A batch is padded up to the next of these, so at most half of a replay is padding.
    """
    if max_batch < 1:
        raise ValueError(f'max_batch must be >= 1, got {max_batch!r}')
    sizes = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return tuple(sizes + [max_batch])


def padded_graph_sizes(max_batch: int, cost_ms: Callable[[int], float], *, tolerance: float = 2.0) -> tuple[int, ...]:
    """The fewest graph batch sizes for which padding a batch up costs less than ``tolerance`` x
    running it at its own size: 1, ``max_batch``, and the powers of two in between where the next
    larger kept size costs ``tolerance`` x or more.

    Every size costs a capture per stage and head at configure (~3 s a size for cifar10_lite0 on an
    H200), while a big GPU's replay time hardly grows with the batch (H200: 1.11 ms at 1, 1.75 ms at
    32 to the final exit): there this keeps (1, 32). On a small GPU, where time grows with the batch,
    it keeps every power of two, as :func:`graph_batch_sizes`.

    :param cost_ms: a batch size's time through the whole model (e.g. from the profile).
    """
    sizes = graph_batch_sizes(max_batch)
    kept = [sizes[-1]]
    for b in reversed(sizes[1:-1]):
        if cost_ms(kept[-1]) >= tolerance * cost_ms(b):
            kept.append(b)
    return tuple(sorted({1, *kept}))


def split_capture_sizes(graph_sizes: Sequence[int], *, background: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The graph sizes to capture before serving, and those left to the background, each ascending.

    With ``background``, only the smallest size (batch 1) is captured before serving: every batch
    can run as replays of it, and the larger sizes, captured smallest first, cut the replays a big
    batch needs one by one. Without, every size is captured before serving.

    >>> split_capture_sizes((8, 1, 2, 4), background=True)
    ((1,), (2, 4, 8))
    """
    sizes = tuple(sorted(set(graph_sizes)))
    if not sizes or sizes[0] < 1:
        raise ValueError(f'graph sizes must be >= 1 and at least one, got {tuple(graph_sizes)!r}')
    return (sizes[:1], sizes[1:]) if background else (sizes, ())


def capture_order(sizes: Sequence[int], num_exits: int) -> list[tuple[int, int]]:
    """(batch size, exit) pairs in the order the background captures them: sizes as given, and within
    a size exit 0, 1, ... (stage ``k``'s output is stage ``k+1``'s and head ``k``'s example input)."""
    return [(b, k) for b in sizes for k in range(num_exits)]


def replay_plan(n: int, captured: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """How a batch of ``n`` runs on the ``captured`` graph sizes: ``(rows, graph size)`` per replay, in order.

    One replay of the smallest captured size that holds ``n`` (rows padded up), when there is one;
    else ``ceil(n / L)`` replays of the largest captured size ``L`` -- the fewest there can be --
    with the ``n % L`` rows left over in a last replay padded up to the smallest captured size that
    holds them.

    >>> replay_plan(13, (1, 2, 4))
    ((4, 4), (4, 4), (4, 4), (1, 1))
    >>> replay_plan(7, (1, 4))
    ((4, 4), (3, 4))

    :raises ValueError: ``n < 1`` or nothing captured.
    """
    if n < 1:
        raise ValueError(f'batch must be >= 1, got {n!r}')
    sizes = sorted(set(captured))
    if not sizes or sizes[0] < 1:
        raise ValueError(f'captured sizes must be >= 1 and at least one, got {tuple(captured)!r}')
    fit = bisect.bisect_left(sizes, n)
    if fit < len(sizes):
        return ((n, sizes[fit]),)
    largest = sizes[-1]
    full, rest = divmod(n, largest)
    plan = [(largest, largest)] * full
    if rest:
        plan.append((rest, sizes[bisect.bisect_left(sizes, rest)]))
    return tuple(plan)


def faster_backend(native_ms: Sequence[float], cudnn_ms: Sequence[float]) -> str:
    """``'cudnn'`` or ``'native'``: the backend whose best replay was faster (native on a tie: it is
    what serves already). Best of several, alternated: the worker's replays share the GPU meanwhile
    and only ever slow a measurement down.

    >>> faster_backend([0.80, 0.79], [0.83, 0.82]), faster_backend([6.7, 6.9], [1.7, 1.6])
    ('native', 'cudnn')
    """
    if not native_ms or not cudnn_ms:
        raise ValueError('faster_backend needs at least one timing of each')
    return 'cudnn' if min(cudnn_ms) < min(native_ms) else 'native'


def run_until_stopped(jobs: Iterable[_Job], run: Callable[[_Job], None], stop: threading.Event, *,
                      gate: Callable[[], bool] | None = None, poll_s: float = 0.05) -> list[_Job]:
    """Run ``jobs`` in order, looking at ``stop`` before each (a job is never cut short); the jobs run.

    :param gate: before each job, wait (looking again every ``poll_s``) until it answers true.

    An exception of ``run`` propagates, after the jobs before it ran.
    """
    done: list[_Job] = []
    for job in jobs:
        while gate is not None and not stop.is_set() and not gate():
            stop.wait(poll_s)
        if stop.is_set():
            break
        run(job)
        done.append(job)
    return done


@dataclasses.dataclass(frozen=True)
class CaptureState:
    """Where a runner's background capture stands (:meth:`StageRunner.capture_state`)."""

    pending: tuple[int, ...]   # graph batch sizes left to the background and not all captured yet
    running: bool              # the capture thread is alive
    seconds: float             # spent capturing in the background so far, s (all runs together)
    error: str | None          # why the last run gave up (the sizes it did not reach stay pending), or None
    to_upgrade: tuple[int, ...] = ()   # sizes captured natively that are still to be tried on cuDNN

    @property
    def settled(self) -> bool:
        """Every size captured and every cuDNN trial done: the graphs are those that will serve."""
        return not self.pending and not self.to_upgrade

    @property
    def done(self) -> bool:
        """Nothing left to capture in the background."""
        return not self.pending


class _Graph:
    """One captured call ``module(static_in) -> static_out`` of a fixed batch size.

    :param stream: the capture stream; ``None``: a new one on the example's device, through
        ``torch.cuda.graph`` (its device-wide synchronisation and ``empty_cache``: before serving).
        A background capture passes its
        own and skips both: they would stall the serving worker (``empty_cache`` hands back the
        worker's cached blocks, so that its next allocations call ``cudaMalloc``).
    :param keep_output: keep the eager warm-up's output as ``warm_output`` (the example input of the
        next module of a chain); else ``warm_output`` is ``None``.
    :param cudnn: convolutions on cuDNN (else PyTorch's own kernels), for the warm-up and the capture.
    """

    def __init__(self, module: nn.Module, example: Tensor, batch: int, *, pool, as_float: bool,
                 stream: torch.cuda.Stream | None = None, keep_output: bool = False, cudnn: bool = True):
        with conv_backend(cudnn):
            self._capture(module, example, batch, pool=pool, as_float=as_float, stream=stream, keep_output=keep_output)
        self.cudnn = cudnn

    def _capture(self, module: nn.Module, example: Tensor, batch: int, *, pool, as_float: bool,
                 stream: torch.cuda.Stream | None, keep_output: bool) -> None:
        shape = (batch,) + tuple(example.shape[1:])
        fmt = torch.channels_last if example.dim() == 4 and example.is_contiguous(memory_format=torch.channels_last) \
            and not example.is_contiguous() else torch.contiguous_format
        self.static_in = torch.zeros(shape, dtype=example.dtype, device=example.device).contiguous(memory_format=fmt)
        self.static_in[:example.shape[0]].copy_(example[:batch])
        # Warm up on a side stream (as torch.cuda.graphs documents): lazy initialisation and
        # cuDNN's algorithm choice must happen outside the capture.
        current = torch.cuda.current_stream(example.device)
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                out = module(self.static_in)
        current.wait_stream(side)
        if keep_output:
            out.record_stream(current)   # made on the side stream, read on this one
        self.warm_output: Tensor | None = out if keep_output else None
        del out
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a node's preprocessing, the serving worker's
        # replays) may go on meanwhile; only this thread's unsafe calls would break the capture.
        if stream is None:
            # A capture stream on the example's device, and that device current: torch.cuda.graph's
            # own default stream is made once per process on whatever device is current then, so a
            # second GPU's graphs were captured on the first's stream and the capture invalidated
            # (H200 x2, session 18: every configure on cuda:1 failed).
            with torch.cuda.device(example.device), torch.cuda.graph(
                    self.graph, pool=pool, stream=torch.cuda.Stream(device=example.device),
                    capture_error_mode='thread_local'):
                out = module(self.static_in)
                self.static_out = out.float() if as_float else out
        else:
            with torch.cuda.stream(stream):
                self.graph.capture_begin(pool=pool, capture_error_mode='thread_local')
                try:
                    out = module(self.static_in)
                    self.static_out = out.float() if as_float else out
                finally:
                    self.graph.capture_end()
        self.batch = batch

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        self.graph.replay()
        return self.static_out[:n].clone()

    def replay_ms(self, reps: int = 5) -> float:
        """Mean time of ``reps`` bare replays on the current stream, ms (CUDA events)."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            self.graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / reps


def exit_look(logits: Tensor) -> Tensor:
    """An exit's look at its logits: an ``N x 2`` float32 tensor, each row the top softmax probability
    and its class id (exact in float32 for any class count a head has). One tensor, so that the host
    copies and reads one, not two."""
    confidence, class_id = torch.softmax(logits.float(), dim=1).max(dim=1)
    return torch.stack((confidence, class_id.to(confidence.dtype)), dim=1)


def step_with_look(runner: 'StageRunner', k: int, x: Tensor, *, keep_features: bool = True
                   ) -> tuple[Tensor | None, Tensor]:
    """Stage ``k``'s features (``None`` unless ``keep_features``) and exit ``k``'s look (:func:`exit_look`) at
    every row of ``x``: one graph replay where the runner has an exit graph for ``x``
    (:meth:`StageRunner.exit_step`), else the stage, the head and the look apart. The engine's step, and the
    warm-up's timing of it (any runner with ``stage`` and ``head``)."""
    fused = getattr(runner, 'exit_step', None)
    out = fused(k, x, keep_features=keep_features) if fused is not None else None
    if out is not None:
        return out
    features = runner.stage(k, x)
    return (features if keep_features else None), exit_look(runner.head(k, features))


class _StageExit(nn.Module):
    """Stage ``k``, its head and the exit's look as one module, to be captured as one graph."""

    def __init__(self, stage: nn.Module, head: nn.Module):
        super().__init__()
        self.stage, self.head = stage, head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.stage(x)
        return features, exit_look(self.head(features))


def to_pinned(tensor: Tensor) -> Tensor:
    """An asynchronous copy of a device tensor into pinned host memory, valid once its stream gets there."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor, non_blocking=True)


class StageRunner:
    """Runs a :class:`~delen_ros.core.multi_exit.MultiExitModel` step by step on one device.

    :param model: the model; it is moved to ``device`` / dtype / memory format here (in place).
    :param device: ``'auto'`` (CUDA if available), ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    :param half: float16 weights and activations; ``None``: on CUDA yes, on CPU no (CPU float16
        kernels are slow). ``True`` on CPU raises ``ValueError``. Shorthand for ``precision``:
        ``True`` is ``'float16'``, ``False`` ``'float32'``.
    :param precision: one of :data:`PRECISIONS` (:func:`resolve_precision`); ``None``: as ``half``
        says. Giving both raises ``ValueError``.
    :param channels_last: NHWC memory format; ``None``: yes, but with ``pointwise_matmul``. On CPU too
        (oneDNN): on an Intel Xeon's two cores full depth took 0.79-1.00x the time at batch 1 and
        0.64-0.95x at batch 8, for every shipped model in two runs (``benchmarks/cpu/channels_last``).
    :param cuda_graphs: capture and replay CUDA graphs (CUDA only; ignored on CPU). Each
        (stage/head, exit, batch size of ``graph_sizes``) is captured on first use or by
        :meth:`warmup`; a larger batch than ``max_batch`` runs eagerly.
    :param max_batch: the largest batch a graph is captured for.
    :param graph_sizes: batch sizes captured (a batch is padded up to the next); ``None``:
        :func:`graph_batch_sizes` (:func:`padded_graph_sizes` gives fewer, from measured costs).
    :param background_capture: what :meth:`warmup` does by default with CUDA graphs: capture the
        smallest size only and leave the others to :meth:`start_background_capture`; false: capture
        every size in ``warmup`` (slower to start; what a benchmark of steady state may want).
    :param native_first: with a background capture, ``warmup`` captures every size with cuDNN off
        (in milliseconds) and tries cuDNN for each graph of the larger sizes, keeping the faster.
        Without a background capture, graphs use cuDNN.
    :param trial_smallest: with ``native_first``, also try cuDNN for the smallest size's graphs, in
        the background while serving (see the module's notes); false: they stay native.
    :param trials_while_serving: with ``native_first``, the larger sizes' cuDNN trials too are left
        to the background, largest first, so that ``warmup`` takes milliseconds instead of seconds
        (issue 8's configure -> first result); the first seconds of service then run those sizes
        natively, beside the trials.
    :param pointwise_matmul: serve the model's 1x1 convolutions as matrix products and the others on
        PyTorch's own kernels (the model is changed in place), NCHW unless ``channels_last`` says
        otherwise; graphs never use cuDNN, so there is nothing to try (``native_first``,
        ``trial_smallest`` and ``trials_while_serving`` do not apply). Eager calls (``cuda_graphs``
        false, or a batch over ``max_batch``) may still use cuDNN for the other convolutions.
    :param fold_batch_norms: fold the model's batch norms into its convolutions and its symmetric
        "same" padding into them (:func:`~delen_ros.core.fold.fold_for_inference`; in place, so the
        model is for serving only from then on): the same outputs with fewer passes over the features.
    :param native_linear: on CUDA with cuDNN's kernels (not ``pointwise_matmul``): the graphs captured with
        cuDNN off run the 1x1 convolutions of batches of 4 or more as cuBLAS matrix products
        (:class:`~delen_ros.core.pointwise.PointwiseNative`) rather than on PyTorch's slow 1x1 convolution
        (H200, ``cifar10_lite0`` folded, batch 32 full depth: 1.70 against 5.45 ms): what serves until, or
        where, cuDNN's graphs are not faster.

    All calls run under ``torch.inference_mode()``. Calls are asynchronous on CUDA: time them
    between :meth:`synchronize` calls. One thread serves (calls :meth:`stage` and :meth:`head`);
    the background capture is the only other thread that touches the graphs.
    """

    def __init__(self, model: 'MultiExitModel', *, device: str | torch.device = 'cpu', half: bool | None = None,
                 channels_last: bool | None = None, cuda_graphs: bool = False, max_batch: int = 32,
                 graph_sizes: Sequence[int] | None = None, background_capture: bool = True,
                 native_first: bool = True, trial_smallest: bool = False, trials_while_serving: bool = False,
                 pointwise_matmul: bool = False, fold_batch_norms: bool = True, native_linear: bool = True,
                 precision: str | None = None):
        self.device = resolve_device(device)
        cuda = self.device.type == 'cuda'
        if precision is not None and half is not None:
            raise ValueError(f'give half or precision, not both (half={half!r}, precision={precision!r})')
        if precision is None:
            half = cuda if half is None else half
            if half and not cuda:
                raise ValueError(f'half=True needs a CUDA device, got {self.device}')
            precision = 'float16' if half else 'float32'
        self.dtype = resolve_precision(precision, self.device)
        self.pointwise_matmul = bool(pointwise_matmul)
        # Both change the model in place, before prepare, so that the new parameters move with the rest.
        self.folded: FoldCount | None = fold_for_inference(model.eval()) if fold_batch_norms else None
        if self.pointwise_matmul:
            pointwise_as_matmul(model)   # after folding: the matrix products take the folded biases
        # NCHW for matrix products (channels-last: 2.8 against 2.25 ms at batch 32 on an H200)
        self.channels_last = (not self.pointwise_matmul) if channels_last is None else bool(channels_last)
        # the native graphs (cuDNN off) run 1x1 convolutions as matrix products
        self.native_linear = bool(native_linear) and cuda and not self.pointwise_matmul
        if self.native_linear:
            pointwise_native_linear(model)
        self.max_batch = max_batch
        self.graph_sizes = tuple(sorted(set(graph_sizes))) if graph_sizes else graph_batch_sizes(max_batch)
        if self.graph_sizes[0] < 1 or self.graph_sizes[-1] != max_batch:
            raise ValueError(f'graph sizes must be >= 1 and end at max_batch {max_batch}, got {self.graph_sizes}')
        self.cuda_graphs = bool(cuda_graphs) and cuda
        self.background_capture = bool(background_capture)
        #: called before each cuDNN trial of the background capture: it waits until this answers true
        #: (the engine's: its worker waits for frames). None: trials run back to back.
        self.trial_gate: Callable[[], bool] | None = None
        self.native_first = bool(native_first)
        self.trial_smallest = bool(trial_smallest)
        self.trials_while_serving = bool(trials_while_serving)
        # Sleep in CUDA waits instead of spinning (synchronize). H200, 16-32 cameras x 30 Hz, four
        # pairs in session 13: the worker thread's CPU per frame 10-42 % lower, no result later;
        # DELEN_BLOCKING_SYNC=0 spins (CUDA's default with one context on a many-core host).
        self.blocking_sync = os.environ.get('DELEN_BLOCKING_SYNC', '1') != '0'
        # Exit graphs (exit_step): stage, head and look in one replay at the smallest size, where a lone
        # frame's every CUDA call costs ~50-100 us on a host just woken; DELEN_EXIT_GRAPHS=0, an A/B.
        self.exit_graphs = self.cuda_graphs and os.environ.get('DELEN_EXIT_GRAPHS', '1') != '0'
        self._exit_graphs: dict[int, _Graph] = {}   # exit -> its graph at the smallest size
        self.model = model.prepare(self.device, dtype=self.dtype, channels_last=self.channels_last)
        self.num_exits = model.num_exits
        # Read by the serving thread while the background thread adds to it: a graph is put in only
        # once captured and its buffers are ready, by one dict assignment (atomic under the GIL);
        # the serving thread only looks keys up (never iterates, which another thread's insertion
        # would break).
        self._graphs: dict[tuple[str, int, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._deferred: frozenset[int] = frozenset()   # sizes warmup left to the background
        self._capture_thread: threading.Thread | None = None
        self._capture_stop = threading.Event()
        self._capture_ns = 0
        self._capture_error: str | None = None
        # Native first: set by warmup when a background capture follows; the sizes whose cuDNN
        # trial is still to come, and each trial's timings (key -> (native ms, cuDNN ms), best of).
        self._capture_native = self.pointwise_matmul   # matmul graphs never use cuDNN, whatever warmup does
        self._to_upgrade: frozenset[int] = frozenset()
        self._trials: dict[tuple[str, int, int], tuple[float, float]] = {}

    def __repr__(self) -> str:
        return (f'StageRunner({self.model.info.name!r}, device={str(self.device)!r}, dtype={self.dtype}, '
                f'channels_last={self.channels_last}, cuda_graphs={self.cuda_graphs}, '
                f'pointwise_matmul={self.pointwise_matmul})')

    @property
    def graph_count(self) -> int:
        """CUDA graphs captured so far."""
        return len(self._graphs)

    def _check(self, k: int) -> None:
        if not 0 <= k < self.num_exits:
            raise IndexError(f'exit index {k!r} out of range for {self.num_exits} exits')

    # --- the calls -----------------------------------------------------------------------------------------
    def to_input(self, cpu_batch: Tensor) -> Tensor:
        """A preprocessed float batch (N x C x H x W, on the CPU or already on the device) on this
        runner's device, dtype and memory format; the copy is asynchronous when the batch is pinned."""
        if cpu_batch.dim() != 4 or cpu_batch.shape[1] != self.model.info.in_channels:
            raise ValueError(f'expected an N x {self.model.info.in_channels} x H x W batch, got shape {tuple(cpu_batch.shape)}')
        if not cpu_batch.is_floating_point():
            raise ValueError(f'expected a float batch (preprocessed), got dtype {cpu_batch.dtype}')
        # Copy first, convert on the device: a float16 conversion on the CPU would be slower than
        # the bytes it saves.
        x = cpu_batch.to(self.device, non_blocking=cpu_batch.device.type == 'cpu' and cpu_batch.is_pinned())
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(dtype=self.dtype, memory_format=fmt)

    def stage(self, k: int, x: Tensor) -> Tensor:
        """Stage ``k``'s features from stage ``k-1``'s (or from :meth:`to_input`'s batch for ``k = 0``)."""
        self._check(k)
        return self._call('stage', k, self.model.stages[k], x, as_float=False)

    def head(self, k: int, features: Tensor) -> Tensor:
        """Exit ``k``'s logits (N x num_classes, float32) from stage ``k``'s features."""
        self._check(k)
        return self._call('head', k, self.model.heads[k], features, as_float=True)

    def exit_step(self, k: int, x: Tensor, *, keep_features: bool = True) -> tuple[Tensor | None, Tensor] | None:
        """Stage ``k`` and exit ``k``'s look (:func:`exit_look`) as one graph replay, where one serves ``x``:
        ``(features, look)``, the features ``None`` unless ``keep_features``, the look a view of the graph's
        output, valid until the next call for this exit (copy it to the host before). ``None`` where no
        exit graph serves ``x`` (on CPU, without graphs, above the smallest size): call :meth:`stage` and
        :meth:`head`.

        A lone frame on a host just woken paid ~50-100 us for each CUDA call (session 29's
        ``host_ops.py``); stage and head as two graphs cost six (a copy in, a replay and a copy out each)
        and the softmax and max two more, where this costs a copy in, a replay and the features' copy out.
        """
        graph = self._exit_graphs.get(k) if x.shape[0] <= self.graph_sizes[0] else None
        if graph is None or x.device != self.device or graph.static_in.shape[1:] != x.shape[1:] \
                or graph.static_in.dtype != x.dtype:
            return None
        with torch.inference_mode():
            n = x.shape[0]
            graph.static_in[:n].copy_(x)
            graph.graph.replay()
            features, look = graph.static_out
            return (features[:n].clone() if keep_features else None), look[:n]

    def synchronize(self) -> None:
        """Wait for the work queued on this thread's current stream (no-op on CPU).

        A stream's wait, not a device-wide one: uploads on the preprocessor's own stream and other
        threads' work go on meanwhile. With ``blocking_sync`` the thread sleeps in the wait (a
        blocking CUDA event) instead of spinning: CUDA's default with one context on a many-core
        host is to spin, a whole core while the GPU works (H200, 32 cameras: the worker thread was
        on the CPU for 60 % of a window, most of it inside such waits).
        """
        if self.device.type != 'cuda':
            return
        if self.blocking_sync:
            done = torch.cuda.Event(blocking=True)
            done.record(torch.cuda.current_stream(self.device))
            done.synchronize()
        else:
            torch.cuda.current_stream(self.device).synchronize()

    def to_host(self, tensor: Tensor) -> Tensor:
        """``tensor`` on the CPU. With ``blocking_sync`` on CUDA, an asynchronous copy into pinned
        memory, valid after the next :meth:`synchronize` (a plain ``.cpu()`` would wait, spinning);
        else ``tensor.cpu()``."""
        if self.device.type != 'cuda' or not self.blocking_sync or tensor.device.type != 'cuda':
            return tensor.cpu()
        return to_pinned(tensor)

    def warmup(self, batch_sizes: Sequence[int] | None = None, *, background: bool | None = None) -> None:
        """Run every stage and head once per batch size (capturing their graphs, if enabled), so that
        the first served frames don't pay for capture or cuDNN's algorithm search.

        :param batch_sizes: ``None``: the graph sizes up to ``max_batch``.
        :param background: with CUDA graphs and ``batch_sizes=None``: run only the smallest graph
            size now and leave the others to :meth:`start_background_capture` (call it when the
            first timings are done: the capture thread competes for the GIL and the GPU); false:
            every size now (a background capture under way is stopped first). ``None``: the
            constructor's ``background_capture``.
        """
        background = self.background_capture if background is None else background
        sizes = tuple(batch_sizes or self.graph_sizes)
        if self.cuda_graphs and batch_sizes is None:
            if not background:
                self.stop_background_capture(timeout=None)
            sizes, later = split_capture_sizes(self.graph_sizes, background=background)
            self._capture_native = (background and self.native_first) or self.pointwise_matmul
            if self._capture_native:
                # every size now, natively (milliseconds); cuDNN tried below for the larger sizes and,
                # with trial_smallest, in the background for the smallest (see the module's notes)
                sizes, later = self.graph_sizes, ()
            self._deferred = frozenset(later)   # before the calls below: they must not capture these
            trials = self._capture_native and not self.pointwise_matmul
            self._to_upgrade = frozenset(self.graph_sizes[:1] if trials and self.trial_smallest else ())
            if trials and self.trials_while_serving:
                self._to_upgrade |= frozenset(self.graph_sizes[1:])
        # Most of this is each convolution's first call at a new shape (kernel choice, ~0.3-0.8 s a
        # stage on an H200). PyTorch keeps those choices per thread: choosing them in parallel
        # threads first did not shorten the captures (H200: 12.3 s instead of 6.2 s).
        for b in sizes:
            x = self._zero_batch(b)
            for k in range(self.num_exits):
                if self.exit_graphs and b == self.graph_sizes[0]:
                    self._capture_exit(k, x)
                x = self.stage(k, x)
                self.head(k, x)
        self.synchronize()
        if self.cuda_graphs and batch_sizes is None and self._capture_native and not self.trials_while_serving \
                and not self.pointwise_matmul:
            # Before serving, not while: tried in the background as the node served 32 cameras on
            # an H200, the larger sizes' trials (~9 s) overlapped the first seconds of service, at
            # 4x the batch-32 cost meanwhile. The largest first: where cuDNN wins most.
            for b in reversed(self.graph_sizes[1:]):
                x = self._zero_batch(b)
                for k in range(self.num_exits):
                    x = self._try_cudnn_pair(b, k, x, stream=None, sync=self.synchronize)

    # --- the background capture ------------------------------------------------------------------------
    def start_background_capture(self) -> bool:
        """Capture the sizes :meth:`warmup` left pending on a thread of its own, smallest first;
        the runner serves meanwhile. Each (stage, head) pair of a size is used as soon as it is
        captured. True if a thread was started (false: nothing pending, or one is running).
        """
        if not self.cuda_graphs or not (self._pending() or self._to_upgrade) or self.capture_state().running:
            return False
        self._capture_stop = stop = threading.Event()   # a fresh flag: an old thread keeps its own
        self._capture_error = None
        self._capture_thread = threading.Thread(target=self._capture_in_background, args=(stop,),
                                                name='delen-capture', daemon=True)
        self._capture_thread.start()
        return True

    def stop_background_capture(self, timeout: float | None = 5.0) -> bool:
        """Ask the capture thread to stop after the capture under way (0.3-2 s on an H200) and wait
        up to ``timeout`` s for it (``None``: as long as it takes; 0: don't wait). What it has not
        captured stays pending (:meth:`start_background_capture` resumes). True if no thread runs.
        """
        self._capture_stop.set()
        thread = self._capture_thread
        if thread is not None and timeout != 0:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def wait_background_capture(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s (``None``: as long as it takes) for the capture thread to end;
        true if nothing is left pending."""
        thread = self._capture_thread
        if thread is not None:
            thread.join(timeout)
        return not self._pending()

    def capture_state(self) -> CaptureState:
        """Whether the background capture is done, running, how long it took and why it stopped."""
        thread = self._capture_thread
        return CaptureState(pending=self._pending(), running=thread is not None and thread.is_alive(),
                            seconds=self._capture_ns / 1e9, error=self._capture_error,
                            to_upgrade=tuple(sorted(self._to_upgrade)))

    def conv_backends(self) -> dict[tuple[str, int, int], str]:
        """Each captured graph's convolutions: ``'cudnn'`` or ``'native'``, by (kind, exit, batch)."""
        return {key: 'cudnn' if graph.cudnn else 'native' for key, graph in list(self._graphs.items())}

    def cudnn_trials(self) -> dict[tuple[str, int, int], tuple[float, float]]:
        """The background's cuDNN trials so far: (native ms, cuDNN ms) per graph, best replays."""
        return dict(self._trials)

    def _pending(self) -> tuple[int, ...]:
        return tuple(b for b in sorted(self._deferred) if not self._size_captured(b))

    def _size_captured(self, b: int) -> bool:
        return all((kind, k, b) in self._graphs for k in range(self.num_exits) for kind in ('stage', 'head'))

    def _capture_in_background(self, stop: threading.Event) -> None:
        name_os_thread()
        t0 = time.perf_counter_ns()
        try:
            with self._capture_thread_context() as (capture_stream, sync), torch.inference_mode():
                chain: dict[str, object] = {}   # the size under way: its pool and next example

                def capture(job: tuple[int, int]) -> None:
                    b, k = job
                    if k == 0:
                        # A pool of its own per size. Graphs captured into one pool are handed
                        # each other's freed memory for their temporaries: safe only while they
                        # are replayed one at a time, each output copied out before the next
                        # replay (PyTorch documents sharing for graphs captured and replayed in one
                        # order, never concurrently). The serving thread's graphs are; these are
                        # captured on another thread while the worker replays. In a pool of their
                        # own they can never be given memory that a graph the worker replays uses,
                        # whatever the interleaving, and a size given up frees its memory with its
                        # graphs. The cost: one batch's temporaries per size, small next to the
                        # weights here.
                        chain.update(pool=self._new_pool(), x=self._zero_batch(b))
                    chain['x'] = self._capture_pair(b, k, chain['x'], pool=chain['pool'],
                                                    stream=capture_stream, sync=sync)

                def try_cudnn(job: tuple[int, int]) -> None:
                    b, k = job
                    if k == 0:
                        chain['x'] = self._zero_batch(b)
                    chain['x'] = self._try_cudnn_pair(b, k, chain['x'], stream=capture_stream, sync=sync)
                    if k == self.num_exits - 1:
                        self._to_upgrade = self._to_upgrade - {b}   # a new set: capture_state reads it

                run_until_stopped(capture_order(self._pending(), self.num_exits), capture, stop)
                if not self._pending() and self._to_upgrade:   # every size serves at full batch: now cuDNN's trials
                    # the largest first, as before serving: where cuDNN wins most
                    run_until_stopped(capture_order(sorted(self._to_upgrade, reverse=True), self.num_exits),
                                      try_cudnn, stop, gate=self.trial_gate)
                    if not self._to_upgrade:
                        backends = self.conv_backends()
                        _log.info('CUDA graphs settled after %.1f s in the background: %d of %d on cuDNN, the '
                                  'others on native convolutions (faster there)',
                                  (self._capture_ns + time.perf_counter_ns() - t0) / 1e9,
                                  sum(b == 'cudnn' for b in backends.values()), len(backends))
        except Exception as exc:  # noqa: BLE001 -- serving goes on with the sizes captured
            _log.exception('background graph capture stopped; sizes %s stay pending', self._pending())
            self._capture_error = f'{type(exc).__name__}: {exc}'
        finally:
            self._capture_ns += time.perf_counter_ns() - t0

    def _capture_pair(self, b: int, k: int, x: Tensor, *, pool, stream, sync: Callable[[], None]) -> Tensor:
        """Capture stage ``k`` and head ``k`` at batch ``b`` from stage ``k``'s example input ``x``
        (those captured already are kept), put them in use, and return stage ``k``'s output."""
        stage_key, head_key = ('stage', k, b), ('head', k, b)
        t0 = time.perf_counter_ns()
        made: dict[tuple[str, int, int], _Graph] = {}
        with _CAPTURE_LOCK:
            if stage_key in self._graphs:   # a first use captured it: its output, eagerly
                y = self.model.stages[k](x)
            else:
                graph = made[stage_key] = _Graph(self.model.stages[k], x, b, pool=pool, as_float=False,
                                                 stream=stream, keep_output=True, cudnn=not self._capture_native)
                y, graph.warm_output = graph.warm_output, None
        with _CAPTURE_LOCK:
            if head_key not in self._graphs:
                made[head_key] = _Graph(self.model.heads[k], y, b, pool=pool, as_float=True, stream=stream,
                                        cudnn=not self._capture_native)
        # The static inputs were filled on this thread's stream: let that finish before the
        # serving thread (on its own stream) may write them.
        sync()
        for key, graph in made.items():
            self._graphs[key] = graph   # publish: one atomic assignment under the GIL
        if RECORDER is not None:
            RECORDER.add('capture', t0, time.perf_counter_ns(), batch=b, exit=k)
        return y

    def _try_cudnn_pair(self, b: int, k: int, x: Tensor, *, stream, sync: Callable[[], None],
                        rounds: int = 3) -> Tensor:
        """Capture stage ``k`` and head ``k`` at batch ``b`` on cuDNN, and twins of the native graphs
        that serve (the served ones are the worker's: never replayed here); time each pair in
        alternation and put a cuDNN graph in use where it replays faster. Returns stage ``k``'s output.

        The pair's cuDNN graphs get a pool of their own: they are replayed here, for timing, while
        the worker may replay graphs published before (graphs sharing a pool must never be
        replayed concurrently; this ran wrong answers on an H200 with a pool per size)."""
        t0 = time.perf_counter_ns()
        pool, twin_pool = self._new_pool(), self._new_pool()   # the twins' is dropped with them
        pairs: dict[str, tuple[_Graph, _Graph]] = {}
        with _CAPTURE_LOCK:
            cudnn_stage = _Graph(self.model.stages[k], x, b, pool=pool, as_float=False, stream=stream,
                                 keep_output=True, cudnn=True)
            y, cudnn_stage.warm_output = cudnn_stage.warm_output, None
        with _CAPTURE_LOCK:
            pairs['stage'] = (_Graph(self.model.stages[k], x, b, pool=twin_pool, as_float=False, stream=stream,
                                     cudnn=False), cudnn_stage)
        with _CAPTURE_LOCK:
            pairs['head'] = (_Graph(self.model.heads[k], y, b, pool=twin_pool, as_float=True, stream=stream,
                                    cudnn=False),
                             _Graph(self.model.heads[k], y, b, pool=pool, as_float=True, stream=stream, cudnn=True))
        sync()
        for kind, (native, cudnn) in pairs.items():
            native_ms, cudnn_ms = [], []
            for _ in range(rounds):
                native_ms.append(native.replay_ms())
                cudnn_ms.append(cudnn.replay_ms())
            self._trials[kind, k, b] = (min(native_ms), min(cudnn_ms))
            served = self._graphs.get((kind, k, b))
            if faster_backend(native_ms, cudnn_ms) == 'cudnn' and served is not None and not served.cudnn:
                self._graphs[kind, k, b] = cudnn   # publish: one atomic assignment under the GIL
        if RECORDER is not None:
            RECORDER.add('cudnn_trial', t0, time.perf_counter_ns(), batch=b, exit=k)
        return y

    @contextlib.contextmanager
    def _capture_thread_context(self) -> Iterator[tuple[torch.cuda.Stream, Callable[[], None]]]:
        """The capture thread's CUDA setting: this runner's device (the current device is per
        thread) and a stream of its own for its copies, so that they neither wait for the serving
        thread's work nor make it wait; yields a capture stream and that stream's ``synchronize``."""
        torch.cuda.set_device(self.device)
        stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.stream(stream):
            yield torch.cuda.Stream(device=self.device), stream.synchronize

    def _capture_exit(self, k: int, x: Tensor) -> None:
        """Capture exit ``k``'s graph for :meth:`exit_step` at the smallest size, from stage ``k``'s
        example input ``x``, on the kernels the stage's graphs are captured with now (the smallest size
        stays native unless ``trial_smallest``; this one does not follow a trial). Into the serving
        thread's pool: its output is a live tensor, never handed to another graph."""
        if k in self._exit_graphs:
            return
        module = _StageExit(self.model.stages[k], self.model.heads[k])
        with _CAPTURE_LOCK, torch.inference_mode():
            self._exit_graphs[k] = _Graph(module, x, self.graph_sizes[0], pool=self._pool, as_float=False,
                                          cudnn=not self._capture_native)

    def _new_pool(self):
        return torch.cuda.graph_pool_handle()

    def _zero_batch(self, b: int) -> Tensor:
        """A batch of ``b`` zero inputs on this runner's device: the example a capture starts from."""
        info = self.model.info
        return self.to_input(torch.zeros(b, info.in_channels, *info.input_size))

    # --- internals ---------------------------------------------------------------------------------------------
    def _call(self, kind: str, k: int, module: nn.Module, x: Tensor, *, as_float: bool) -> Tensor:
        with torch.inference_mode():
            n = x.shape[0]
            if not self.cuda_graphs or n > self.max_batch or x.device != self.device:
                out = module(x)
                return out.float() if as_float else out
            size = self.graph_sizes[bisect.bisect_left(self.graph_sizes, n)]
            graph = self._graphs.get((kind, k, size))
            if graph is not None:
                return self._replay(graph, kind, k, x)
            if size in self._deferred:
                # Left to the background and not captured yet: replays of the sizes that are.
                captured = [s for s in self.graph_sizes if (kind, k, s) in self._graphs]
                if captured:
                    return self._replay_chunks(kind, k, x, captured)
            with _CAPTURE_LOCK:
                graph = self._graphs.get((kind, k, size))   # the background may have captured it meanwhile
                if graph is None:
                    graph = self._graphs[kind, k, size] = _Graph(module, x, size, pool=self._pool, as_float=as_float,
                                                                 cudnn=not self._capture_native)
            return self._replay(graph, kind, k, x)

    def _replay_chunks(self, kind: str, k: int, x: Tensor, captured: Sequence[int]) -> Tensor:
        outs, start = [], 0
        for rows, size in replay_plan(x.shape[0], captured):
            outs.append(self._replay(self._graphs[kind, k, size], kind, k, x[start:start + rows]))
            start += rows
        return torch.cat(outs)

    @staticmethod
    def _replay(graph: _Graph, kind: str, k: int, x: Tensor) -> Tensor:
        if graph.static_in.shape[1:] != x.shape[1:] or graph.static_in.dtype != x.dtype:
            raise ValueError(f'{kind} {k}: input {tuple(x.shape)} {x.dtype} does not fit the captured '
                             f'{tuple(graph.static_in.shape)} {graph.static_in.dtype}')
        return graph(x)
