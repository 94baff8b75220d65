"""``python -m delen_ros.tools.e2e_echo``: a pass-through node, the transport floor of the e2e benchmark.

Subscribes to camera image topics exactly as the delen node does (``sensor_msgs/Image``, the same
image QoS, one process, a single-threaded executor) and, for every image, publishes a small
``delen_ros/InferenceResult`` with the image's header copied and nothing computed, on the result QoS
(:data:`~delen_ros.ros.qos.RESULT_QOS`). The benchmark's recorder reads it like the node's results,
so *node stamp->receive - compute - echo stamp->receive* is what the node adds over DDS itself.

Example::

    python -m delen_ros.tools.e2e_echo --topics /e2e/cam00/image_raw,/e2e/cam01/image_raw \\
        --result-prefix /e2e_echo
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ['echo_result_topic', 'main']


def echo_result_topic(prefix: str, app_id: str) -> str:
    """Where the echo answers frames of ``app_id``: ``<prefix>/<app_id>/result`` (as the node's ``~/<app_id>/result``)."""
    return f'{prefix.rstrip("/")}/{app_id}/result'


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='e2e_echo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--topics', required=True, help='comma-separated image topics')
    parser.add_argument('--apps', default='', help='comma-separated app ids, one per topic '
                        '(default: cam00, cam01, ...)')
    parser.add_argument('--result-prefix', default='/e2e_echo', help='results go to <prefix>/<app>/result')
    parser.add_argument('--image-qos', default='sensor_data', choices=['sensor_data', 'reliable'])
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from delen_ros.msg import InferenceResult
    from delen_ros.ros.qos import RESULT_QOS, image_qos

    topics = [t for t in args.topics.split(',') if t]
    apps = [a for a in args.apps.split(',') if a] or [f'cam{i:02d}' for i in range(len(topics))]
    if len(apps) != len(topics):
        parser.error(f'{len(apps)} app ids for {len(topics)} topics')
    rclpy.init()
    node = rclpy.create_node('delen_e2e_echo')
    keep = []
    for topic, app in zip(topics, apps):
        publisher = node.create_publisher(InferenceResult, echo_result_topic(args.result_prefix, app), RESULT_QOS)

        def on_image(msg, publisher=publisher, app=app, topic=topic):
            out = InferenceResult()
            out.header = msg.header
            out.app_id, out.image_topic = app, topic
            publisher.publish(out)

        keep.append(node.create_subscription(Image, topic, on_image, image_qos(args.image_qos)))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    node.get_logger().info(f'echoing {len(topics)} topic(s) to {args.result_prefix}/<app>/result')
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
