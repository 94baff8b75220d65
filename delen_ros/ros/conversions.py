"""``sensor_msgs/Image`` <-> numpy, for the five 8-bit encodings cameras actually send.

Free functions, no node: the callback converts each frame once and hands the array to the engine.
Arrays are in the form :func:`delen_ros.core.preprocess.preprocess` takes: uint8 ``H x W x 3`` RGB,
or uint8 ``H x W`` grey.

Rows may be padded (``step`` > ``width * channels``, as some drivers align rows); the padding is
dropped. ``is_bigendian`` only matters for multi-byte channels, so it is ignored for these 8-bit
encodings. ROS 2's ``cv_bridge`` is used when importable (it is on a robot with apt's ROS), else
numpy + OpenCV; both give identical arrays, and the message is validated first either way so a
malformed message raises the same :class:`ImageFormatError` on both paths. Conversion is a reshape
plus one copy or one ``cv2.cvtColor`` (<= 0.05 ms for 640x480): no per-pixel Python.
"""
from __future__ import annotations

import functools
import struct
from typing import Any

import cv2
import numpy as np

__all__ = ['ENCODINGS', 'ImageFormatError', 'RawImage', 'parse_image_cdr', 'image_to_array', 'array_to_image', 'cv_bridge_available']

# encoding -> channels on the wire.
ENCODINGS: dict[str, int] = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}

# cv2 colour conversions: ~20x faster than numpy's strided channel reversal (0.04 vs 0.8 ms, 640x480).
_FROM_WIRE: dict[str, int] = {'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB}
_TO_WIRE: dict[tuple[bool, str], int] = {
    (False, 'bgr8'): cv2.COLOR_RGB2BGR, (False, 'rgba8'): cv2.COLOR_RGB2RGBA, (False, 'bgra8'): cv2.COLOR_RGB2BGRA,
    (False, 'mono8'): cv2.COLOR_RGB2GRAY, (True, 'rgb8'): cv2.COLOR_GRAY2RGB, (True, 'bgr8'): cv2.COLOR_GRAY2BGR,
    (True, 'rgba8'): cv2.COLOR_GRAY2RGBA, (True, 'bgra8'): cv2.COLOR_GRAY2BGRA,
}


class ImageFormatError(ValueError):
    """An image message this module cannot or will not convert (unknown encoding, bad sizes)."""


@functools.lru_cache(maxsize=1)
def _bridge() -> Any | None:
    """A ``cv_bridge.CvBridge`` when ROS 2's cv_bridge imports, else ``None``."""
    try:
        from cv_bridge import CvBridge  # ROS 2 cv_bridge (apt); PyPI's `cv-bridge` is ROS 1 and fails
        return CvBridge()
    except Exception:  # noqa: BLE001 - a broken cv_bridge install must not stop the node
        return None


class RawImage:
    """A ``sensor_msgs/Image`` read straight from its serialized bytes (see :func:`parse_image_cdr`).

    Has the message's fields, with ``data`` a zero-copy view of the buffer, so it goes wherever a
    message does here (:func:`image_to_array`); ``header`` is built on first use.
    """

    __slots__ = ('sec', 'nanosec', 'frame_id', 'height', 'width', 'encoding', 'is_bigendian', 'step', 'data',
                 '_header')

    def __init__(self, sec: int, nanosec: int, frame_id: str, height: int, width: int, encoding: str,
                 is_bigendian: int, step: int, data: np.ndarray):
        self.sec, self.nanosec, self.frame_id = sec, nanosec, frame_id
        self.height, self.width, self.encoding, self.is_bigendian, self.step = height, width, encoding, is_bigendian, step
        self.data = data
        self._header = None

    @property
    def stamp_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.nanosec

    @property
    def header(self) -> Any:
        if self._header is None:
            from builtin_interfaces.msg import Time
            from std_msgs.msg import Header
            self._header = Header(stamp=Time(sec=self.sec, nanosec=self.nanosec), frame_id=self.frame_id)
        return self._header


def parse_image_cdr(buffer: bytes) -> RawImage:
    """Read a serialized ``sensor_msgs/Image`` (CDR, as a ``raw=True`` subscription hands it over).

    Deserializing a 640x480 frame into a Python message costs ~0.6 ms of the GIL (its ``data``
    becomes an ``array.array``); this reads the few scalar fields and views the pixels in place, so
    the executor thread hands over frames at ~1/50 of that cost.

    :raises ImageFormatError: a truncated or inconsistent buffer (lengths past its end, a bad
        encapsulation header).
    """
    n = len(buffer)
    if n < 4 or buffer[0] != 0 or buffer[1] not in (0, 1):
        raise ImageFormatError('not a CDR-serialized message (bad encapsulation header)')
    order = '<' if buffer[1] == 1 else '>'
    u32 = struct.Struct(order + 'I')
    base, pos = 4, 4                       # alignment counts from after the encapsulation header

    def align(p: int) -> int:
        return base + ((p - base + 3) & ~3)

    def uint(p: int) -> tuple[int, int]:
        p = align(p)
        if p + 4 > n:
            raise ImageFormatError(f'serialized image truncated at byte {p} of {n}')
        return u32.unpack_from(buffer, p)[0], p + 4

    def string(p: int) -> tuple[str, int]:
        length, p = uint(p)
        if length == 0 or p + length > n:
            raise ImageFormatError(f'serialized image: string of {length} B at byte {p} runs past its {n} B')
        return bytes(buffer[p:p + length - 1]).decode('utf-8', 'replace'), p + length

    sec, pos = uint(pos)
    nanosec, pos = uint(pos)
    frame_id, pos = string(pos)
    height, pos = uint(pos)
    width, pos = uint(pos)
    encoding, pos = string(pos)
    if pos + 1 > n:
        raise ImageFormatError(f'serialized image truncated at byte {pos} of {n}')
    is_bigendian, pos = buffer[pos], pos + 1
    step, pos = uint(pos)
    size, pos = uint(pos)
    if pos + size > n:
        raise ImageFormatError(f'serialized image: {size} B of pixels announced, {n - pos} B present')
    if sec >= 1 << 31:
        sec -= 1 << 32                     # int32 on the wire
    data = np.frombuffer(buffer, dtype=np.uint8, count=size, offset=pos)
    return RawImage(sec, nanosec, frame_id, height, width, encoding, is_bigendian, step, data)


def cv_bridge_available() -> bool:
    """Whether :func:`image_to_array` can use ROS 2's ``cv_bridge``."""
    return _bridge() is not None


def _check(msg: Any) -> tuple[int, int, int, int]:
    """Validate ``msg``; returns ``(height, width, channels, step)``."""
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise ImageFormatError(f'unsupported image encoding {encoding!r}; supported: {sorted(ENCODINGS)}')
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    channels = ENCODINGS[encoding]
    if height <= 0 or width <= 0:
        raise ImageFormatError(f'empty image: {width}x{height}')
    if step < width * channels:
        raise ImageFormatError(f'step {step} B is less than width x channels = {width} x {channels} '
                               f'for {encoding!r}')
    if len(msg.data) != step * height:
        raise ImageFormatError(f'data holds {len(msg.data)} B, expected step x height = {step} x {height} '
                               f'= {step * height} B')
    return height, width, channels, step


def image_to_array(msg: Any, *, use_cv_bridge: bool | None = None, copy: bool = True) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to uint8 ``H x W x 3`` RGB, or ``H x W`` for ``mono8``.

    :param msg: the image message (``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8``; any size,
        rows may be padded). Alpha is dropped.
    :param use_cv_bridge: ``None``: cv_bridge when importable; ``True``: require it; ``False``: numpy.
    :param copy: ``False``: ``rgb8`` and ``mono8`` come back as a read-only *view* of ``msg.data``
        (rows may be strided; no bytes move: the node's frame path, where the one copy is the upload
        to the accelerator or the resize); other encodings need a conversion and are new arrays.
    :returns: with ``copy``, a new C-contiguous array that does not share memory with the message.
    :raises ImageFormatError: unknown encoding, zero size, ``step < width * channels``, or
        ``len(data) != step * height``.
    """
    height, width, channels, step = _check(msg)
    if not copy and msg.encoding in ('rgb8', 'mono8'):
        # Same bytes cv_bridge would view; skipping it saves its per-call Python work.
        pixels = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, :width * channels]
        return pixels if channels == 1 else pixels.reshape(height, width, channels)
    bridge = _bridge() if use_cv_bridge is not False else None
    if use_cv_bridge and bridge is None:
        raise RuntimeError('use_cv_bridge=True but ROS 2 cv_bridge is not importable')
    if bridge is not None:
        out = bridge.imgmsg_to_cv2(msg, desired_encoding='mono8' if channels == 1 else 'rgb8')
        return np.array(out, dtype=np.uint8, order='C', copy=True)
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)
    pixels = rows[:, :width * channels]
    if channels == 1:
        return pixels.copy()  # copy (C order): the result must not alias the message's buffer
    pixels = pixels.reshape(height, width, channels)
    if msg.encoding == 'rgb8':
        return pixels.copy()
    return cv2.cvtColor(pixels, _FROM_WIRE[msg.encoding])  # a new array; handles padded rows


def _to_wire(array: np.ndarray, encoding: str) -> np.ndarray:
    """``array`` (RGB ``H x W x 3`` or grey ``H x W``) laid out as ``encoding``'s pixels."""
    code = _TO_WIRE.get((array.ndim == 2, encoding))
    return array if code is None else cv2.cvtColor(np.ascontiguousarray(array), code)


def array_to_image(array: np.ndarray, *, encoding: str = 'rgb8', header: Any = None,
                   step: int | None = None) -> Any:
    """Build a ``sensor_msgs/Image`` from an RGB or grey array.

    :param array: uint8 ``H x W x 3`` RGB, ``H x W`` grey, or ``H x W x 1`` grey.
    :param encoding: the wire encoding to write (one of :data:`ENCODINGS`); the array is converted
        to it (RGB -> BGR swap, alpha = 255, colour -> grey by luminance, grey -> three equal
        channels), so ``image_to_array(array_to_image(a, encoding=e))`` gives ``a`` back for every
        colour ``e`` and for grey ``a``.
    :param header: a ``std_msgs/Header`` to copy in; ``None``: an empty header (zero stamp).
    :param step: bytes per row, ``>= W * channels`` (padding is zero-filled); ``None``: no padding.
    :raises ImageFormatError: unknown encoding, empty array, wrong dtype or shape, ``step`` too small.
    """
    from sensor_msgs.msg import Image  # imported here so the numpy half works without ROS messages
    if encoding not in ENCODINGS:
        raise ImageFormatError(f'unsupported image encoding {encoding!r}; supported: {sorted(ENCODINGS)}')
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ImageFormatError(f'array must be uint8, got {array.dtype}')
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ImageFormatError(f'array must be H x W x 3 (RGB) or H x W (grey), got shape {array.shape}')
    if array.size == 0:
        raise ImageFormatError(f'empty array: shape {array.shape}')
    height, width = array.shape[:2]
    wire = _to_wire(array, encoding)
    row_bytes = width * ENCODINGS[encoding]
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ImageFormatError(f'step {step} B is less than width x channels = {row_bytes} B')
    if step == row_bytes:
        rows = np.ascontiguousarray(wire).reshape(-1)
    else:
        rows = np.zeros((height, step), dtype=np.uint8)
        rows[:, :row_bytes] = wire.reshape(height, row_bytes)
        rows = rows.reshape(-1)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = height, width, encoding, 0, step
    msg.data.frombytes(rows.data)  # array.array('B'): one copy from the buffer, no per-element checks
    return msg
