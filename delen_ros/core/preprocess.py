"""Camera images -> the normalised input batch a model takes.

Images are uint8 ``H x W x 3`` RGB or ``H x W`` (or ``H x W x 1``) grey, of any size. Each is
converted to the model's channels (ITU-R 601 luma for RGB -> grey, as ``cv2.cvtColor``; grey -> RGB
repeats the channel), resized to ``info.input_size`` with ``cv2.INTER_AREA`` (averages the source
pixels, so shrinking a 640x480 frame does not alias), then normalised ``(pixel - mean) / std``.

Images of the same shape are stacked and converted, normalised and copied as one array; only the
resize runs per image (see ``_resize``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch

if TYPE_CHECKING:
    from .multi_exit import ModelInfo

__all__ = ['preprocess', 'check_image']

def check_image(image: object, *, index: int = 0) -> np.ndarray:
    """Validate one input image; returns it as ``H x W`` or ``H x W x 3`` uint8, else ``ValueError``."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f'image {index}: expected a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ValueError(f'image {index}: expected dtype uint8, got {image.dtype}')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f'image {index}: expected H x W grey or H x W x 3 RGB, got shape {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f'image {index}: empty image, shape {image.shape}')
    return image


def _convert_channels(stack: np.ndarray, in_channels: int) -> np.ndarray:
    """``N x H x W [x 3]`` uint8 -> ``N x H x W x C`` with ``C = in_channels``."""
    if stack.ndim == 4 and in_channels == 1:
        n, h, w, _ = stack.shape
        # One cvtColor call for the whole stack: rows of all images laid end to end.
        grey = cv2.cvtColor(np.ascontiguousarray(stack).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY)
        return grey.reshape(n, h, w, 1)
    if stack.ndim == 3:
        stack = stack[..., None]
    return stack  # grey -> RGB is repeated after resizing (3x less to resize)


def _resize(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``N x H x W x C`` -> ``N x h x w x C`` with INTER_AREA, one cv2 call per image.

    One call per image (not several images packed as channels): OpenCV's area resize takes at most
    4 channels at non-integer ratios and rounds packed channels differently at integer ones, and a
    frame must come out the same whatever batch it arrives in.
    """
    n, h, w, c = stack.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return stack
    out = np.empty((n, out_h, out_w, c), np.uint8)
    for i in range(n):
        out[i] = cv2.resize(stack[i], (out_w, out_h), interpolation=cv2.INTER_AREA).reshape(out_h, out_w, c)
    return out


def preprocess(images: Sequence[np.ndarray], info: 'ModelInfo', *,
               device: str | torch.device | None = None) -> torch.Tensor:
    """The normalised float32 batch ``N x C x H x W`` for a model described by ``info``.

    :param images: uint8 ``H x W x 3`` RGB or ``H x W`` grey arrays, any sizes (a list, not one
        stacked array: a 3-D stack would be ambiguous).
    :param info: gives ``input_size`` (height, width), ``in_channels``, ``mean`` and ``std``.
    :param device: where to put the result; ``None``: CPU.
    :raises ValueError: for a bad image (dtype, dimensions, channels, zero size), showing it.
    """
    if isinstance(images, np.ndarray):
        raise ValueError(f'pass a sequence of images, not one array of shape {images.shape} '
                         '(e.g. [image] or list(stack))')
    images = [check_image(im, index=i) for i, im in enumerate(images)]
    c = info.in_channels
    h, w = info.input_size
    batch = np.empty((len(images), h, w, c), np.uint8)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    for indices in groups.values():
        stack = np.stack([images[i] for i in indices]) if len(indices) > 1 else images[indices[0]][None]
        stack = _resize(_convert_channels(stack, c), (h, w))
        batch[indices] = stack if stack.shape[-1] == c else np.repeat(stack, c, axis=-1)
    x = torch.from_numpy(batch).to(device=device).permute(0, 3, 1, 2).float()
    mean = torch.tensor(info.mean, dtype=torch.float32, device=x.device).view(1, c, 1, 1)
    inv_std = torch.tensor([1.0 / s for s in info.std], dtype=torch.float32, device=x.device).view(1, c, 1, 1)
    return ((x - mean) * inv_std).contiguous()
