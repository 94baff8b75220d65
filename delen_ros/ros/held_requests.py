"""Requests held back without holding the executor: a ``~/set_bounds`` judged once the apps admitted
just before it have had frames served (``admission_settle_s``; see ``Engine.unmeasured_apps``).

rclpy runs a coroutine callback as a task and, while it is pending, resumes it each time the executor
wakes; a service answers when its coroutine returns. A held request awaits :class:`HeldRequests`'s
next wake, and a ticker timer (alive only while some request is held) wakes the executor every
``tick_s``. Meanwhile the executor serves everything else: other services, the status tick, lifecycle
transitions. Sleeping in the callback would have stopped them all for as long.

The held request's service must be in a callback group of its own: rclpy keeps a callback's group
busy until its coroutine returns, and nothing else in that group runs meanwhile (the ticker included:
in the node's default group a held request stopped the status tick and never woke again).

A service answers through its handle after its coroutine returns, so a service with a request held
must outlive it: :meth:`HeldRequests.release_when_done` destroys such services once no request has
been held for ``linger_s`` (a lifecycle cleanup first ends every wait: :meth:`HeldRequests.cancel`).
The linger is for the reply: it leaves in the service's writer, and a reliable reply that DDS must
send again is lost with the writer.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

__all__ = ['HeldRequests']


class _NextWake:
    """Awaited in an rclpy task: suspends it until the executor resumes it (its next wake)."""

    def __await__(self):
        yield


class HeldRequests:
    """The node's held requests: how many, the ticker that resumes them, what waits for them to end."""

    def __init__(self, node: Any, *, tick_s: float = 0.02, linger_s: float = 0.5):
        self._node, self._tick_s, self._linger_s = node, tick_s, linger_s
        self.waiting = 0
        self._idle_since = -float('inf')   # when the last held request ended (monotonic s)
        self._timer = None
        self._epoch = 0         # a cancel() ends every wait begun before it
        self._when_done: list[Callable[[], None]] = []
        self._group = MutuallyExclusiveCallbackGroup()

    async def until(self, ready: Callable[[], bool], timeout_s: float) -> float:
        """Yield to the executor until ``ready()`` or ``timeout_s`` s (or :meth:`cancel`); returns the
        seconds held."""
        start = time.monotonic()
        if timeout_s <= 0 or ready():
            return 0.0
        epoch = self._epoch
        self.waiting += 1
        if self._timer is None:
            # a group of its own: the held request's service keeps its group busy while held
            self._timer = self._node.create_timer(self._tick_s, self._tick, callback_group=self._group)
        try:
            while time.monotonic() - start < timeout_s and self._epoch == epoch:
                await _NextWake()
                if ready():
                    break
            return time.monotonic() - start
        finally:
            self.waiting -= 1
            if not self.waiting:
                self._idle_since = time.monotonic()

    def cancel(self) -> None:
        """End every wait now (at its next wake): the node is being cleaned up."""
        self._epoch += 1

    def release_when_done(self, release: Callable[[], None]) -> None:
        """Call ``release`` now if no request is held or has been for ``linger_s``, else once none has
        (from the ticker: after the last held request has been answered)."""
        if self.waiting == 0 and time.monotonic() - self._idle_since >= self._linger_s:
            release()
        else:
            self._when_done.append(release)

    def _tick(self) -> None:
        if self.waiting or time.monotonic() - self._idle_since < self._linger_s:
            return
        when_done, self._when_done = self._when_done, []
        for release in when_done:
            release()
        timer, self._timer = self._timer, None
        if timer is not None:
            self._node.destroy_timer(timer)
