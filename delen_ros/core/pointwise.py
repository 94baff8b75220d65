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

from torch import Tensor, nn

__all__ = ['CONV_KERNELS', 'PointwiseMatmul', 'is_pointwise', 'pointwise_as_matmul']

#: the node's ``conv_kernels`` choices, the default first
CONV_KERNELS = ('cudnn', 'matmul')


def is_pointwise(module: nn.Module) -> bool:
    """A 1x1, stride-1, unpadded, undilated, ungrouped convolution: a matrix product per image."""
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1) \
        and module.dilation == (1, 1) and module.groups == 1 and module.padding in ((0, 0), 'valid') \
        and module.padding_mode == 'zeros'


class PointwiseMatmul(nn.Module):
    """A pointwise convolution's weights, applied as ``W @ x`` per image (cuBLAS), for NCHW input.

    Channels-last input works too (``matmul`` takes the strides it is given) but runs slower: the
    runner feeds this path NCHW.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_pointwise(conv):
            raise ValueError(f'not a 1x1 / stride-1 / ungrouped convolution: {conv!r}')
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach().flatten(1), requires_grad=conv.weight.requires_grad)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=conv.bias.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        y = (self.weight @ x.reshape(n, self.in_channels, h * w)).view(n, self.out_channels, h, w)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.out_channels}, bias={self.bias is not None}'


def pointwise_as_matmul(module: nn.Module) -> int:
    """Replace every pointwise convolution below ``module`` by a :class:`PointwiseMatmul` sharing its
    weights (in place; the outputs stay the same up to rounding); returns how many were replaced.

    A model changed so keeps its state-dict keys but not its weights' shapes: serve it, do not save it.
    """
    count = 0
    for name, child in module.named_children():
        if is_pointwise(child):
            setattr(module, name, PointwiseMatmul(child))
            count += 1
        else:
            count += pointwise_as_matmul(child)
    return count
