"""Two real delen nodes (namespaces /host_a and /host_b, standing in for two hosts) and the placer, each
in its own process, over real DDS (loopback): apps registered through ``/delen_placer/set_bounds`` get
results on one topic whichever node serves them; a node killed with SIGKILL has its apps served again
by the other node within a few seconds (the recovery time is printed), and the other apps keep being
served meanwhile. An app that its node flags unschedulable (``~/status``) for ``overload_grace_s`` is
moved to the other node, its results on the same topic. Every process uses
``config/fastdds_placement.xml`` (a 1 s DDS lease)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')

import ros_helpers  # noqa: E402
from delen_ros.msg import AppStatus, InferenceResult  # noqa: E402
from delen_ros.srv import RemoveApp, SetBounds  # noqa: E402
from ros_helpers import (REPO, ImageFeeder, NodeProcess, RosPeer, stamp_ns, unique_domain_id,  # noqa: E402
                         wait_until, write_test_profile)

pytestmark = pytest.mark.timeout(240)

START_TIMEOUT = 120.0
PLACEMENT_PROFILE = REPO / 'config' / 'fastdds_placement.xml'
HOSTS = ('/host_a', '/host_b')
CAMS = {'nav': '/p/cam0', 'arm': '/p/cam1'}


def _frames(count: int = 8) -> list:
    import numpy as np

    from delen_ros.ros.conversions import array_to_image
    rng = np.random.default_rng(1)
    return [array_to_image(rng.integers(0, 256, (28, 28), dtype=np.uint8), encoding='mono8') for _ in range(count)]


class PlacerProcess:
    """``python -m delen_ros.ros.placer`` in its own process (and session)."""

    def __init__(self, *, domain_id: int, workdir, params: dict):
        import yaml
        self.log_path = workdir / 'placer.log'
        params_path = workdir / 'placer_params.yaml'
        params_path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
        self.cmd = [sys.executable, '-m', 'delen_ros.ros.placer', '--ros-args', '--params-file', str(params_path)]
        self.env = ros_helpers.ros_env(domain_id)
        self.proc: subprocess.Popen | None = None

    def start(self) -> 'PlacerProcess':
        with open(self.log_path, 'a') as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ''


def _wait_for_services(peer, nodes, placer) -> None:
    """Every node's and the placer's ``set_bounds`` up, and the placer seeing every node up (its own
    discovery lags this peer's under load: a CI run once had it refuse the first app with "no delen
    node is alive"), or the test fails with their logs."""
    def logs() -> str:
        return '\n'.join(n.log()[-2000:] for n in nodes.values()) + placer.log()[-2000:]
    for name in [f'{ns}/delen/set_bounds' for ns in HOSTS] + ['/delen_placer/set_bounds']:
        try:
            peer.wait_for_service(SetBounds, name, timeout=START_TIMEOUT)
        except TimeoutError:
            pytest.fail(f'{name} did not come up; logs:\n' + logs())
    try:
        wait_until(lambda: all(f'{ns}/delen is up' in placer.log() for ns in HOSTS), timeout=START_TIMEOUT,
                   what='the placer seeing every node up')
    except TimeoutError:
        pytest.fail('the placer did not see every node up; logs:\n' + logs())


@pytest.fixture(scope='module')
def placement_dds():
    """Every process of this module speaks DDS with the short-lease profile."""
    saved = ros_helpers.FASTDDS_PROFILE
    ros_helpers.FASTDDS_PROFILE = PLACEMENT_PROFILE
    yield
    ros_helpers.FASTDDS_PROFILE = saved


@pytest.fixture(scope='module')
def cluster(placement_dds, tmp_path_factory):
    workdir = tmp_path_factory.mktemp('placer')
    domain_id = unique_domain_id()
    params = {'model': 'fashion_mnist', 'device': 'cpu', 'energy_meter': 'estimate',
              'profile': str(write_test_profile(workdir / 'profile.json')), 'state_file': '',
              'status_period_s': 0.2, 'max_batch': 4, 'torch_threads': 1}
    # /host_b drives two CPU "devices" (a DevicePool behind the node): the node's multi-device path
    per_host = {'/host_a': params, '/host_b': dict(params, devices=['cpu', 'cpu'])}
    nodes = {ns: NodeProcess(params=per_host[ns], domain_id=domain_id, workdir=workdir, namespace=ns,
                             name=ns.strip('/')).start() for ns in HOSTS}
    placer = PlacerProcess(domain_id=domain_id, workdir=workdir, params={
        'nodes': list(HOSTS), 'liveness_timeout_s': 0.6, 'check_period_s': 0.05, 'call_timeout_s': 3.0}).start()
    peer = RosPeer(domain_id, name='placer_test_peer')
    try:
        _wait_for_services(peer, nodes, placer)
        yield peer, nodes, placer
    finally:
        peer.close()
        placer.stop()
        for node in nodes.values():
            node.stop()
        print('\n----- placer log (tail)\n' + placer.log()[-1500:])


def test_apps_are_placed_served_and_re_placed_when_a_node_is_killed(cluster):
    peer, nodes, placer = cluster
    feeder = ImageFeeder(peer, {cam: _frames() for cam in CAMS.values()}, rate_hz=15.0)
    results = {app: peer.subscribe(InferenceResult, f'/delen_placer/{app}/result') for app in CAMS}
    serving: dict[str, dict[str, float]] = {ns: {} for ns in HOSTS}   # node -> app -> last status time
    for ns in HOSTS:
        peer.subscribe(AppStatus, f'{ns}/delen/status', qos=100)
        peer.node.create_subscription(AppStatus, f'{ns}/delen/status',
                                      lambda m, ns=ns: serving[ns].__setitem__(m.app_id, time.monotonic()), 100)
    tokens = {}
    try:
        for app, cam in CAMS.items():
            answer = peer.call(SetBounds, '/delen_placer/set_bounds', SetBounds.Request(
                app_id=app, image_topic=cam, max_latency_ms=500.0))
            assert answer.accepted, answer.message
            assert answer.result_topic == f'/delen_placer/{app}/result' and answer.token
            tokens[app] = answer.token
        for app in CAMS:
            results[app].wait_for(3, timeout=30.0)
        where = wait_until(lambda: (lambda w: w if len(w) == 2 else None)(
            {app: ns for ns in HOSTS for app in serving[ns]}), timeout=10.0, what='status of both apps')
        assert set(where.values()) == set(HOSTS), f'two apps, two idle nodes: one each ({where})'

        # someone else cannot take the app over through the placer
        stolen = peer.call(SetBounds, '/delen_placer/set_bounds', SetBounds.Request(
            app_id='nav', image_topic=CAMS['nav'], max_latency_ms=100.0))
        assert not stolen.accepted and 'token' in stolen.message

        victim = where['nav']
        survivor = next(ns for ns in HOSTS if ns != victim)
        t_kill = time.time_ns()
        nodes[victim].proc.send_signal(signal.SIGKILL)
        nodes[victim].proc.wait(timeout=5)
        after = lambda m: stamp_ns(m.header.stamp) > t_kill   # noqa: E731 -- frames sent after the kill
        fresh = results['nav'].wait_for(1, timeout=15.0, where=after)
        with results['nav']._lock:
            received = [t for t, m in results['nav']._items if after(m)]
        recovery_s = (min(received) - t_kill) / 1e9
        print(f'\n[placer] node {victim} killed (SIGKILL): nav served again by {survivor} after {recovery_s:.2f} s')
        assert fresh and recovery_s < 5.0
        # the other node's app was served all along
        arm = results['arm'].messages(where=lambda m: t_kill < stamp_ns(m.header.stamp) < t_kill + recovery_s * 1e9)
        assert len(arm) >= max(1, int(recovery_s * 15 * 0.5)), f'{len(arm)} arm results during the recovery'
        wait_until(lambda: 'nav' in serving[survivor], timeout=5.0, what=f'nav in {survivor}/delen/status')
        # the caller's token still works with the placer after the move
        answer = peer.call(SetBounds, '/delen_placer/set_bounds', SetBounds.Request(
            app_id='nav', image_topic=CAMS['nav'], max_latency_ms=400.0, token=tokens['nav']))
        assert answer.accepted, answer.message
        removed = peer.call(RemoveApp, '/delen_placer/remove_app', RemoveApp.Request(app_id='nav', token=tokens['nav']))
        assert removed.removed, removed.message
    finally:
        feeder.stop()


class AgedFeeder(ImageFeeder):
    """An :class:`ImageFeeder` whose frames are stamped ``age_ms`` before their publication (a camera
    whose frames take that long to arrive)."""

    def __init__(self, peer: RosPeer, streams, *, rate_hz: float, age_ms: float):
        self.age_ns = int(age_ms * 1e6)
        super().__init__(peer, streams, rate_hz=rate_hz)

    def _tick(self) -> None:
        from rclpy.duration import Duration
        with self._lock:
            for topic, frames in self._streams.items():
                msg = frames[self._index[topic] % len(frames)]
                self._index[topic] += 1
                msg.header.stamp = (self.peer.node.get_clock().now() - Duration(nanoseconds=self.age_ns)).to_msg()
                self._publishers[topic].publish(msg)
                self.published[topic] += 1


AGE_MS = 200.0         # frames' age on arrival, by their stamps
BOUND_MS = 60.0        # the app's latency bound: met from arrival, never from the stamp


def test_an_app_its_node_flags_unschedulable_moves_to_the_other_node(placement_dds, tmp_path):
    """/host_a counts latency from the image's stamp, /host_b from the frame's arrival. Registered
    before any frame, the app fits /host_a (2 ms of transport assumed); then its frames arrive
    200 ms old, beyond its 60 ms bound there: /host_a flags it in ~/status, and after
    ``overload_grace_s`` the placer moves it to /host_b, where the bound holds from arrival. Its
    results keep their topic; from /host_b they meet the bound."""
    domain_id = unique_domain_id(first=101)   # beside the other test's cluster (module scope)
    params = {'model': 'fashion_mnist', 'device': 'cpu', 'energy_meter': 'estimate',
              'profile': str(write_test_profile(tmp_path / 'profile.json')), 'state_file': '',
              'status_period_s': 0.2, 'max_batch': 4, 'torch_threads': 1}
    per_host = {'/host_a': dict(params, latency_from='stamp'), '/host_b': dict(params, latency_from='arrival')}
    nodes = {ns: NodeProcess(params=per_host[ns], domain_id=domain_id, workdir=tmp_path, namespace=ns,
                             name=ns.strip('/')).start() for ns in HOSTS}
    placer = PlacerProcess(domain_id=domain_id, workdir=tmp_path, params={
        'nodes': list(HOSTS), 'liveness_timeout_s': 0.6, 'check_period_s': 0.05, 'call_timeout_s': 3.0,
        'overload_grace_s': 1.0, 'move_timeout_s': 5.0, 'move_cooldown_s': 60.0}).start()
    peer = RosPeer(domain_id, name='placer_overload_peer')
    feeder = None
    try:
        _wait_for_services(peer, nodes, placer)
        flagged: dict[str, list[str]] = {ns: [] for ns in HOSTS}
        for ns in HOSTS:
            peer.node.create_subscription(AppStatus, f'{ns}/delen/status', lambda m, ns=ns: flagged[ns].append(
                m.unschedulable_reason) if m.app_id == 'nav' else None, 100)
        results = peer.subscribe(InferenceResult, '/delen_placer/nav/result')
        # both nodes live for the placer, or the app may go to /host_b (the only one up yet)
        wait_until(lambda: all(f'{ns}/delen is up' in placer.log() for ns in HOSTS), timeout=15.0,
                   what='the placer seeing both nodes up')
        answer = peer.call(SetBounds, '/delen_placer/set_bounds', SetBounds.Request(
            app_id='nav', image_topic=CAMS['nav'], max_latency_ms=BOUND_MS))
        assert answer.accepted, answer.message
        assert 'placed on /host_a/delen' in wait_until(
            lambda: (lambda log: log if 'placed on' in log else None)(placer.log()), timeout=10.0, what='placement')
        t_feed = time.time_ns()
        feeder = AgedFeeder(peer, {CAMS['nav']: _frames()}, rate_hz=15.0, age_ms=AGE_MS)
        # /host_a serves it late, flags it; the placer moves it
        results.wait_for(1, timeout=15.0, where=lambda m: m.latency_ms > AGE_MS)
        wait_until(lambda: any(flagged['/host_a']), timeout=15.0, what='/host_a flagging nav')
        moved = wait_until(lambda: (lambda log: log if 'moved nav from /host_a/delen to /host_b/delen' in log
                                    else None)(placer.log()), timeout=20.0, what="the placer's move")
        t_moved = time.time_ns()
        # same topic, now from /host_b: within the bound (from arrival) and flagged by nobody
        fresh = results.wait_for(5, timeout=15.0, since_ns=t_moved, where=lambda m: m.latency_ms < BOUND_MS)
        assert all(m.bounds_met for m in fresh)
        reasons_b = flagged['/host_b']
        assert reasons_b and not reasons_b[-1], f'/host_b flags it: {reasons_b[-1:]}'
        gap = [t for t, m in results._items if t > t_feed]   # receive times: the longest pause in results
        pause_s = max(b - a for a, b in zip(gap, gap[1:])) / 1e9
        line = next(x for x in moved.splitlines() if 'moved nav from' in x)
        print(f'\n[placer] {line.split("]: ", 1)[-1]}; longest pause in nav results {pause_s:.2f} s')
        assert 'moving nav off /host_a/delen: flagged unschedulable' in moved
    finally:
        if feeder is not None:
            feeder.stop()
        peer.close()
        placer.stop()
        for node in nodes.values():
            node.stop()
        print('\n----- placer log (tail)\n' + placer.log()[-1500:])
