"""The demo's pure parts: bounds from a profile, the half-way change, summaries, table and plot
(the demo itself runs processes over DDS; it is exercised by hand / scripts/demo.sh, not here)."""
from __future__ import annotations

import math
import pathlib
import types

import pytest

from delen_ros.core.profile import Profile
from delen_ros.srv import SetBounds
from delen_ros.tools.demo import (CAMERAS, DEFAULT_MODEL, FALLBACK_CAMERAS, FALLBACK_MODEL, NAVIGATION_ALLOWANCE_MS,
                                  Record, demo_bounds, demo_setup, first_fit_latency_ms, render_table, retry_latency_ms,
                                  summarize, tightened_latency_ms, write_plot)

PROFILE = types.SimpleNamespace(  # a GetProfile answer
    accuracy=[0.80, 0.86, 0.90, 0.92], latency_ms=[0.1, 0.2, 0.4, 0.6], latency_p99_ms=[0.2, 0.4, 0.8, 90.0],
    energy_mj=[1.0, 2.0, 3.0, 4.0])


def _record(t_s: float, exit_index: int, latency_ms: float, *, correct: bool | None = None, met: bool = True):
    return Record(t_s=t_s, exit_index=exit_index, latency_ms=latency_ms, stamp_latency_ms=latency_ms + 0.5,
                  energy_mj=float(exit_index + 1), energy_measured=False, expected_accuracy=0.9, confidence=0.8,
                  bounds_met=met, correct=correct)


def test_demo_bounds_follow_the_profile():
    bounds = demo_bounds(PROFILE)
    assert set(bounds) == {c.app_id for c in CAMERAS} == {c.app_id for c in FALLBACK_CAMERAS}
    # objectives by name: the srv's numbering is its own (MIN_LATENCY was 1 once, now MAX_ACCURACY is)
    assert bounds['inspection'] == {'min_accuracy': 0.88, 'objective': SetBounds.Request.MIN_LATENCY}
    assert bounds['navigation']['objective'] == bounds['battery']['objective'] == SetBounds.Request.MAX_ACCURACY
    request = SetBounds.Request(app_id='inspection', image_topic='/x', **bounds['inspection'])  # fields fit the srv
    assert request.objective == SetBounds.Request.MIN_LATENCY
    # p50 plus an allowance: a huge p99 (a loaded machine) must not make the bound meaningless
    assert bounds['navigation']['max_latency_ms'] == pytest.approx(0.6 + NAVIGATION_ALLOWANCE_MS)
    assert bounds['battery']['max_energy_mj'] == pytest.approx(2.0, rel=1e-3)


def test_default_model_runs_on_labelled_cifar10_cameras():
    model, cameras, note = demo_setup(DEFAULT_MODEL, ['cifar10', 'fashion_mnist', 'vtest'])
    assert (model, note) == ('cifar10_committee', None)
    assert cameras == CAMERAS and {c.source for c in cameras} == {'cifar10'}   # every app's accuracy is scored
    # the model's committed CPU profile: three streams at the demo's rates, each to the final exit, keep
    # the two cores below ~60 % busy with the network (the rest is cameras, DDS and the demo), counting the
    # profile's torch threads (one since session 32: the node's default on two cores)
    cpu = Profile.load(pathlib.Path(__file__).resolve().parents[1] / 'models' / 'profiles'
                       / 'cifar10_committee__cpu-intel-r-xeon-r-processor.json')
    assert cpu.num_exits == 6
    busy_cores = sum(c.rate_hz for c in cameras) * cpu.exit_latency_ms(cpu.final_exit) / 1000 * cpu.meta['torch_threads']
    assert busy_cores / 2 < 0.6


def test_without_cifar10_the_demo_falls_back_and_says_so():
    model, cameras, note = demo_setup(DEFAULT_MODEL, ['fashion_mnist', 'vtest', 'visp_mbt_cube'])
    assert model == FALLBACK_MODEL and cameras == FALLBACK_CAMERAS
    assert 'CIFAR-10 not found' in note and 'DELEN_CIFAR10' in note
    assert demo_setup('efficientnet_lite0', ['cifar10']) == ('efficientnet_lite0', FALLBACK_CAMERAS, None)


def test_every_cifar10_model_gets_the_labelled_cameras():
    assert demo_setup('cifar10_resnet9', ['cifar10', 'vtest']) == ('cifar10_resnet9', CAMERAS, None)
    assert demo_setup('cifar10_resnet9', ['vtest']) == ('cifar10_resnet9', FALLBACK_CAMERAS, None)
    assert demo_setup('cifar10_lite0', ['cifar10']) == ('cifar10_lite0', CAMERAS, None)   # the former default


def test_tightened_bound_leaves_room_for_about_exit_one():
    recent = [_record(t, 3, 2.6) for t in range(10)]          # overhead = 2.6 - 0.6 = 2.0 ms
    assert tightened_latency_ms(recent, PROFILE, 3.6) == pytest.approx(2.0 + 0.2 + 0.1)
    assert tightened_latency_ms(recent[:2], PROFILE, 3.6) == pytest.approx(1.8)   # too few: half


@pytest.mark.parametrize('would_fit, expected', [
    (25.0, (25.5, 'what the node says would fit, +2 %')),     # the node's answer, with a little room
    (31.7, (None, 'the node says only >= 31.7 ms would fit now')),   # nothing tighter than 30 fits: keep it
    (0.0, (25.0, 'half-way')),                                 # no answer (an infeasible bound): meet half-way
])
def test_a_refused_tightening_retries_at_what_the_node_says_would_fit(would_fit, expected):
    assert retry_latency_ms(20.0, 30.0, would_fit) == expected


def test_a_tightening_below_the_fastest_exit_retries_half_way_from_that_exit():
    # the fashion_mnist fallback: 4.21 ms asked, the fastest exit 7.73 ms end to end; half-way from the ask
    # (7.14 ms) was below it too, and refused again
    assert retry_latency_ms(4.21, 10.07, 0.0, 7.73) == (8.9, 'half-way from the fastest exit end to end, 7.73 ms')
    assert retry_latency_ms(20.0, 30.0, 0.0, 18.0) == (25.0, 'half-way')       # the ask was above it
    assert retry_latency_ms(4.28, 11.46, 0.0, 13.2) == (   # the frames' age on arrival had grown past the bound
        None, 'the fastest exit takes 13.2 ms end to end now: nothing tighter fits')


def test_a_refused_first_latency_bound_asks_what_the_node_says_would_fit():
    assert first_fit_latency_ms(31.6, 35.7) == pytest.approx(36.41)   # the node's answer, with a little room
    assert first_fit_latency_ms(31.6, 0.0) is None                    # no answer: nothing to ask
    assert first_fit_latency_ms(31.6, 30.0) is None                   # not looser than what was refused


def test_summarize():
    records = [_record(0.1 * i, i % 2, 1.0 + i, correct=i % 3 != 0, met=i < 8) for i in range(10)]
    s = summarize(records, num_exits=4, duration_s=2.0)
    assert s['results'] == 10 and s['rate_hz'] == 5.0
    assert s['exit_mix'] == [0.5, 0.5, 0.0, 0.0]
    assert s['latency_p50_ms'] == pytest.approx(5.5) and s['attainment'] == pytest.approx(0.8)
    assert s['accuracy'] == pytest.approx(0.6) and s['scored'] == 10
    assert summarize([], num_exits=4, duration_s=1.0) == {'results': 0, 'rate_hz': 0.0}
    assert summarize([_record(0, 0, 1.0)], num_exits=1, duration_s=1.0)['accuracy'] is None


def test_table_and_plot(tmp_path):
    records = {c.app_id: [_record(0.5 * i, i % 4, 1.0 + 0.1 * i, correct=True) for i in range(40)] for c in CAMERAS}
    table = render_table(records, {}, demo_bounds(PROFILE), now_s=20.0, window_s=5.0, num_exits=4, header='demo')
    lines = table.splitlines()
    assert lines[0] == 'demo' and len(lines) == 2 + len(CAMERAS)
    assert 'acc>=0.880' in table and 'lat<=3.6ms' in table
    navigation = next(line for line in lines if line.startswith('navigation'))
    # the last 5 s: 10 results (2/s), exits 2, 2, 3, 3 of them, all bounds met
    assert '2.0  20%  20%  30%  30%' in navigation and navigation.split()[-2] == '100%'
    after = {**demo_bounds(PROFILE),
             'navigation': {'max_latency_ms': 2.0, 'objective': SetBounds.Request.MAX_ACCURACY}}
    path = write_plot(tmp_path / 'demo.png', records, demo_bounds(PROFILE), after, change_s=10.0, duration_s=20.0,
                      num_exits=4, title='test')
    assert path.stat().st_size > 10_000
    assert not math.isnan(summarize(records['inspection'], num_exits=4, duration_s=20.0)['energy_mean_mj'])
