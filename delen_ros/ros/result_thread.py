"""Results published on a thread of their own, so that the engine's worker goes back to the device.

The worker used to publish each result itself (the ledger's delivery, the message's bytes, the DDS
write): ~60 µs a result, 1.8 ms for a batch of 32 on an H200 host, while the GPU sat idle waiting for
the next batch (``DELEN_TRACE`` of the node at 32 cameras x 120 Hz, session 35: a turn of the worker
took 10.4 ms, the GPU's share of it 3.7 ms). Handed to this thread, the publishing runs while the
worker waits for the device on the next batch, its GIL released.

ROS-free: it calls whatever ``publish`` it is given, in order. The queue is bounded: when the thread
falls behind, the worker waits briefly for room, then publishes itself; a result is never dropped.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

from delen_ros.core.thread_names import name_os_thread

__all__ = ['ResultThread']

_log = logging.getLogger(__name__)


class ResultThread:
    """Calls ``publish(result)`` for each result given to it (``self(result)``), on a thread of its own
    while started, else at once on the caller's.

    :param limit: results queued at most; beyond, the caller waits up to ``wait_s`` for room, then
        publishes the result itself.
    """

    def __init__(self, publish: Callable[[Any], None], *, limit: int = 4096, wait_s: float = 0.05,
                 name: str = 'delen-publish'):
        if limit < 1 or wait_s < 0:
            raise ValueError('limit must be positive and wait_s not negative')
        self._publish, self.limit, self.wait_s, self.name = publish, limit, wait_s, name
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: results the caller published itself, the queue full (the thread behind)
        self.published_by_caller = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Publish what is queued, then stop the thread (idempotent)."""
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._thread = None
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for result in left:   # the thread did not get to them (join timed out): in order, here
            self._publish(result)

    def __call__(self, result: Any) -> None:
        with self._cond:
            if self._thread is not None and len(self._queue) >= self.limit:
                self._cond.wait_for(lambda: len(self._queue) < self.limit or self._thread is None, self.wait_s)
            if self._thread is not None and len(self._queue) < self.limit:
                self._queue.append(result)
                if len(self._queue) == 1:
                    self._cond.notify_all()
                return
        self.published_by_caller += 1
        self._publish(result)

    def pending(self) -> int:
        return len(self._queue)

    def _run(self) -> None:
        name_os_thread()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._cond.notify_all()   # room again for a caller waiting on a full queue
            for result in batch:
                try:
                    self._publish(result)
                except Exception:  # noqa: BLE001 -- one result's failure must not end the others'
                    _log.exception('publishing a result failed')
                # Let go of the GIL between results: the worker, back from waiting for the device,
                # would otherwise wait for it up to a switch interval (5 ms) behind this loop.
                time.sleep(0)
