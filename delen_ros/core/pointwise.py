"""1x1 convolutions as matrix products: CUDA graphs with no cuDNN set-up (the node's ``conv_kernels:=matmul``).

cuDNN sets each convolution shape up on its first call, about 35 ms a convolution on an H200
(torch 2.11, cuDNN 9.19): 1.5-3.2 s per batch size for ``cifar10_lite0``, most of the node's configure
(issue 8: configure -> first result <= 5 s). PyTorch's own convolutions need no set-up but run full
depth at batch 32 in 6.1 ms against cuDNN's 1.4 ms. In an MBConv network (MobileNet, EfficientNet)
most convolutions are 1x1: as a cuBLAS matrix product (weights ``C_out x C_in`` times the
``C_in x H*W`` features of each image, NCHW) they need no set-up either, and the depthwise ones left
on PyTorch's kernels are cheap. Measured on an H200 (``scripts/device/conv_kernels_probe.py``,
``benchmarks/h200/conv_kernels_session20``), full depth as CUDA graphs:

    ============  =========  ==========  ==========  ==========================
    kernels        batch 1    batch 8     batch 32    capture of a batch size
    ============  =========  ==========  ==========  ==========================
    cuDNN          0.62 ms    0.90 ms     1.37 ms     1.5-3.2 s
    PyTorch's own  0.64 ms    1.93 ms     6.14 ms     0.04-0.06 s
    matmul (this)  0.60 ms    1.03 ms     2.25 ms     0.03-0.04 s
    ============  =========  ==========  ==========  ==========================

(The network as trained. Folded for inference, as the runner now serves it, ``core/fold.py``: cuDNN 0.39 / 0.57 /
1.04 ms, matmul 0.37 / 0.70 / 1.68 ms.) The node configures in 2.6 s instead of 6.4-6.7 s with it, and 32 cameras x 30 Hz at 33 ms lose
nothing; but steps at batch 8-32 run 1.5-1.9x longer, and tight bounds pay for it (10 ms apps beside
accuracy cascades at 16 cameras: 45-78 % of frames in time against 91 % on cuDNN). So cuDNN stays the
default and this is the quick start, for robots that restart often and run loose bounds.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['CONV_KERNELS', 'NATIVE_LINEAR_MIN_BATCH', 'PointwiseMatmul', 'PointwiseNative', 'is_pointwise',
           'nchw_matmul', 'nhwc_linear', 'pointwise_as_matmul', 'pointwise_native_linear']

#: the smallest batch that :class:`PointwiseNative` runs as a matrix product (below it PyTorch's own 1x1
#: convolution was as fast: H200, batch 1, 0.65 against 0.70 ms full depth, session 20)
NATIVE_LINEAR_MIN_BATCH = 4

#: the node's ``conv_kernels`` choices, the default first
CONV_KERNELS = ('cudnn', 'matmul')


def is_pointwise(module: nn.Module) -> bool:
    """A 1x1, stride-1, unpadded, undilated, ungrouped convolution: a matrix product per image."""
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1) \
        and module.dilation == (1, 1) and module.groups == 1 and module.padding in ((0, 0), 'valid') \
        and module.padding_mode == 'zeros'


def _check_pointwise(conv: nn.Module) -> None:
    if not is_pointwise(conv):
        raise ValueError(f'not a 1x1 / stride-1 / ungrouped convolution: {conv!r}')


def _replace_pointwise(module: nn.Module, replacement: Callable[[nn.Conv2d], nn.Module]) -> int:
    """Put ``replacement(conv)`` in place of every pointwise convolution below ``module`` (not below a
    replacement already made); how many were replaced."""
    count = 0
    for name, child in module.named_children():
        if is_pointwise(child):
            setattr(module, name, replacement(child))
            count += 1
        elif not isinstance(child, (PointwiseMatmul, PointwiseNative)):
            count += _replace_pointwise(child, replacement)
    return count


class PointwiseMatmul(nn.Module):
    """A pointwise convolution's weights, applied as ``W @ x`` per image (cuBLAS), for NCHW input.

    Channels-last input works too (``matmul`` takes the strides it is given) but runs slower: the
    runner feeds this path NCHW.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        _check_pointwise(conv)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach().flatten(1), requires_grad=conv.weight.requires_grad)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=conv.bias.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        return _per_image_matmul(self.weight, self.bias, x)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.out_channels}, bias={self.bias is not None}'


def pointwise_as_matmul(module: nn.Module) -> int:
    """Replace every pointwise convolution below ``module`` by a :class:`PointwiseMatmul` sharing its
    weights (in place; the outputs stay the same up to rounding); returns how many were replaced.

    A model changed so keeps its state-dict keys but not its weights' shapes: serve it, do not save it.
    """
    return _replace_pointwise(module, PointwiseMatmul)


class PointwiseNative(nn.Module):
    """A pointwise convolution that runs on cuDNN where cuDNN is on, and otherwise, for a CUDA batch of at
    least ``min_batch``, as cuBLAS matrix products (no set-up): one over the NHWC view of a channels-last
    batch (``F.linear``, no copy), one per image of an NCHW batch, instead of PyTorch's own 1x1 convolution,
    which is 3-4x slower at batch 32.

    The runner captures its graphs first with cuDNN off (milliseconds, no set-up) and tries cuDNN per graph
    afterwards (``StageRunner(native_first=True)``): wrapped so, the graphs that serve until cuDNN's are ready
    run the matrix products. The convolution's own weights are used (a view), so the outputs are the same
    up to rounding either way.
    """

    def __init__(self, conv: nn.Conv2d, *, min_batch: int = NATIVE_LINEAR_MIN_BATCH):
        super().__init__()
        _check_pointwise(conv)
        self.conv, self.min_batch = conv, min_batch

    def forward(self, x: Tensor) -> Tensor:
        if torch.backends.cudnn.enabled or not x.is_cuda or x.shape[0] < self.min_batch:
            return self.conv(x)
        if x.is_contiguous(memory_format=torch.channels_last):
            return nhwc_linear(self.conv, x)
        if x.is_contiguous():   # PyTorch's own depthwise convolution hands on NCHW, whatever it was given
            return nchw_matmul(self.conv, x)
        return self.conv(x)


def nchw_matmul(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a pointwise ``conv`` and a contiguous NCHW ``x``: ``W @ x`` per image (as
    :class:`PointwiseMatmul`, with the convolution's own weights)."""
    return _per_image_matmul(conv.weight.flatten(1), conv.bias, x)


def _per_image_matmul(weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """``weight`` (``C_out x C_in``) times each image's ``C_in x H*W`` features, plus ``bias``, as NCHW."""
    n, c, h, w = x.shape
    y = (weight @ x.reshape(n, c, h * w)).view(n, weight.shape[0], h, w)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def nhwc_linear(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a pointwise ``conv`` and a channels-last ``x``, as one matrix product over every pixel
    of the batch (the NHWC view is contiguous: no copy); the result is channels-last too."""
    return F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)


def pointwise_native_linear(module: nn.Module, *, min_batch: int = NATIVE_LINEAR_MIN_BATCH) -> int:
    """Wrap every pointwise convolution below ``module`` in a :class:`PointwiseNative` (in place); returns how
    many. Like :func:`pointwise_as_matmul`, for serving (the state dict's keys change), after any folding."""
    return _replace_pointwise(module, lambda conv: PointwiseNative(conv, min_batch=min_batch))
