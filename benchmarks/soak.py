"""Long fuzz and soak of the real node over real DDS (issue 11 targets); writes JSON.

    python benchmarks/soak.py --out benchmarks/robustness/soak.json            # the full targets
    python benchmarks/soak.py --fuzz 2000 --invalid 300 --kills 3 --overload-s 60 --out /tmp/soak.json

Phases (each with its own node process; the quick versions are test/test_node_robustness.py):

* ``fuzz``: N malformed ``sensor_msgs/Image`` (each checked to be malformed) on one camera;
  the node must stay alive and count every frame it received as malformed in ``~/status``.
* ``invalid``: M invalid ``SetBounds`` all in flight from one client, plus foreign removes; every
  one rejected with a reason, the state file byte-identical, ``~/status`` unchanged.
* ``kill9``: K rounds of registrations interrupted by ``kill -9``; every acknowledged registration
  must be in the state file and restored after a restart.
* ``overload``: C cameras x 30 Hz (640x480 rgb8) with one app each for S seconds; the node's RSS is
  sampled every second: growth after the first minute (or the first quarter of a shorter run).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))

from fuzz import fuzzed_images, invalid_requests  # noqa: E402
from ros_helpers import ImageFeeder, NodeProcess, RosPeer, wait_until, write_test_profile  # noqa: E402

SET, REMOVE = '/delen/set_bounds', '/delen/remove_app'


def _rss_mb(pid: int) -> float:
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


class Bench:
    def __init__(self, args):
        self.args = args
        self.domain = args.domain_id
        self.work = pathlib.Path(tempfile.mkdtemp(prefix='delen_soak_'))
        self.peer = RosPeer(self.domain, name='soak_peer')
        self.profile = write_test_profile(self.work / 'profile.json')

    def start(self, name: str, **extra) -> NodeProcess:
        params = {'model': 'fashion_mnist', 'device': 'cpu', 'energy_meter': 'estimate', 'torch_threads': 1,
                  'profile': str(self.profile), 'status_period_s': 1.0,
                  'state_file': str(self.work / name / 'apps.yaml'), **extra}
        node = NodeProcess(params=params, domain_id=self.domain, workdir=self.work / name)
        starts = node.log().count('===== start')
        node.start()
        wait_until(lambda: 'active:' in ''.join(node.log().split('===== start')[starts + 1:]), timeout=120,
                   what='node active')
        self.peer.wait_for_service(__import__('delen_ros.srv', fromlist=['SetBounds']).SetBounds, SET, timeout=60)
        return node

    def deep_client(self, srv, name):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        client = self.peer.node.create_client(srv, name, qos_profile=QoSProfile(depth=10000,
                                                                              reliability=ReliabilityPolicy.RELIABLE))
        wait_until(client.service_is_ready, timeout=60, what=name)
        return client

    def status(self):
        from delen_ros.msg import AppStatus
        return self.peer.subscribe(AppStatus, '/delen/status', qos=1000)

    # --- phases ---------------------------------------------------------------------------------------
    def fuzz(self, n: int) -> dict:
        from delen_ros.srv import SetBounds
        node = self.start('fuzz', image_qos='reliable')
        try:
            assert self.peer.call(SetBounds, SET, SetBounds.Request(app_id='fuzzed', image_topic='/soak/fuzz')).accepted
            frames = fuzzed_images(n, seed=11)
            started = time.monotonic()
            feeder = ImageFeeder(self.peer, {'/soak/fuzz': frames}, rate_hz=500.0)
            wait_until(lambda: feeder.published['/soak/fuzz'] >= n, timeout=n / 20 + 60, what='fuzzed frames')
            feeder.stop()
            status = self.status()
            last = wait_until(lambda: next((m for m in reversed(status.messages()) if m.app_id == 'fuzzed'
                                            and m.frames_in > 0 and m.rate_in_hz == 0), None), timeout=30)
            return {'sent': n, 'received': int(last.frames_in), 'counted_malformed': int(last.malformed),
                    'every_received_counted': last.malformed == last.frames_in, 'alive': node.alive(),
                    'seconds': round(time.monotonic() - started, 1)}
        finally:
            node.stop()

    def invalid(self, m: int) -> dict:
        from delen_ros.srv import RemoveApp, SetBounds
        node = self.start('invalid')
        try:
            owner = self.peer.call(SetBounds, SET, SetBounds.Request(app_id='victim', image_topic='/soak/cam'))
            state_path = self.work / 'invalid' / 'apps.yaml'
            before = state_path.read_bytes()
            status = self.status()
            time.sleep(2.5)
            config = lambda msgs: sorted({(s.app_id, s.image_topic, s.result_topic, s.max_latency_ms, s.min_accuracy,
                                           s.max_energy_mj, s.objective) for s in msgs})
            status_before = config(status.messages())
            requests = invalid_requests(m, seed=12, victim='victim', victim_result=owner.result_topic,
                                        camera='/soak/cam', reserved=['/delen/status'])
            client = self.deep_client(SetBounds, SET)
            started = time.monotonic()
            futures = [client.call_async(r) for r in requests]
            removes = self.deep_client(RemoveApp, REMOVE)
            futures_rm = [removes.call_async(RemoveApp.Request(app_id='victim', token=t)) for t in ('', 'x') * 50]
            wait_until(lambda: all(f.done() for f in futures + futures_rm), timeout=120, what='answers')
            seconds = time.monotonic() - started
            t0 = time.time_ns()
            time.sleep(2.5)
            answers = [f.result() for f in futures]
            return {'requests': m, 'answered': len(answers), 'accepted': sum(a.accepted for a in answers),
                    'with_reason': sum(bool(a.message) for a in answers),
                    'foreign_removes': len(futures_rm), 'removed': sum(f.result().removed for f in futures_rm),
                    'state_file_identical': state_path.read_bytes() == before,
                    'status_unchanged': config(status.messages(since_ns=t0)) == status_before,
                    'seconds': round(seconds, 2),
                    'log_lines_rejected': sum('rejected' in line for line in node.log().splitlines())}
        finally:
            node.stop()

    def kill9(self, rounds: int) -> dict:
        from delen_ros.ros.apps import load_state
        from delen_ros.srv import SetBounds
        acknowledged: dict[str, float] = {}
        node = None
        for r in range(rounds):
            node = self.start('kill9')
            client = self.deep_client(SetBounds, SET)
            futures = {}
            stop_at = 5 + (r * 7) % 30
            for i in range(40):
                app_id = f'k{r}_{i}'
                futures[app_id] = client.call_async(SetBounds.Request(app_id=app_id, image_topic=f'/soak/k{i % 4}',
                                                                      max_latency_ms=float(100 + i)))
                time.sleep(0.01)
                if i == stop_at:
                    os.killpg(node.proc.pid, signal.SIGKILL)
                    node.proc.wait()
                    break
            acknowledged.update({a: 100.0 + int(a.split('_')[1]) for a, f in futures.items()
                                 if f.done() and f.result().accepted})
            node.proc = None
            self.peer.node.destroy_client(client)
        saved = {a.app_id: a.max_latency_ms for a in load_state(self.work / 'kill9' / 'apps.yaml')}
        node = self.start('kill9')
        status = self.status()
        time.sleep(3.5)
        restored = {s.app_id for s in status.messages()}
        node.stop()
        return {'kills': rounds, 'acknowledged': len(acknowledged),
                'in_state_file': sum(saved.get(a) == v for a, v in acknowledged.items()),
                'restored_after_restart': len(set(acknowledged) & restored)}

    def overload(self, cameras: int, seconds: float) -> dict:
        import numpy as np

        from delen_ros.ros.conversions import array_to_image
        from delen_ros.srv import SetBounds
        node = self.start('overload')
        try:
            for i in range(cameras):
                self.peer.call(SetBounds, SET, SetBounds.Request(app_id=f'cam{i}', image_topic=f'/soak/cam{i}',
                                                                 max_latency_ms=50.0))
            rng = np.random.default_rng(0)
            frames = [array_to_image(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), encoding='rgb8')
                      for _ in range(4)]
            feeder = ImageFeeder(self.peer, {f'/soak/cam{i}': frames for i in range(cameras)}, rate_hz=30.0,
                                 reliable=False)
            status = self.status()
            samples = []
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                samples.append((round(time.monotonic() - started, 1), round(_rss_mb(node.proc.pid), 1)))
                time.sleep(1.0)
            feeder.stop()
            warm = min(60.0, seconds / 4)
            after = [r for t, r in samples if t >= warm]
            base = after[0]
            last = {s.app_id: s for s in status.messages()}
            return {'cameras': cameras, 'rate_hz': 30, 'seconds': seconds, 'warm_up_s': warm,
                    'rss_mb_start': samples[0][1], 'rss_mb_at_warm': base, 'rss_mb_end': after[-1],
                    'rss_growth_after_warm_pct': round(100 * (max(after) - base) / base, 2),
                    'published': sum(feeder.published.values()), 'alive': node.alive(),
                    'frames_in': sum(int(s.frames_in) for s in last.values()),
                    'results_out': sum(int(s.results_out) for s in last.values()),
                    'rss_samples': samples[::max(1, len(samples) // 60)]}
        finally:
            node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--fuzz', type=int, default=10_000)
    parser.add_argument('--invalid', type=int, default=1_000)
    parser.add_argument('--kills', type=int, default=20)
    parser.add_argument('--cameras', type=int, default=8)
    parser.add_argument('--overload-s', type=float, default=600.0)
    parser.add_argument('--phases', default='fuzz,invalid,kill9,overload')
    parser.add_argument('--domain-id', type=int, default=int(os.environ.get('ROS_DOMAIN_ID', 97)))
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    bench = Bench(args)
    out: dict = {'started': time.strftime('%Y-%m-%dT%H:%M:%S'), 'cpu_cores': os.cpu_count()}
    runs = {'fuzz': lambda: bench.fuzz(args.fuzz), 'invalid': lambda: bench.invalid(args.invalid),
            'kill9': lambda: bench.kill9(args.kills), 'overload': lambda: bench.overload(args.cameras, args.overload_s)}
    try:
        for phase in args.phases.split(','):
            out[phase] = runs[phase]()
            print(phase, json.dumps({k: v for k, v in out[phase].items() if k != 'rss_samples'}), flush=True)
            pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    finally:
        bench.peer.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
