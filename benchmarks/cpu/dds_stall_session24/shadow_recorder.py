"""A second, minimal recorder of the node's results beside the bench's: (camera, DDS sequence number, source_timestamp,
received_timestamp, callback time) per result, written to OUT after DURATION s from its first result.

    python shadow_recorder.py OUT.json CAMERAS DURATION_S      (same ROS_DOMAIN_ID as the bench's run)
"""
import json, sys, time, functools
import rclpy
from rclpy.executors import SingleThreadedExecutor
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[3]))
from delen_ros.msg import InferenceResult
from delen_ros.ros.qos import RESULT_QOS
out, n, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rclpy.init()
node = rclpy.create_node('shadow_recorder')
rows = []
def cb(i, msg, info):
    rows.append((i, int(info.get('publication_sequence_number', 0)), int(info.get('source_timestamp', 0)),
                 int(info.get('received_timestamp', 0)), time.time_ns()))
subs = [node.create_subscription(InferenceResult, f'/delen/cam{i:02d}/result', functools.partial(cb, i), RESULT_QOS) for i in range(n)]
ex = SingleThreadedExecutor(); ex.add_node(node)
t_end = None
while t_end is None or time.time() < t_end:
    ex.spin_once(timeout_sec=0.05)
    if t_end is None and rows:
        t_end = time.time() + dur
json.dump(rows, open(out, 'w'))
