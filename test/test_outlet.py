"""The result outlet: results published by a C process of their own (delen_ros/ros/outlet.py).

The outlet runs for real here (the built ``delen_outlet``), and a ROS participant in this process
subscribes to what it publishes. The last test starts the real node in its own process, with the
outlet and without, and reads who publishes its result topic.
"""
from __future__ import annotations

import os
import pathlib
import signal
import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from delen_ros.msg import InferenceResult  # noqa: E402
from delen_ros.ros.conversions import array_to_image  # noqa: E402
from delen_ros.ros.outlet import ResultOutlet, native_outlet  # noqa: E402

from ros_helpers import ImageFeeder, RosPeer, node_and_peer, register_cameras, unique_domain_id, wait_until  # noqa: E402

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(native_outlet() is None, reason='the C outlet (delen_outlet) is not built here')]


def _serialized(class_id: int) -> bytes:
    from rclpy.serialization import serialize_message
    return serialize_message(InferenceResult(app_id='app', class_id=class_id, label=f'class {class_id}',
                                             energy_source='estimate', bounds_met=True))


def _class_ids(got: list[bytes]) -> list[int]:
    """The class ids of what arrived (DDS pads a payload to 4 bytes: compared as messages), probes left out."""
    from rclpy.serialization import deserialize_message
    ids = [deserialize_message(g, InferenceResult).class_id for g in got]
    return [i for i in ids if i != 9999]


_UNKNOWN = '_NODE_NAME_UNKNOWN_'   # rmw's name for a publisher whose participant's node list has not arrived yet


def _publisher_nodes(peer: RosPeer, topic: str) -> set[str]:
    return {i.node_name for i in peer.node.get_publishers_info_by_topic(topic)}


def _named_publisher_nodes(peer: RosPeer, topic: str) -> set[str]:
    """The publishers' node names once every one is known: DDS can announce an endpoint before its
    participant's ROS node list (a fresh clone's CI saw ``_NODE_NAME_UNKNOWN_`` right after the first results)."""
    return wait_until(lambda: (names := _publisher_nodes(peer, topic)) and _UNKNOWN not in names and names,
                      timeout=10.0, what=f'the node names of the publishers of {topic}')


@pytest.fixture
def peer():
    peer = RosPeer(unique_domain_id())
    yield peer
    peer.close()


@pytest.fixture
def outlet(peer):
    logged = []
    outlet = ResultOutlet(log=lambda level, text: logged.append((level, text)))
    outlet.logged = logged
    assert outlet.ready(), 'the outlet did not start'
    yield outlet
    outlet.close()


def _live(outlet, topic: str, depth: int):
    """A publisher of ``topic`` advertised in ``outlet`` and activated, as the node's are once admitted."""
    pub = outlet.publisher(topic, depth)
    pub.advertise()
    pub.on_activate()
    return pub


def _raw_collector(peer: RosPeer, topic: str) -> list[bytes]:
    got: list[bytes] = []
    peer.node.create_subscription(InferenceResult, topic, got.append, 100, raw=True)
    return got


def _publish_until_heard(pub, outlet, got: list, first: int, count: int, *, timeout: float = 20.0) -> None:
    """Publish ``count`` results (class ids from ``first``) once a subscriber hears the topic."""
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:   # DDS discovery: probe until one arrives
        pub.publish(_serialized(9999))
        outlet.flush()
        time.sleep(0.1)
    assert got, 'nothing published by the outlet arrived'
    got.clear()
    for i in range(first, first + count):
        pub.publish(_serialized(i))
    outlet.flush()
    wait_until(lambda: len(_class_ids(got)) >= count, timeout=10.0,
               what=lambda: f'{len(got)} of {count} results arrived')


def test_published_bytes_arrive_unchanged_from_the_outlets_hidden_node(peer, outlet):
    got = _raw_collector(peer, '/outlet_test/a')
    pub = _live(outlet, '/outlet_test/a', 100)
    _publish_until_heard(pub, outlet, got, 0, 20)
    assert _class_ids(got) == list(range(20))
    from rclpy.serialization import deserialize_message
    assert deserialize_message(got[-1], InferenceResult).label == 'class 19'
    assert _named_publisher_nodes(peer, '/outlet_test/a') == {outlet.node_name}
    assert outlet.node_name.startswith('_delen_outlet_')   # hidden: ros2 node list leaves it out


def test_an_inactive_publisher_publishes_nothing_and_a_withdrawn_one_leaves_the_graph(peer, outlet):
    got = _raw_collector(peer, '/outlet_test/b')
    pub = outlet.publisher('/outlet_test/b', 10)
    pub.advertise()
    wait_until(lambda: _publisher_nodes(peer, '/outlet_test/b'), timeout=10.0, what='the outlet advertised')
    time.sleep(0.5)
    for i in range(5):
        pub.publish(_serialized(i))
    outlet.flush()
    time.sleep(1.0)
    assert got == [], 'a publisher not activated published'
    pub.withdraw()
    wait_until(lambda: not _publisher_nodes(peer, '/outlet_test/b'), timeout=10.0, what='the publisher withdrawn')


def test_a_publisher_not_advertised_puts_nothing_on_the_graph(peer, outlet):
    pub = outlet.publisher('/outlet_test/never', 10)   # made for a request that admission then refused
    pub.on_activate()
    pub.publish(_serialized(1))
    outlet.flush()
    pub.withdraw()
    other = outlet.publisher('/outlet_test/other', 10)
    other.advertise()   # what the outlet does next shows it has read the pipe up to here
    wait_until(lambda: _publisher_nodes(peer, '/outlet_test/other'), timeout=10.0, what='the other topic advertised')
    time.sleep(0.5)
    assert not _publisher_nodes(peer, '/outlet_test/never')
    assert outlet.restarts == 0 and not any(level == 'error' for level, _ in outlet.logged)


def test_a_killed_outlet_is_started_again_with_its_topics(peer, outlet):
    got = _raw_collector(peer, '/outlet_test/c')
    pub = _live(outlet, '/outlet_test/c', 100)
    _publish_until_heard(pub, outlet, got, 0, 3)
    first = outlet.node_name
    os.kill(outlet._popen.pid, signal.SIGKILL)
    outlet._popen.wait()
    pub.publish(_serialized(50))   # written to the dead one: lost, and counted
    outlet.flush()
    assert outlet.restarts == 1 and outlet.lost == 1 and outlet.node_name != first
    assert any(level == 'error' and 'starting another' in text for level, text in outlet.logged)
    assert outlet.ready()
    got.clear()
    outlet.lag.values.clear()
    _publish_until_heard(pub, outlet, got, 100, 5)
    assert _class_ids(got) == list(range(100, 105))
    _stamps_read(outlet, pub)   # the new outlet's stamps come after its ready byte, on the same pipe


def _stamps_read(outlet, pub) -> float:
    """The outlet's publication lag, once a flush has read a stamp (they are read at the next flush)."""
    def lag():
        pub.publish(_serialized(9999))
        outlet.flush()
        return outlet.lag_p99_ms()
    return wait_until(lag, timeout=10.0, interval=0.05, what='a publication stamp from the outlet')


def test_the_outlet_stamps_each_turns_publication_and_the_lag_is_measured(peer, outlet):
    got = _raw_collector(peer, '/outlet_test/lag')
    pub = _live(outlet, '/outlet_test/lag', 100)
    _publish_until_heard(pub, outlet, got, 0, 3)
    lag = _stamps_read(outlet, pub)
    assert 0.0 < lag < 1000.0   # written -> published, in ms: CLOCK_MONOTONIC on both sides
    assert outlet._stamps == bytearray() or len(outlet._stamps) < 16   # whole records parsed, at most a part left


def test_an_outlet_that_does_not_start_says_so(tmp_path: pathlib.Path):
    failing = tmp_path / 'no_outlet'
    failing.write_text('#!/bin/sh\nexit 3\n')
    failing.chmod(0o755)
    outlet = ResultOutlet(log=lambda level, text: None, program=str(failing))
    try:
        assert not outlet.ready(timeout_s=5.0)
    finally:
        outlet.close()


def _diagnostics_value(array, key: str) -> str | None:
    for status in array.status:
        for kv in status.values:
            if kv.key == key:
                return kv.value
    return None


@pytest.mark.parametrize('mode', ['auto', 'node'])
def test_the_node_publishes_through_the_outlet_unless_told_not_to(tmp_path: pathlib.Path, mode):
    with node_and_peer(tmp_path, result_outlet=mode) as (node, peer):
        diagnostics = peer.subscribe(DiagnosticArray, '/diagnostics')
        collectors = register_cameras(peer, ['/outlet_node/cam0', '/outlet_node/cam1'])
        frame = array_to_image(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), encoding='mono8')
        feeder = ImageFeeder(peer, {'/outlet_node/cam0': [frame], '/outlet_node/cam1': [frame]}, rate_hz=10.0,
                             reliable=True)
        try:
            wait_until(lambda: all(c.messages() for c in collectors), timeout=60.0,
                       what=lambda: f'results on both topics\n{node.log()[-3000:]}')
            publishers = _named_publisher_nodes(peer, '/delen/cam0/result')
            by = wait_until(lambda: next((v for a in diagnostics.messages()
                                          if (v := _diagnostics_value(a, 'results_published_by'))), None),
                            timeout=15.0, what='results_published_by in /diagnostics')
            # the outlet's lag from hand-over to publication, measured and kept in the bounds (0: the node's own)
            lag = wait_until(lambda: next((float(v) for a in diagnostics.messages()[::-1]
                                           if (v := _diagnostics_value(a, 'outlet_lag_p99_ms'))
                                           and float(v) > 0), None) if mode == 'auto' else True,
                             timeout=15.0, what='outlet_lag_p99_ms in /diagnostics')
        finally:
            feeder.stop()
        if mode == 'auto':
            assert by == 'outlet' and len(publishers) == 1 and next(iter(publishers)).startswith('_delen_outlet_')
            assert 'results published by the outlet process' in node.log()
            assert 0 < lag < 1000
        else:
            assert by == 'node' and publishers == {'delen'}
        assert all(m.exit_index >= 0 and m.app_id for c in collectors for m in c.messages())


def test_an_outlet_that_stops_reading_never_blocks_the_worker(peer, outlet):
    got = _raw_collector(peer, '/outlet_test/d')
    pub = _live(outlet, '/outlet_test/d', 100)
    _publish_until_heard(pub, outlet, got, 0, 3)
    os.kill(outlet._popen.pid, signal.SIGSTOP)   # alive, reading nothing
    data = _serialized(7)
    sent, longest, deadline = 0, 0.0, time.monotonic() + 30.0
    while outlet.restarts == 0 and time.monotonic() < deadline:   # turns of 32 results, as a busy worker hands over
        started = time.monotonic()
        for _ in range(32):
            pub.publish(data)
        outlet.flush()
        longest = max(longest, time.monotonic() - started)
        sent += 32
        time.sleep(0.001)
    assert outlet.restarts == 1, 'a stuck outlet was not replaced'
    assert longest < 0.5, f'a turn waited {longest:.2f} s for a stuck outlet'
    assert 0 < outlet.lost < sent
    assert len(outlet._pending) == 0   # what waited for the stuck one is counted lost, not kept
    assert any('read nothing' in text for _, text in outlet.logged)
    assert outlet.ready()
    got.clear()
    _publish_until_heard(pub, outlet, got, 200, 5)
    assert _class_ids(got) == list(range(200, 205))


def test_an_outlet_that_keeps_dying_is_given_up_on_and_counts_what_it_loses(outlet):
    pub = _live(outlet, '/outlet_test/e', 10)
    for _ in range(6):
        os.kill(outlet._popen.pid, signal.SIGKILL)
        outlet._popen.wait()
        pub.publish(_serialized(1))
        outlet.flush()
    assert outlet.given_up and outlet.restarts == 5
    lost = outlet.lost
    pub.publish(_serialized(2))
    outlet.flush()
    assert outlet.lost == lost + 1
    assert any('not started again' in text for _, text in outlet.logged)


def _outlet_pid(node_pid: int) -> int | None:
    """The live outlet process under the node, if any."""
    from delen_ros.tools.processes import descendants
    for child in descendants(node_pid):
        try:
            cmdline = pathlib.Path(f'/proc/{child}/cmdline').read_bytes()
            if b'delen_outlet' in cmdline and pathlib.Path(f'/proc/{child}/stat').read_text().split()[2] != 'Z':
                return child
        except OSError:
            pass
    return None


def test_a_node_whose_outlet_keeps_dying_publishes_its_results_itself(tmp_path: pathlib.Path):
    with node_and_peer(tmp_path) as (node, peer):
        diagnostics = peer.subscribe(DiagnosticArray, '/diagnostics')
        collectors = register_cameras(peer, ['/outlet_dies/cam0'])
        frame = array_to_image(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), encoding='mono8')
        feeder = ImageFeeder(peer, {'/outlet_dies/cam0': [frame]}, rate_hz=20.0, reliable=True)
        try:
            wait_until(lambda: collectors[0].messages(), timeout=60.0, what=lambda: node.log()[-3000:])
            killed: list[int] = []
            for _ in range(6):   # restarted five times, then given up on (6 deaths in a minute)
                pid = wait_until(lambda: (p := _outlet_pid(node.proc.pid)) not in (None, *killed) and p,
                                 timeout=20.0, what=lambda: f'a new outlet\n{node.log()[-3000:]}')
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            given_up = 'node (the outlet was given up on)'
            wait_until(lambda: any(_diagnostics_value(a, 'results_published_by') == given_up
                                   for a in diagnostics.messages()), timeout=20.0,
                       what=lambda: f'the fall-back in /diagnostics\n{node.log()[-3000:]}')
            since = time.time_ns()
            wait_until(lambda: collectors[0].messages(since_ns=since), timeout=20.0,
                       what=lambda: f'results after the fall-back\n{node.log()[-3000:]}')
            # the node's own publisher now (the killed outlets' linger in the graph until their DDS lease ends)
            wait_until(lambda: 'delen' in _publisher_nodes(peer, '/delen/cam0/result'), timeout=10.0,
                       what="the node's own publisher in the graph")
            assert 'the node publishes the results itself' in node.log()
            assert _outlet_pid(node.proc.pid) is None
        finally:
            feeder.stop()
