"""The machine's CPU time from ``/proc/stat``: busy, in all, and *stolen* -- time a virtual machine's CPUs were
ready to run but its host ran something else (a noisy neighbour). No ROS, no torch.

Latency bounds of a few ms do not survive a host that takes the CPU away: on H200 VMs the runs of the mixed set
with 0.45-2.8 % of the CPU stolen were its three worst (a 10 ms app at 71-74 % in time), and on this project's
2-core CI VM every run with more than ~1 % stolen missed issue 10's target while every run with less met it
(benchmarks/h200/session40, benchmarks/cpu/e2e_admission_session39). The node reports the share in
``/diagnostics`` (:class:`StolenShare`) so that a user can tell a host's theft from the node's own misses.
"""
from __future__ import annotations

import pathlib

__all__ = ['read_jiffies', 'StolenShare']

PROC_STAT = pathlib.Path('/proc/stat')


def read_jiffies(path: pathlib.Path = PROC_STAT) -> tuple[float, float, float] | None:
    """``(busy, total, stolen)`` jiffies of the whole machine since boot (stolen is counted in busy), or ``None``
    where ``path`` cannot be read or is not in ``/proc/stat``'s format (not Linux, a container without it)."""
    try:
        first = path.read_text().splitlines()[0].split()
        if first[0] != 'cpu':
            return None
        values = [int(v) for v in first[1:]]
    except (OSError, IndexError, ValueError):
        return None
    if len(values) < 4:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values)), float(values[7] if len(values) > 7 else 0)


class StolenShare:
    """The share of the machine's CPU time stolen between one :meth:`take` and the next."""

    def __init__(self, path: pathlib.Path = PROC_STAT):
        self._path = path
        self._last = read_jiffies(path)

    def take(self) -> float | None:
        """Stolen / all CPU time since the last call (or since made); ``None`` where it cannot be told (no
        ``/proc/stat``, no time passed)."""
        now = read_jiffies(self._path)
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return max(0.0, now[2] - last[2]) / (now[1] - last[1])
