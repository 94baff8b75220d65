"""Measured energy for estimated results, ROS-free: the scale of a meter's reading over the engine's
estimates, kept by a thread of its own (see :class:`EnergyScaler`).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .thread_names import name_os_thread

__all__ = ['EnergyScaler']

_log = logging.getLogger(__name__)


class EnergyScaler:
    """Scale of measured over estimated energy, from a meter read on its own thread.

    A meter read can take milliseconds (NVML) and the counter only moves every ``period_s``: it is
    never read on the worker's path. Every ``window_s`` the thread reads the meter and sets
    ``scale = (measured - idle_power_w x window) / estimated`` for the energy the worker estimated in
    that window (:meth:`add`); windows without work are skipped. ``scale`` is ``None`` until the
    first window with work has closed.
    """

    def __init__(self, meter: Any, *, window_s: float, idle_power_w: float):
        self.meter = meter
        self.window_s = window_s
        self.idle_power_w = idle_power_w
        self.scale: float | None = None
        self._lock = threading.Lock()
        self._estimated_mj = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, estimate_mj: float) -> None:
        with self._lock:
            self._estimated_mj += estimate_mj

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
            self._estimated_mj = 0.0
        while not self._stop.wait(self.window_s):
            t, e = self._read()
            with self._lock:
                estimated, self._estimated_mj = self._estimated_mj, 0.0
            if e is None or e_prev is None:
                t_prev, e_prev = t, e
                continue
            measured = e - e_prev - self.idle_power_w * (t - t_prev) / 1e6   # W x ms = mJ
            t_prev, e_prev = t, e
            if estimated > 0 and measured >= 0:
                scale = measured / estimated
                self.scale = scale if self.scale is None else 0.5 * (self.scale + scale)
