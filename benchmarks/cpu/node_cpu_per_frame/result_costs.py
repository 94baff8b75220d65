"""Two per-result costs of the worker thread (session 12), in microseconds a call, best of 5 x 20 000:
``Bounds.met`` (twice per result: when the result is made and when it is delivered) and reading the
ROS clock for ``stamp_latency_ms`` (rclpy's ``Clock.now()`` against ``time.time_ns()``, what the node
reads without simulated time).

    python benchmarks/cpu/node_cpu_per_frame/result_costs.py [--root CHECKOUT] [--json OUT]

``--root``: the checkout whose ``delen_ros`` is measured (A/B against an older commit).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import timeit

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--root', default=str(pathlib.Path(__file__).resolve().parents[3]))
parser.add_argument('--json', default='')
args = parser.parse_args()
sys.path.insert(0, args.root)

import rclpy  # noqa: E402

from delen_ros.core.bounds import Bounds  # noqa: E402


def best_us(call, number: int = 20_000) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


bounds = Bounds(max_latency_ms=33.0, min_accuracy=0.8)
rclpy.init()
node = rclpy.create_node('delen_result_costs')
clock = node.get_clock()
report = {'root': args.root,
          'bounds_met_us': best_us(lambda: bounds.met(latency_ms=10.0, accuracy=0.9, energy_mj=5.0)),
          'ros_clock_now_us': best_us(lambda: clock.now().nanoseconds),
          'time_ns_us': best_us(time.time_ns)}
node.destroy_node()
rclpy.shutdown()
print(json.dumps(report))
if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
