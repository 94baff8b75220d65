"""The GPU's idle power is read once per process and sensor (the node's start reads it in the
background, configure looks it up) and never read twice at once."""
from __future__ import annotations

import itertools
import threading
import time

import pytest

from delen_ros.core.energy import (EnergyMeter, EstimateMeter, idle_power_w, measure_idle_power_w,
                                   read_idle_power_early)

_names = itertools.count()


class SteadyMeter(EnergyMeter):
    """A sensor drawing ``watts`` in real time, its counter moving every ``period_s``; counts windows
    measured (a measurement reads the meter many times, a look-up never)."""

    source = 'nvml'   # read early, as a GPU's own sensor

    def __init__(self, watts: float = 50.0, period_s: float = 0.01, detail: str | None = None):
        self.watts, self.period_s = watts, period_s
        self.detail = detail or f'fake GPU {next(_names)}'   # a fresh sensor per test: the cache is per process
        self._t0 = time.monotonic()
        self.reads = 0
        self.closed = False

    def energy_mj(self) -> float:
        self.reads += 1
        elapsed = time.monotonic() - self._t0
        return self.watts * 1e3 * (elapsed // self.period_s) * self.period_s

    def close(self) -> None:
        self.closed = True


def test_a_reading_is_reused_within_its_age():
    meter = SteadyMeter(watts=50.0)
    first = idle_power_w(meter, window_s=0.05)
    assert first == pytest.approx(50.0, rel=0.25)
    reads = meter.reads
    assert idle_power_w(meter, window_s=0.05) == first
    assert meter.reads == reads   # looked up, not measured


def test_an_old_reading_is_measured_again():
    meter = SteadyMeter(watts=50.0)
    idle_power_w(meter, window_s=0.05)
    reads = meter.reads
    idle_power_w(meter, window_s=0.05, max_age_s=0.0)
    assert meter.reads > reads


def test_the_same_sensor_through_another_meter_shares_the_reading():
    early = SteadyMeter(watts=40.0, detail='shared fake GPU')
    watts = idle_power_w(early, window_s=0.05)
    later = SteadyMeter(watts=90.0, detail='shared fake GPU')   # the same (source, detail): the same sensor
    assert idle_power_w(later, window_s=0.05) == watts
    assert later.reads == 0


def test_concurrent_callers_wait_for_one_measurement():
    meter = SteadyMeter(watts=30.0)
    results, start = [], threading.Barrier(4)

    def call():
        start.wait()
        results.append(idle_power_w(meter, window_s=0.1))
    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 4 and len(set(results)) == 1
    one_window = SteadyMeter(watts=30.0)
    measure_idle_power_w(one_window, window_s=0.1)
    assert meter.reads < 2 * one_window.reads   # one window's reads, not four


def test_a_meter_that_measures_nothing_reads_zero_at_once():
    assert idle_power_w(EstimateMeter(), window_s=10.0) == 0.0


def test_the_early_reading_closes_its_meter(monkeypatch):
    made = []

    def fake_make_meter(kind, *, device=None, **_):
        made.append((kind, device))
        made.append(SteadyMeter(watts=20.0))
        return made[-1]
    monkeypatch.setattr('delen_ros.core.energy.make_meter', fake_make_meter)
    assert read_idle_power_early('nvml', 'auto', window_s=0.03) == pytest.approx(20.0, rel=0.3)
    assert made[0] == ('nvml', 'cuda:0') and made[1].closed   # 'auto' reads CUDA device 0
    read_idle_power_early('auto', 'cuda:1', window_s=0.03)
    assert made[2] == ('auto', 'cuda:1')


def test_a_sensor_that_sees_the_cpu_is_not_read_early(monkeypatch):
    """Jetson rails and RAPL would count torch's import on the CPU as idle power."""
    board = SteadyMeter(watts=15.0)
    board.source = 'jetson'
    monkeypatch.setattr('delen_ros.core.energy.make_meter', lambda kind, *, device=None, **_: board)
    assert read_idle_power_early('auto', 'auto', window_s=0.03) is None
    assert board.reads == 0 and board.closed

