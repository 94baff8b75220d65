"""OpenCV's ``INTER_AREA`` resize in torch, for frames already on the accelerator.

The CPU preprocessing resizes with ``cv2.resize(..., INTER_AREA)`` and the profiles' accuracy and
calibration are measured through it, so the device path must give the model the same pixels.
``INTER_AREA`` is two different rules:

* shrinking in both directions: each output pixel is the mean of the source area it covers, partly
  covered pixels weighted by their share (``torch``'s ``area`` mode, an adaptive average pool,
  weighs them fully: the two differ at non-integer factors);
* otherwise a two-tap interpolation that replicates the source pixel wherever an output pixel lies
  inside it and blends only across a boundary: at integer factors, nearest-neighbour replication.
  Bilinear is a different image: with 32x32 CIFAR-10 photos grown to 160x160 bilinearly, as the device
  path did until session 46, the committee's first exit scored 0.809 instead of 0.841 on the 10 000 test
  photos on an H200, and the stream at an accuracy bound of 0.9415 scored 0.936, under it
  (``benchmarks/h200/session46``).

Both rules are separable, so a resize is two small matrix products with per-axis weights made once
per size pair; integer factors take one pooling or replication kernel instead. Results are rounded to
whole pixel values, as ``cv2`` returns uint8 (at most one level apart where ``cv2``'s fixed-point
arithmetic rounds a tie the other way).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ['area_weights', 'area_resize', 'growth_factors']


def area_weights(src: int, dst: int, *, box: bool) -> np.ndarray:
    """The ``dst x src`` weights of one axis of ``INTER_AREA`` (rows sum to 1).

    :param box: the shrinking rule (``cv2``'s ``computeResizeAreaTab``), used when both axes shrink;
        else the interpolating rule of ``cv2``'s linear resize in area mode.
    """
    if src < 1 or dst < 1:
        raise ValueError(f'sizes must be >= 1, got {src} -> {dst}')
    weights = np.zeros((dst, src), dtype=np.float64)
    scale = src / dst
    if box:
        for d in range(dst):   # computeResizeAreaTab, step by step
            start = d * scale
            end = start + scale
            cell = min(scale, src - start)
            last = min(math.floor(end), src - 1)
            first = min(math.ceil(start), last)
            if first - start > 1e-3:
                weights[d, first - 1] = (first - start) / cell
            weights[d, first:last] = 1.0 / cell
            if end - last > 1e-3:
                weights[d, last] = min(end - last, 1.0, cell) / cell
        return weights
    inv_scale = dst / src
    for d in range(dst):
        s = math.floor(d * scale)
        f = (d + 1) - (s + 1) * inv_scale
        f = 0.0 if f <= 0 else f - math.floor(f)
        if s < 0:
            s, f = 0, 0.0
        if s >= src - 1:
            s, f = src - 1, 0.0
        weights[d, s] += 1.0 - f
        if f:
            weights[d, s + 1] += f
    return weights


@functools.lru_cache(maxsize=32)   # bounded, whatever sizes cameras send
def _axis_weights(src: int, dst: int, box: bool, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(area_weights(src, dst, box=box)).to(device=device, dtype=torch.float32)


def growth_factors(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int] | None:
    """``(fy, fx)`` where ``INTER_AREA`` takes ``src`` ``(h, w)`` to ``dst`` by replicating each pixel
    ``fy x fx`` times (grown by whole factors, at least one of them above 1), else ``None``."""
    (src_h, src_w), (h, w) = src, dst
    if h % src_h or w % src_w or (h, w) == (src_h, src_w):
        return None
    return h // src_h, w // src_w


def area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``N x C x H x W`` pixels (0-255, uint8 or float) resized to ``size`` ``(h, w)`` as
    ``cv2.INTER_AREA`` does; float32 whole pixel values, or ``x`` itself at its size.

    Integer factors: one kernel (an average pool when shrinking, replication when growing); other
    factors: two matrix products in float32, then the rounding (where TF32 matrix products are allowed,
    which torch's default is not, a pixel may come out a level off).
    """
    (src_h, src_w), (h, w) = x.shape[-2:], size
    if (src_h, src_w) == (h, w):
        return x
    box = src_h >= h and src_w >= w
    if box and src_h % h == 0 and src_w % w == 0:
        factors = (src_h // h, src_w // w)
        return torch.nn.functional.avg_pool2d(x.float(), factors, factors).round_()
    if growth_factors((src_h, src_w), (h, w)) is not None:
        return torch.nn.functional.interpolate(x.float(), size=(h, w), mode='nearest')
    wy = _axis_weights(src_h, h, box, x.device)
    wx = _axis_weights(src_w, w, box, x.device)
    return torch.matmul(torch.matmul(wy, x.float()), wx.T).round_()
