"""Measured energy for estimated results, ROS-free: the scale of a meter's reading over the engine's
estimates, kept by a thread of its own (see :class:`EnergyScaler`).
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Any

from .flight_recorder import RECORDER
from .thread_names import name_os_thread

__all__ = ['EnergyScaler', 'RecentWindows', 'attribution', 'HORIZON_S']

_log = logging.getLogger(__name__)


class EnergyScaler:
    """Measured energy attributed to results, from a meter read on its own thread.

    A meter read can take milliseconds (NVML) and the counter only moves every ``period_s``: it is
    never read on the worker's path. Every ``window_s`` the thread reads the meter and takes
    ``measured = energy - idle_power_w x window``. It sums the windows of the last :data:`HORIZON_S`
    (:class:`RecentWindows`), then splits that over their results (:func:`attribution`), from what the
    worker estimated (:meth:`add`) and the results it finished (:meth:`count_result`). A result's energy is then
    ``estimate x scale + per_result_mj`` (:attr:`attribution`, ``None`` until the first window with
    work has closed).
    """

    def __init__(self, meter: Any, *, window_s: float, idle_power_w: float):
        self.meter = meter
        self.window_s = window_s
        self.idle_power_w = idle_power_w
        self.attribution: tuple[float, float] | None = None   # (scale, per_result_mj), replaced whole
        self._lock = threading.Lock()
        self._estimated_mj = 0.0
        self._results = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def scale(self) -> float | None:
        """The steps' share of the measured energy over their estimate (worker statistics)."""
        return None if self.attribution is None else self.attribution[0]

    def add(self, estimate_mj: float) -> None:
        """Energy the profile gives the steps just run (all their frames)."""
        with self._lock:
            self._estimated_mj += estimate_mj

    def count_result(self) -> None:
        """One result finished (its share of the per-result remainder)."""
        with self._lock:
            self._results += 1

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name='delen-energy', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _read(self) -> tuple[int, float | None]:
        try:
            t0 = time.perf_counter_ns()
            energy = self.meter.energy_mj()
            if RECORDER is not None:
                RECORDER.add('meter', t0, time.perf_counter_ns())
            return t0, energy
        except Exception:  # noqa: BLE001 -- a flaky sensor must not take serving down
            _log.exception('energy meter read failed')
            return time.perf_counter_ns(), None

    def _run(self) -> None:
        name_os_thread()
        t_prev, e_prev = self._read()
        with self._lock:
            self._estimated_mj, self._results = 0.0, 0
        recent = RecentWindows(max(1, math.ceil(HORIZON_S / self.window_s)))
        while not self._stop.wait(self.window_s):
            t, e = self._read()
            with self._lock:
                estimated, self._estimated_mj = self._estimated_mj, 0.0
                results, self._results = self._results, 0
            if e is None or e_prev is None:
                t_prev, e_prev = t, e
                continue
            measured = e - e_prev - self.idle_power_w * (t - t_prev) / 1e6   # W x ms = mJ
            t_prev, e_prev = t, e
            # every window, the idle ones too: the sum over consecutive windows is the meter's own difference
            self.attribution = recent.add(measured, estimated, results) or self.attribution


#: how far back the measured energy is summed before it is split: a meter's counter moves in steps
#: (NVML: ~12 J at an H200's idle), so one window above idle can read +-12 J where the work drew 1 J
HORIZON_S = 10.0


class RecentWindows:
    """The last ``count`` windows, summed, then split (:func:`attribution`).

    Every window counts, one without work or read below idle too: its reading is the meter's step
    falling the other way, and only the sum over consecutive windows is the meter's own difference.
    Windows read one at a time, the negative and the idle ones skipped, charged light loads two to
    three times what the meter saw over the run (an H200, three cameras, session 24).
    """

    def __init__(self, count: int):
        self._windows: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=count)

    def add(self, measured_mj: float, estimated_mj: float, results: int) -> tuple[float, float] | None:
        """Add a window; the attribution over the recent ones (``None`` until they hold a result)."""
        self._windows.append((measured_mj, estimated_mj, results))
        measured = sum(w[0] for w in self._windows)
        estimated = sum(w[1] for w in self._windows)
        count = sum(w[2] for w in self._windows)
        if count == 0 or estimated <= 0:
            return None
        return attribution(max(0.0, measured), estimated, count)


def attribution(measured_mj: float, estimated_mj: float, results: int) -> tuple[float, float]:
    """``(scale, per_result_mj)`` splitting ``measured_mj`` over a window's ``results``, whose steps the
    profile put at ``estimated_mj`` in all: a result gets ``its estimate x scale + per_result_mj``.

    The steps keep their profiled energy (scaled down only when the meter saw less), and what the meter
    saw beyond it is split evenly between the results: uploads, preprocessing and launches cost a frame
    the same whatever exit it stops at. Scaling every estimate by ``measured / estimated`` instead charged
    an early-exit policy's results more than full-depth ones at light load on an H200, where that
    per-frame work was most of the energy above idle (97 against 40 mJ, session 24).

    >>> attribution(300.0, 100.0, 4)
    (1.0, 50.0)
    >>> attribution(50.0, 100.0, 4)
    (0.5, 0.0)
    """
    if measured_mj >= estimated_mj:
        return 1.0, (measured_mj - estimated_mj) / results
    return measured_mj / estimated_mj, 0.0

