"""Unit tests of the ROS layer's node-free parts: app configs and the state file, result statistics,
camera sources and labels, QoS names (no DDS, no node)."""
from __future__ import annotations

import math
import time
import os

import numpy as np
import pytest

from delen_ros.core.bounds import Objective
from delen_ros.ros.apps import AppConfig, load_state, parse_apps_param, save_state, validate_app_id
from delen_ros.ros.stats import CameraCounters


# --- apps ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('app_id', ['a', 'navigation', 'cam_2', 'A_b_C9'])
def test_valid_app_ids(app_id):
    assert validate_app_id(app_id) == app_id


@pytest.mark.parametrize('app_id', ['', '1st', '_x', 'a-b', 'a b', 'a/b', 'é', 'x' * 65, None, 3])
def test_invalid_app_ids(app_id):
    with pytest.raises(ValueError, match='app_id'):
        validate_app_id(app_id)


@pytest.mark.parametrize('fields, match', [
    ({'image_topic': ''}, 'image_topic'),
    ({'image_topic': '   '}, 'image_topic'),
    ({'max_latency_ms': math.nan}, 'finite'),
    ({'max_latency_ms': -1.0}, '>= 0'),
    ({'min_accuracy': 1.01}, '<= 1'),
    ({'max_energy_mj': math.inf}, 'finite'),
    ({'max_energy_mj': '3'}, 'number'),
    ({'objective': 'fastest'}, 'unknown objective'),
    ({'objective': 4}, 'unknown objective'),
    ({'late_policy': 'later'}, 'unknown late_policy'),
    ({'owner': 'abc'}, 'owner'),
])
def test_app_config_rejects_bad_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        AppConfig(**{'app_id': 'a', 'image_topic': '/cam', **fields})


@pytest.mark.parametrize('objective, expected', [
    (0, Objective.DEFAULT), (1, Objective.MAX_ACCURACY), (2, Objective.MIN_LATENCY), (3, Objective.MIN_ENERGY),
    ('min_energy', Objective.MIN_ENERGY), ('MIN_LATENCY', Objective.MIN_LATENCY),
])
def test_objective_from_service_constant_or_name(objective, expected):
    assert AppConfig('a', '/cam', objective=objective).objective is expected


def test_zero_means_unbounded():
    bounds = AppConfig('a', '/cam', max_latency_ms=0.0, min_accuracy=0.9, max_energy_mj=0).bounds
    assert bounds.max_latency_ms is None and bounds.max_energy_mj is None and bounds.min_accuracy == 0.9


def test_parse_apps_param():
    apps = parse_apps_param("""
        - {app_id: nav, image_topic: /front/image_raw, max_latency_ms: 40}
        - {app_id: inspect, image_topic: arm/image_raw, min_accuracy: 0.9, objective: min_latency,
           result_topic: /inspect/out}
    """)
    assert [a.app_id for a in apps] == ['nav', 'inspect']
    assert apps[0].max_latency_ms == 40.0 and apps[1].objective is Objective.MIN_LATENCY
    assert apps[1].result_topic == '/inspect/out' and apps[0].result_topic == ''
    assert parse_apps_param('') == [] and parse_apps_param('  \n') == []


@pytest.mark.parametrize('text, match', [
    ('{app_id: a}', 'list'),
    ('[{app_id: a, image_topic: /c, max_latncy_ms: 3}]', 'unknown app fields'),
    ('[{app_id: a}]', 'lacks'),
    ('[{app_id: a, image_topic: /c}, {app_id: a, image_topic: /d}]', 'duplicate'),
    ('[{app_id: a, image_topic: /c', 'not valid YAML'),
    ('[3]', 'mapping'),
])
def test_parse_apps_param_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_apps_param(text)


def test_state_file_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / 'sub' / 'state.yaml'
    assert load_state(path) == []
    apps = [AppConfig('nav', '/front', max_latency_ms=40.0, result_topic='/delen/nav/result'),
            AppConfig('saver', '/rear', max_energy_mj=2.5, objective='min_energy')]
    save_state(path, apps)
    assert load_state(path) == apps
    save_state(path, apps[:1])
    assert load_state(path) == apps[:1]
    assert [p.name for p in path.parent.iterdir()] == ['state.yaml']   # no temp files left behind


def test_failed_state_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'state.yaml'
    save_state(path, [AppConfig('nav', '/front')])

    def broken_fsync(fd):
        raise OSError('disk full')
    monkeypatch.setattr(os, 'fsync', broken_fsync)
    with pytest.raises(OSError, match='disk full'):
        save_state(path, [AppConfig('other', '/x')])
    assert [a.app_id for a in load_state(path)] == ['nav']
    assert [p.name for p in tmp_path.iterdir()] == ['state.yaml']


@pytest.mark.parametrize('text, match', [
    ('version: 2\napps: []\n', 'version'),
    ('- just a list\n', 'version'),
    ('version: 1\napps: {a: 1}\n', 'list'),
    ('version: 1\napps: [\n', 'unreadable'),
])
def test_bad_state_files_raise(tmp_path, text, match):
    path = tmp_path / 'state.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_state(path)


# --- stats ---------------------------------------------------------------------------------------------------
def test_camera_counters():
    c = CameraCounters()
    c.frame()
    c.frame()
    assert c.error() == 1
    assert c.take() == (2, 1) and c.take() == (0, 0)
    assert (c.frames_total, c.errors_total) == (2, 1)


# --- camera player helpers ----------------------------------------------------------------------------------------
def test_label_travels_in_frame_id():
    from delen_ros.ros.camera_player import label_from_frame_id, labelled_frame_id
    assert labelled_frame_id('fashion_mnist', 7) == 'fashion_mnist/label_7'
    assert label_from_frame_id('fashion_mnist/label_7') == 7
    assert label_from_frame_id('camera') is None and label_from_frame_id('cam/label_x') is None


@pytest.mark.parametrize('text, expected', [('640x480', (640, 480)), ('32X8', (32, 8)), ('native', None), ('', None)])
def test_parse_size(text, expected):
    from delen_ros.ros.camera_player import parse_size
    assert parse_size(text) == expected


def test_a_photo_scaled_up_by_whole_factors_comes_back_whole():
    """The camera player grows a 32x32 photo to 640x480 by pixel replication: the node's area downscale
    (CPU: cv2; accelerator: torch) gives the photo back exactly. Bilinear growth did not (it blurred the
    photo: 1.75 points off ResNet-9's final exit on 2 000 CIFAR-10 test photos)."""
    import cv2
    import torch

    from delen_ros.ros.camera_player import scale_frame
    photo = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    frame = scale_frame(photo, (640, 480))
    assert frame.shape == (480, 640, 3)
    assert np.array_equal(cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA), photo)
    back = torch.nn.functional.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None].float(), size=(32, 32),
                                           mode='area')
    assert torch.equal(back[0].permute(1, 2, 0).round().to(torch.uint8), torch.from_numpy(photo))
    bilinear = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_LINEAR)
    assert not np.array_equal(cv2.resize(bilinear, (32, 32), interpolation=cv2.INTER_AREA), photo)
    # other growth replicates too, blending the boundary pixels: the node's downscale gets close to the photo,
    # bilinear growth does not (the demo's 320 x 240 is 7.5x tall)
    odd = scale_frame(photo, (320, 240))
    assert np.array_equal(odd, cv2.resize(photo, (320, 240), interpolation=cv2.INTER_AREA))
    bilinear = cv2.resize(photo, (320, 240), interpolation=cv2.INTER_LINEAR)
    error = {name: np.abs(cv2.resize(big, (32, 32), interpolation=cv2.INTER_AREA).astype(int) - photo).mean()
             for name, big in (('area', odd), ('bilinear', bilinear))}
    assert error['area'] < 0.5 * error['bilinear'], error
    assert np.array_equal(scale_frame(frame, (32, 32)), photo) and scale_frame(photo, None) is photo


@pytest.mark.parametrize('text', ['640', '0x10', '10x0', '-1x2', 'axb', '640x480x3'])
def test_parse_size_rejects(text):
    from delen_ros.ros.camera_player import parse_size
    with pytest.raises(ValueError, match='WxH'):
        parse_size(text)


def test_folder_source_with_labels(tmp_path):
    import cv2

    from delen_ros.ros.camera_player import FrameSource, open_source
    for i, label in enumerate([3, 1, 4]):
        cv2.imwrite(str(tmp_path / f'{i:05d}_{label}.png'), np.full((10, 12), 10 * i, np.uint8))
    source = open_source(str(tmp_path))
    assert isinstance(source, FrameSource) and source.kind == 'folder' and source.labels == (3, 1, 4)
    frames = list(source)
    assert [label for _, label in frames] == [3, 1, 4] and frames[2][0].shape == (10, 12)
    (tmp_path / 'unlabelled.png').write_bytes((tmp_path / '00000_3.png').read_bytes())
    assert FrameSource(tmp_path).labels is None


def test_unknown_source_lists_the_known_ones():
    from delen_ros.ros.camera_player import open_source
    with pytest.raises(KeyError, match='shipped sequences'):
        open_source('no_such_source_here')


def test_image_qos_names():
    pytest.importorskip('rclpy')
    from rclpy.qos import ReliabilityPolicy

    from delen_ros.ros.qos import image_qos
    assert image_qos('sensor_data').reliability == ReliabilityPolicy.BEST_EFFORT
    assert image_qos('reliable').reliability == ReliabilityPolicy.RELIABLE and image_qos('reliable').depth == 1
    with pytest.raises(ValueError, match='sensor_data'):
        image_qos('best_effort')


# --- relative bounds ('exit:K') in the apps parameter ----------------------------------------------------------
def _figure(field: str, k: int) -> float:
    return {'max_latency_ms': [1.0, 2.0, 4.0], 'min_accuracy': [0.8, 0.85, 0.9],
            'max_energy_mj': [3.0, 6.0, 9.0]}[field][k]


def test_relative_bounds_resolve_from_the_profile():
    apps = parse_apps_param("""
        - {app_id: a, image_topic: /c, max_energy_mj: 'exit:1', min_accuracy: 'exit:2'}
        - {app_id: b, image_topic: /c, max_latency_ms: 'exit:2*1.5', max_energy_mj: 2.5}
    """, figure=_figure, num_exits=3)
    assert (apps[0].max_energy_mj, apps[0].min_accuracy) == (6.0, 0.9)
    assert (apps[1].max_latency_ms, apps[1].max_energy_mj) == (6.0, 2.5)


@pytest.mark.parametrize('value, match', [
    ("'exit:3'", 'exit 3 does not exist'), ("'exit:-1'", 'number or'), ("'exit:1*'", 'number or'),
    ("'final'", 'number or'), ("'exit:1*x'", 'number or'),
])
def test_bad_relative_bounds(value, match):
    with pytest.raises(ValueError, match=match):
        parse_apps_param(f'[{{app_id: a, image_topic: /c, max_energy_mj: {value}}}]', figure=_figure, num_exits=3)


def test_relative_bounds_need_a_profile():
    with pytest.raises(ValueError, match='number'):
        parse_apps_param("[{app_id: a, image_topic: /c, max_energy_mj: 'exit:1'}]")


def test_shipped_demo_config_parses():
    import pathlib

    import yaml
    config = pathlib.Path(__file__).resolve().parents[1] / 'config'
    for name in ('delen.yaml', 'demo.yaml'):
        params = yaml.safe_load((config / name).read_text())['/**']['ros__parameters']
        from delen_ros.core.zoo import read_model_json
        num_exits = len(read_model_json(params.get('model', 'cifar10_committee'))['info']['exit_names'])
        figures = {'max_latency_ms': 1.0, 'min_accuracy': 0.8, 'max_energy_mj': 3.0}   # any exit: plausible values
        apps = parse_apps_param(params.get('apps', ''), figure=lambda field, k: figures[field] * (k + 1) ** 0.1,
                                num_exits=num_exits)
        assert name != 'demo.yaml' or [a.app_id for a in apps] == ['inspection', 'navigation', 'battery']
        # every name a parameter the node declares (rclpy ignores an override of one it does not), every
        # value of its type and among its choices
        from delen_ros.ros.params import _SPECS
        for key, value in params.items():
            assert key in _SPECS, f'{name}: {key} is not a parameter of the node'
            default, _, limits, _ = _SPECS[key]
            assert isinstance(value, type(default)) or isinstance(default, float) and isinstance(value, int), key
            if isinstance(limits, tuple) and limits and isinstance(limits[0], str):
                assert value in limits, (name, key, value)


@pytest.mark.parametrize('fields, text', [
    ({}, 'unbounded, default'),
    ({'max_latency_ms': 40.0, 'objective': 1}, 'latency <= 40 ms, max_accuracy'),
    ({'min_accuracy': 0.9219999, 'max_energy_mj': 0.5, 'objective': 2},
     'accuracy >= 0.922, energy <= 0.5 mJ, min_latency'),
])
def test_describe(fields, text):
    assert AppConfig('a', '/c', **fields).describe() == text


@pytest.mark.parametrize('kind, devices, expected', [
    ('auto', ['cuda:0', 'cuda:1'], 'estimate'),   # NVML meters in one node on two GPUs held its workers up
    ('nvml', ['cuda:0', 'cuda:1'], 'nvml'),       # asked for: measured all the same
    ('auto', ['cuda:0'], 'auto'),
    ('auto', ['cpu', 'cpu'], 'auto'),
    ('auto', [], 'auto'),
])
def test_energy_meter_on_several_gpus_is_estimated_unless_asked_for(kind, devices, expected):
    from delen_ros.ros.multi_device import meter_kind
    assert meter_kind(kind, devices) == expected


# --- held requests ---------------------------------------------------------------------------------------
class _TimerNode:
    """What HeldRequests uses of a node: a timer it can create and destroy (ticked by hand here)."""

    def __init__(self):
        self.timers, self.destroyed = [], []

    def create_timer(self, period_s, callback, callback_group=None):
        self.timers.append(callback)
        return callback

    def destroy_timer(self, timer):
        self.destroyed.append(timer)


def test_a_held_requests_service_outlives_its_reply_by_the_linger():
    from delen_ros.ros.held_requests import HeldRequests
    node, ready = _TimerNode(), [False]
    held = HeldRequests(node, linger_s=0.2)
    wait = held.until(lambda: ready[0], timeout_s=5.0)
    wait.send(None)                        # the request is held: the ticker is started
    released = []
    held.release_when_done(lambda: released.append(True))
    node.timers[0]()
    assert released == [] and held.waiting == 1
    ready[0] = True
    with pytest.raises(StopIteration):     # its wait ends: the reply is sent now, through the service
        wait.send(None)
    node.timers[0]()
    assert released == [] and node.destroyed == []   # not destroyed under the reply
    time.sleep(0.25)
    node.timers[0]()
    assert released == [True] and node.destroyed == node.timers
    held.release_when_done(lambda: released.append('now'))   # nothing held for the linger: at once
    assert released == [True, 'now']
