"""Shared helpers for tests over real DDS: the node in its own process, a test-side peer, feeders.

Everything runs on loopback only (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) with the shipped
Fast DDS profile and a ROS domain id unique to this test run, so parallel runs do not cross-talk.
Waits are deadlines on a condition, never fixed sleeps.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO / 'config' / 'fastdds_loopback.xml'

__all__ = ['REPO', 'FASTDDS_PROFILE', 'unique_domain_id', 'ros_env', 'use_ros_env', 'wait_until',
           'NodeProcess', 'RosPeer', 'Collector', 'ImageFeeder', 'write_test_profile', 'stamp_ns',
           'TEST_ACCURACY', 'TEST_STEP_ENERGY_MJ']


def unique_domain_id(first: int = 1, count: int = 100) -> int:
    """A ROS domain id for this test process: ``$DELEN_TEST_DOMAIN_ID``, else derived from the pid.

    Ids ``first`` .. ``first + count - 1`` (by default 1-100, within the 0-101 range safe for every
    port mapping), so concurrent runs rarely meet, and with LOCALHOST discovery never across
    machines. A bench that takes one id per configuration from there must stay at or below 232
    (Fast DDS refuses higher ids).
    """
    if os.environ.get('DELEN_TEST_DOMAIN_ID'):
        return int(os.environ['DELEN_TEST_DOMAIN_ID'])
    return first + os.getpid() % count


def ros_env(domain_id: int, **extra: str) -> dict[str, str]:
    """The environment for a ROS process of this test: loopback DDS, our domain, the source tree first."""
    env = dict(os.environ)
    env.update({
        'ROS_DOMAIN_ID': str(domain_id),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'FASTDDS_DEFAULT_PROFILES_FILE': str(FASTDDS_PROFILE),
        'RMW_IMPLEMENTATION': env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp'),
        'PYTHONPATH': os.pathsep.join([str(REPO), *filter(None, [env.get('PYTHONPATH')])]),
        'PYTHONUNBUFFERED': '1',
        'RCUTILS_LOGGING_BUFFERED_STREAM': '0',
        'OMP_NUM_THREADS': env.get('OMP_NUM_THREADS', '1'),  # 2 shared cores: stay modest
    })
    env.update(extra)
    return env


def use_ros_env(domain_id: int) -> None:
    """Make *this* process speak DDS like the node (call before the first ``rclpy.init``)."""
    for key in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE'):
        os.environ[key] = ros_env(domain_id)[key]


def stamp_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` in nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def wait_until(condition: Callable[[], Any], *, timeout: float, interval: float = 0.05,
               what: str | Callable[[], str] = 'condition') -> Any:
    """Poll ``condition`` until it returns something truthy (returned); ``TimeoutError`` at the deadline,
    saying ``what`` (a callable is asked then: e.g. the node's log as it stands at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout:g} s waiting for {what() if callable(what) else what}')
        time.sleep(interval)


class NodeProcess:
    """``python -m delen_ros.ros.node`` in its own process (and session), parameters from a YAML file.

    :param params: node parameters (written to ``<workdir>/params.yaml``).
    :param domain_id: ROS domain.
    :param workdir: where the params file and the log go.
    :param namespace: the node's namespace (``''`` = root): the services are ``<ns>/delen/...``.
    :param env: more environment variables for the node's process.
    """

    def __init__(self, *, params: Mapping[str, Any], domain_id: int, workdir: pathlib.Path,
                 namespace: str = '', name: str = 'node', env: Mapping[str, str] | None = None):
        self.params, self.domain_id, self.namespace = dict(params), domain_id, namespace
        self.env = dict(env or {})
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f'{name}.log'
        self.params_path = self.workdir / f'{name}_params.yaml'
        self.proc: subprocess.Popen | None = None
        self._starts = 0

    @property
    def prefix(self) -> str:
        """Fully qualified node name, e.g. ``/delen`` or ``/ns/delen``."""
        return f'{self.namespace.rstrip("/")}/delen'

    def start(self) -> 'NodeProcess':
        self.params_path.write_text(yaml.safe_dump({'/**': {'ros__parameters': self.params}}))
        cmd = [sys.executable, '-m', 'delen_ros.ros.node', '--ros-args', '--params-file', str(self.params_path)]
        if self.namespace:
            cmd += ['-r', f'__ns:={self.namespace}']
        self._starts += 1
        log = open(self.log_path, 'a')
        log.write(f'\n===== start {self._starts}: {" ".join(cmd)}\n')
        log.flush()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**ros_env(self.domain_id), **self.env}, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, timeout: float = 15.0) -> int | None:
        """SIGINT (a clean shutdown), then SIGTERM, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout if sig == signal.SIGINT else 5.0)
            except subprocess.TimeoutExpired:
                continue
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ''


class Collector:
    """Messages received on one topic, thread-safe, with the receive time (``time.time_ns()``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list[tuple[int, Any]] = []

    def __call__(self, msg: Any) -> None:
        with self._lock:
            self._items.append((time.time_ns(), msg))

    def messages(self, *, since_ns: int = 0, where: Callable[[Any], bool] | None = None) -> list[Any]:
        """Messages received after ``since_ns`` (receive time) that satisfy ``where``."""
        with self._lock:
            items = list(self._items)
        return [m for t, m in items if t >= since_ns and (where is None or where(m))]

    def wait_for(self, count: int, *, timeout: float, since_ns: int = 0,
                 where: Callable[[Any], bool] | None = None) -> list[Any]:
        """At least ``count`` messages (see :meth:`messages`); ``TimeoutError`` with what arrived otherwise."""
        try:
            return wait_until(lambda: (lambda m: m if len(m) >= count else None)(
                self.messages(since_ns=since_ns, where=where)), timeout=timeout, what=f'{count} messages')
        except TimeoutError as exc:
            got = len(self.messages(since_ns=since_ns, where=where))
            raise TimeoutError(f'{exc} (got {got})') from None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class RosPeer:
    """The test's own ROS participant: a context, a node and an executor spinning in a thread."""

    def __init__(self, domain_id: int, *, name: str = 'delen_test_peer'):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        use_ros_env(domain_id)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self._clients: dict[tuple[type, str], Any] = {}
        self._replies_matched: set[tuple[type, str]] = set()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except (ExternalShutdownException, Exception):  # noqa: BLE001 - ends with the context
            pass

    def client(self, srv_type: type, name: str):
        key = (srv_type, name)
        if key not in self._clients:
            self._clients[key] = self.node.create_client(srv_type, name)
        return self._clients[key]

    def service_ready(self, srv_type: type, name: str) -> bool:
        return self.client(srv_type, name).service_is_ready()

    def wait_for_service(self, srv_type: type, name: str, *, timeout: float) -> None:
        wait_until(lambda: self.service_ready(srv_type, name), timeout=timeout, what=f'service {name}')

    def call(self, srv_type: type, name: str, request: Any, *, timeout: float = 20.0,
             resend_every: float | None = None) -> Any:
        """Call a service (waiting for it first) and return the response.

        :param resend_every: for a read-only service, send the request again after this many seconds
            without an answer. A server can answer before its reply writer has matched a client just
            discovered, and DDS then drops the reply (once seen in CI: a first ``get_state`` after
            ``wait_for_service`` went unanswered for 20 s). Requests that change state are sent once.
        """
        client = self.client(srv_type, name)
        self.wait_for_service(srv_type, name, timeout=timeout)
        if resend_every is None:
            self._match_replies(srv_type, name, timeout=timeout)
        deadline = time.monotonic() + timeout
        futures = [client.call_async(request)]
        while True:
            window = timeout if resend_every is None else resend_every
            try:
                done = wait_until(lambda: next((f for f in futures if f.done()), None),
                                  timeout=max(0.0, min(window, deadline - time.monotonic())),
                                  what=f'answer from {name}')
                return done.result()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                futures.append(client.call_async(request))

    def _match_replies(self, srv_type: type, name: str, *, timeout: float) -> None:
        """Before a client's first request that changes state: a request every server rejects (an
        empty app id), sent again each second until answered, so that the server's reply writer has
        matched this client. rmw_fastrtps waits 100 ms for that match, then drops the reply: under a
        loaded CI machine a first ``set_bounds`` once went unanswered for 20 s."""
        from delen_ros.srv import RemoveApp, SetBounds
        probe = {SetBounds: SetBounds.Request, RemoveApp: RemoveApp.Request}.get(srv_type)
        if probe is None or (srv_type, name) in self._replies_matched:
            return
        response = self.call(srv_type, name, probe(), timeout=timeout, resend_every=1.0)
        assert not getattr(response, 'accepted', getattr(response, 'removed', False)), response
        self._replies_matched.add((srv_type, name))

    def subscribe(self, msg_type: type, topic: str, *, qos: Any = 10) -> Collector:
        collector = Collector()
        self.node.create_subscription(msg_type, topic, collector, qos)
        return collector

    def close(self) -> None:
        import rclpy
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


class ImageFeeder:
    """Publishes frames on topics at a fixed rate from the peer's executor (a timer).

    :param streams: ``topic -> list of (sensor_msgs/Image without stamp)``; each topic cycles through
        its list. Stamps are set at publication.
    :param rate_hz: frames per second on each topic.
    """

    def __init__(self, peer: RosPeer, streams: Mapping[str, Sequence[Any]], *, rate_hz: float = 20.0,
                 reliable: bool = True):
        from sensor_msgs.msg import Image

        from delen_ros.ros.qos import image_qos
        self.peer = peer
        self._lock = threading.Lock()
        self._streams = {topic: list(frames) for topic, frames in streams.items()}
        self._publishers = {topic: peer.node.create_publisher(Image, topic, image_qos(
            'reliable' if reliable else 'sensor_data')) for topic in streams}
        self._index = dict.fromkeys(streams, 0)
        self.published = dict.fromkeys(streams, 0)
        self._timer = peer.node.create_timer(1.0 / rate_hz, self._tick)

    def set_frames(self, topic: str, frames: Iterable[Any]) -> None:
        """Replace what ``topic`` cycles through (e.g. malformed frames for a while)."""
        with self._lock:
            self._streams[topic] = list(frames)
            self._index[topic] = 0

    def _tick(self) -> None:
        with self._lock:
            for topic, frames in self._streams.items():
                if not frames:
                    continue
                msg = frames[self._index[topic] % len(frames)]
                self._index[topic] += 1
                msg.header.stamp = self.peer.node.get_clock().now().to_msg()
                self._publishers[topic].publish(msg)
                self.published[topic] += 1

    def stop(self) -> None:
        self.peer.node.destroy_timer(self._timer)


def write_test_profile(path: pathlib.Path, *, model: str = 'fashion_mnist') -> pathlib.Path:
    """A synthetic profile of ``model`` with round figures, so tests know what each bound admits.

    Exit ``k`` (cumulative, batch 1): latency ``0.35 * (k + 1)`` ms, energy ``2 * (k + 1)`` mJ (per
    frame, independent of batch size), accuracy ``ACCURACY[k]``; calibration rows make confident
    inputs more accurate (monotonic), so early exits on confidence exist.
    """
    from delen_ros.core.profile import ExitProfile, Profile
    from delen_ros.core.zoo import read_model_json

    names = read_model_json(model)['info']['exit_names']
    exits = []
    for k, name in enumerate(names):
        acc = TEST_ACCURACY[k] if k < len(TEST_ACCURACY) else TEST_ACCURACY[-1]
        exits.append(ExitProfile(
            name=name, accuracy=acc,
            stage_ms={1: 0.3, 8: 1.0}, stage_p99_ms={1: 0.6, 8: 2.0},
            head_ms={1: 0.05, 8: 0.1}, head_p99_ms={1: 0.1, 8: 0.2},
            stage_energy_mj={1: TEST_STEP_ENERGY_MJ, 8: TEST_STEP_ENERGY_MJ},
            calibration=((0.0, acc, 1.0), (0.6, min(0.99, acc + 0.04), 0.7), (0.9, min(0.995, acc + 0.12), 0.4))))
    return Profile(model=model, device='cpu', exits=tuple(exits), energy_source='estimate',
                   accuracy_note='synthetic test profile').save(path)


TEST_ACCURACY = (0.80, 0.85, 0.90, 0.92)
TEST_STEP_ENERGY_MJ = 2.0


CPU_NODE = {'model': 'fashion_mnist', 'device': 'cpu', 'torch_threads': 1}


@contextlib.contextmanager
def node_and_peer(workdir: pathlib.Path, *, node_env: Mapping[str, str] | None = None, **params: Any):
    """``(node, peer)``: the real node (``CPU_NODE`` updated with ``params``; ``node_env`` added to its
    environment) in a domain of its own, its ``set_bounds`` service up, and a peer in that domain; both
    stopped on the way out."""
    from delen_ros.srv import SetBounds
    domain = unique_domain_id()
    use_ros_env(domain)
    node = NodeProcess(params={**CPU_NODE, **params}, domain_id=domain, workdir=workdir, env=node_env).start()
    peer = RosPeer(domain)
    try:
        peer.wait_for_service(SetBounds, '/delen/set_bounds', timeout=90.0)
        yield node, peer
    finally:
        peer.close()
        node.stop()


def register_cameras(peer: RosPeer, topics: Sequence[str]) -> list[Collector]:
    """One app per camera topic (``cam0``, ``cam1``, ...), unbounded; their result collectors."""
    from delen_ros.msg import InferenceResult
    from delen_ros.srv import SetBounds
    collectors = []
    for i, topic in enumerate(topics):
        response = peer.call(SetBounds, '/delen/set_bounds', SetBounds.Request(app_id=f'cam{i}', image_topic=topic))
        assert response.accepted, response.message
        collectors.append(peer.subscribe(InferenceResult, response.result_topic))
    return collectors
