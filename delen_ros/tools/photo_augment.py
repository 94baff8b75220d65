"""TrivialAugment on a batch of small photos, on their device (issue 9: generalisation, not fit).

Every variant trained so far fits the CIFAR-10 training photos to 99.5 % and stops at 94 % on the
test photos, whatever the input size or the early exits' pull (models/README.md, sweep 2026-11-30):
the training photos need more variety. TrivialAugment (Müller & Hutter, ICCV 2021) draws, for each
photo, one operation and one strength uniformly; it has no policy to search. Here the operations run
batched on the photos' device, as uint8 ``N x C x H x W`` in and out, a per-photo choice being a
``torch.where`` over every operation's output (a 32 px batch is small: all of them cost little
beside the network). The strengths follow RandAugment's ranges at its largest magnitude, milder than
TrivialAugment-Wide's, whose 32 px translation moves a CIFAR photo out of its frame.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ['OPS', 'trivial_augment', 'apply_op']

# (name, largest strength); a strength s in [0, largest] is drawn per photo, signed where it can be.
OPS: tuple[tuple[str, float], ...] = (
    ('identity', 0.0),
    ('shear_x', 0.3), ('shear_y', 0.3),               # shear factor
    ('translate_x', 0.3), ('translate_y', 0.3),       # share of the side
    ('rotate', 30.0),                                 # degrees
    ('brightness', 0.9), ('color', 0.9), ('contrast', 0.9), ('sharpness', 0.9),   # factor 1 +- s
    ('posterize', 4.0),                               # bits dropped (8 - s kept)
    ('solarize', 256.0),                              # threshold 256 - s
    ('autocontrast', 0.0),
)
_GEOMETRIC = ('shear_x', 'shear_y', 'translate_x', 'translate_y', 'rotate')
_SIGNED = _GEOMETRIC + ('brightness', 'color', 'contrast', 'sharpness')


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of float ``N x 3 x H x W`` (``N x 1 x H x W``), as PIL's ``L`` mode."""
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``; ``factor`` per photo."""
    return degenerate + factor[:, None, None, None] * (x - degenerate)


def _affine(x: torch.Tensor, name: str, s: torch.Tensor) -> torch.Tensor:
    """One geometric operation with signed strength ``s`` per photo; outside pixels are black."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if name == 'shear_x':
        theta[:, 0, 1] = s
    elif name == 'shear_y':
        theta[:, 1, 0] = s
    elif name == 'translate_x':
        theta[:, 0, 2] = 2.0 * s      # grid units: the side is 2
    elif name == 'translate_y':
        theta[:, 1, 2] = 2.0 * s
    else:   # rotate
        a = s * (math.pi / 180.0)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode='nearest', padding_mode='zeros', align_corners=False)


def apply_op(x: torch.Tensor, name: str, s: torch.Tensor) -> torch.Tensor:
    """Operation ``name`` on float ``N x C x H x W`` photos in [0, 255], strength ``s`` per photo
    (signed for the geometric and enhancing ones); the result is in [0, 255], not rounded."""
    if name == 'identity':
        return x
    if name in _GEOMETRIC:
        return _affine(x, name, s)
    if name == 'brightness':
        return _blend(x, torch.zeros_like(x), 1.0 + s).clamp(0, 255)
    if name == 'color':
        return _blend(x, _gray(x).expand_as(x), 1.0 + s).clamp(0, 255)
    if name == 'contrast':
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x, mean.expand_as(x), 1.0 + s).clamp(0, 255)
    if name == 'sharpness':
        # PIL's SMOOTH filter on the inside, the border kept as it is
        c = x.shape[1]
        kernel = torch.tensor([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]], device=x.device, dtype=x.dtype) / 13.0
        smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode='replicate'), kernel.expand(c, 1, 3, 3), groups=c)
        smooth[:, :, 0, :], smooth[:, :, -1, :] = x[:, :, 0, :], x[:, :, -1, :]
        smooth[:, :, :, 0], smooth[:, :, :, -1] = x[:, :, :, 0], x[:, :, :, -1]
        return _blend(x, smooth, 1.0 + s).clamp(0, 255)
    if name == 'posterize':
        step = torch.pow(2.0, s.round())[:, None, None, None]     # keep 8 - s bits
        return torch.floor(x / step) * step
    if name == 'solarize':
        threshold = (256.0 - s)[:, None, None, None]
        return torch.where(x >= threshold, 255.0 - x, x)
    if name == 'autocontrast':
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
        return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, 255)
    raise ValueError(f'unknown operation {name!r} (known: {", ".join(n for n, _ in OPS)})')


def trivial_augment(x: torch.Tensor, generator: torch.Generator, *, prob: float = 1.0) -> torch.Tensor:
    """Each uint8 ``N x C x H x W`` photo, with probability ``prob``, through one operation of
    :data:`OPS` drawn uniformly at a strength drawn uniformly up to its largest (a random sign where
    it has one); the others unchanged. Draws from ``generator`` only (on the photos' device)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f'prob must be in [0, 1], got {prob!r}')
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f'expected a uint8 N x C x H x W batch, got {x.dtype} of shape {tuple(x.shape)}')
    n, dev = x.shape[0], x.device
    chosen = torch.randint(0, len(OPS), (n,), generator=generator, device=dev)
    applied = torch.rand(n, generator=generator, device=dev) < prob
    chosen = torch.where(applied, chosen, torch.zeros_like(chosen))   # 0: identity
    strength = torch.rand(n, generator=generator, device=dev)
    sign = torch.where(torch.rand(n, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    xf = x.float()
    out = xf
    for i, (name, largest) in enumerate(OPS):
        pick = chosen == i
        if name == 'identity' or not bool(pick.any()):
            continue
        s = strength * largest * (sign if name in _SIGNED else 1.0)
        out = torch.where(pick[:, None, None, None], apply_op(xf, name, s), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)
