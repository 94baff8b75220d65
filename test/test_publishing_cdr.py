"""``result_cdr``: the serialized ``InferenceResult`` the node publishes is the message
``result_message`` builds, field for field (rclpy leaves CDR padding bytes undefined, so the
bytes are compared by deserializing them), for strings of every length modulo 4."""
from __future__ import annotations

import itertools
import math
import types

import pytest

rclpy_serialization = pytest.importorskip('rclpy.serialization')


def _result(**changes):
    fields = dict(app_id='nav', class_id=3, label='dress', confidence=0.873, exit_index=2, num_exits=4,
                  expected_accuracy=0.91, latency_ms=12.345, queue_ms=1.5, compute_ms=3.25, energy_mj=0.2,
                  energy_measured=False, energy_source='estimate', bounds_met=True)
    fields.update(changes)
    return types.SimpleNamespace(**fields)


@pytest.mark.parametrize('frame_id, app_id, topic, label, source', list(itertools.product(
    ['', 'c', 'cam', 'camera_fr'], ['a', 'nav', 'abcd', 'navi1'], ['/c', '/cam0/image_raw'],
    ['x', 'dress', 'T-shirt/top', 'é'], ['estimate', 'nvml_above_idle'])))
def test_result_cdr_is_the_serialized_result_message(frame_id, app_id, topic, label, source):
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    from delen_ros.msg import InferenceResult
    from delen_ros.ros.publishing import result_cdr, result_message
    result = _result(app_id=app_id, label=label, energy_source=source, energy_measured=len(label) % 2 == 0,
                     bounds_met=len(topic) > 2)
    for sec in (0, -5, 1_795_922_979):
        header = Header(stamp=Time(sec=sec, nanosec=123_456_789), frame_id=frame_id)
        want = rclpy_serialization.serialize_message(result_message(result, header=header, image_topic=topic,
                                                                    now_ns=1_795_922_980_000_000_000))
        got = result_cdr(result, stamp_sec=sec, stamp_nanosec=123_456_789, frame_id=frame_id, image_topic=topic,
                         now_ns=1_795_922_980_000_000_000)
        assert len(got) == len(want)
        assert (rclpy_serialization.deserialize_message(got, InferenceResult)
                == rclpy_serialization.deserialize_message(want, InferenceResult))


def test_result_cdr_keeps_nan_and_infinity():
    from delen_ros.msg import InferenceResult
    from delen_ros.ros.publishing import result_cdr
    data = result_cdr(_result(energy_mj=math.nan, confidence=math.inf), stamp_sec=10, stamp_nanosec=0, frame_id='cam',
                      image_topic='/cam', now_ns=10_004_000_000)
    msg = rclpy_serialization.deserialize_message(data, InferenceResult)
    assert math.isnan(msg.energy_mj) and msg.confidence == math.inf
    assert msg.stamp_latency_ms == pytest.approx(4.0) and msg.header.frame_id == 'cam' and msg.label == 'dress'


def _status_inputs(app_id: str, reason: str, exits: int, *, nan: bool = False):
    from delen_ros.core.bounds import LatePolicy, Objective
    from delen_ros.ros.publishing import CameraReport
    config = types.SimpleNamespace(app_id=app_id, image_topic=f'/{app_id}/image_raw', result_topic=f'/delen/{app_id}/result',
                                   max_latency_ms=33.0, min_accuracy=0.0 if nan else 0.9, max_energy_mj=1.5,
                                   objective=Objective.DEFAULT, late_policy=LatePolicy.DROP)
    stats = types.SimpleNamespace(rate_in_hz=29.97, rate_out_hz=29.5, frames_in=2**40 + 3, results_out=1234,
                                  dropped=7, dropped_overflow=1, dropped_late=5, dropped_malformed=1, served_late=2,
                                  attainment=math.nan if nan else 0.98, frame_attainment=0.97, latency_p50_ms=8.5,
                                  latency_p99_ms=math.inf if nan else 31.2, mean_energy_mj=0.4,
                                  mean_expected_accuracy=0.93, exit_counts=list(range(exits)),
                                  unschedulable_reason=reason)
    camera = CameraReport(topic=config.image_topic, app_ids=(app_id,), frames=10, frames_total=100, malformed=0,
                          malformed_total=0, missed_total=4, warning='no frames' if nan else '')
    return config, stats, camera


@pytest.mark.parametrize('app_id, reason, exits, nan', list(itertools.product(
    ['a', 'nav', 'abcd', 'navi1'], ['', 'x', 'at risk: é', 'demoted: 12 chars'], [0, 1, 4], [False, True])))
def test_status_cdr_is_the_serialized_status_message(app_id, reason, exits, nan):
    from builtin_interfaces.msg import Time

    from delen_ros.msg import AppStatus
    from delen_ros.ros.publishing import status_cdr, status_message
    config, stats, camera = _status_inputs(app_id, reason, exits, nan=nan)
    for error, cam in (('', camera), ('disk full', None)):
        want = rclpy_serialization.serialize_message(status_message(
            config, stats, stamp=Time(sec=1_795_922_979, nanosec=5), camera=cam, state_error=error))
        got = status_cdr(config, stats, stamp_sec=1_795_922_979, stamp_nanosec=5, camera=cam, state_error=error)
        assert len(got) == len(want)
        ours, theirs = (rclpy_serialization.deserialize_message(b, AppStatus) for b in (got, want))
        assert repr(ours) == repr(theirs)   # repr: NaN fields compare equal as text


@pytest.mark.parametrize('cameras', [0, 1, 3])
def test_diagnostics_cdr_is_the_serialized_diagnostics_array(cameras):
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray

    from delen_ros.ros.publishing import diagnostics_array, diagnostics_cdr
    reports, stats = [], {}
    for i in range(cameras):
        config, app_stats, camera = _status_inputs('cam' + 'x' * i, ['', 'at risk: é'][i % 2], 4, nan=i == 2)
        reports.append(camera)
        stats[config.app_id] = types.SimpleNamespace(**vars(app_stats), app_id=config.app_id, window_results=30 + i,
                                                     window_dropped=i, window_energy_mj=12.5 * i,
                                                     choice_margin_ms=0.5 * (i % 2))
    rows = dict(prefix='/delen', hardware_id='cuda:0', cameras=reports, stats=stats, period_s=1.0,
                engine={'active': True, 'model': 'cifar10_lite0', 'state_error': '' if cameras != 1 else 'disk',
                        'graphs': 16, 'idle_power_w': '121.4'})
    want = rclpy_serialization.serialize_message(diagnostics_array(stamp=Time(sec=1_795_922_979, nanosec=7), **rows))
    got = diagnostics_cdr(stamp_sec=1_795_922_979, stamp_nanosec=7, **rows)
    assert len(got) == len(want)
    ours, theirs = (rclpy_serialization.deserialize_message(b, DiagnosticArray) for b in (got, want))
    assert ours == theirs and len(ours.status) == cameras + 1
    margins = [{kv.key: kv.value for kv in status.values}['choice_margin_ms'] for status in ours.status[:-1]]
    assert margins == ['camx=0.50' if i % 2 else '' for i in range(cameras)]   # apps that learnt one, by name
