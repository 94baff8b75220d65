"""Results published by a process of their own (``result_outlet``): their DDS writes outside the node's GIL.

The worker serializes each result itself (:func:`.publishing.result_cdr`), and rclpy's ``publish``
then holds the GIL through the DDS write: 44 against 9 µs a result on a 2-core VM with a subscriber
matched or not, and 1.7-1.8 ms of a 9-10 ms turn of 31 results on an H200 host at saturation, where
the turn is the node's limit (benchmarks/h200/sat_session35). Here the worker queues each result's
bytes (:meth:`ResultOutlet.queue`), hands a turn's results over a pipe in one write
(:meth:`ResultOutlet.flush`, from the engine's ``after_results``), and ``delen_outlet``
(``src/delen_outlet.c``, on rcl) publishes them, each topic through an :class:`OutletPublisher`.

The result topics' publisher is then the outlet's node (``_delen_outlet_<pid>_<n>``, hidden), not the
delen node. Where the program was not built, where it does not start, or with ``result_outlet:=node``,
the node publishes itself, as before. An outlet that dies is started again and every publisher
advertised anew; results queued for the dead one are lost, counted (:attr:`ResultOutlet.lost`) and logged.

Messages on the pipe (node -> outlet): ``multiprocessing.connection``'s framing (a 4-byte big-endian
length), then ``kind`` (one byte), the publisher's id (u32) and the rest, little-endian: ``A`` depth
(u32) and topic, ``W`` nothing, ``P`` the serialized message. The outlet writes one byte on its stdout
once its node is up.
"""
from __future__ import annotations

import collections
import fcntl
import os
import select
import struct
import subprocess
import threading
import time
from typing import Callable

from .native import native_env, native_program

__all__ = ['native_outlet', 'OutletPublisher', 'ResultOutlet']

_HEAD = struct.Struct('>I')       # the framing's length
_KIND = struct.Struct('<cI')      # kind, publisher id
_DEPTH = struct.Struct('<I')
_PIPE_BYTES = 1 << 20             # asked of the kernel: a turn's results never wait for the outlet
_FLUSH_BYTES = 1 << 16            # a longer queue is written at once
_START_S = 5.0                    # an outlet not up by then did not start: the node publishes itself
_RESTARTS_PER_MINUTE = 5
_F_SETPIPE_SZ = 1031


def native_outlet() -> str | None:
    """The built C outlet (``<prefix>/lib/delen_ros/delen_outlet``)."""
    return native_program('delen_outlet')


class OutletPublisher:
    """A result topic's publisher in the outlet: ``publish(serialized bytes)``, as the node's own
    result publishers; like a lifecycle publisher it publishes only while activated."""

    __slots__ = ('_outlet', 'id', 'topic', 'depth', 'active')

    def __init__(self, outlet: 'ResultOutlet', pub_id: int, topic: str, depth: int):
        self._outlet, self.id, self.topic, self.depth, self.active = outlet, pub_id, topic, depth, False

    def publish(self, data: bytes) -> None:
        if self.active:
            self._outlet.queue(self.id, data)

    def withdraw(self) -> None:
        """Destroy it in the outlet; it publishes nothing more."""
        self._outlet.withdraw(self)

    def on_activate(self, state=None) -> None:
        self.active = True

    def on_deactivate(self, state=None) -> None:
        self.active = False


class ResultOutlet:
    """One outlet process and the publishers advertised in it (see the module docstring).

    :param log: ``(level, text)`` with level ``'info'``, ``'warning'`` or ``'error'``.
    :param program: the outlet's executable (default: :func:`native_outlet`).
    :raises FileNotFoundError: no outlet is built here.
    """

    def __init__(self, *, log: Callable[[str, str], None], program: str | None = None):
        self._program = program or native_outlet()
        if self._program is None:
            raise FileNotFoundError('delen_outlet is not built here')
        self._log = log
        self._env = native_env()
        self._lock = threading.Lock()
        self._publishers: dict[int, OutletPublisher] = {}
        self._next_id = 0
        self._queue = bytearray()
        self._queued = 0
        self._spawned = 0
        self._restarted: collections.deque = collections.deque(maxlen=_RESTARTS_PER_MINUTE)
        self.lost = 0          # results queued for an outlet that died, or written after it was given up
        self.restarts = 0
        self.given_up = False
        self._popen: subprocess.Popen | None = None
        self._fd = -1
        self._ready_fd = -1
        self.node_name = ''
        self._spawn()

    # --- the process -------------------------------------------------------------------------------------
    def _spawn(self) -> None:
        self._spawned += 1
        self.node_name = f'_delen_outlet_{os.getpid()}_{self._spawned}'
        pipe_r, pipe_w = os.pipe()
        ready_r, ready_w = os.pipe()
        try:
            fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:   # above /proc/sys/fs/pipe-max-size: the default 64 KiB holds ~300 results
            pass
        try:
            # A session of its own, as the receivers: a terminal's Ctrl-C must not end it before the node.
            # It ends when the node closes the pipe, or dies.
            self._popen = subprocess.Popen([self._program, '--name', self.node_name], stdin=pipe_r, stdout=ready_w,
                                           env=self._env, start_new_session=True)
        finally:
            os.close(pipe_r)
            os.close(ready_w)
        self._fd, self._ready_fd = pipe_w, ready_r

    def ready(self, timeout_s: float = _START_S) -> bool:
        """Wait until the outlet's node is up (its one byte on stdout); false if it ended or is not up by then."""
        if self._ready_fd < 0:
            return self._popen is not None and self._popen.poll() is None
        readable, _, _ = select.select([self._ready_fd], [], [], timeout_s)
        up = bool(readable) and os.read(self._ready_fd, 1) == b'R'
        os.close(self._ready_fd)
        self._ready_fd = -1
        return up

    def _write(self, data: bytes | bytearray) -> None:
        """Everything in ``data`` to the pipe; an outlet that died is started again (or given up on)."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BrokenPipeError:
                self._restart()
                return
            except InterruptedError:
                continue
            view = view[n:]

    def _restart(self) -> None:
        """Under the lock: the outlet died. Start another and advertise every publisher there again."""
        code = self._popen.poll() if self._popen is not None else None
        os.close(self._fd)
        self._fd = -1
        if self._ready_fd >= 0:
            os.close(self._ready_fd)
            self._ready_fd = -1
        now = time.monotonic()
        if len(self._restarted) == self._restarted.maxlen and now - self._restarted[0] < 60.0:
            self.given_up = True
            self._log('error', f'outlet: ended (exit {code}) {len(self._restarted) + 1} times in a minute: not '
                               f'started again; results are not published')
            return
        self._restarted.append(now)
        self.restarts += 1
        self._log('error', f'outlet: ended (exit {code}); starting another, {len(self._publishers)} topic(s) advertised '
                           'anew')
        self._spawn()
        for pub in self._publishers.values():
            self._write(self._advertise_message(pub))

    # --- publishers --------------------------------------------------------------------------------------
    @staticmethod
    def _message(kind: bytes, pub_id: int, body: bytes = b'') -> bytes:
        return _HEAD.pack(_KIND.size + len(body)) + _KIND.pack(kind, pub_id) + body

    def _advertise_message(self, pub: OutletPublisher) -> bytes:
        return self._message(b'A', pub.id, _DEPTH.pack(pub.depth) + pub.topic.encode())

    def advertise(self, topic: str, depth: int) -> OutletPublisher:
        """A publisher of ``topic`` (an absolute name; reliable, volatile, keep-last ``depth``), inactive."""
        with self._lock:
            self._next_id += 1
            pub = self._publishers[self._next_id] = OutletPublisher(self, self._next_id, topic, depth)
            self._flush_locked()   # what was queued goes first: the order on the pipe is the order of calls
            if not self.given_up:
                self._write(self._advertise_message(pub))
            return pub

    def withdraw(self, pub: OutletPublisher) -> None:
        pub.active = False
        with self._lock:
            if self._publishers.pop(pub.id, None) is not None and not self.given_up:
                self._flush_locked()
                self._write(self._message(b'W', pub.id))

    # --- results -----------------------------------------------------------------------------------------
    def queue(self, pub_id: int, data: bytes) -> None:
        """One serialized result for publisher ``pub_id``, written at the next :meth:`flush`."""
        with self._lock:
            self._queue += self._message(b'P', pub_id, data)
            self._queued += 1
            if len(self._queue) >= _FLUSH_BYTES:
                self._flush_locked()

    def flush(self) -> None:
        """Hand the queued results to the outlet (one write)."""
        if self._queued:
            with self._lock:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._queued:
            return
        queued, data = self._queued, bytes(self._queue)
        self._queue.clear()
        self._queued = 0
        if self.given_up:
            self.lost += queued
            return
        restarts = self.restarts
        self._write(data)
        if self.restarts != restarts or self.given_up:   # written to an outlet that had died
            self.lost += queued

    def close(self, timeout: float = 3.0) -> None:
        """Flush, then end the outlet (closing its pipe ends it)."""
        with self._lock:
            if not self.given_up and self._fd >= 0:
                self._flush_locked()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._ready_fd >= 0:
                os.close(self._ready_fd)
                self._ready_fd = -1
            self._publishers.clear()
        if self._popen is not None:
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
