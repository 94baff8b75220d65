"""Per-camera counters the node keeps itself (ROS-free): frames received, malformed, and frames the
camera sent that never arrived. Per-app accounting is the engine's ledger
(:meth:`Engine.stats <delen_ros.core.engine.Engine.stats>`), not kept here.

Frames lost before the node (a frame larger than the transport carries, a full keep-last-1 queue
while the node was busy, a lossy link) leave gaps in the camera's ``header.stamp`` sequence: at a
steady camera rate, an interval of ``n`` periods means ``n - 1`` frames missed. :class:`StampGaps`
learns the period from the intervals (an EWMA of the ones that are not gaps) and counts the rest.
"""
from __future__ import annotations

import threading

__all__ = ['StampGaps', 'CameraCounters']


class StampGaps:
    """Frames missed, from gaps in a camera's header stamps (ns).

    :param gap_factor: an interval above ``gap_factor`` x the learnt period is a gap.
    :param warmup: intervals taken as they come before gaps are judged.
    """

    def __init__(self, *, gap_factor: float = 1.5, warmup: int = 5, alpha: float = 0.1):
        self.gap_factor, self.warmup, self.alpha = gap_factor, warmup, alpha
        self.missed = 0
        self._last = 0
        self._period = 0.0
        self._first: list[int] = []   # the first intervals: their median seeds the period

    def add(self, stamp_ns: int) -> int:
        """Observe a frame's stamp; returns the frames missed just before it (0 usually)."""
        last, self._last = self._last, stamp_ns
        if stamp_ns <= 0 or last <= 0 or stamp_ns <= last:   # unset, first, or out of order: no judgement
            return 0
        interval = stamp_ns - last
        if not self._period:
            self._first.append(interval)
            if len(self._first) >= self.warmup:
                self._period = float(sorted(self._first)[len(self._first) // 2])
            return 0
        if interval <= self.gap_factor * self._period:
            self._period += self.alpha * (interval - self._period)
            return 0
        lost = round(interval / self._period) - 1
        if lost <= 0 or lost > 10_000:   # jitter, or a paused camera / clock jump rather than lost frames
            return 0
        self.missed += lost
        return lost


class CameraCounters:
    """Frames received, malformed and missed on one camera topic; totals and per period.

    ``frame()`` is called from the image callback: a few integer operations under a lock.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.frames_total = self.errors_total = 0
        self._frames = self._errors = 0
        self._gaps = StampGaps()

    def frame(self, stamp_ns: int = 0) -> None:
        with self._lock:
            self.frames_total += 1
            self._frames += 1
            self._gaps.add(stamp_ns)

    @property
    def missed_total(self) -> int:
        return self._gaps.missed

    def error(self) -> int:
        """Count a conversion error; returns the total so far."""
        with self._lock:
            self.errors_total += 1
            self._errors += 1
            return self.errors_total

    def take(self) -> tuple[int, int]:
        """``(frames, errors)`` this period, and start a new one."""
        with self._lock:
            out = (self._frames, self._errors)
            self._frames = self._errors = 0
        return out
