"""Measured energy for estimated results, ROS-free: the scale of a meter's reading over the engine's
estimates, kept by a thread of its own (see :class:`EnergyScaler`).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .thread_names import name_os_thread

__all__ = ['EnergyScaler', 'attribution']

_log = logging.getLogger(__name__)


class EnergyScaler:
    """Measured energy attributed to results, from a meter read on its own thread.

    A meter read can take milliseconds (NVML) and the counter only moves every ``period_s``: it is
    never read on the worker's path. Every ``window_s`` the thread reads the meter, takes
    ``measured = energy - idle_power_w x window``, and splits it over the window's results
    (:func:`attribution`, from what the worker estimated, :meth:`add`, and the results it finished,
    :meth:`count_result`); windows without work are skipped. A result's energy is then
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
            return time.perf_counter_ns(), self.meter.energy_mj()
        except Exception:  # noqa: BLE001 -- a flaky sensor must not take serving down
            _log.exception('energy meter read failed')
            return time.perf_counter_ns(), None

    def _run(self) -> None:
        name_os_thread()
        t_prev, e_prev = self._read()
        with self._lock:
            self._estimated_mj, self._results = 0.0, 0
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
            if estimated > 0 and measured >= 0 and results > 0:
                now = attribution(measured, estimated, results)
                last = self.attribution
                self.attribution = now if last is None else (0.5 * (last[0] + now[0]), 0.5 * (last[1] + now[1]))


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

