"""The stage runner: a multi-exit model's stages and heads on one device, one call per step.

The engine serves through it and ``delen_profile`` times through it, so that a profile measures
exactly what the engine runs: same device, dtype, memory format and (optionally) CUDA graphs.

On CUDA the defaults are float16 and channels-last (cuDNN's fast NHWC kernels); on CPU float32.
Eager execution of a small batch on a GPU is bound by kernel launches (EfficientNet-Lite0 batch 1:
3.0 ms eager vs 0.5 ms as a CUDA graph on an H200), so ``cuda_graphs=True`` captures each (stage or
head, exit, batch size) once and replays it: inputs are copied into the graph's static buffer, a
smaller batch is padded up to the next captured size, and outputs are copied out (the static output
is overwritten by the next replay, while a request's features may be kept for later).

Capturing every size takes long (48 graphs, ~20 s on an H200 at ``max_batch`` 32), so with
``background_graphs=True`` :meth:`StageRunner.warmup` captures batch 1 only and
:meth:`StageRunner.capture_in_background` captures the other sizes on a thread of their own while
the runner serves; until a size's graph exists, its calls run eagerly.
"""
from __future__ import annotations

import bisect
import contextlib
import logging
import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .multi_exit import MultiExitModel

__all__ = ['StageRunner', 'resolve_device', 'graph_batch_sizes', 'GraphSet']

_log = logging.getLogger(__name__)
_DEVICE = re.compile(r'auto|cpu|cuda(:\d+)?')


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


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


class _Graph:
    """One captured call ``module(static_in) -> static_out`` of a fixed batch size."""

    def __init__(self, module: nn.Module, example: Tensor, batch: int, *, pool, as_float: bool,
                 capture: torch.cuda.Stream):
        shape = (batch,) + tuple(example.shape[1:])
        device = example.device
        current = torch.cuda.current_stream(device)
        self.static_in = torch.zeros(shape, dtype=example.dtype, device=device) \
            .contiguous(memory_format=_memory_format(example))
        self.static_in[:example.shape[0]].copy_(example[:batch])
        # Warm up on a side stream (as torch.cuda.graphs documents): lazy initialisation and
        # cuDNN's algorithm choice must happen outside the capture. The caller's stream if it has
        # its own (the background thread), else a fresh one.
        side = torch.cuda.Stream(device=device) if current == torch.cuda.default_stream(device) else current
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                module(self.static_in)
        self.graph = torch.cuda.CUDAGraph()
        # capture_begin/end rather than torch.cuda.graph(): that one synchronises the whole device
        # and empties the allocator's cache first, which would stall and slow a worker serving
        # meanwhile. thread_local: other threads' CUDA calls (the worker's, a node's preprocessing)
        # may go on during the capture.
        capture.wait_stream(side)
        with torch.cuda.stream(capture):
            self.graph.capture_begin(pool=pool, capture_error_mode='thread_local')
            try:
                out = module(self.static_in)
                self.static_out = out.float() if as_float else out
            finally:
                self.graph.capture_end()
        current.wait_stream(capture)
        self.batch = batch

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        self.graph.replay()
        return self.static_out[:n].clone()


class GraphSet:
    """Captured graphs by key, and the keys planned for capture on a background thread.

    The bookkeeping alone (no CUDA here): ``capture(key)`` builds one graph. Readers (the worker)
    use :meth:`get` without a lock: a graph is inserted into the dict only once fully built, and a
    dict insert is atomic under the GIL. A planned key stays planned after its capture, so a reader
    that finds no graph can tell "pending: don't capture it yourself" from "never planned" without
    racing the insert. Keys end with their batch size; they are captured in plan order, except that
    sizes a reader asked for (:meth:`request`) go first.
    """

    def __init__(self, capture: Callable[[Hashable], Any]):
        self._capture = capture
        self.graphs: dict[Hashable, Any] = {}
        self.failed: dict[Hashable, str] = {}
        self._planned: set[Hashable] = set()
        self._pending: list[Hashable] = []   # planned, not captured, not failed; in capture order
        self._wanted: list[int] = []         # sizes a reader missed, oldest first
        self._cond = threading.Condition()
        self._capturing = threading.Lock()   # one capture at a time: they share a memory pool
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False                # the thread is in its loop (guarded by _cond)

    def get(self, key: Hashable) -> Any:
        return self.graphs.get(key)

    def planned(self, key: Hashable) -> bool:
        """Planned for the background thread (captured, pending or failed): never capture inline."""
        return key in self._planned

    @property
    def pending(self) -> int:
        return len(self._pending)

    def capture_now(self, key: Hashable, build: Callable[[], Any] | None = None) -> Any:
        """Build ``key``'s graph on this thread (``build``, else ``capture(key)``) and publish it."""
        with self._capturing:
            graph = build() if build is not None else self._capture(key)
        self.graphs[key] = graph
        return graph

    def plan(self, keys: Sequence[Hashable]) -> None:
        """Add ``keys`` (not yet captured) to the background plan, in this order."""
        with self._cond:
            for key in keys:
                if key not in self.graphs and key not in self._planned:
                    self._planned.add(key)
                    self._pending.append(key)

    def request(self, size: int) -> None:
        """A reader missed a graph of batch ``size``: capture that size's pending keys next."""
        with self._cond:
            if size not in self._wanted:
                self._wanted.append(size)

    def start(self) -> None:
        """Capture the pending keys on a daemon thread (no-op when none are, or one already does)."""
        with self._cond:
            self._stop.clear()   # an earlier thread still in its loop now carries on
            if self._running or not self._pending:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name='delen-graphs', daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Ask the thread to stop after its current capture and wait up to ``timeout`` s for it;
        whether it has stopped. A thread still capturing is left to finish that one capture: it holds
        references to the module and buffers it uses, so freeing the model elsewhere is safe."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
            self._thread = None
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Start the thread if needed and wait up to ``timeout`` s (``None``: no limit) until nothing
        is pending; whether nothing is (false also when stopped first)."""
        self.start()
        with self._cond:
            self._cond.wait_for(lambda: not self._pending or not self._running, timeout)
            return not self._pending

    def _next(self) -> Hashable | None:
        """The next key to capture, or ``None`` (and the thread leaves its loop): under ``_cond``."""
        if self._stop.is_set() or not self._pending:
            self._running = False
            self._cond.notify_all()
            return None
        while self._wanted:
            size = self._wanted[0]
            for key in self._pending:
                if key[-1] == size:
                    return key
            self._wanted.pop(0)
        return self._pending[0]

    def _run(self) -> None:
        while True:
            with self._cond:
                key = self._next()
            if key is None:
                return
            try:
                with self._capturing:
                    graph = self._capture(key)
            except Exception as exc:  # noqa: BLE001 -- that size then runs eagerly; serving goes on
                _log.exception('background capture of %s failed; it runs eagerly', key)
                graph, self.failed[key] = None, f'{type(exc).__name__}: {exc}'
            if graph is not None:
                self.graphs[key] = graph   # visible only now, fully built
            with self._cond:
                self._pending.remove(key)
                self._cond.notify_all()


class StageRunner:
    """Runs a :class:`~delen_ros.core.multi_exit.MultiExitModel` step by step on one device.

    :param model: the model; it is moved to ``device`` / dtype / memory format here (in place).
    :param device: ``'auto'`` (CUDA if available), ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    :param half: float16 weights and activations; ``None``: on CUDA yes, on CPU no (CPU float16
        kernels are slow). ``True`` on CPU raises ``ValueError``.
    :param channels_last: NHWC memory format; ``None``: on CUDA yes, on CPU no.
    :param cuda_graphs: capture and replay CUDA graphs (CUDA only; ignored on CPU). Each
        (stage/head, exit, batch size of :func:`graph_batch_sizes`) is captured on first use, or by
        :meth:`warmup`; a larger batch than ``max_batch`` runs eagerly.
    :param max_batch: the largest batch a graph is captured for.
    :param background_graphs: :meth:`warmup` captures batch 1 only; the other sizes are captured by
        :meth:`capture_in_background` (and :meth:`wait_for_graphs`) while calls run, eagerly for a
        size not captured yet. ``False``: :meth:`warmup` captures every size before it returns.
    :param graph_sizes: batch sizes captured (a batch is padded up to the next); ``None``:
        :func:`graph_batch_sizes` (see :func:`padded_graph_sizes` for fewer).
    :param capture_graph: builds one graph, ``(module, example, batch, as_float=...) -> callable``;
        ``None``: a CUDA graph. Given, graphs are used on any device (tests of the bookkeeping).

    All calls run under ``torch.inference_mode()``. Calls are asynchronous on CUDA: time them
    between :meth:`synchronize` calls.
    """

    def __init__(self, model: 'MultiExitModel', *, device: str | torch.device = 'cpu', half: bool | None = None,
                 channels_last: bool | None = None, cuda_graphs: bool = False, max_batch: int = 32,
                 background_graphs: bool = False, capture_graph: Callable[..., Any] | None = None,
                 graph_sizes: Sequence[int] | None = None):
        self.device = resolve_device(device)
        cuda = self.device.type == 'cuda'
        half = cuda if half is None else half
        if half and not cuda:
            raise ValueError(f'half=True needs a CUDA device, got {self.device}')
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        self.dtype = torch.float16 if half else torch.float32
        self.max_batch = max_batch
        self.graph_sizes = tuple(sorted(set(graph_sizes))) if graph_sizes else graph_batch_sizes(max_batch)
        if self.graph_sizes[0] < 1 or self.graph_sizes[-1] != max_batch:
            raise ValueError(f'graph sizes must be >= 1 and end at max_batch {max_batch}, got {self.graph_sizes}')
        self.cuda_graphs = bool(cuda_graphs) and (cuda or capture_graph is not None)
        self.background_graphs = bool(background_graphs)
        self.model = model.prepare(self.device, dtype=self.dtype, channels_last=self.channels_last)
        self.num_exits = model.num_exits
        real = self.cuda_graphs and capture_graph is None
        pool = torch.cuda.graph_pool_handle() if real else None
        # Every capture on this one stream, which nothing else may use meanwhile (work another
        # thread queues on a capturing stream is captured, not run): a high-priority one, as the
        # pool of those is one nobody else here draws from (the preprocessor's is low-priority).
        # Priority does not carry over into replays, which run on the caller's stream.
        stream = torch.cuda.Stream(device=self.device, priority=-1) if real else None
        self._new_graph = capture_graph or (lambda module, example, batch, *, as_float: _Graph(
            module, example, batch, pool=pool, as_float=as_float, capture=stream))
        self._graphs = GraphSet(self._capture_planned)
        # (kind, k) -> the input's shape without the batch, dtype and memory format: what a
        # background capture builds its example from
        self._templates: dict[tuple[str, int], tuple[tuple[int, ...], torch.dtype, torch.memory_format]] = {}
        self._background_stream = None

    def __repr__(self) -> str:
        return (f'StageRunner({self.model.info.name!r}, device={str(self.device)!r}, dtype={self.dtype}, '
                f'channels_last={self.channels_last}, cuda_graphs={self.cuda_graphs})')

    @property
    def graph_count(self) -> int:
        """CUDA graphs captured so far."""
        return len(self._graphs.graphs)

    @property
    def graphs_pending(self) -> int:
        """Graphs planned for background capture and not captured yet (nor failed)."""
        return self._graphs.pending

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

    def synchronize(self) -> None:
        """Wait for the work queued on this thread's current stream (no-op on CPU).

        A stream's wait, not a device-wide one: uploads on the preprocessor's own stream and other
        threads' work go on meanwhile.
        """
        if self.device.type == 'cuda':
            torch.cuda.current_stream(self.device).synchronize()

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Run every stage and head once per batch size (capturing their graphs, if enabled), so that
        the first served frames don't pay for capture or cuDNN's algorithm search.

        :param batch_sizes: ``None``: the graph sizes up to ``max_batch`` -- with graphs and
            ``background_graphs``, batch 1 only, the other sizes planned for
            :meth:`capture_in_background` (a single camera's frames run at batch 1).
        """
        background = batch_sizes is None and self.cuda_graphs and self.background_graphs
        info = self.model.info
        for b in (1,) if background else (batch_sizes or self.graph_sizes):
            x = self.to_input(torch.zeros(b, info.in_channels, *info.input_size))
            for k in range(self.num_exits):
                x = self.stage(k, x)
                self.head(k, x)
        self.synchronize()
        if background:
            self._graphs.plan([(kind, k, size) for size in self.graph_sizes[1:]
                               for k in range(self.num_exits) for kind in ('stage', 'head')])

    def capture_in_background(self) -> None:
        """Capture the graphs :meth:`warmup` left pending on a thread of its own (no-op if none are,
        or it runs already)."""
        self._graphs.start()

    def wait_for_graphs(self, timeout: float | None = None) -> bool:
        """Capture the pending graphs (starting the background thread if needed) and wait up to
        ``timeout`` s; whether all are there (failed captures aside: those sizes run eagerly)."""
        return self._graphs.wait(timeout)

    def stop_capture(self, timeout: float | None = 5.0) -> bool:
        """Stop background capture after the graph in progress (waits up to ``timeout`` s); whether
        it stopped. The pending graphs stay pending (:meth:`capture_in_background` resumes)."""
        return self._graphs.stop(timeout)

    # --- internals ---------------------------------------------------------------------------------------------
    def _call(self, kind: str, k: int, module: nn.Module, x: Tensor, *, as_float: bool) -> Tensor:
        with torch.inference_mode():
            n = x.shape[0]
            if not self.cuda_graphs or n > self.max_batch or x.device != self.device:
                out = module(x)
                return out.float() if as_float else out
            size = self.graph_sizes[bisect.bisect_left(self.graph_sizes, n)]
            key = (kind, k, size)
            graph = self._graphs.get(key)
            if graph is None and self._graphs.planned(key):
                # Left to the background thread: capturing here would stall this thread (the
                # worker, every app with it) ~0.4 s. Eager rather than padded up to a larger
                # captured size: sizes are captured in ascending order and a missed one moves to the
                # front, so a larger graph rarely exists yet, and its cost at up to 32x the rows is
                # unknown without timing it; eager is exact and costs the launch overhead for the
                # few seconds until this size's graphs are there.
                self._graphs.request(size)
                out = module(x)
                return out.float() if as_float else out
            if graph is None:
                self._templates[(kind, k)] = (tuple(x.shape[1:]), x.dtype, _memory_format(x))
                graph = self._graphs.capture_now(key, lambda: self._new_graph(module, x, size, as_float=as_float))
            elif graph.static_in.shape[1:] != x.shape[1:] or graph.static_in.dtype != x.dtype:
                raise ValueError(f'{kind} {k}: input {tuple(x.shape)} {x.dtype} does not fit the captured '
                                 f'{tuple(graph.static_in.shape)} {graph.static_in.dtype}')
            return graph(x)

    def _capture_planned(self, key: tuple[str, int, int]) -> Any:
        """Build a planned graph on the background thread, from the input template of its batch-1 capture."""
        kind, k, size = key
        shape, dtype, fmt = self._templates[(kind, k)]
        module = (self.model.stages if kind == 'stage' else self.model.heads)[k]
        cuda = self.device.type == 'cuda'
        if cuda and self._background_stream is None:
            self._background_stream = torch.cuda.Stream(device=self.device)
        # The current device and stream, and inference mode, are per thread: set them here.
        with (torch.cuda.device(self.device) if cuda else contextlib.nullcontext()), \
                (torch.cuda.stream(self._background_stream) if cuda else contextlib.nullcontext()), \
                torch.inference_mode():
            example = torch.zeros((1,) + shape, dtype=dtype, device=self.device).contiguous(memory_format=fmt)
            graph = self._new_graph(module, example, size, as_float=kind == 'head')
            if cuda:
                # Its buffers were written on this stream: done before the worker replays it.
                self._background_stream.synchronize()
        return graph
