"""What a result costs the worker on its way out: the engine alone (no node), 32 apps, a stand-in runner
with no compute, each result delivered, serialized (``result_cdr``) and published as the node does, with a
subscriber process matched to every result topic. Arms:

  node    rclpy ``publish`` of the serialized bytes (what the node did before session 37; ``result_outlet:=node``)
  outlet  queued for the result outlet, written once a turn (``Engine.after_results``), published by ``delen_outlet``

Per result: the worker's time in ``_finish`` (result built, delivered, handed over) and, of it, in the hand-over;
the subscriber's count says what arrived. rclpy's ``publish`` holds the GIL through the DDS write, so the
worker's time there is also time no other thread of the node runs.

    python benchmarks/publish_cost.py --out benchmarks/cpu/publish_cost      (about 1 minute)
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))

SUBSCRIBER = '''
import sys, time, rclpy
from delen_ros.msg import InferenceResult
rclpy.init(); node = rclpy.create_node("publish_cost_subscriber"); count = [0]
for i in range(int(sys.argv[1])):
    node.create_subscription(InferenceResult, f"/publish_cost/cam{i:02d}/result",
                             lambda m: count.__setitem__(0, count[0] + 1), 1000, raw=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
print(count[0], flush=True)
'''


def run(arm: str, args: argparse.Namespace) -> dict:
    import rclpy
    from delen_ros.core.bounds import Bounds
    from delen_ros.core.engine import Engine
    from delen_ros.msg import InferenceResult
    from delen_ros.ros.outlet import ResultOutlet
    from delen_ros.ros.publishing import result_cdr
    from delen_ros.ros.qos import RESULT_QOS
    from fakes import FakeRunner, fake_image, fake_model, synthetic_profile

    topics = {f'cam{i:02d}': f'/publish_cost/cam{i:02d}/result' for i in range(args.apps)}
    subscriber = subprocess.Popen([sys.executable, '-c', SUBSCRIBER, str(args.apps), str(args.seconds + 8)],
                                  stdout=subprocess.PIPE, text=True)
    rclpy.init()
    node = rclpy.create_node(f'publish_cost_{arm}')
    outlet = ResultOutlet(log=lambda level, text: print(level, text)) if arm == 'outlet' else None
    if outlet is not None:
        assert outlet.ready(), 'the outlet did not start'
        pubs = {a: outlet.publisher(t, RESULT_QOS.depth) for a, t in topics.items()}
        for pub in pubs.values():
            pub.advertise()
            pub.on_activate()
    else:
        pubs = {a: node.create_publisher(InferenceResult, t, RESULT_QOS) for a, t in topics.items()}
    model = fake_model(4)
    profile = synthetic_profile(4, step_ms=[0.01] * 4, head_ms=0.01, batch_cost=0.0)
    engine = None
    handed_ns, finish_ns, results = [0], [0], [0]

    def on_result(result):
        t0 = time.perf_counter_ns()
        sec, nanosec, frame_id, topic = result.tag
        delivered = engine.deliver(result)
        pubs[result.app_id].publish(result_cdr(delivered, stamp_sec=sec, stamp_nanosec=nanosec, frame_id=frame_id,
                                               image_topic=topic, now_ns=time.time_ns()))
        handed_ns[0] += time.perf_counter_ns() - t0
        results[0] += 1

    engine = Engine(model, profile, runner=FakeRunner(model, sleep_ms=(0, 0, 0, 0)), policy='always_final',
                    max_batch=args.apps, queue_depth=1, on_result=on_result, device_preprocess=False,
                    external_delivery=True)
    if outlet is not None:
        engine.after_results = outlet.flush
    finish = engine._finish

    def timed_finish(r, *, expired):
        t0 = time.perf_counter_ns()
        finish(r, expired=expired)
        finish_ns[0] += time.perf_counter_ns() - t0

    engine._finish = timed_finish
    for app in topics:
        engine.set_app(app, Bounds(max_latency_ms=1000.0))
    time.sleep(3.0)   # discovery: the subscriber matched before anything is measured
    engine.start()
    image = fake_image(1, 200)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:   # a frame for every app, then a pause: turns of `apps` results
        for app in topics:
            engine.submit([app], image, tag=(1, 2, 'camera', f'/{app}/image_raw'))
        time.sleep(args.gap_ms / 1000)
    time.sleep(0.5)
    engine.stop()
    if outlet is not None:
        outlet.close()
    node.destroy_node()
    rclpy.shutdown()
    received = int(subscriber.communicate(timeout=30)[0].strip() or 0)
    n = max(1, results[0])
    return {'arm': arm, 'results': results[0], 'received': received,
            'finish_us_per_result': round(finish_ns[0] / n / 1e3, 2),
            'hand_over_us_per_result': round(handed_ns[0] / n / 1e3, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'publish_cost')
    p.add_argument('--apps', type=int, default=32)
    p.add_argument('--seconds', type=float, default=6.0)
    p.add_argument('--gap-ms', type=float, default=8.0)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--arm', choices=('node', 'outlet'), help=argparse.SUPPRESS)   # one arm in this process
    args = p.parse_args()
    if args.arm:
        print(json.dumps(run(args.arm, args)), flush=True)
        return 0
    rows = []
    for _ in range(args.repeats):
        for arm in ('node', 'outlet'):   # each arm in a process of its own: one rclpy context, fresh DDS
            out = subprocess.run([sys.executable, __file__, '--arm', arm, '--apps', str(args.apps), '--seconds',
                                  str(args.seconds), '--gap-ms', str(args.gap_ms)], capture_output=True, text=True,
                                 check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'publish_cost.json').write_text(json.dumps({'args': {k: v for k, v in vars(args).items()
                                                                      if k not in ('out', 'arm')}, 'runs': rows},
                                                           indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
