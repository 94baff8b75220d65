"""``python -m delen_ros.tools.e2e_echo``: a pass-through node, the transport floor of the e2e benchmark.

Subscribes to camera image topics exactly as the delen node does (``sensor_msgs/Image`` taken raw:
``raw=True`` and :func:`~delen_ros.ros.conversions.parse_image_cdr`, which views the pixels in place;
the same image QoS and DDS history depth; one process, a single-threaded executor) and, for every
image, publishes a small ``delen_ros/InferenceResult`` with the image's header (stamp, ``frame_id``)
and nothing computed, on the result QoS (:data:`~delen_ros.ros.qos.RESULT_QOS`). The benchmark's
recorder reads it like the node's results, so *node stamp->receive - compute - echo stamp->receive*
is what the node adds over DDS itself.

``--deserialize`` takes images as the echo did before the node went raw: rclpy builds a Python
``sensor_msgs/Image`` per frame (~0.6 ms of the GIL for 640x480), which makes the echo slower and so
flatters the node's overhead over it. A malformed image is counted and skipped (raw only: rclpy
drops what it cannot deserialize), with a count in the log every 5 s at most.

Example::

    python -m delen_ros.tools.e2e_echo --topics /e2e/cam00/image_raw,/e2e/cam01/image_raw \\
        --result-prefix /e2e_echo
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from delen_ros.msg import InferenceResult
from delen_ros.ros.conversions import ImageFormatError, parse_image_cdr

__all__ = ['echo_result_topic', 'result_from_raw', 'main']


def echo_result_topic(prefix: str, app_id: str) -> str:
    """Where the echo answers frames of ``app_id``: ``<prefix>/<app_id>/result`` (as the node's ``~/<app_id>/result``)."""
    return f'{prefix.rstrip("/")}/{app_id}/result'


def result_from_raw(serialized: bytes, *, app_id: str, image_topic: str) -> InferenceResult:
    """The echo's answer to one serialized image: an ``InferenceResult`` whose header is the image's
    (stamp and ``frame_id``, read by :func:`~delen_ros.ros.conversions.parse_image_cdr`), nothing else set.

    :raises ImageFormatError: an unreadable buffer.
    """
    image = parse_image_cdr(serialized)
    out = InferenceResult()
    out.header.stamp.sec, out.header.stamp.nanosec = image.sec, image.nanosec
    out.header.frame_id = image.frame_id
    out.app_id, out.image_topic = app_id, image_topic
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='e2e_echo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--topics', required=True, help='comma-separated image topics')
    parser.add_argument('--apps', default='', help='comma-separated app ids, one per topic '
                        '(default: cam00, cam01, ...)')
    parser.add_argument('--result-prefix', default='/e2e_echo', help='results go to <prefix>/<app>/result')
    parser.add_argument('--image-qos', default='sensor_data', choices=['sensor_data', 'reliable'])
    parser.add_argument('--deserialize', action='store_true',
                        help='take each image as a Python sensor_msgs/Image (the echo before the node went raw)')
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from delen_ros.ros.manager import SUBSCRIPTION_DEPTH
    from delen_ros.ros.qos import RESULT_QOS, image_qos

    topics = [t for t in args.topics.split(',') if t]
    apps = [a for a in args.apps.split(',') if a] or [f'cam{i:02d}' for i in range(len(topics))]
    if len(apps) != len(topics):
        parser.error(f'{len(apps)} app ids for {len(topics)} topics')
    rclpy.init()
    node = rclpy.create_node('delen_e2e_echo')
    logger = node.get_logger()
    qos = image_qos(args.image_qos, depth=SUBSCRIPTION_DEPTH)
    malformed = [0]
    keep = []
    for topic, app in zip(topics, apps):
        publisher = node.create_publisher(InferenceResult, echo_result_topic(args.result_prefix, app), RESULT_QOS)
        if args.deserialize:
            def on_image(msg, publisher=publisher, app=app, topic=topic):
                out = InferenceResult()
                out.header = msg.header
                out.app_id, out.image_topic = app, topic
                publisher.publish(out)
        else:
            def on_image(serialized, publisher=publisher, app=app, topic=topic):
                try:
                    publisher.publish(result_from_raw(serialized, app_id=app, image_topic=topic))
                except ImageFormatError as exc:
                    malformed[0] += 1
                    logger.warning(f'{topic}: skipping a malformed image ({exc}); {malformed[0]} so far',
                                   throttle_duration_sec=5.0)
        keep.append(node.create_subscription(Image, topic, on_image, qos, raw=not args.deserialize))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    mode = 'deserialize' if args.deserialize else 'raw'
    logger.info(f'echoing {len(topics)} topic(s) to {args.result_prefix}/<app>/result (images taken {mode})')
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
