"""``latency_from: stamp`` (the default): a frame's latency and its bound run from its header.stamp,
as a subscriber sees it, so time spent before the node (transport, a slow driver) counts. Real node,
real DDS; frames are published with stamps made older on purpose."""
from __future__ import annotations

import pathlib
import time
from typing import Callable

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')

from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from delen_ros.msg import InferenceResult  # noqa: E402
from delen_ros.ros.conversions import array_to_image  # noqa: E402
from delen_ros.ros.qos import image_qos  # noqa: E402
from delen_ros.srv import SetBounds  # noqa: E402

from ros_helpers import RosPeer, node_and_peer, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(180)
AGED_MS = 150.0   # the age given to the stamps


def _publish_aged(peer: RosPeer, topic: str, *, age_ms: float, count: int,
                  until: Callable[[], bool] | None = None, timeout: float = 20.0) -> None:
    """``count`` frames 0.1 s apart, from once the node's subscription has matched (frames sent
    before would be lost, and the node samples ages only 1 s after an app's first frame); then on
    until ``until()`` holds (at most ``timeout`` s): the publisher can see the match before the
    node's receiver does, and the first frames then go nowhere."""
    pub = peer.node.create_publisher(Image, topic, image_qos('reliable'))
    wait_until(lambda: pub.get_subscription_count() > 0, timeout=20.0, what=f'a subscriber of {topic}')
    frame = array_to_image(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    deadline = time.monotonic() + timeout
    sent = 0
    while sent < count or (until is not None and not until() and time.monotonic() < deadline):
        stamp_ns = peer.node.get_clock().now().nanoseconds - int(age_ms * 1e6)
        frame.header.stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        pub.publish(frame)
        sent += 1
        time.sleep(0.1)


@pytest.mark.parametrize('latency_from', ['stamp', 'arrival'])
def test_latency_runs_from_the_stamp_unless_told_otherwise(tmp_path: pathlib.Path, latency_from: str):
    with node_and_peer(tmp_path, latency_from=latency_from) as (node, peer):
        response = peer.call(SetBounds, '/delen/set_bounds', SetBounds.Request(
            app_id='aged', image_topic='/aged/cam', max_latency_ms=100.0,
            late_policy=SetBounds.Request.LATE_SERVE_FASTEST))
        assert response.accepted, response.message
        results = peer.subscribe(InferenceResult, response.result_topic)
        time.sleep(1.0)
        _publish_aged(peer, '/aged/cam', age_ms=AGED_MS, count=25)   # 2.5 s: 1.5 s past the settling pause
        wait_until(lambda: len(results.messages()) >= 5, timeout=20.0, what=lambda: node.log()[-2000:])
        got = results.messages()
        if latency_from == 'stamp':
            # 150 ms old on arrival: over its 100 ms bound whatever the node does, and said so
            assert all(m.latency_ms >= AGED_MS for m in got), [m.latency_ms for m in got]
            assert not any(m.bounds_met for m in got)
        else:
            assert all(m.latency_ms < AGED_MS for m in got), [m.latency_ms for m in got]
            assert all(m.bounds_met for m in got)
        assert all(m.stamp_latency_ms >= AGED_MS for m in got)   # the stamp's own view is the same either way
        # The node has learnt how old frames are on arrival: a new app asking the same bound now
        # is refused, and told why, when latency runs from the stamp.
        again = peer.call(SetBounds, '/delen/set_bounds', SetBounds.Request(
            app_id='aged_too', image_topic='/aged/cam', max_latency_ms=100.0))
        if latency_from == 'stamp':
            assert not again.accepted and 'frame age on arrival' in again.message, again.message
            assert again.feasible_latency_ms[0] >= AGED_MS
        else:
            assert again.accepted, again.message


def test_a_stamp_from_another_clock_falls_back_to_arrival(tmp_path: pathlib.Path):
    with node_and_peer(tmp_path) as (node, peer):
        response = peer.call(SetBounds, '/delen/set_bounds', SetBounds.Request(
            app_id='skewed', image_topic='/skewed/cam', max_latency_ms=100.0))
        assert response.accepted, response.message
        results = peer.subscribe(InferenceResult, response.result_topic)
        time.sleep(1.0)
        _publish_aged(peer, '/skewed/cam', age_ms=3600e3, count=10,   # an hour behind: not this host's clock
                      until=lambda: len(results.messages()) >= 3)
        wait_until(lambda: len(results.messages()) >= 3, timeout=20.0, what=lambda: node.log()[-2000:])
        assert all(m.latency_ms < 100.0 and m.bounds_met for m in results.messages())
