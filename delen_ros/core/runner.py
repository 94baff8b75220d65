"""The stage runner: a multi-exit model's stages and heads on one device, one call per step.

The engine serves through it and ``delen_profile`` times through it, so that a profile measures
exactly what the engine runs: same device, dtype, memory format and (optionally) CUDA graphs.

On CUDA the defaults are float16 and channels-last (cuDNN's fast NHWC kernels); on CPU float32.
Eager execution of a small batch on a GPU is bound by kernel launches (EfficientNet-Lite0 batch 1:
3.0 ms eager vs 0.5 ms as a CUDA graph on an H200), so ``cuda_graphs=True`` captures each (stage or
head, exit, batch size) once, lazily, and replays it: inputs are copied into the graph's static
buffer, a smaller batch is padded up to the next captured size, and outputs are copied out (the
static output is overwritten by the next replay, while a request's features may be kept for later).
"""
from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .multi_exit import MultiExitModel

__all__ = ['StageRunner', 'resolve_device', 'graph_batch_sizes', 'padded_graph_sizes']

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


class _Graph:
    """One captured call ``module(static_in) -> static_out`` of a fixed batch size."""

    def __init__(self, module: nn.Module, example: Tensor, batch: int, *, pool, as_float: bool):
        shape = (batch,) + tuple(example.shape[1:])
        fmt = torch.channels_last if example.dim() == 4 and example.is_contiguous(memory_format=torch.channels_last) \
            and not example.is_contiguous() else torch.contiguous_format
        self.static_in = torch.zeros(shape, dtype=example.dtype, device=example.device).contiguous(memory_format=fmt)
        self.static_in[:example.shape[0]].copy_(example[:batch])
        # Warm up on a side stream (as torch.cuda.graphs documents): lazy initialisation and
        # cuDNN's algorithm choice must happen outside the capture.
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                module(self.static_in)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a node's preprocessing, say) may go on meanwhile.
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode='thread_local'):
            out = module(self.static_in)
            self.static_out = out.float() if as_float else out
        self.batch = batch

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        self.graph.replay()
        return self.static_out[:n].clone()


class StageRunner:
    """Runs a :class:`~delen_ros.core.multi_exit.MultiExitModel` step by step on one device.

    :param model: the model; it is moved to ``device`` / dtype / memory format here (in place).
    :param device: ``'auto'`` (CUDA if available), ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    :param half: float16 weights and activations; ``None``: on CUDA yes, on CPU no (CPU float16
        kernels are slow). ``True`` on CPU raises ``ValueError``.
    :param channels_last: NHWC memory format; ``None``: on CUDA yes, on CPU no.
    :param cuda_graphs: capture and replay CUDA graphs (CUDA only; ignored on CPU). Each
        (stage/head, exit, batch size of :func:`graph_batch_sizes`) is captured on first use; a
        larger batch than ``max_batch`` runs eagerly.
    :param max_batch: the largest batch a graph is captured for.
    :param graph_sizes: batch sizes captured (a batch is padded up to the next); ``None``:
        :func:`graph_batch_sizes` (:func:`padded_graph_sizes` gives fewer, from measured costs).

    All calls run under ``torch.inference_mode()``. Calls are asynchronous on CUDA: time them
    between :meth:`synchronize` calls.
    """

    def __init__(self, model: 'MultiExitModel', *, device: str | torch.device = 'cpu', half: bool | None = None,
                 channels_last: bool | None = None, cuda_graphs: bool = False, max_batch: int = 32,
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
        self.cuda_graphs = bool(cuda_graphs) and cuda
        self.model = model.prepare(self.device, dtype=self.dtype, channels_last=self.channels_last)
        self.num_exits = model.num_exits
        self._graphs: dict[tuple[str, int, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    def __repr__(self) -> str:
        return (f'StageRunner({self.model.info.name!r}, device={str(self.device)!r}, dtype={self.dtype}, '
                f'channels_last={self.channels_last}, cuda_graphs={self.cuda_graphs})')

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

        :param batch_sizes: ``None``: the graph sizes up to ``max_batch``.
        """
        info = self.model.info
        # Most of this is each convolution's first call at a new shape (kernel choice, ~0.3-0.8 s a
        # stage on an H200). PyTorch keeps those choices per thread: choosing them in parallel
        # threads first did not shorten the captures (H200: 12.3 s instead of 6.2 s).
        for b in batch_sizes or self.graph_sizes:
            x = self.to_input(torch.zeros(b, info.in_channels, *info.input_size))
            for k in range(self.num_exits):
                x = self.stage(k, x)
                self.head(k, x)
        self.synchronize()

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
            if graph is None:
                graph = self._graphs[key] = _Graph(module, x, size, pool=self._pool, as_float=as_float)
            elif graph.static_in.shape[1:] != x.shape[1:] or graph.static_in.dtype != x.dtype:
                raise ValueError(f'{kind} {k}: input {tuple(x.shape)} {x.dtype} does not fit the captured '
                                 f'{tuple(graph.static_in.shape)} {graph.static_in.dtype}')
            return graph(x)
