"""The pieces of a multi-exit training recipe, apart from any data set or network: batch mixing,
per-exit loss weights, the early exits' gradient into the backbone, stochastic depth, a weight EMA,
and the one-cycle schedule. ``delen_train_cifar`` puts them together.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.multi_exit import MultiExitModel

__all__ = ['mix_batch', 'mixed_cross_entropy', 'exit_loss_weights', 'scale_grad', 'install_exit_grad_scales',
           'install_drop_connect', 'WeightEma', 'schedule_progress', 'lr_factor']


# --- batch mixing ---------------------------------------------------------------------------------------
def mix_batch(x: torch.Tensor, y: torch.Tensor, *, rng: np.random.Generator, generator: torch.Generator,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              prob: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix of a float ``N x C x H x W`` batch with a permutation of itself.

    With probability ``prob`` the batch is mixed: by CutMix when only ``cutmix_alpha`` > 0, by mixup
    when only ``mixup_alpha`` > 0, by either with equal chance when both are. The mixing weight and
    the box are drawn on the host (``rng``: no device synchronisation), the permutation on the
    device (``generator``).

    :returns: the batch, the partner labels ``y[perm]`` and ``lam``, the weight of ``y`` (the share
        of the image that is its own; 1.0: unmixed, the partner labels are then ``y``).
    """
    if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1:
        raise ValueError(f'need alphas >= 0 and 0 <= prob <= 1, got {mixup_alpha!r}, {cutmix_alpha!r}, {prob!r}')
    modes = [m for m, a in (('mixup', mixup_alpha), ('cutmix', cutmix_alpha)) if a > 0]
    if not modes or rng.random() >= prob:
        return x, y, 1.0
    mode = modes[int(rng.integers(len(modes)))]
    perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
    if mode == 'mixup':
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        return x * lam + x[perm] * (1.0 - lam), y[perm], lam
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
    if y1 <= y0 or x1 <= x0:
        return x, y, 1.0
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return x, y[perm], 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, lam: float, *,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """``lam`` x cross-entropy with ``y`` + (1 - ``lam``) x cross-entropy with ``y_partner`` (see
    :func:`mix_batch`); plain cross-entropy when ``lam`` is 1."""
    ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if lam >= 1.0:
        return ce
    return lam * ce + (1.0 - lam) * F.cross_entropy(logits, y_partner, label_smoothing=label_smoothing)


# --- multi-exit recipe pieces ---------------------------------------------------------------------------
def exit_loss_weights(values: Sequence[float] | None, n_exits: int, *, normalise: bool = True) -> torch.Tensor:
    """Per-exit loss weights: ``values`` (default 0.5, 0.7, 1, 1, ...), divided by their sum when
    ``normalise`` (the loss is then a weighted mean of the exits' losses; raw: the learning rate
    applies to an exit of weight 1 as it is).

    :raises ValueError: the wrong count, a negative weight or a zero sum (the values are shown).
    """
    w = torch.tensor(list(values) if values else [0.5, 0.7, 1.0] + [1.0] * (n_exits - 3), dtype=torch.float32)
    if len(w) != n_exits or (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f'need {n_exits} exit weights >= 0 with a positive sum, got {w.tolist()}')
    return w / w.sum() if normalise else w


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward gradient times ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:   # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):   # noqa: D102
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, but the gradient flowing back through it is multiplied by ``scale``
    (0: ``x.detach()``; 1: ``x`` itself)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return _ScaleGrad.apply(x, float(scale))


def install_exit_grad_scales(model: MultiExitModel, scales: Sequence[float]) -> list:
    """Scale the gradient that each early exit's head sends into the backbone (a forward pre-hook on
    ``model.heads[k]`` for ``k`` < last; the heads' own gradients are untouched, the saved weights
    too). ``scales``: one per early exit, or one for all. Returns the hook handles (``.remove()``).

    :raises ValueError: the wrong count or a negative scale (the values are shown).
    """
    n_early = model.num_exits - 1
    scales = [float(s) for s in scales]
    if len(scales) == 1:
        scales *= n_early
    if len(scales) != n_early or any(s < 0 for s in scales):
        raise ValueError(f'need 1 or {n_early} gradient scales >= 0, got {scales}')
    handles = []
    for k, s in enumerate(scales):
        if s != 1.0:
            def hook(module, args, s=s):
                return (scale_grad(args[0], s),) + tuple(args[1:]) if module.training else None
            handles.append(model.heads[k].register_forward_pre_hook(hook))
    return handles


def install_drop_connect(model: nn.Module, rate: float) -> list:
    """Stochastic depth in the EfficientNet MBConv blocks (training only), as the network was
    pretrained: block ``i`` of ``n`` drops its residual branch with probability ``rate * i / n``
    (the wheel's own ``drop_connect``). Returns the hook handles; none when ``rate`` is 0.

    :raises ValueError: ``rate`` outside [0, 1).
    """
    if not 0 <= rate < 1:
        raise ValueError(f'drop-connect rate must be in [0, 1), got {rate!r}')
    blocks = [m for m in model.modules() if type(m).__name__ == 'MBConvBlock']
    if rate == 0 or not blocks:
        return []
    handles = []
    for i, block in enumerate(blocks):
        def hook(module, args, kwargs, p=rate * i / len(blocks)):
            return args, {**kwargs, 'drop_connect_rate': p}
        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


class WeightEma:
    """Exponential moving average of a model's floating-point state (weights and BN statistics;
    integer buffers are copied), updated after every optimiser step.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average
    forgets its random early start quickly.

    :param model: the model, already on its training device (the average lives beside it).
    :param decay: per update, in (0, 1).
    :raises ValueError: ``decay`` outside (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f'EMA decay must be in (0, 1), got {decay!r}')
        self.decay = decay
        self.updates = 0
        # state_dict() tensors share storage with the live parameters and buffers: taken once.
        live = model.state_dict()
        self.state = {k: v.detach().clone() for k, v in live.items()}
        self._float = [(self.state[k], v) for k, v in live.items() if v.is_floating_point()]
        self._other = [(self.state[k], v) for k, v in live.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self) -> float:
        """Fold the live state in; returns the decay used."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self._float:
            avg, live = zip(*self._float)
            torch._foreach_mul_(avg, d)
            torch._foreach_add_(avg, live, alpha=1.0 - d)
        for avg, live in self._other:
            avg.copy_(live)
        return d


# --- schedule ---------------------------------------------------------------------------------------------
def schedule_progress(step: int, total_steps: int, *, elapsed_s: float | None = None,
                      budget_s: float | None = None) -> float:
    """Training progress (0..1) for :func:`lr_factor`: the share of planned steps done or, when a
    clock is given (``elapsed_s`` of ``budget_s``), the share of the time budget used, whichever is
    further, so that the schedule ends by the budget even if steps get slower than planned."""
    p = step / max(1, total_steps)
    if elapsed_s is not None and budget_s is not None and budget_s > 0 and math.isfinite(budget_s):
        p = max(p, elapsed_s / budget_s)
    return min(max(p, 0.0), 1.0)


def lr_factor(progress: float, *, pct_start: float = 0.15, start: float = 1 / 25, end: float = 1e-4) -> float:
    """One cycle as a function of training progress (0..1): linear ``start`` -> 1 over ``pct_start``,
    then cosine 1 -> ``end``."""
    p = min(max(progress, 0.0), 1.0)
    if p < pct_start:
        return start + (1 - start) * p / pct_start
    q = (p - pct_start) / (1 - pct_start)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * q))
