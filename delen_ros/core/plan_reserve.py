"""How late the engine's plans come true, and the reserve that latency plans keep for it.

The policy runs a frame as deep as its latency bound allows on predicted step times (the corrector's
mean plus a margin of deviations, then the decision -> delivery tail). Those cover jitter, not
stalls: while another thread of the node holds the GIL (a status tick, an admission re-check, the
frame reader) the worker, back from a device wait, can lose up to the interpreter's 5 ms switch
interval. An H200 running 10 ms apps beside accuracy cascades at 16 cameras (session 25,
``benchmarks/h200/plan_reserve_session25``) lost 1-5 % of a kept app's frames that way, each planned
to the bound and a few milliseconds late.

So every delivered result's *plan error* is kept: delivery time minus the finish predicted when its
last run was launched (a positive error is a plan that came true late; a cascade's wait between two
runs is the scheduler's order, not an error). Latency plans then keep the
error's :data:`QUANTILE` over the last :data:`WINDOW` results of the last :data:`HORIZON_S` seconds free
(:meth:`PlanReserve.reserve_ms`):
a stall that hits one frame in a hundred makes plans stop early by about that stall, for every app,
until it no longer shows in the window. The errors are measured against the plans without the
reserve, so the reserve does not feed back into what it measures.
"""
from __future__ import annotations

import collections
import math

import numpy as np

__all__ = ['QUANTILE', 'WINDOW', 'PlanReserve']

#: the plan error's quantile kept free: issue 10 asks for >= 99 % of frames within bound
QUANTILE = 0.995
#: the plan errors it is taken over (the newest): ~4 s of 16 cameras at 30 Hz
WINDOW = 2000
#: and none older than this, s: at 3 cameras x 15 Hz the window would reach back 44 s, to start-up
HORIZON_S = 10.0
#: no reserve until this many plans have been measured: below ~200 the quantile is about the
#: largest error seen, conservative while it lasts
MIN_SAMPLES = 50
#: the quantile is recomputed after this many new errors (amortised: ~1 us a result)
EVERY = 25


class PlanReserve:
    """The :data:`QUANTILE` of the last ``window`` plan errors, ms, and 0 where it is negative.

    Not thread-safe by itself: the engine's worker feeds it and reads it.
    """

    def __init__(self, *, quantile: float = QUANTILE, window: int = WINDOW, horizon_s: float = HORIZON_S,
                 min_samples: int = MIN_SAMPLES, every: int = EVERY, enabled: bool = True):
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f'quantile must be in [0.5, 1), got {quantile!r}')
        if window < 1 or min_samples < 1 or every < 1:
            raise ValueError('window, min_samples and every must be >= 1')
        self.quantile = quantile
        self.min_samples = min(min_samples, window)
        self.every = every
        self.enabled = enabled
        self._horizon_ns = int(horizon_s * 1e9)
        self._errors: collections.deque[tuple[int, float]] = collections.deque(maxlen=window)   # (ns, ms)
        self._new = 0
        self._reserve_ms = 0.0

    def add(self, error_ms: float, now_ns: int) -> None:
        """One delivered result's plan error (delivery - the predicted finish, ms), delivered at
        ``now_ns`` (a monotonic clock's nanoseconds)."""
        if not math.isfinite(error_ms):
            return
        errors = self._errors
        errors.append((now_ns, error_ms))
        while errors[0][0] < now_ns - self._horizon_ns:
            errors.popleft()
        self._new += 1
        if self._new >= self.every:
            self._new = 0
            self._reserve_ms = 0.0 if len(errors) < self.min_samples else max(
                0.0, float(np.quantile(np.fromiter((e for _, e in errors), float, len(errors)), self.quantile)))

    def reserve_ms(self) -> float:
        """What latency plans keep free, ms (0 when disabled or not measured yet)."""
        return self._reserve_ms if self.enabled else 0.0

    @property
    def samples(self) -> int:
        return len(self._errors)
