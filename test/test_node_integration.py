"""The real node in its own process, over real DDS (loopback only), driven from this process.

One node process serves the module (restarted once to check the state file); a second, in its own
namespace, checks the lifecycle. The model is the small Fashion-MNIST one; the profile is a
synthetic one with round figures (see ``ros_helpers.write_test_profile``) so each bound's effect is
known; energy is the profile's estimate. Nothing here asserts timing: latency bounds are generous,
and latency is only checked for consistency with ``bounds_met``.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402

from delen_ros.core.host_cpu import read_core_jiffies, read_jiffies  # noqa: E402
from delen_ros.msg import AppStatus, InferenceResult  # noqa: E402
from delen_ros.ros.apps import load_state  # noqa: E402
from delen_ros.ros.camera_player import labelled_frame_id  # noqa: E402
from delen_ros.ros.conversions import array_to_image  # noqa: E402
from delen_ros.srv import GetProfile, RemoveApp, SetBounds  # noqa: E402

from ros_helpers import (TEST_ACCURACY, TEST_STEP_ENERGY_MJ, ImageFeeder, NodeProcess, RosPeer,  # noqa: E402
                         stamp_ns, unique_domain_id, wait_until, write_test_profile)

pytestmark = pytest.mark.timeout(300)

NUM_EXITS = len(TEST_ACCURACY)
FINAL = NUM_EXITS - 1
START_TIMEOUT = 90.0     # node start: torch import, model load (slow on a loaded 2-core machine)
RESULT_TIMEOUT = 30.0

CAM_A, CAM_B = '/test/cam_a', '/test/cam_b'
APPS = {   # app -> SetBounds fields
    'inspect': dict(image_topic=CAM_A, min_accuracy=TEST_ACCURACY[2], objective=SetBounds.Request.MIN_LATENCY),
    'nav': dict(image_topic=CAM_A, max_latency_ms=500.0, objective=SetBounds.Request.MIN_LATENCY),
    'saver': dict(image_topic=CAM_B, max_energy_mj=2 * TEST_STEP_ENERGY_MJ),
}


def _fashion_frames(count: int = 32) -> list:
    """Labelled Fashion-MNIST test images as mono8 (28x28) images, true class in the frame_id."""
    from delen_ros.core.datasets import load_fashion_mnist
    images, labels = load_fashion_mnist('test')
    frames = []
    for i in range(count):
        msg = array_to_image(images[i], encoding='mono8')
        msg.header.frame_id = labelled_frame_id('fashion_mnist', int(labels[i]))
        frames.append(msg)
    return frames


def _colour_frames(count: int = 8) -> list:
    """Random colour images, 96x64 bgr8 with padded rows (another size, encoding and layout)."""
    rng = np.random.default_rng(0)
    return [array_to_image(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), encoding='bgr8', step=96 * 3 + 8)
            for _ in range(count)]


# --- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def domain_id() -> int:
    return unique_domain_id()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp('delen_node')


@pytest.fixture(scope='module')
def params(workdir) -> dict:
    return {'model': 'fashion_mnist', 'device': 'cpu', 'energy_meter': 'estimate',
            'profile': str(write_test_profile(workdir / 'profile.json')),
            'state_file': str(workdir / 'state' / 'apps.yaml'), 'status_period_s': 0.5, 'max_batch': 4,
            'torch_threads': 1}


@pytest.fixture(scope='module')
def peer(domain_id):
    p = RosPeer(domain_id)
    yield p
    p.close()


@pytest.fixture(scope='module')
def server(domain_id, workdir, params, peer):
    node = NodeProcess(params=params, domain_id=domain_id, workdir=workdir).start()
    try:
        peer.wait_for_service(SetBounds, '/delen/set_bounds', timeout=START_TIMEOUT)
    except TimeoutError:
        node.stop()
        pytest.fail(f'node did not come up; its log:\n{node.log()[-4000:]}')
    yield node
    code = node.stop()
    assert code == 0, f'node exited with {code}; log:\n{node.log()[-4000:]}'


@pytest.fixture(scope='module')
def feeder(peer, server):
    f = ImageFeeder(peer, {CAM_A: _fashion_frames(), CAM_B: _colour_frames()}, rate_hz=15.0)
    yield f
    f.stop()


@pytest.fixture(scope='module')
def results(peer):
    return {app: peer.subscribe(InferenceResult, f'/delen/{app}/result') for app in APPS}


def _request(app_id: str, **fields) -> SetBounds.Request:
    return SetBounds.Request(app_id=app_id, **fields)


TOKENS: dict[str, str] = {}   # app -> the ownership token its registration returned


def _register(peer, app_id: str, **fields) -> SetBounds.Response:
    response = peer.call(SetBounds, '/delen/set_bounds', _request(app_id, token=TOKENS.get(app_id, ''), **fields))
    assert response.accepted, response.message
    assert response.token and response.persisted, response.message
    TOKENS[app_id] = response.token
    return response


def _after(t_ns: int):
    """Results of frames stamped (published) after ``t_ns``: bounds changed before they arrived."""
    return lambda m: stamp_ns(m.header.stamp) > t_ns


# --- tests ---------------------------------------------------------------------------------------------------
def test_get_profile_returns_per_exit_arrays(peer, server):
    p = peer.call(GetProfile, '/delen/get_profile', GetProfile.Request())
    assert p.model == 'fashion_mnist' and p.energy_source == 'estimate'
    for field in ('exit_names', 'latency_ms', 'latency_p99_ms', 'energy_mj', 'accuracy'):
        assert len(getattr(p, field)) == NUM_EXITS, field
    np.testing.assert_allclose(p.accuracy, TEST_ACCURACY, rtol=1e-6)
    np.testing.assert_allclose(p.energy_mj, [TEST_STEP_ENERGY_MJ * (k + 1) for k in range(NUM_EXITS)], rtol=1e-6)
    assert all(np.diff(p.latency_ms) > 0) and all(np.asarray(p.latency_p99_ms) >= np.asarray(p.latency_ms))


def test_three_apps_on_two_topics_get_results_within_their_bounds(peer, server, feeder, results):
    t0 = time.time_ns()
    for app_id, fields in APPS.items():
        response = _register(peer, app_id, **fields)
        assert response.result_topic == f'/delen/{app_id}/result'
        assert 0 <= response.planned_exit < NUM_EXITS
        assert response.feasible_accuracy[1] == pytest.approx(TEST_ACCURACY[-1], rel=1e-6)
    got = {app: results[app].wait_for(20, timeout=RESULT_TIMEOUT, where=_after(t0)) for app in APPS}

    for app_id, msgs in got.items():
        for m in msgs:
            assert m.app_id == app_id and m.num_exits == NUM_EXITS and 0 <= m.exit_index < NUM_EXITS
            assert m.image_topic == APPS[app_id]['image_topic']
            assert 0.0 <= m.confidence <= 1.0 and m.label
            assert m.energy_source == 'estimate' and not m.energy_measured
            assert m.latency_ms >= m.queue_ms >= 0 and m.compute_ms > 0
            bound = APPS[app_id].get('max_latency_ms', 0.0)
            if m.bounds_met and bound:
                assert m.latency_ms <= bound
    # header copied from the image: frames on cam_a carry their true label in frame_id
    assert all(m.header.frame_id.startswith('fashion_mnist/label_') for m in got['inspect'])
    # accuracy bound: every result meets it (calibrated accuracy at the exit it stopped at)
    assert all(m.expected_accuracy >= TEST_ACCURACY[2] - 1e-6 and m.bounds_met for m in got['inspect'])
    # no accuracy bound, minimise latency: the first exit, always
    assert {m.exit_index for m in got['nav']} == {0}
    # energy bound: never more than the budget, so never past exit 1 (2 mJ per step)
    assert all(m.energy_mj <= APPS['saver']['max_energy_mj'] * (1 + 1e-5) and m.bounds_met for m in got['saver'])
    assert max(m.exit_index for m in got['saver']) <= 1


def test_updating_a_bound_changes_the_exit_mix(peer, server, feeder, results):
    _register(peer, 'nav', **APPS['nav'])
    before = results['nav'].wait_for(5, timeout=RESULT_TIMEOUT, where=_after(time.time_ns()))
    assert {m.exit_index for m in before} == {0}
    t_change = time.time_ns()
    response = _register(peer, 'nav', **{**APPS['nav'], 'objective': SetBounds.Request.MAX_ACCURACY})
    assert response.planned_exit == FINAL
    after = results['nav'].wait_for(10, timeout=RESULT_TIMEOUT, where=_after(t_change))
    # as deep as a generous latency bound allows: the final exit nearly always
    assert sum(m.exit_index == FINAL for m in after) >= len(after) / 2
    _register(peer, 'nav', **APPS['nav'])   # back to what the other tests expect


@pytest.mark.parametrize('fields, reason', [
    (dict(image_topic=CAM_A, min_accuracy=0.99), 'above the best exit'),
    (dict(image_topic=CAM_A, max_latency_ms=1e-4), 'below the fastest exit'),
    (dict(image_topic=CAM_A, max_energy_mj=0.5), 'below the cheapest exit'),
    (dict(image_topic=CAM_A, min_accuracy=math.nan), 'finite'),
    (dict(image_topic=CAM_A, max_latency_ms=math.inf), 'finite'),
    (dict(image_topic=CAM_A, max_energy_mj=-1.0), '>= 0'),
    (dict(image_topic=CAM_A, min_accuracy=1.5), '<= 1'),
    (dict(image_topic=CAM_A, objective=7), 'unknown objective'),
    (dict(image_topic=CAM_A, late_policy=5), 'unknown late_policy'),
    (dict(image_topic='/rosout'), 'reserved'),
    (dict(image_topic=CAM_A, result_topic='/rosout'), 'reserved'),
    (dict(image_topic='/delen/status'), 'reserved'),
    (dict(image_topic=CAM_A, result_topic='/delen/nav/result'), "belongs to app 'nav'"),
    (dict(image_topic=''), 'image_topic'),
    (dict(image_topic='bad topic'), 'not a valid topic name'),
    (dict(image_topic=CAM_A, result_topic='/a//b'), 'not a valid topic name'),
], ids=lambda x: x if isinstance(x, str) else '')
def test_invalid_or_infeasible_bounds_are_rejected_and_change_nothing(peer, server, params, fields, reason):
    _register(peer, 'inspect', **APPS['inspect'])
    state_before = load_state(params['state_file'])
    response = peer.call(SetBounds, '/delen/set_bounds', _request('inspect', token=TOKENS['inspect'], **fields))
    assert not response.accepted and reason in response.message
    assert response.planned_exit == -1
    assert tuple(response.feasible_accuracy) == pytest.approx((TEST_ACCURACY[0], TEST_ACCURACY[-1]), rel=1e-6)
    assert tuple(response.feasible_energy_mj) == pytest.approx(
        (TEST_STEP_ENERGY_MJ, TEST_STEP_ENERGY_MJ * NUM_EXITS), rel=1e-6)
    assert response.feasible_latency_ms[0] > 0
    assert load_state(params['state_file']) == state_before


@pytest.mark.parametrize('app_id', ['', '1abc', 'with space', 'a/b', 'x' * 65])
def test_bad_app_ids_are_rejected(peer, server, app_id):
    response = peer.call(SetBounds, '/delen/set_bounds', _request(app_id, image_topic=CAM_A))
    assert not response.accepted and 'app_id' in response.message


def test_malformed_images_are_counted_and_serving_goes_on(peer, server, feeder, results):
    _register(peer, 'inspect', **APPS['inspect'])
    diagnostics = peer.subscribe(DiagnosticArray, '/diagnostics')
    good = _fashion_frames(4)
    bad_encoding = array_to_image(np.zeros((28, 28), np.uint8), encoding='mono8')
    bad_encoding.encoding = 'yuv422'
    short = array_to_image(np.zeros((28, 28), np.uint8), encoding='mono8')
    short.height = 40                                    # data now shorter than step x height
    empty = array_to_image(np.zeros((28, 28, 3), np.uint8), encoding='rgb8')
    empty.width = 0
    feeder.set_frames(CAM_A, [bad_encoding, short, empty])

    def errors_on_cam_a():
        for array in diagnostics.messages():
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name.endswith(CAM_A) and int(values.get('conversion_errors_total', 0)) >= 3:
                    return status
        return None
    status = wait_until(errors_on_cam_a, timeout=RESULT_TIMEOUT, what='conversion errors in /diagnostics')
    assert status.level == status.WARN
    t_good = time.time_ns()
    feeder.set_frames(CAM_A, good)
    results['inspect'].wait_for(5, timeout=RESULT_TIMEOUT, where=_after(t_good))
    assert server.alive()


def test_diagnostics_report_the_cpu_the_host_stole(peer, server):
    """The engine's /diagnostics entry carries the share of the machine's CPU its host took over the round
    (0 on bare metal; a VM's stolen time) and of its worst core, so that a user can tell the host's theft from
    the node's misses."""
    if read_jiffies() is None:
        pytest.skip('no /proc/stat here')
    diagnostics = peer.subscribe(DiagnosticArray, '/diagnostics')

    def stolen():
        for array in diagnostics.messages():
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if 'host_cpu_stolen_pct' in values:   # strings: '0.00' is an answer too
                    return values['host_cpu_stolen_pct'], values.get('host_cpu_stolen_worst_core_pct')
        return None
    pct, worst = wait_until(stolen, timeout=RESULT_TIMEOUT, what='host_cpu_stolen_pct in /diagnostics')
    assert 0.0 <= float(pct) <= 100.0
    if read_core_jiffies() is not None:   # and its worst core's: not bound below by the machine's share,
        # whose line the kernel rounds to ticks after summing the cores (it ran a tick ahead of them here)
        assert 0.0 <= float(worst) <= 100.0


def test_status_reports_every_app(peer, server, feeder, results):
    for app_id in ('inspect', 'nav'):
        _register(peer, app_id, **APPS[app_id])
    status = peer.subscribe(AppStatus, '/delen/status')
    seen = wait_until(lambda: {s.app_id: s for s in status.messages() if s.rate_out_hz > 0} if
                      {'inspect', 'nav'} <= {s.app_id for s in status.messages() if s.rate_out_hz > 0} else None,
                      timeout=RESULT_TIMEOUT, what='status of inspect and nav')
    s = seen['inspect']
    assert s.image_topic == CAM_A and s.result_topic == '/delen/inspect/result'
    assert s.min_accuracy == pytest.approx(TEST_ACCURACY[2], rel=1e-6)
    assert s.frames_in >= s.results_out > 0 and len(s.exit_counts) == NUM_EXITS
    assert 0.0 <= s.attainment <= 1.0 and 0.0 <= s.frame_attainment <= 1.0   # results this period: not NaN
    assert s.objective == 'min_latency' and s.late_policy == 'serve_fastest' and s.state_error == ''


def test_remove_app_unsubscribes_a_topic_no_app_uses(peer, server, feeder, results):
    _register(peer, 'saver', **APPS['saver'])
    wait_until(lambda: peer.node.count_subscribers(CAM_B) >= 1, timeout=RESULT_TIMEOUT, what='a subscriber on cam_b')
    response = peer.call(RemoveApp, '/delen/remove_app', RemoveApp.Request(app_id='saver', token=TOKENS.pop('saver')))
    assert response.removed, response.message
    wait_until(lambda: peer.node.count_subscribers(CAM_B) == 0, timeout=RESULT_TIMEOUT, what='cam_b unsubscribed')
    again = peer.call(RemoveApp, '/delen/remove_app', RemoveApp.Request(app_id='saver'))
    assert not again.removed and 'saver' in again.message
    assert peer.node.count_subscribers(CAM_A) >= 1   # cam_a still has its apps


def test_restart_restores_apps_from_the_state_file(peer, server, feeder, results, params):
    _register(peer, 'inspect', **APPS['inspect'])
    _register(peer, 'nav', **{**APPS['nav'], 'objective': SetBounds.Request.MAX_ACCURACY})
    saved = {a.app_id: a for a in load_state(params['state_file'])}
    assert {'inspect', 'nav'} <= set(saved) and saved['nav'].objective.value == 'max_accuracy'
    assert server.stop() == 0
    t_restart = time.time_ns()
    server.start()
    # no SetBounds after the restart: the apps come back from the state file
    results['inspect'].wait_for(5, timeout=START_TIMEOUT, where=_after(t_restart))
    after = results['nav'].wait_for(5, timeout=RESULT_TIMEOUT, where=_after(t_restart))
    assert sum(m.exit_index == FINAL for m in after) >= len(after) / 2   # the updated bound, restored
    assert {a.app_id for a in load_state(params['state_file'])} == set(saved)


def _lifecycle(peer, prefix: str, transition_id: int) -> bool:
    request = ChangeState.Request()
    request.transition.id = transition_id
    return peer.call(ChangeState, f'{prefix}/change_state', request, timeout=START_TIMEOUT).success


def _state(peer, prefix: str) -> int:
    return peer.call(GetState, f'{prefix}/get_state', GetState.Request(), resend_every=4.0).current_state.id


@pytest.mark.parametrize('receivers', [0, 1], ids=['in_process', 'receiver_process'])
def test_lifecycle_without_autostart_serves_nothing_until_activated(peer, domain_id, workdir, params, receivers):
    topic = f'/test/lc_cam{receivers}'
    lc_params = {**params, 'autostart': False, 'state_file': '', 'max_apps': 1, 'ingress_processes': receivers}
    node = NodeProcess(params=lc_params, domain_id=domain_id, workdir=workdir, namespace='/lc', name='lc').start()
    prefix = node.prefix
    try:
        peer.wait_for_service(GetState, f'{prefix}/get_state', timeout=START_TIMEOUT)
        assert _state(peer, prefix) == State.PRIMARY_STATE_UNCONFIGURED
        assert not peer.service_ready(SetBounds, f'{prefix}/set_bounds')

        assert _lifecycle(peer, prefix, Transition.TRANSITION_CONFIGURE)
        assert _state(peer, prefix) == State.PRIMARY_STATE_INACTIVE
        peer.wait_for_service(SetBounds, f'{prefix}/set_bounds', timeout=RESULT_TIMEOUT)
        response = peer.call(SetBounds, f'{prefix}/set_bounds', _request('lc_app', image_topic=topic))
        assert response.accepted and response.result_topic == f'{prefix}/lc_app/result'
        second = peer.call(SetBounds, f'{prefix}/set_bounds', _request('lc_other', image_topic=topic))
        assert not second.accepted and 'max_apps' in second.message   # registrations stay bounded
        lc_results = peer.subscribe(InferenceResult, response.result_topic)
        lc_feeder = ImageFeeder(peer, {topic: _fashion_frames(4)}, rate_hz=15.0)
        try:
            time.sleep(1.0)   # a negative check needs a window: inactive, so nothing subscribes or answers
            assert peer.node.count_subscribers(topic) == 0 and not lc_results.messages()

            assert _lifecycle(peer, prefix, Transition.TRANSITION_ACTIVATE)
            assert _state(peer, prefix) == State.PRIMARY_STATE_ACTIVE
            lc_results.wait_for(3, timeout=RESULT_TIMEOUT)

            assert _lifecycle(peer, prefix, Transition.TRANSITION_DEACTIVATE)
            wait_until(lambda: peer.node.count_subscribers(topic) == 0, timeout=RESULT_TIMEOUT,
                       what='unsubscribed on deactivate')
            assert _lifecycle(peer, prefix, Transition.TRANSITION_CLEANUP)
            assert _state(peer, prefix) == State.PRIMARY_STATE_UNCONFIGURED
            wait_until(lambda: not peer.service_ready(SetBounds, f'{prefix}/set_bounds'), timeout=RESULT_TIMEOUT,
                       what='set_bounds gone after cleanup')
        finally:
            lc_feeder.stop()
    finally:
        code = node.stop()
    assert code == 0, node.log()[-4000:]


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
def test_the_node_serves_in_the_precision_it_is_given(peer, domain_id, workdir, params, precision):
    """``precision`` reaches the runner: the node names it at configure and serves in it, to the final
    exit for an app with no bounds (bfloat16 kernels exist on any x86 CPU; AMX only makes them fast)."""
    topic = f'/test/precision_{precision}'
    node = NodeProcess(params={**params, 'precision': precision, 'state_file': ''}, domain_id=domain_id,
                       workdir=workdir, namespace=f'/{precision}', name=precision).start()
    prefix = node.prefix
    try:
        peer.wait_for_service(SetBounds, f'{prefix}/set_bounds', timeout=START_TIMEOUT)
        # the line ends configure, after the services are up
        configured = wait_until(lambda: next((line for line in node.log().splitlines() if 'configured in' in line),
                                             None), timeout=RESULT_TIMEOUT, what='the configure line')
        assert f'on cpu in {precision},' in configured, configured
        response = peer.call(SetBounds, f'{prefix}/set_bounds', _request('p_app', image_topic=topic))
        assert response.accepted, response.message
        got = peer.subscribe(InferenceResult, response.result_topic)
        feeder = ImageFeeder(peer, {topic: _fashion_frames(4)}, rate_hz=15.0)
        try:
            msgs = got.wait_for(5, timeout=RESULT_TIMEOUT)
        finally:
            feeder.stop()
        assert all(m.exit_index == NUM_EXITS - 1 and 0.0 < m.confidence <= 1.0 and m.label for m in msgs)
    finally:
        code = node.stop()
    assert code == 0, node.log()[-4000:]
