"""Which frame sizes a Fast DDS profile carries, best effort, between two processes on this machine.

    python benchmarks/frame_sizes.py --profile config/fastdds_loopback.xml --out benchmarks/robustness/frames_loopback.json

A publisher process sends ``--frames`` rgb8 frames of each size at 5 Hz (sensor_data QoS); a
subscriber process counts what arrives. Writes JSON: size -> frames sent / received.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

SIZES = [(640, 480), (1920, 1080), (2560, 1440), (3840, 2160), (5120, 2880), (7680, 4320)]


def _role(role: str, frames: int) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node(f'frames_{role}')
    if role == 'sub':
        got: dict[str, int] = {}
        node.create_subscription(Image, '/frames', lambda m: got.__setitem__(f'{m.width}x{m.height}',
                                                                             got.get(f'{m.width}x{m.height}', 0) + 1),
                                 qos_profile_sensor_data)
        deadline = time.monotonic() + 10 + len(SIZES) * (frames / 5 + 3)
        while time.monotonic() < deadline and rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
            if os.path.exists(sys.argv[-1] + '.done'):
                end = time.monotonic() + 2
                while time.monotonic() < end:
                    rclpy.spin_once(node, timeout_sec=0.1)
                break
        pathlib.Path(sys.argv[-1]).write_text(json.dumps(got))
        return
    pub = node.create_publisher(Image, '/frames', qos_profile_sensor_data)
    while pub.get_subscription_count() == 0:
        time.sleep(0.1)
    time.sleep(1.0)
    for w, h in SIZES:
        msg = Image(width=w, height=h, encoding='rgb8', step=w * 3, data=bytes(w * h * 3))
        for _ in range(frames):
            pub.publish(msg)
            time.sleep(0.2)
        time.sleep(1.0)
    pathlib.Path(sys.argv[-1] + '.done').write_text('')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--profile', required=True)
    parser.add_argument('--frames', type=int, default=5)
    parser.add_argument('--out', required=True)
    parser.add_argument('--role', default='')
    parser.add_argument('result', nargs='?', default='')
    args = parser.parse_args()
    if args.role:
        _role(args.role, args.frames)
        return 0
    tmp = pathlib.Path(args.out).with_suffix('.tmp')
    for p in (tmp, pathlib.Path(str(tmp) + '.done')):
        p.unlink(missing_ok=True)
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(pathlib.Path(args.profile).resolve()),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=os.environ.get('ROS_DOMAIN_ID', '91'))
    cmd = [sys.executable, __file__, '--profile', args.profile, '--out', args.out, '--frames', str(args.frames)]
    sub = subprocess.Popen(cmd + ['--role', 'sub', str(tmp)], env=env)
    pub = subprocess.Popen(cmd + ['--role', 'pub', str(tmp)], env=env)
    pub.wait()
    sub.wait()
    got = json.loads(tmp.read_text())
    out = {'profile': args.profile, 'qos': 'sensor_data (best effort)', 'encoding': 'rgb8',
           'sizes': {f'{w}x{h}': {'bytes': w * h * 3, 'sent': args.frames, 'received': got.get(f'{w}x{h}', 0)}
                     for w, h in SIZES}}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    tmp.unlink(missing_ok=True)
    pathlib.Path(str(tmp) + '.done').unlink(missing_ok=True)
    print(json.dumps(out['sizes']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
