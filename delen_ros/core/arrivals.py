"""What the engine measures of the frames coming in, ROS-free: their age on arrival at its tail
(:class:`FrameAge`, what admission adds to compute for a bound end to end), each app's frame rate
(:class:`Rate`) and smoothed durations (:class:`Mean`: the worker's wake-up).
"""
from __future__ import annotations

import collections
import math
from typing import Sequence

__all__ = ['Mean', 'Sizes', 'Tail', 'FrameAge', 'Rate', 'NextFrame', 'SETTLE_NS', 'MAX_SIZES_SEEN', 'percentile',
           'percentiles']


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` by linear interpolation (numpy's default method), NaN
    for none. ``numpy.percentile`` costs ~0.35 ms a call in numpy 2 whatever the size; the node's
    status tick made 16 of them a second per app while the worker waited for the GIL (8 apps on a
    2-core VM: every second, answers 10-18 ms late). A sort of a few hundred floats is ~20 us.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([5.0], 99), percentile([0.0, 10.0], 99)
    (2.5, 5.0, 9.9)
    """
    return percentiles(values, (q,))[0]


def percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """:func:`percentile` at each of ``qs``, from one sort.

    >>> percentiles([4.0, 1.0, 3.0, 2.0], (50, 99))
    [2.5, 3.97]
    """
    n = len(values)
    if n == 0:
        return [math.nan] * len(qs)
    ordered = sorted(values)
    out = []
    for q in qs:
        position = (n - 1) * q / 100.0
        low = int(position)
        high = min(low + 1, n - 1)
        out.append(float(ordered[low] + (ordered[high] - ordered[low]) * (position - low)))
    return out


class Mean:
    """EWMAs of a value (ms) and of its absolute deviation, as TCP's retransmission timer (Jacobson
    and Karels); ``None`` until the first sample; a lone stall folded in as at most ``outlier`` x the mean."""

    __slots__ = ('mean', 'dev', 'alpha', 'beta', 'outlier')

    def __init__(self, alpha: float = 0.125, beta: float = 0.25, outlier: float = 4.0):
        self.mean: float | None = None
        self.dev = 0.0
        self.alpha, self.beta, self.outlier = alpha, beta, outlier

    def add(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            return
        if self.mean is None:
            self.mean, self.dev = value, value / 4
            return
        value = min(value, self.outlier * max(self.mean, 1e-3))
        self.dev += self.beta * (abs(value - self.mean) - self.dev)
        self.mean += self.alpha * (value - self.mean)

    def value(self, margin: float) -> float:
        """Mean + ``margin`` deviations; 0 before any sample."""
        return 0.0 if self.mean is None else self.mean + margin * self.dev


SETTLE_NS = 2_000_000_000   # no frame-age samples this long after a new frame size, app or app's first frame
MAX_SIZES_SEEN = 64        # frame sizes remembered (bounded, whatever cameras send)


class Sizes:
    """Frame sizes seen so far (at most ``MAX_SIZES_SEEN``, then forgotten all at once)."""

    __slots__ = ('seen',)

    def __init__(self):
        self.seen: set[tuple[int, ...]] = set()

    def add_new(self, sizes: set[tuple[int, ...]]) -> bool:
        """Remember ``sizes``; true if any was new."""
        if sizes <= self.seen:
            return False
        if len(self.seen) >= MAX_SIZES_SEEN:
            self.seen.clear()
        self.seen |= sizes
        return True


class Tail:
    """The 99th percentile of the last ``window`` values (ms) of the last ``horizon_ns``; ``None``
    without any. A window's quantile, not mean + deviations: one stall (a start-up, a page fault)
    must not make admission refuse apps for the next seconds, while a sustained tail shows at once;
    the horizon forgets a stall in seconds where few frames come."""

    __slots__ = ('values', 'horizon_ns')

    def __init__(self, window: int = 512, horizon_ns: int = 5_000_000_000):
        self.values: collections.deque[tuple[int, float]] = collections.deque(maxlen=window)
        self.horizon_ns = horizon_ns

    def add(self, value: float, now_ns: int) -> None:
        if math.isfinite(value) and value >= 0:
            self.values.append((now_ns, value))

    def p99(self, now_ns: int) -> float | None:
        # tuple() copies in one C call, which no other thread can interleave with: the engine reads
        # the tail outside its lock (admission checks) while submit() appends to it
        recent = [v for t, v in tuple(self.values) if now_ns - t <= self.horizon_ns]
        return percentile(recent, 99) if recent else None


class FrameAge:
    """The frames' age when the engine gets them (from their stamp: transport to the node and
    conversion), at its tail (:class:`Tail`), ``prior_ms`` while none is measured.

    Transients of the node's own making are not sampled, for ``SETTLE_NS``: the first frames of a
    new frame size pay one-time costs (pinned buffers, lazily loaded kernels), a new app's
    subscription holds up every camera's frames a moment, and its own first frames arrive old
    (H200: 30-90 ms, whatever the load). Sampled, one registration refused the next apps for seconds.
    The hold-up comes when the subscription matches, about when the app's first frame arrives, not
    when it registered: both start the pause (H200, 16 apps registered 0.5 s apart: with the pause
    from registration alone, ages of 10-37 ms on arrival refused 33 ms apps that then met their bound;
    with a 0.3 s pause, the first app's old frames, 45-80 ms, still got in and refused 15 of 16).
    The pause is 2 s: with 1 s, in 3 of 6 H200 runs every camera's frames arrived 20-45 ms old for a
    moment 1-1.5 s after the last app registered, and that tail refused the next requests. A request
    refused pauses it too: its evaluation runs on the node's executor thread, and in one H200 run
    (session 13) frames 16-22 ms old, taken after four refusals in a row, had the next three
    requests refused as infeasible alone, where the frames' measured age was 0.02 ms p50.
    """

    __slots__ = ('tail', 'prior_ms', '_sizes', '_settle_until_ns')

    def __init__(self, prior_ms: float):
        self.tail = Tail()
        self.prior_ms = prior_ms
        self._sizes = Sizes()
        self._settle_until_ns = 0

    def pause(self, now_ns: int) -> None:
        """Take no samples for ``SETTLE_NS`` from ``now_ns`` (a request, an app's first frame)."""
        self._settle_until_ns = max(self._settle_until_ns, now_ns + SETTLE_NS)

    def add(self, size: tuple[int, ...], age_ms: float, now_ns: int, *, app_settled: bool) -> None:
        """One frame's age; ``app_settled``: some app of the frame is past its first frames."""
        if self._sizes.add_new({size}):
            self._settle_until_ns = now_ns + SETTLE_NS
        if app_settled and now_ns >= self._settle_until_ns:
            self.tail.add(age_ms, now_ns)

    def ever_sampled(self) -> bool:
        """Whether any age was sampled since the start (the tail's horizon may have forgotten them)."""
        return bool(self.tail.values)

    def p99_ms(self, now_ns: int) -> float:
        measured = self.tail.p99(now_ns)
        return self.prior_ms if measured is None else measured


class Rate:
    """Arrival rate from an EWMA of inter-arrival times; decays when frames stop coming."""

    __slots__ = ('last_ns', 'interval_ns')

    def __init__(self):
        self.last_ns: int | None = None
        self.interval_ns: float | None = None

    def add(self, arrival_ns: int) -> None:
        if self.last_ns is not None and arrival_ns > self.last_ns:
            gap = arrival_ns - self.last_ns
            self.interval_ns = gap if self.interval_ns is None else self.interval_ns + 0.1 * (gap - self.interval_ns)
        if self.last_ns is None or arrival_ns > self.last_ns:
            self.last_ns = arrival_ns

    def hz(self, now_ns: int) -> float | None:
        if self.interval_ns is None or self.last_ns is None:
            return None
        return 1e9 / max(self.interval_ns, now_ns - self.last_ns, 1.0)


class NextFrame:
    """When a periodic camera's next frame should reach the engine, and the stamp it will carry.

    Fed each frame's submission and arrival (stamp) times; keeps the last of each, an EWMA of the
    interval between submissions and of its absolute deviation (the jitter). :meth:`predict` answers
    only for a camera regular enough to plan around: a few intervals seen, jitter under a quarter of
    the interval, and the next frame not overdue by more than three jitters (a camera that stopped).

    >>> nf = NextFrame()
    >>> for k in range(6):
    ...     nf.add(1_000 + k * 100_000_000, k * 100_000_000)
    >>> nf.predict(550_000_000)
    (600001000, 600000000, 0)
    """

    __slots__ = ('last_submit_ns', 'last_arrival_ns', 'interval_ns', 'jitter_ns', 'seen')

    #: intervals needed before a prediction
    MIN_SEEN = 4

    def __init__(self):
        self.last_submit_ns: int | None = None
        self.last_arrival_ns = 0
        self.interval_ns = 0.0
        self.jitter_ns = 0.0
        self.seen = 0

    def add(self, submit_ns: int, arrival_ns: int) -> None:
        if self.last_submit_ns is not None and submit_ns > self.last_submit_ns:
            gap = submit_ns - self.last_submit_ns
            if self.seen == 0:
                self.interval_ns = float(gap)
            else:
                self.jitter_ns += 0.25 * (abs(gap - self.interval_ns) - self.jitter_ns)
                self.interval_ns += 0.125 * (gap - self.interval_ns)
            self.seen += 1
        if self.last_submit_ns is None or submit_ns > self.last_submit_ns:
            self.last_submit_ns, self.last_arrival_ns = submit_ns, arrival_ns

    def predict(self, now_ns: int) -> tuple[int, int, int] | None:
        """``(submission, stamp, jitter)`` of the next frame, ns, or ``None`` (see the class)."""
        if self.last_submit_ns is None or self.seen < self.MIN_SEEN or self.jitter_ns > 0.25 * self.interval_ns:
            return None
        ahead = max(1, math.ceil((now_ns - self.last_submit_ns - 3 * self.jitter_ns) / self.interval_ns))
        if ahead > 1:   # missed frames: the camera is not keeping its period now
            return None
        step = int(self.interval_ns)
        return self.last_submit_ns + step, self.last_arrival_ns + step, int(self.jitter_ns)
