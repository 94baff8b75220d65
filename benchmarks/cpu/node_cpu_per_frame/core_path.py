"""The node's per-frame Python path without DDS transport or a real model: CPU time per frame.

    PYTHONPATH=$PWD python benchmarks/cpu/node_cpu_per_frame/core_path.py [--root CHECKOUT] [--cameras 16]

A real :class:`~delen_ros.ros.node.DelenNode` (not configured: its engine, apps and publishers are
set by hand) takes serialized 8 x 8 rgb8 ``sensor_msgs/Image`` frames in its image callback
(``_on_image``: parse, view, ``Engine.submit``), the engine's worker runs the fake multi-exit model
of ``test/fakes.py`` (identity stages, tiny heads: next to no torch work) on the CPU, and the node's
``_on_result`` delivers and publishes each result on a real rclpy publisher (no subscriber). Every
round sends one frame per camera, then waits until each is answered. Reported: process CPU time
(user + system) per frame, and the share of it the worker thread took (``/proc/self/task``). The
figure is what the node's own Python costs per frame, the part the GIL serialises on a big host.
``--root``: the checkout whose ``delen_ros`` is measured (for A/B against an older commit).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import threading
import time
import types

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--root', default=str(pathlib.Path(__file__).resolve().parents[3]))
parser.add_argument('--cameras', type=int, default=16)
parser.add_argument('--rounds', type=int, default=3000)
parser.add_argument('--max-batch', type=int, default=8)
parser.add_argument('--latency-from', default='stamp')
parser.add_argument('--json', default='')
args = parser.parse_args()
sys.path[:0] = [args.root, os.path.join(args.root, 'test')]

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import torch  # noqa: E402
from fakes import fake_model, synthetic_profile  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402

from delen_ros.core.bounds import Bounds  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from delen_ros.msg import InferenceResult  # noqa: E402
from delen_ros.ros.conversions import array_to_image  # noqa: E402
from delen_ros.ros.manager import Camera  # noqa: E402
from delen_ros.ros.node import DelenNode  # noqa: E402
from delen_ros.ros.qos import RESULT_QOS  # noqa: E402

torch.set_num_threads(1)


def thread_cpu_s(tid: int) -> float:
    fields = pathlib.Path(f'/proc/self/task/{tid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def main() -> dict:
    rclpy.init()
    node = DelenNode()
    answered = threading.Semaphore(0)
    engine = Engine(fake_model(), synthetic_profile(step_ms=(0.05, 0.05, 0.05, 0.05), head_ms=0.01),
                    on_result=node._on_result, external_delivery=True, max_batch=args.max_batch,
                    max_in_flight=4 * args.cameras)
    pubs = {f'cam{i:02d}': node.create_publisher(InferenceResult, f'/bench/cam{i:02d}/result', RESULT_QOS)
            for i in range(args.cameras)}

    class Apps:   # the AppManager's one call on the result path
        def publisher(self, app_id):
            return pubs.get(app_id)

    for pub in pubs.values():   # count answers after the real publish
        def publish(msg, _p=pub.publish):
            _p(msg)
            answered.release()
        pub.publish = publish
    node._served = types.SimpleNamespace(engine=engine)
    node._apps = Apps()
    node._p = types.SimpleNamespace(latency_from=args.latency_from)
    node._active = True
    node._wall_time = not node.get_clock().ros_time_is_active   # what the status tick sets (session 12)
    cameras = []
    for i, app_id in enumerate(pubs):
        engine.set_app(app_id, Bounds(max_latency_ms=1000.0), source=f'/cam{i:02d}', rate_hz=1.0)
        cameras.append(Camera(topic=f'/cam{i:02d}', app_ids=(app_id,)))
    engine.admission_control = False
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, 0] = 1
    image[0, 1] = 255
    engine.start()

    def frames(stamp_ns: int) -> list[bytes]:
        msg = array_to_image(image)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        return serialize_message(msg)

    def round_(k: int) -> None:
        data = frames(node.get_clock().now().nanoseconds)
        for cam in cameras:
            node._on_image(data, cam)
        for _ in cameras:
            if not answered.acquire(timeout=5.0):
                raise RuntimeError('a frame was not answered in 5 s')

    for k in range(200):   # warm-up
        round_(k)
    cpu0, worker0, wall0 = time.process_time(), thread_cpu_s(engine._thread.native_id), time.perf_counter()
    for k in range(args.rounds):
        round_(k)
    cpu, worker, wall = (time.process_time() - cpu0, thread_cpu_s(engine._thread.native_id) - worker0,
                         time.perf_counter() - wall0)
    engine.stop()
    n = args.rounds * args.cameras
    ws = engine.worker_stats()
    out = {'cameras': args.cameras, 'frames': n, 'cpu_ms_per_frame': cpu * 1e3 / n,
           'worker_cpu_ms_per_frame': worker * 1e3 / n, 'wall_ms_per_frame': wall * 1e3 / n,
           'mean_batch': ws.mean_batch, 'steps_per_frame': ws.steps / max(1, n),
           'exit_counts': engine.stats(next(iter(pubs))).exit_counts}
    node.destroy_node()
    rclpy.shutdown()
    return out


if __name__ == '__main__':
    result = main()
    print(json.dumps(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + '\n')
