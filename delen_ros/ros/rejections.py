"""Throttled, aggregated logging of rejected requests and malformed frames (ROS-free).

A misbehaving client can send thousands of bad requests; the log must stay readable. The first
rejection of a period is logged in full at once; the rest are counted by kind and summarised in one
line when the period ends (:meth:`RejectionLog.summary`, called from the node's status timer)::

    rejected 998 request(s) in the last 10 s: 600 x topic type, 398 x not owner (last: app 'x' ...)
"""
from __future__ import annotations

import collections
import re
import threading
import time
from typing import Callable

__all__ = ['RejectionLog', 'clean_message']

_C_LOCATION = re.compile(r',?\s*at\s+\.?/\S+:\d+\s*')


def clean_message(text: str, *, limit: int = 300) -> str:
    """One line, no C source locations (``..., at /tmp/rcl/src/rcl/node.c:123``), at most ``limit``."""
    text = ' '.join(_C_LOCATION.sub(' ', str(text)).split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


class RejectionLog:
    """Counts rejections by kind; says what to log now and what to summarise at the period's end.

    :param period_s: length of a period.
    :param what: the noun of the summary (``'request(s)'``, ``'frame(s)'``).
    """

    def __init__(self, *, period_s: float = 10.0, what: str = 'request(s)',
                 clock: Callable[[], float] = time.monotonic):
        self.period_s, self.what, self._clock = period_s, what, clock
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._last = ''
        self._start = clock()
        self._logged_first = False
        self.total = 0

    def add(self, kind: str, message: str) -> str | None:
        """Count one; returns a line to log now (the first of a period), else ``None``."""
        message = clean_message(message)
        with self._lock:
            self.total += 1
            if not self._logged_first:
                self._logged_first = True
                return message
            self._counts[kind] += 1
            self._last = message
            return None

    def summary(self) -> str | None:
        """At or after the period's end: one line for what was not logged yet (``None``: nothing), and a
        new period starts."""
        with self._lock:
            now = self._clock()
            elapsed = now - self._start
            if elapsed < self.period_s:
                return None
            counts, last = self._counts, self._last
            self._counts, self._last, self._start, self._logged_first = collections.Counter(), '', now, False
        if not counts:
            return None
        parts = ', '.join(f'{n} x {kind}' for kind, n in counts.most_common())
        return (f'{sum(counts.values())} more {self.what} in the last {elapsed:.0f} s: {parts} '
                f'(last: {last})')
