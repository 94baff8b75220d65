"""One status period of the node, spread over several ticks.

The node's ``~/status`` (one message per app) and ``/diagnostics`` are pure Python under the GIL.
Reported in one tick, at 32 apps on an H200 host it took 4-6 ms held whole and 13-19 ms yielding
between apps, and either way every camera's latency rose to 20-32 ms once a second (p50 8-10 ms;
benchmarks/h200/e2e_session10): the worker, back from each CUDA wait, waits for the GIL behind it.
So a period is ``parts`` ticks: tick ``k`` reports the camera topics at places ``k, k + parts, ...``
of the sorted list and the apps on them; the last tick of the round also publishes ``/diagnostics``
from what the round gathered. Each app is still reported once a period, each camera's counters read
once, and a tick holds the GIL for about ``1 / parts`` of the whole.

``/diagnostics`` gets a tick of its own after the reports (``diagnostics_apart``): on an H200 host the
closing tick that also built it took 1.0-1.8 ms against 0.5-0.7 ms for the others, and kept apps' late
frames gathered at that phase of the second (benchmarks/h200/recheck_stall_session30, trace RA5).

The ticks come from a thread of their own (:class:`Ticker`), not from an rclpy timer: each wake-up of
rclpy's executor costs ~0.9 ms of Python under the GIL besides the tick's own ~0.3 ms (2-core VM, 16 apps,
session 31): it builds its wait set afresh over ~100 entities, most of them the QoS event handlers of the
result publishers. Under load nothing else wakes the executor (frames come
through the receiver processes, results go out from the engine's threads), so its timer was most of its GIL.

``DELEN_STATUS_PARTS`` (default 8) sets ``parts``; 1 is the whole tick of before (an A/B switch).
``DELEN_DIAGNOSTICS_APART=0`` publishes ``/diagnostics`` in the last report tick, as before session 31.
``DELEN_STATUS_ON_EXECUTOR=1`` ticks from an rclpy timer on the executor, as before session 31.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

from delen_ros.core.thread_names import name_os_thread

__all__ = ['DIAGNOSTICS_APART', 'STATUS_ON_EXECUTOR', 'STATUS_PARTS', 'StatusRound', 'Ticker']


def _status_parts(text: str, default: int = 8) -> int:
    """``DELEN_STATUS_PARTS`` (an A/B, 1 = the period whole): a count >= 1, else the default, said once."""
    try:
        return max(1, int(text))
    except ValueError:
        logging.getLogger(__name__).warning('DELEN_STATUS_PARTS=%r is not a whole number: %d parts', text[:32], default)
        return default


STATUS_PARTS = _status_parts(os.environ.get('DELEN_STATUS_PARTS', '8'))
DIAGNOSTICS_APART = os.environ.get('DELEN_DIAGNOSTICS_APART', '1') != '0'
STATUS_ON_EXECUTOR = os.environ.get('DELEN_STATUS_ON_EXECUTOR') == '1'


class Ticker:
    """Calls ``tick()`` every ``period_s`` on a daemon thread of its own, from :meth:`start` until
    :meth:`stop`. A tick that overruns skips the ticks it covered rather than running them back to
    back; an exception from ``tick`` is the caller's to catch (it would end the thread)."""

    def __init__(self, tick: Callable[[], None], period_s: float, *, name: str):
        if not period_s > 0:
            raise ValueError(f'period_s must be > 0, got {period_s!r}')
        self._tick, self.period_s, self.name = tick, period_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f'{self.name} already started')
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop ticking; returns once a tick in progress has ended (or after ``timeout_s``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        name_os_thread()
        due = time.monotonic() + self.period_s
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self._tick()
            due += self.period_s
            now = time.monotonic()
            if due < now:   # overran: the next tick a period from now
                due = now + self.period_s


class StatusRound:
    """Which topics this tick reports, and what the round has gathered for ``/diagnostics``.

    :param parts: ticks that report the topics, per status period.
    :param now_ns: the round's start (monotonic ns).
    :param diagnostics_apart: one more tick, after those, that only publishes ``/diagnostics``.
    """

    def __init__(self, parts: int, now_ns: int, diagnostics_apart: bool = False):
        if parts < 1:
            raise ValueError(f'parts must be >= 1, got {parts!r}')
        self.parts = parts
        self.ticks = parts + 1 if diagnostics_apart else parts   # per round: a tick every status period / ticks
        self.part = 0                        # the tick of the round now due
        self.cameras: dict[str, Any] = {}    # topic -> its report, this round
        self.stats: dict[str, Any] = {}      # app id -> its period's stats, this round
        self.round_start_ns = now_ns
        self.longest_tick_ms = 0.0           # of the last whole round (for /diagnostics)
        self._longest_now_ms = 0.0
        self._reported_ns: dict[str, int] = {}

    def topics(self, topics: Iterable[str]) -> list[str]:
        """This tick's share of ``topics``: every ``parts``-th of the sorted list, from ``part``
        (none in the tick of ``/diagnostics`` alone)."""
        if self.part >= self.parts:
            return []
        return sorted(set(topics))[self.part::self.parts]

    @property
    def closing(self) -> bool:
        """The round's last tick: it publishes ``/diagnostics``."""
        return self.part == self.ticks - 1

    def period_s(self, topic: str, now_ns: int) -> float:
        """Seconds since ``topic`` was last reported (since the round began, the first time)."""
        last = self._reported_ns.get(topic, self.round_start_ns)
        self._reported_ns[topic] = now_ns
        return max(1e-3, (now_ns - last) / 1e9)

    def round_s(self, now_ns: int) -> float:
        return max(1e-3, (now_ns - self.round_start_ns) / 1e9)

    def done(self, tick_ms: float, now_ns: int) -> None:
        """The tick is over (it took ``tick_ms``): on to the next; after the last, a new round."""
        self._longest_now_ms = max(self._longest_now_ms, tick_ms)
        self.part += 1
        if self.part == self.ticks:
            self.part, self.cameras, self.stats = 0, {}, {}
            self.longest_tick_ms, self._longest_now_ms = self._longest_now_ms, 0.0
            self.round_start_ns = now_ns

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the report times of topics not in ``keep`` (bounded by the topics in use)."""
        keep = set(keep)
        for topic in [t for t in self._reported_ns if t not in keep]:
            del self._reported_ns[topic]
