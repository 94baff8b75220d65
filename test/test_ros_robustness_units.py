"""Node-free tests of the robustness pieces: registry checks and ownership, the forgiving state file
with its backup, the state store's write errors, aggregated rejection logging, stamp-gap counting,
parameter validation, and the pure message builders."""
from __future__ import annotations

import math
import types

import pytest
import yaml

from delen_ros.core.bounds import LatePolicy
from delen_ros.ros import params
from delen_ros.ros.apps import AppConfig, load_state, read_state, save_state, token_hash
from delen_ros.ros.registry import IMAGE_TYPE, RESULT_TYPE, Registry, Rejected, StateStore
from delen_ros.ros.rejections import RejectionLog, clean_message
from delen_ros.ros.stats import StampGaps


def _app(app_id='nav', image='/cam', result=None, **kw) -> AppConfig:
    return AppConfig(app_id, image, result_topic=result or f'/delen/{app_id}/result', **kw)


def _registered(reg: Registry, config: AppConfig, token: str = '') -> str:
    change = reg.check(config, token=token)
    reg.commit(change)
    return change.token


# --- registry ---------------------------------------------------------------------------------------------
def test_registration_hands_out_a_token_that_updates_and_removes():
    reg = Registry(max_apps=4)
    token = _registered(reg, _app())
    assert len(token) == 32 and reg.get('nav').owner == token_hash(token)
    change = reg.check(_app(max_latency_ms=20.0), token=token)
    assert change.old is not None and change.token == token
    assert reg.check_remove('nav', token=token).app_id == 'nav'


@pytest.mark.parametrize('token', ['', 'guess', '0' * 32])
def test_without_the_token_no_update_or_remove(token):
    reg = Registry(max_apps=4)
    _registered(reg, _app())
    with pytest.raises(Rejected, match='belongs to another client') as err:
        reg.check(_app(image='/evil_cam', result='/evil/result'), token=token)
    assert err.value.kind == 'not owner'
    with pytest.raises(Rejected, match='belongs to another client'):
        reg.check_remove('nav', token=token)
    assert reg.get('nav').image_topic == '/cam'


def test_allow_takeover_hands_out_a_new_token():
    reg = Registry(max_apps=4, allow_takeover=True)
    first = _registered(reg, _app())
    second = reg.check(_app(max_latency_ms=5.0)).token
    assert second and second != first


def test_operator_apps_need_takeover():
    reg = Registry(max_apps=4)
    reg.commit(reg.check(_app(), restore=True))
    assert reg.get('nav').owner == ''
    with pytest.raises(Rejected, match='operator'):
        reg.check(_app(max_latency_ms=1.0), token='x')


@pytest.mark.parametrize('config, types_, match', [
    (_app(image='/rosout'), {}, 'reserved'),
    (_app(result='/rosout'), {}, 'reserved'),
    (_app(result='/diagnostics'), {}, 'reserved'),
    (_app(image='/x'), {'/x': ['std_msgs/msg/String']}, 'carries std_msgs/msg/String'),
    (_app(result='/r'), {'/r': ['sensor_msgs/msg/Image']}, 'carries sensor_msgs/msg/Image'),
    (_app(image='/same', result='/same'), {}, 'same topic'),
])
def test_topic_checks(config, types_, match):
    with pytest.raises(Rejected, match=match):
        Registry(max_apps=4, reserved_topics=['/delen/status']).check(config, topic_types=types_)


def test_the_right_types_pass():
    Registry(max_apps=4).check(_app(), topic_types={'/cam': [IMAGE_TYPE], '/delen/nav/result': [RESULT_TYPE]})


def test_result_topic_theft_and_clashes_are_rejected():
    reg = Registry(max_apps=4)
    _registered(reg, _app('nav'))
    with pytest.raises(Rejected, match="belongs to app 'nav'"):
        reg.check(_app('evil', result='/delen/nav/result'))
    with pytest.raises(Rejected, match='result topic of app'):
        reg.check(_app('evil', image='/delen/nav/result'))
    with pytest.raises(Rejected, match='camera topic of app'):
        reg.check(_app('evil', image='/other', result='/cam'))
    with pytest.raises(Rejected, match='publisher outside'):
        reg.check(_app('evil', result='/someone/else'), foreign_publishers=lambda t: 1)


def test_max_apps_and_change_bookkeeping():
    reg = Registry(max_apps=2)
    token = _registered(reg, _app('a', image='/c1'))
    _registered(reg, _app('b', image='/c1'))
    with pytest.raises(Rejected, match='max_apps'):
        reg.check(_app('c', image='/c2'))
    change = reg.check(_app('a', image='/c2', result='/ra'), token=token)
    assert (change.new_image_topic, change.unused_image_topic) == ('/c2', None)   # b still uses /c1
    assert (change.new_result_topic, change.unused_result_topic) == ('/ra', '/delen/a/result')


# --- state file -------------------------------------------------------------------------------------------
def test_a_corrupt_state_file_is_kept_as_a_backup_and_its_valid_entries_restored(tmp_path):
    path = tmp_path / 'apps.yaml'
    good = [_app('nav', max_latency_ms=40.0), _app('inspect', image='/arm', min_accuracy=0.9)]
    save_state(path, good)
    data = yaml.safe_load(path.read_text())
    data['apps'].insert(1, {'app_id': '1bad', 'image_topic': '/x'})
    data['apps'].append({'app_id': 'nan', 'image_topic': '/x', 'max_latency_ms': float('nan')})
    data['apps'].append('garbage')
    data['apps'].append(dict(data['apps'][0]))   # a duplicate
    path.write_text(yaml.safe_dump(data))
    original = path.read_bytes()
    read = read_state(path)
    assert [a.app_id for a in read.apps] == ['nav', 'inspect'] and len(read.errors) == 4
    assert read.backup is not None and read.backup.read_bytes() == original and '.bad-' in read.backup.name
    with pytest.raises(ValueError):
        load_state(path)


@pytest.mark.parametrize('content', [b'\x00\xff\xfe binary', b'version: 1\napps: [\n', b'- a list\n',
                                     b'version: 9\napps: []\n', b'version: 1\napps: {a: 1}\n'])
def test_unreadable_state_files_are_backed_up(tmp_path, content):
    path = tmp_path / 'apps.yaml'
    path.write_bytes(content)
    read = read_state(path)
    assert read.apps == [] and read.errors and read.backup.read_bytes() == content


def test_empty_or_missing_state_files_are_empty_registries(tmp_path):
    assert read_state(tmp_path / 'none.yaml') == read_state(tmp_path / 'none.yaml') and \
        not read_state(tmp_path / 'none.yaml').errors
    (tmp_path / 'empty.yaml').write_bytes(b'')
    read = read_state(tmp_path / 'empty.yaml')
    assert read.apps == [] and not read.errors and read.backup is None


def test_owner_and_late_policy_persist(tmp_path):
    path = tmp_path / 'apps.yaml'
    app = _app(late_policy='drop', owner=token_hash('secret'))
    save_state(path, [app])
    assert load_state(path) == [app] and load_state(path)[0].late_policy is LatePolicy.DROP
    assert 'secret' not in path.read_text()   # only the hash is kept


def test_state_store_reports_a_failed_write(tmp_path):
    def failing(path, apps):
        raise PermissionError(13, 'Permission denied')
    store = StateStore(tmp_path / 'apps.yaml', save=failing)
    assert not store.write([_app()]) and 'Permission denied' in store.error and store.status == store.error
    assert StateStore(tmp_path / 'ok.yaml').write([_app()])
    assert StateStore(None).write([_app()])


# --- logging ----------------------------------------------------------------------------------------------
def test_rejections_are_aggregated_per_period():
    now = [0.0]
    log = RejectionLog(period_s=10.0, clock=lambda: now[0])
    assert log.add('topic type', 'first, at /tmp/rcl/src/rcl/node.c:123') == 'first'
    lines = [log.add('not owner' if i % 3 else 'topic type', f'request {i}') for i in range(999)]
    assert lines.count(None) == 999 and log.summary() is None   # the period is not over
    now[0] = 10.5
    summary = log.summary()
    assert summary.startswith('999 more') and '666 x not owner' in summary and '333 x topic type' in summary
    assert log.summary() is None and log.total == 1000


def test_clean_message_drops_c_locations():
    text = "Failed to create publisher: topic name must not contain ..., at ./src/rcl/publisher.c:123"
    assert 'publisher.c' not in clean_message(text) and '\n' not in clean_message('a\nb')


# --- frames missed ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('period_ms, drop_every, jitter', [(33.3, 10, 0.0), (100.0, 4, 0.1), (5.0, 7, 0.05)])
def test_stamp_gaps_count_missing_frames(period_ms, drop_every, jitter):
    import random
    rng = random.Random(0)
    gaps, expected = StampGaps(), 0
    for i in range(1, 500):
        if i % drop_every == 0:
            expected += i > 10   # the first ones train the period
            continue
        gaps.add(int((i * period_ms + rng.uniform(-jitter, jitter) * period_ms) * 1e6))
    assert abs(gaps.missed - expected) <= 1


def test_stamp_gaps_ignore_unset_and_backward_stamps():
    gaps = StampGaps()
    for _ in range(100):
        gaps.add(0)
    for t in (5, 4, 3, 2, 1):
        gaps.add(t * 10**9)
    assert gaps.missed == 0


# --- parameters ---------------------------------------------------------------------------------------------
class _FakeNode:
    def __init__(self, **overrides):
        self.values = overrides

    def declare_parameter(self, name, default, descriptor):
        self.values.setdefault(name, default)

    def get_parameter(self, name):
        return types.SimpleNamespace(value=self.values[name])


@pytest.mark.parametrize('overrides, match', [
    ({'queue_depth': -1}, r'queue_depth: must be in \[1, 64\]'),
    ({'max_apps': 0}, r'max_apps: must be in \[1, 4096\]'),
    ({'status_period_s': 0.0}, r'status_period_s: must be in \[0.1, 60.0\]'),
    ({'energy_window_s': 0.0}, r'energy_window_s: must be in \[0.05, 60.0\]'),
    ({'image_qos': 'fast'}, 'image_qos: must be one of sensor_data, reliable'),
    ({'executor': 'x'}, 'executor: must be one of'),
    ({'max_batch': 'eight'}, 'max_batch: expected int'),
    ({'precision': 'fp8'}, 'precision: must be one of auto, float32, float16, bfloat16'),
    ({'choice_yields': 'sometimes'}, 'choice_yields: must be one of waiting, pressed, demand, never'),
    ({'precision': 'float16', 'device': 'cpu'}, 'precision: float16 needs a CUDA device'),
])
def test_bad_parameters_give_one_line(overrides, match):
    node = _FakeNode(**overrides)
    params.declare(node)
    with pytest.raises(params.ParameterError, match=match) as err:
        params.read(node)
    assert '\n' not in str(err.value)


def test_defaults_read():
    node = _FakeNode()
    params.declare(node)
    p = params.read(node)
    assert p.allow_takeover is False and p.service_queue_depth >= 100 and p.status_period_s == 1.0
    assert p.energy_window_s == 1.0   # NVML read once a second while serving


def test_a_float_parameter_takes_an_integer_from_the_command_line():
    """`-p gil_switch_interval_ms:=1` reached the node as an INTEGER, which rclpy refused for a
    DOUBLE parameter (and the node exited, blaming the range)."""
    import rclpy
    from rclpy.parameter import Parameter
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('params_test', context=context, parameter_overrides=[
            Parameter('delivery_allowance_ms', value=2), Parameter('gil_switch_interval_ms', value=1)])
        params.declare(node)
        p = params.read(node)
        assert p.delivery_allowance_ms == 2.0 and type(p.delivery_allowance_ms) is float
        assert p.gil_switch_interval_ms == 1.0 and type(p.transport_prior_ms) is float
        node.set_parameters([Parameter('transport_prior_ms', value='two')])
        with pytest.raises(params.ParameterError, match='transport_prior_ms: expected float'):
            params.read(node)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


# --- pure message builders --------------------------------------------------------------------------------
def test_result_message_is_built_from_the_delivered_result():
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    from delen_ros.ros.publishing import result_message
    result = types.SimpleNamespace(app_id='nav', class_id=3, label='dress', confidence=0.9, exit_index=1,
                                   num_exits=4, expected_accuracy=0.85, latency_ms=2.5, queue_ms=0.5,
                                   compute_ms=1.0, energy_mj=0.2, energy_measured=False, energy_source='estimate',
                                   bounds_met=True)
    header = Header(stamp=Time(sec=10, nanosec=0), frame_id='cam')
    msg = result_message(result, header=header, image_topic='/cam', now_ns=10_004_000_000)
    assert msg.header.frame_id == 'cam' and msg.stamp_latency_ms == pytest.approx(4.0)
    assert (msg.latency_ms, msg.bounds_met, msg.exit_index, msg.label) == (2.5, True, 1, 'dress')


def test_status_message_reads_the_ledger():
    from builtin_interfaces.msg import Time

    from delen_ros.ros.publishing import CameraReport, status_message
    fields = dict(rate_in_hz=10.0, rate_out_hz=9.0, frames_in=100, results_out=90, dropped=10, dropped_overflow=4,
                  dropped_late=1, dropped_malformed=5, served_late=2, attainment=math.nan, frame_attainment=0.8,
                  latency_p50_ms=1.0, latency_p99_ms=2.0, mean_energy_mj=0.1, mean_expected_accuracy=0.9,
                  exit_counts=(1, 2, 3), unschedulable_reason='too fast')
    stats = types.SimpleNamespace(**fields)
    camera = CameraReport(topic='/cam', app_ids=('nav',), frames=10, frames_total=100, malformed=1,
                          malformed_total=5, missed_total=7, warning='w')
    msg = status_message(_app(late_policy='drop'), stats, stamp=Time(), camera=camera, state_error='disk full')
    assert (msg.malformed, msg.frames_missed, msg.dropped_late, msg.late_policy) == (5, 7, 1, 'drop')
    assert msg.unschedulable_reason == 'too fast' and msg.warning == 'w' and msg.state_error == 'disk full'
    assert math.isnan(msg.attainment) and list(msg.exit_counts) == [1, 2, 3] and msg.objective == 'default'


def test_the_node_offers_the_kernels_the_core_serves():
    """params keeps its own copy of core.pointwise.CONV_KERNELS (that module imports torch): the two must agree."""
    from delen_ros.core.pointwise import CONV_KERNELS
    assert params.CONV_KERNELS == CONV_KERNELS


def test_the_node_offers_the_choice_yields_the_engine_knows():
    """params keeps its own copy of core.engine.CHOICE_YIELDS, default first: the two must agree."""
    from delen_ros.core.engine import CHOICE_YIELDS
    assert params.CHOICE_YIELDS == CHOICE_YIELDS
