"""The demo's pure parts: bounds from a profile, the half-way change, summaries, table and plot
(the demo itself runs processes over DDS; it is exercised by hand / scripts/demo.sh, not here)."""
from __future__ import annotations

import math
import types

import pytest

from delen_ros.tools.demo import (CAMERAS, NAVIGATION_ALLOWANCE_MS, Record, demo_bounds, render_table,
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
    assert set(bounds) == {c.app_id for c in CAMERAS}
    assert bounds['inspection'] == {'min_accuracy': 0.88, 'objective': 1}
    # p50 plus an allowance: a huge p99 (a loaded machine) must not make the bound meaningless
    assert bounds['navigation']['max_latency_ms'] == pytest.approx(0.6 + NAVIGATION_ALLOWANCE_MS)
    assert bounds['battery']['max_energy_mj'] == pytest.approx(2.0, rel=1e-3)


def test_tightened_bound_leaves_room_for_about_exit_one():
    recent = [_record(t, 3, 2.6) for t in range(10)]          # overhead = 2.6 - 0.6 = 2.0 ms
    assert tightened_latency_ms(recent, PROFILE, 3.6) == pytest.approx(2.0 + 0.2 + 0.1)
    assert tightened_latency_ms(recent[:2], PROFILE, 3.6) == pytest.approx(1.8)   # too few: half


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
    after = {**demo_bounds(PROFILE), 'navigation': {'max_latency_ms': 2.0, 'objective': 0}}
    path = write_plot(tmp_path / 'demo.png', records, demo_bounds(PROFILE), after, change_s=10.0, duration_s=20.0,
                      num_exits=4, title='test')
    assert path.stat().st_size > 10_000
    assert not math.isnan(summarize(records['inspection'], num_exits=4, duration_s=20.0)['energy_mean_mj'])
