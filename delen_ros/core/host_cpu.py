"""The machine's CPU time from ``/proc/stat``: busy, in all, and *stolen* -- time a virtual machine's CPUs were
ready to run but its host ran something else (a noisy neighbour). No ROS, no torch.

Latency bounds of a few ms do not survive a host that takes the CPU away: on H200 VMs the runs of the mixed set
with 0.45-2.8 % of the CPU stolen were its three worst (a 10 ms app at 71-74 % in time), and on this project's
2-core CI VM every run with more than ~1 % stolen missed issue 10's target while every run with less met it
(benchmarks/h200/session40, benchmarks/cpu/e2e_admission_session39). The node reports the share in
``/diagnostics`` (:class:`StolenShare`) so that a user can tell a host's theft from the node's own misses.

The machine's share spreads a stall over every core: on a 16-core H200 VM a round with 0.37 % stolen is 60 ms of
one core's second, enough to make a 10 ms app miss, and the runs with such a round met issue 10's target in 1 of
4 where those with at most 0.12 % met it in 10 of 11 (benchmarks/h200/session41). So the share of the worst core
is read beside it.
"""
from __future__ import annotations

import pathlib
from typing import NamedTuple

__all__ = ['read_jiffies', 'read_core_jiffies', 'Stolen', 'StolenShare']

PROC_STAT = pathlib.Path('/proc/stat')


def _busy_total_stolen(fields: list[str]) -> tuple[float, float, float] | None:
    """One ``cpu`` line's values (after its name) as ``(busy, total, stolen)``; ``None`` if not in its format."""
    try:
        values = [int(v) for v in fields]
    except ValueError:
        return None
    if len(values) < 4:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values)), float(values[7] if len(values) > 7 else 0)


def _read(path: pathlib.Path) -> tuple[tuple[float, float, float] | None, dict[str, tuple[float, float]] | None]:
    """The machine's ``(busy, total, stolen)`` and each core's ``(total, stolen)`` from one read of ``path``."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None, None
    first = lines[0].split() if lines else []
    machine = _busy_total_stolen(first[1:]) if first and first[0] == 'cpu' else None
    cores = {}
    for line in lines[1:]:
        fields = line.split()
        if fields and fields[0].startswith('cpu') and fields[0][3:].isdigit():
            values = _busy_total_stolen(fields[1:])
            if values is not None:
                cores[fields[0]] = values[1:]
    return machine, cores or None


def read_jiffies(path: pathlib.Path = PROC_STAT) -> tuple[float, float, float] | None:
    """``(busy, total, stolen)`` jiffies of the whole machine since boot (stolen is counted in busy), or ``None``
    where ``path`` cannot be read or is not in ``/proc/stat``'s format (not Linux, a container without it)."""
    return _read(path)[0]


def read_core_jiffies(path: pathlib.Path = PROC_STAT) -> dict[str, tuple[float, float]] | None:
    """Each core's ``(total, stolen)`` jiffies since boot, by its line's name (``cpu0``, ...); ``None`` where
    ``path`` cannot be read or lists no core."""
    return _read(path)[1]


class Stolen(NamedTuple):
    """CPU time the host took over an interval: of the whole machine, and of its worst core (``None``: not told).

    The kernel rounds the machine's line to ticks after summing its cores, so over a short interval the
    machine's share can run a tick ahead of every core's (0.5 % against 0 over 1 s on a 2-core VM)."""

    share: float
    worst_core_share: float | None


class StolenShare:
    """The CPU time stolen between one :meth:`take` and the next."""

    def __init__(self, path: pathlib.Path = PROC_STAT):
        self._path = path
        self._last, self._last_cores = _read(path)

    def take(self) -> Stolen | None:
        """Stolen / all CPU time since the last call (or since made), of the machine and of its worst core;
        ``None`` where it cannot be told (no ``/proc/stat``, no time passed)."""
        now, cores = _read(self._path)   # one read: the machine's line and its cores' agree
        last, self._last = self._last, now
        last_cores, self._last_cores = self._last_cores, cores
        if now is None or last is None or now[1] <= last[1]:
            return None
        worst = None
        if cores and last_cores:   # cores that came or went in between (hot-plug) are left out
            shares = [max(0.0, stolen - last_cores[name][1]) / (total - last_cores[name][0])
                      for name, (total, stolen) in cores.items()
                      if name in last_cores and total > last_cores[name][0]]
            worst = max(shares, default=None)
        return Stolen(max(0.0, now[2] - last[2]) / (now[1] - last[1]), worst)
