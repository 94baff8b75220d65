"""Generators of hostile input for the node: malformed images and invalid SetBounds requests.

Shared by the quick integration tests (``test_node_robustness.py``) and the long soak
(``benchmarks/soak.py``). Every generated image is checked here to be rejected by the node's own
conversion (so "every frame received was malformed" is exact), and every request is one the node
must refuse.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np

__all__ = ['fuzzed_images', 'invalid_requests', 'is_malformed']


def is_malformed(msg) -> bool:
    """Whether the node would count ``msg`` as malformed (conversion or the engine's check fails)."""
    from delen_ros.core.preprocess import check_image
    from delen_ros.ros.conversions import ImageFormatError, image_to_array
    try:
        check_image(image_to_array(msg, copy=False))
    except (ImageFormatError, ValueError):
        return True
    return False


def _one(rng: random.Random):
    from sensor_msgs.msg import Image
    msg = Image()
    kind = rng.randrange(10)
    msg.height, msg.width = rng.choice([0, 1, 2, 28, 480, 2**31, 2**32 - 1]), rng.choice([0, 1, 3, 28, 640, 2**32 - 1])
    msg.encoding = rng.choice(['rgb8', 'bgr8', 'mono8', 'rgba8', 'bgra8', 'yuv422', '16UC1', '', 'RGB8', 'x' * 300,
                               'mono16', '32FC1', '\u00e9'])
    channels = {'rgb8': 3, 'bgr8': 3, 'mono8': 1, 'rgba8': 4, 'bgra8': 4}.get(msg.encoding, 2)
    msg.step = rng.choice([0, msg.width * channels, msg.width * channels - 1, 1, 2**32 - 1]) % 2**32
    msg.is_bigendian = rng.randrange(2)
    size = rng.choice([0, 1, 7, 100, 2352, 3000])
    if kind == 0:   # sizes that match except one byte
        msg.height, msg.width, msg.encoding, msg.step = 28, 28, 'mono8', 28
        size = 28 * 28 - 1
    elif kind == 1:   # a valid header with an empty payload
        msg.height, msg.width, msg.encoding, msg.step = 4, 4, 'rgb8', 12
        size = 0
    msg.data = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64) + bytes(size % 64) \
        if size >= 64 else bytes(rng.getrandbits(8) for _ in range(size))
    msg.header.frame_id = rng.choice(['', 'cam', 'x' * 1000, 'label_99'])
    return msg


def fuzzed_images(count: int, *, seed: int = 0, valid: int = 0) -> list:
    """``count`` malformed ``sensor_msgs/Image`` messages (each checked), then ``valid`` good 28x28 mono8 ones."""
    from delen_ros.ros.conversions import array_to_image
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        msg = _one(rng)
        if is_malformed(msg):
            out.append(msg)
    np_rng = np.random.default_rng(seed)
    out += [array_to_image(np_rng.integers(0, 256, (28, 28), dtype=np.uint8), encoding='mono8') for _ in range(valid)]
    return out


def invalid_requests(count: int, *, seed: int = 0, victim: str, victim_result: str, camera: str,
                     reserved: Sequence[str] = ()) -> list:
    """``count`` ``SetBounds`` requests the node must reject: bad ids, names, bounds, reserved or
    foreign topics, hijacks of ``victim`` without its token, result-topic theft."""
    from delen_ros.srv import SetBounds
    rng = random.Random(seed)
    nan, inf = math.nan, math.inf
    makers = [
        lambda i: dict(app_id=rng.choice(['', '1abc', 'a b', 'a/b', 'x' * 65, 'é', '_x']), image_topic=camera),
        lambda i: dict(app_id=f'n{i}', image_topic=rng.choice(['', ' ', 'bad topic', '/a//b', '1x', '/x/', '~~'])),
        lambda i: dict(app_id=f'n{i}', image_topic=camera, result_topic=rng.choice(['/a//b', 'bad topic', '/x/'])),
        lambda i: dict(app_id=f'n{i}', image_topic=camera,
                       **{rng.choice(['max_latency_ms', 'min_accuracy', 'max_energy_mj']): rng.choice([nan, inf, -1.0])}),
        lambda i: dict(app_id=f'n{i}', image_topic=camera, min_accuracy=rng.choice([1.5, 0.9999])),
        lambda i: dict(app_id=f'n{i}', image_topic=camera, max_latency_ms=1e-4),
        lambda i: dict(app_id=f'n{i}', image_topic=camera, objective=rng.choice([4, 7, 255])),
        lambda i: dict(app_id=f'n{i}', image_topic=camera, late_policy=rng.choice([2, 9, 255])),
        lambda i: dict(app_id=f'n{i}', image_topic=rng.choice(['/rosout', '/parameter_events', '/diagnostics',
                                                              *reserved])),
        lambda i: dict(app_id=f'n{i}', image_topic=camera, result_topic=rng.choice(['/rosout', '/diagnostics',
                                                                                    *reserved])),
        lambda i: dict(app_id=victim, image_topic=f'/evil/cam{i}', token=rng.choice(['', 'guess', '0' * 32])),
        lambda i: dict(app_id=f'n{i}', image_topic=f'/evil/cam{i}', result_topic=victim_result),
        lambda i: dict(app_id=f'n{i}', image_topic=victim_result),
    ]
    return [SetBounds.Request(**makers[i % len(makers)](i)) for i in range(count)]
