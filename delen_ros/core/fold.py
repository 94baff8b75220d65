"""A trained model simplified for inference: batch norms folded into the convolutions before them, and
symmetric "same" padding moved into the convolution.

In eval mode a batch norm is a per-channel affine map, so a convolution followed by one equals a single
convolution with rescaled weights and a bias (``W' = W * g / sqrt(var + eps)``, ``b' = (b - mean) * g /
sqrt(var + eps) + beta``); the EfficientNet wheel also pads each depthwise convolution's input with a
separate ``ZeroPad2d`` (TensorFlow's "same"), which where it is symmetric is the convolution's own zero
padding. Either way the network computes the same function (to rounding: folded in float64, then cast)
with a pass over each feature map fewer. Full depth, folded over unfolded in one process
(``benchmarks/fold_ab.py``, ``scripts/device/conv_kernels_probe.py``; session 21):

    ===============================  ===========================  ===========================
    where                            batch 1                      batch 8 / 32
    ===============================  ===========================  ===========================
    H200, ``cifar10_lite0``, cuDNN   0.39 against 0.62 ms (0.63)  0.57 / 1.04 against 0.91 / 1.38
    H200, ``cifar10_lite0``, matmul  0.37 against 0.61 ms (0.61)  0.70 / 1.68 against 1.04 / 2.27
    2-core CPU, ``cifar10_lite0``    0.81                         0.86 (batch 8)
    2-core CPU, ``fashion_mnist``    0.83                         0.91
    2-core CPU, ``cifar10_resnet9``  0.94                         0.97
    ===============================  ===========================  ===========================

On the GPU most of the gain is launches: at batch 1 a CUDA graph's time is mostly its kernels' count, and
the folding takes 24 padding kernels and the batch norms' out of ``cifar10_lite0``'s chain. ResNet-9 gains
least: three of its batch norms follow a max pool (kept: a max commutes only with a positive scale).

:class:`~delen_ros.core.runner.StageRunner` folds the model it serves (``fold_batch_norms``, on by
default), so the engine and ``delen_profile`` time the same network. A folded model is for serving: its
state dict no longer matches its architecture, and :func:`~delen_ros.core.zoo.save_model` refuses it.

Which convolution a batch norm follows is read from the structure, never guessed: the two are adjacent in
an ``nn.Sequential`` (whose order is its forward), or a module class's forward is known to apply them in
turn (:data:`NAMED_PAIRS`; classes named by import path, so that listing the wheel's needs no import of it).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = ['FoldCount', 'NAMED_PAIRS', 'fold_for_inference', 'is_folded']

#: module class (``module.qualname``) -> (convolution, batch norm) attribute pairs its forward applies in turn
NAMED_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    'efficientnet_lite_pytorch.model.MBConvBlock': (('_expand_conv', '_bn0'), ('_depthwise_conv', '_bn1'),
                                                    ('_project_conv', '_bn2')),
    'delen_ros.core.architectures.efficientnet_lite0._ConvBnAct': (('conv', 'bn'),),
}
_FOLDED = '_delen_folded_for_inference'


@dataclasses.dataclass(frozen=True)
class FoldCount:
    """What :func:`fold_for_inference` changed."""
    batch_norms: int
    paddings: int


def is_folded(model: nn.Module) -> bool:
    """Whether :func:`fold_for_inference` has changed ``model`` (it cannot be saved or trained then)."""
    return getattr(model, _FOLDED, False)


def fold_for_inference(model: nn.Module) -> FoldCount:
    """Fold ``model``'s batch norms into the convolutions before them and move symmetric static "same"
    padding into its convolution, in place; a second call changes nothing.

    :raises ValueError: ``model`` is in training mode (a batch norm then uses the batch's statistics).
    """
    if model.training:
        raise ValueError('fold_for_inference needs a model in eval mode (call .eval() first): in training '
                         'a batch norm normalises by the batch, which no folded weight can do')
    batch_norms = paddings = 0
    for module in model.modules():
        for conv_name, bn_name in NAMED_PAIRS.get(f'{type(module).__module__}.{type(module).__qualname__}', ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if _fold_pair(conv, bn):
                setattr(module, bn_name, nn.Identity())
                batch_norms += 1
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (_, conv), (bn_key, bn) in zip(children, children[1:]):
                if _fold_pair(conv, bn):
                    module._modules[bn_key] = nn.Identity()
                    batch_norms += 1
        if _padding_into_conv(module):
            paddings += 1
    setattr(model, _FOLDED, True)
    return FoldCount(batch_norms, paddings)


def _fold_pair(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    """Fold ``bn`` into ``conv`` if they are a convolution and a batch norm with running statistics."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None \
            or bn.num_features != conv.out_channels:
        return False
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        shift = -bn.running_mean.double() * scale
        if bn.affine:
            scale, shift = scale * bn.weight.double(), shift * bn.weight.double() + bn.bias.double()
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        dtype = conv.weight.dtype
        conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
        conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return True


def _padding_into_conv(module: nn.Module) -> bool:
    """The wheel's ``Conv2dStaticSamePadding``: a ``ZeroPad2d`` applied before ``F.conv2d(..., self.padding)``;
    where it pads both sides alike it becomes that padding (a strided one pads one side more: kept)."""
    pad = getattr(module, 'static_padding', None)
    if not isinstance(module, nn.Conv2d) or not isinstance(pad, nn.ZeroPad2d) or module.padding != (0, 0):
        return False
    left, right, top, bottom = pad.padding
    if left != right or top != bottom:
        return False
    module.padding = (top, left)
    module.static_padding = nn.Identity()
    return True
