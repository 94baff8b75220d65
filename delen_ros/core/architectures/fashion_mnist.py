"""A small multi-exit CNN for Fashion-MNIST (28 x 28 grey, 10 classes), trained from scratch.

Four stages of conv-BN-ReLU blocks with widening channels; each exit is a small head (adaptive
average pool + linear). The early stages run at high resolution but with few channels, so they cost
a small fraction of the whole; most of the arithmetic is in the last, widest stage.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ..multi_exit import ModelInfo, MultiExitModel
from . import register_architecture

__all__ = ['FASHION_MNIST_LABELS', 'ConvBNReLU', 'PoolHead', 'fashion_mnist']

FASHION_MNIST_LABELS = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                        'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
# Training-set pixel statistics, in 0..255 units (0.2860 and 0.3530 of full scale).
FASHION_MNIST_MEAN = (72.94,)
FASHION_MNIST_STD = (90.02,)


class ConvBNReLU(nn.Sequential):
    """3x3 (by default) convolution without bias (BN has one), batch norm, activation."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 activation_layer: Callable[[], nn.Module] = nn.ReLU):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            norm_layer(out_channels),
            activation_layer(),
        )


class PoolHead(nn.Sequential):
    """Average-pool the features to ``pool x pool`` cells, then one linear layer.

    A 2x2 or 4x4 pool keeps coarse layout (where the sleeves or the heel are), which early exits
    with few channels need; a global pool (1x1) suffices once features are rich.
    """

    def __init__(self, in_channels: int, num_classes: int, *, pool: int = 1, dropout: float = 0.0):
        if pool < 1:
            raise ValueError(f'pool must be >= 1, got {pool!r}')
        super().__init__(
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(in_channels * pool * pool, num_classes),
        )


@register_architecture('fashion_mnist')
def fashion_mnist(*, widths: Sequence[int] = (16, 32, 64, 128), head_pools: Sequence[int] = (7, 7, 4, 1),
                  dropout: float = 0.1, info: ModelInfo | None = None) -> MultiExitModel:
    """Build the (untrained) 4-exit Fashion-MNIST CNN.

    :param widths: output channels of stages 0..3.
    :param head_pools: pooled grid side of each exit's head.
    :param dropout: before each head's linear layer (training only).
    :param info: the model's metadata; ``None`` gives defaults with accuracies 0 (untrained).
    """
    if len(widths) != 4 or len(head_pools) != 4 or any(w < 1 for w in widths):
        raise ValueError(f'need 4 positive widths and 4 head pools, got {widths!r} and {head_pools!r}')
    w0, w1, w2, w3 = widths
    stages = [
        # 28x28 -> 14x14: one cheap conv on the single grey channel, then pool.
        nn.Sequential(ConvBNReLU(1, w0), nn.MaxPool2d(2)),
        # 14x14 -> 7x7
        nn.Sequential(ConvBNReLU(w0, w1), nn.MaxPool2d(2)),
        # 7x7: two convs; features good enough for ~91 %.
        nn.Sequential(ConvBNReLU(w1, w2), ConvBNReLU(w2, w2)),
        # 7x7 -> 4x4: the widest (most expensive) stage, for the last points of accuracy.
        nn.Sequential(ConvBNReLU(w2, w3), ConvBNReLU(w3, w3, stride=2)),
    ]
    heads = [PoolHead(w, 10, pool=p, dropout=dropout) for w, p in zip(widths, head_pools)]
    if info is None:
        info = ModelInfo(name='fashion_mnist', input_size=(28, 28), in_channels=1,
                         mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, labels=FASHION_MNIST_LABELS,
                         exit_names=('stage0', 'stage1', 'stage2', 'stage3'), exit_accuracy=(0.0,) * 4,
                         accuracy_note='untrained')
    return MultiExitModel(info, stages, heads)
