"""A ResNet-9 for CIFAR-10 at its native 32 x 32, trained from scratch, with three early exits.

The network is the DAWNBench ResNet-9 (Myrtle.ai: prep conv, three conv-pool layers, residual
pairs after the first and the last), cut into four stages of roughly equal arithmetic::

    0: prep 3->w0 + conv w0->w1, pool      (32 -> 16 px)   -> exit 'layer1'
    1: residual pair at w1                 (16 px)         -> exit 'res1'
    2: conv w1->w2, pool                   (16 -> 8 px)    -> exit 'layer2'
    3: conv w2->w3, pool + residual pair   (8 -> 4 px)     -> exit 'final' (global max pool, linear)

Why this and not the ImageNet-pretrained Lite0 (``cifar10_lite0``): that one sees the 32 x 32 photo
scaled to 160 px, and its final exit plateaued at 94 % there; a network built for 32 x 32 needs no
scaling, reaches 95-96 % from scratch in a couple of minutes of H200 time, and its stages are plain
3 x 3 convolutions (fast on a CPU, few kernels under a CUDA graph). Each 3 x 3 layer costs about the
same (~75 M multiply-adds at the default widths), so the exits sit at ~0.2 / 0.4 / 0.6 of the work.

Early heads (:class:`ConvHead`): max pool 2, one 3 x 3 conv + BN + ReLU, global max pool, linear:
the spatial conv lets shallow features be combined before they are pooled away.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..multi_exit import ModelInfo, MultiExitModel
from . import register_architecture
from .cifar10_lite0 import CIFAR10_LABELS

__all__ = ['cifar10_resnet9', 'ConvHead', 'Residual', 'DEFAULT_WIDTHS', 'CIFAR10_MEAN', 'CIFAR10_STD']

#: prep, layer1, layer2, layer3 channels (Myrtle's ResNet-9)
DEFAULT_WIDTHS = (64, 128, 256, 512)
# Training-set pixel statistics per channel (RGB), in 0..255 units.
CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)


def conv_bn(c_in: int, c_out: int, *, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias: BN has one), optional 2x2 max pool, BN, ReLU (pooling first is cheaper)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """``x + f(f(x))`` with two ``conv_bn`` at constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Scale(nn.Module):
    """Multiply by a constant: ResNet-9's logits are scaled by 1/8, which keeps them (and the
    loss) in range at the high learning rates that train it fast."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f'factor={self.factor}'


LOGIT_SCALE = 0.125


class ConvHead(nn.Sequential):
    """An early exit: max pool 2, 3x3 conv to ``width`` + BN + ReLU, global max pool, dropout,
    linear, logits x 1/8."""

    def __init__(self, in_channels: int, num_classes: int, *, width: int, dropout: float = 0.0):
        if width < 1:
            raise ValueError(f'width must be >= 1, got {width!r}')
        super().__init__(nn.MaxPool2d(2), conv_bn(in_channels, width), nn.AdaptiveMaxPool2d(1), nn.Flatten(1),
                         nn.Dropout(dropout), nn.Linear(width, num_classes), Scale(LOGIT_SCALE))


class FinalHead(nn.Sequential):
    """Global max pool, linear, logits x 1/8 (ResNet-9's classifier)."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.0):
        super().__init__(nn.AdaptiveMaxPool2d(1), nn.Flatten(1), nn.Dropout(dropout), nn.Linear(in_channels, num_classes),
                         Scale(LOGIT_SCALE))


@register_architecture('cifar10_resnet9')
def cifar10_resnet9(*, widths: Sequence[int] = DEFAULT_WIDTHS, head_widths: Sequence[int] = (256, 256, 512),
                    head_dropout: float = 0.0, info: ModelInfo | None = None) -> MultiExitModel:
    """The (untrained) 4-exit ResNet-9 for 32 x 32 CIFAR-10 photos.

    :param widths: channels of the prep conv and of layers 1, 2, 3.
    :param head_widths: per early exit, its head's conv width.
    :param head_dropout: before every exit's linear layer (training only).
    :param info: the model's metadata; ``None``: defaults, accuracies 0 (untrained).
    :raises ValueError: widths that do not fit (the value is shown).
    """
    widths = tuple(int(w) for w in widths)
    head_widths = tuple(int(w) for w in head_widths)
    if len(widths) != 4 or len(head_widths) != 3 or min(widths + head_widths) < 1:
        raise ValueError(f'need 4 positive widths and 3 head widths, got {widths!r} and {head_widths!r}')
    w0, w1, w2, w3 = widths
    stages = [
        nn.Sequential(conv_bn(3, w0), conv_bn(w0, w1, pool=True)),
        Residual(w1),
        conv_bn(w1, w2, pool=True),
        nn.Sequential(conv_bn(w2, w3, pool=True), Residual(w3)),
    ]
    num_classes = len(CIFAR10_LABELS) if info is None else info.num_classes
    heads: list[nn.Module] = [ConvHead(c, num_classes, width=h, dropout=head_dropout)
                              for c, h in zip((w1, w1, w2), head_widths)]
    heads.append(FinalHead(w3, num_classes, dropout=head_dropout))
    if info is None:
        info = ModelInfo(name='cifar10_resnet9', input_size=(32, 32), in_channels=3, mean=CIFAR10_MEAN,
                         std=CIFAR10_STD, labels=CIFAR10_LABELS, exit_names=('layer1', 'res1', 'layer2', 'final'),
                         exit_accuracy=(0.0,) * 4, accuracy_note='untrained')
    return MultiExitModel(info, stages, heads)
