"""sensor_msgs/Image <-> numpy: every encoding, row padding, bad input (no node, no DDS)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg', reason='sensor_msgs (ROS 2 message wheels) not installed')

from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from delen_ros.ros.conversions import (ENCODINGS, ImageFormatError, array_to_image,  # noqa: E402
                                       cv_bridge_available, image_to_array)

BACKENDS = [False] + ([True] if cv_bridge_available() else [])


def _rgb(height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _grey(height: int = 5, width: int = 7, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def _raw(encoding: str, pixels: np.ndarray, *, step: int | None = None) -> Image:
    """An Image built by hand from wire-order pixels (independent of array_to_image)."""
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1)
    step = row.shape[1] if step is None else step
    data = np.zeros((height, step), np.uint8)
    data[:, :row.shape[1]] = row
    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.data.frombytes(data.tobytes())
    return msg


# encoding -> how to lay an RGB array out in that encoding on the wire, by hand
WIRE = {
    'rgb8': lambda rgb: rgb,
    'bgr8': lambda rgb: rgb[:, :, ::-1],
    'rgba8': lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
    'bgra8': lambda rgb: np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 9, np.uint8)]),
}


@pytest.mark.parametrize('use_cv_bridge', BACKENDS)
@pytest.mark.parametrize('encoding', sorted(WIRE))
@pytest.mark.parametrize('size', [(5, 7), (1, 1), (480, 640), (3, 1000)])
@pytest.mark.parametrize('padding', [0, 1, 13])
def test_colour_encodings_decode_to_rgb(encoding, size, padding, use_cv_bridge):
    rgb = _rgb(*size)
    wire = WIRE[encoding](rgb)
    msg = _raw(encoding, wire, step=size[1] * ENCODINGS[encoding] + padding)
    out = image_to_array(msg, use_cv_bridge=use_cv_bridge)
    assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('use_cv_bridge', BACKENDS)
@pytest.mark.parametrize('padding', [0, 3])
def test_mono8_decodes_to_grey(padding, use_cv_bridge):
    grey = _grey(6, 9)
    out = image_to_array(_raw('mono8', grey, step=9 + padding), use_cv_bridge=use_cv_bridge)
    assert out.shape == (6, 9)
    np.testing.assert_array_equal(out, grey)


@pytest.mark.parametrize('is_bigendian', [0, 1])
def test_endianness_is_irrelevant_for_8_bit(is_bigendian):
    rgb = _rgb()
    msg = _raw('bgr8', rgb[:, :, ::-1])
    msg.is_bigendian = is_bigendian
    np.testing.assert_array_equal(image_to_array(msg), rgb)


def test_result_does_not_share_memory_with_message():
    rgb = _rgb()
    msg = _raw('rgb8', rgb)
    out = image_to_array(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_to_array(msg), rgb)


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('step', [None, 64])
def test_round_trip(encoding, step):
    rgb = _rgb(4, 10)
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = array_to_image(rgb, encoding=encoding, header=header, step=step)
    assert (msg.encoding, msg.height, msg.width) == (encoding, 4, 10)
    assert msg.step == (step or 10 * ENCODINGS[encoding]) and len(msg.data) == msg.step * msg.height
    assert msg.header.frame_id == 'cam' and msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 345
    out = image_to_array(msg)
    if encoding == 'mono8':  # colour -> luminance
        assert out.shape == (4, 10)
        expected = np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(int)
        assert np.abs(out.astype(int) - expected).max() <= 1
    else:
        np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('shape', [(4, 10), (4, 10, 1)])
def test_grey_round_trip(encoding, shape):
    grey = _grey(4, 10).reshape(shape)
    out = image_to_array(array_to_image(grey, encoding=encoding))
    if encoding == 'mono8':
        np.testing.assert_array_equal(out, grey.reshape(4, 10))
    else:  # grey on a colour wire: three equal channels
        np.testing.assert_array_equal(out, np.repeat(grey.reshape(4, 10, 1), 3, axis=2))


def test_alpha_is_255_on_the_wire():
    msg = array_to_image(_rgb(2, 3), encoding='rgba8')
    assert np.frombuffer(msg.data, np.uint8).reshape(2, 3, 4)[:, :, 3].min() == 255


def test_padding_bytes_are_zero():
    msg = array_to_image(np.full((2, 3, 3), 7, np.uint8), encoding='rgb8', step=16)
    rows = np.frombuffer(msg.data, np.uint8).reshape(2, 16)
    assert (rows[:, 9:] == 0).all() and (rows[:, :9] == 7).all()


def _bad(**fields) -> Image:
    msg = _raw('rgb8', _rgb(4, 5))
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize('msg, match', [
    (_bad(encoding='yuv422'), 'unsupported image encoding'),
    (_bad(encoding='16UC1'), 'unsupported image encoding'),
    (_bad(encoding=''), 'unsupported image encoding'),
    (_bad(encoding='mono16'), 'unsupported image encoding'),
    (_bad(height=0, data=b''), 'empty image'),
    (_bad(width=0), 'empty image'),
    (_bad(step=14), 'step 14 B is less than'),
    (_bad(height=5), 'data holds 60 B, expected'),                    # short data
    (_bad(data=b'\x00' * 61), 'data holds 61 B, expected'),           # long data
    (_bad(data=b''), 'data holds 0 B'),
    (_bad(step=16), 'data holds 60 B, expected step x height = 16 x 4'),
], ids=lambda x: x if isinstance(x, str) else '')
@pytest.mark.parametrize('use_cv_bridge', BACKENDS)
def test_malformed_messages_raise(msg, match, use_cv_bridge):
    with pytest.raises(ImageFormatError, match=match):
        image_to_array(msg, use_cv_bridge=use_cv_bridge)


def test_image_format_error_is_a_value_error():
    assert issubclass(ImageFormatError, ValueError)


@pytest.mark.parametrize('array, kwargs, match', [
    (_rgb(), {'encoding': 'yuv422'}, 'unsupported image encoding'),
    (_rgb().astype(np.float32), {}, 'must be uint8'),
    (np.zeros((4, 5, 2), np.uint8), {}, 'got shape'),
    (np.zeros((4, 5, 4), np.uint8), {}, 'got shape'),
    (np.zeros((2, 4, 5, 3), np.uint8), {}, 'got shape'),
    (np.zeros((0, 5, 3), np.uint8), {}, 'empty array'),
    (np.zeros((4, 0), np.uint8), {}, 'empty array'),
    (_rgb(4, 5), {'step': 14}, 'step 14 B is less than'),
], ids=lambda x: x if isinstance(x, str) else '')
def test_array_to_image_rejects_bad_input(array, kwargs, match):
    with pytest.raises(ImageFormatError, match=match):
        array_to_image(array, **kwargs)


def test_require_cv_bridge_when_absent():
    if cv_bridge_available():
        pytest.skip('cv_bridge is importable here')
    with pytest.raises(RuntimeError, match='cv_bridge'):
        image_to_array(_raw('rgb8', _rgb()), use_cv_bridge=True)


# --- serialized images (the node's raw subscription) --------------------------------------------------------
@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8', 'bgra8'])
@pytest.mark.parametrize('padding', [0, 3])
@pytest.mark.parametrize('frame_id', ['', 'cam0/12_label', 'ünïcode'])
def test_serialized_images_parse_like_deserialized_ones(encoding, padding, frame_id):
    from rclpy.serialization import serialize_message
    from delen_ros.ros.conversions import parse_image_cdr
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    channels = ENCODINGS[encoding]
    msg = array_to_image(rgb if channels > 1 else rgb[:, :, 0], encoding=encoding, step=7 * channels + padding)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = -3, 999_999_999
    raw = parse_image_cdr(serialize_message(msg))
    assert (raw.height, raw.width, raw.encoding, raw.step) == (5, 7, encoding, msg.step)
    assert raw.header.frame_id == frame_id and (raw.header.stamp.sec, raw.header.stamp.nanosec) == (-3, 999_999_999)
    np.testing.assert_array_equal(image_to_array(raw, copy=False), image_to_array(msg))


def test_truncated_or_garbled_serialized_images_raise():
    from rclpy.serialization import serialize_message
    from delen_ros.ros.conversions import parse_image_cdr
    data = serialize_message(array_to_image(np.zeros((4, 4, 3), np.uint8)))
    for cut in (0, 3, 10, 30, len(data) - 1):
        with pytest.raises(ImageFormatError):
            parse_image_cdr(data[:cut])
    with pytest.raises(ImageFormatError, match='encapsulation'):
        parse_image_cdr(b'\x07' + data[1:])
    huge = bytearray(data)
    huge[-48 - 4:-48] = (10 ** 9).to_bytes(4, 'little')   # the pixel count field announces a gigabyte
    with pytest.raises(ImageFormatError):
        parse_image_cdr(bytes(huge))
