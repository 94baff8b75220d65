"""The GPU's idle power is read once per process and sensor (a reconfigure looks it up), never twice at
once, and only once this process's CUDA context is up and its work done (an H200 idles at 79 W without
one, 121 W with one)."""
from __future__ import annotations

import itertools
import threading
import time

import pytest

from delen_ros.core.energy import (EnergyMeter, EstimateMeter, idle_power_w, idle_power_with_context_w,
                                   measure_idle_power_w)

_names = itertools.count()


class SteadyMeter(EnergyMeter):
    """A sensor drawing ``watts`` in real time, its counter moving every ``period_s``; counts windows
    measured (a measurement reads the meter many times, a look-up never)."""

    source = 'nvml'   # a GPU's own sensor

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


def test_the_idle_reading_waits_for_the_context_and_its_work():
    """The context comes first (it lifts an H200 from 79 to 121 W), then the window: a reading before it
    would be whatever the GPU sat at."""
    events = []

    class Watched(SteadyMeter):
        def energy_mj(self):
            events.append('read')
            return super().energy_mj()
    meter = Watched(watts=121.0)
    watts = idle_power_with_context_w(meter, 'cuda:1', window_s=0.05, synchronize=lambda d: events.append(d))
    assert watts == pytest.approx(121.0, rel=0.25)
    assert events[0] == 'cuda:1' and events[1:] and set(events[1:]) == {'read'}


def test_no_idle_is_read_off_a_gpu_or_without_a_sensor():
    def no_sync(device):
        raise AssertionError('synchronized a device whose idle is not read')
    cpu_meter = SteadyMeter(watts=15.0)
    assert idle_power_with_context_w(cpu_meter, 'cpu', window_s=0.05, synchronize=no_sync) == 0.0
    assert cpu_meter.reads == 0
    assert idle_power_with_context_w(EstimateMeter(), 'cuda', window_s=10.0, synchronize=no_sync) == 0.0
