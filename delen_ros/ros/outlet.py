"""Results published by a process of their own (``result_outlet``): their DDS writes outside the node's GIL.

The worker serializes each result itself (:func:`.publishing.result_cdr`), and rclpy's ``publish``
then holds the GIL through the DDS write: 45 against 9 µs a result on a 2-core VM with a subscriber
matched or not, and 1.7-1.8 ms of a 9-10 ms turn of 31 results on an H200 host at saturation, where
the turn is the node's limit (benchmarks/h200/sat_session35). Here the worker queues each result's
bytes (:meth:`ResultOutlet.queue`), hands a turn's results over a pipe in one write
(:meth:`ResultOutlet.flush`, from the engine's ``after_results``), and ``delen_outlet``
(``src/delen_outlet.c``, on rcl) publishes them, each topic through an :class:`OutletPublisher`.

The result topics' publisher is then the outlet's node (``_delen_outlet_<pid>_<n>``, hidden), not the
delen node. Where the program was not built, where it does not start, or with ``result_outlet:=node``,
the node publishes itself, as before. The worker never waits for the outlet: the pipe is written without
blocking, and what it does not take waits in the node, up to a bound. An outlet that dies, or takes nothing for
2 s with that much waiting, is started again (killed first) and every publisher advertised anew; results lost
on the way are counted (:attr:`ResultOutlet.lost`, in ``/diagnostics``) and logged. One that dies 6 times in a
minute is given up on, and the node's status tick gives every result topic the node's own publisher again
(:meth:`.manager.AppManager.fall_back_from_outlet`).

Messages on the pipe (node -> outlet): ``multiprocessing.connection``'s framing (a 4-byte big-endian
length), then ``kind`` (one byte), the publisher's id (u32) and the rest, little-endian: ``A`` depth
(u32) and topic, ``W`` nothing, ``P`` the serialized message, ``T`` (id 0) when the node wrote the
messages before it (u64 ``CLOCK_MONOTONIC`` ns, after each turn's results). The outlet writes one byte
on its stdout once its node is up, then for each ``T`` 16 bytes: that stamp and when the results before
it were all published. The lag between the two (:meth:`ResultOutlet.lag_p99_ms`, read from the worker's
next flush) is time a result's latency bound must keep beside the delivery allowance: on an H200 host
0.09 ms p50 and 0.3-0.5 ms p99, where the node's own ``publish`` took 0.01-0.03 ms
(``Engine.publication_lag_ms``).
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

from delen_ros.core.arrivals import Tail

from .native import native_env, native_program

__all__ = ['native_outlet', 'OutletPublisher', 'ResultOutlet']

_HEAD = struct.Struct('>I')       # the framing's length
_KIND = struct.Struct('<cI')      # kind, publisher id
_DEPTH = struct.Struct('<I')
_STAMP = struct.Struct('<Q')      # T's body: when the node wrote
_STAMPS = struct.Struct('<QQ')    # the outlet's answer: that, and when it had published what came before
_PIPE_BYTES = 1 << 20             # asked of the kernel: a turn's results never wait for the outlet
_FLUSH_BYTES = 1 << 16            # a longer queue is written at once
_START_S = 5.0                    # an outlet not up by then did not start: the node publishes itself
_STUCK_BYTES = 4 << 20            # results waiting beyond the pipe's own buffer: newer ones are lost, not kept
_STUCK_S = 2.0                    # and with no byte taken for this long the outlet is killed and started again
_RESTARTS_PER_MINUTE = 5
_F_SETPIPE_SZ = 1031


def native_outlet() -> str | None:
    """The built C outlet (``<prefix>/lib/delen_ros/delen_outlet``)."""
    return native_program('delen_outlet')


class OutletPublisher:
    """A result topic's publisher in the outlet: ``publish(serialized bytes)``, as the node's own
    result publishers; like a lifecycle publisher it publishes only while activated."""

    __slots__ = ('_outlet', 'id', 'topic', 'depth', 'active', 'advertised')

    def __init__(self, outlet: 'ResultOutlet', pub_id: int, topic: str, depth: int):
        self._outlet, self.id, self.topic, self.depth = outlet, pub_id, topic, depth
        self.active = self.advertised = False

    def publish(self, data: bytes) -> None:
        if self.active and self.advertised:
            self._outlet.queue(self.id, data)

    def advertise(self) -> None:
        """Make it in the outlet (:meth:`ResultOutlet.advertise`)."""
        self._outlet.advertise(self)

    def withdraw(self) -> None:
        """Destroy it in the outlet (if it was made there); it publishes nothing more."""
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
        self._queue = bytearray()       # results not handed over yet (the turn goes on)
        self._queued = 0
        self._pending = bytearray()     # handed over, not yet taken by the pipe
        self._chunks: collections.deque = collections.deque()   # [bytes of _pending, results in them], in order
        self._spawned = 0
        self._restarted: collections.deque = collections.deque(maxlen=_RESTARTS_PER_MINUTE)
        self.lost = 0          # results handed to an outlet that died or was stuck, or after it was given up on
        self.restarts = 0
        self.given_up = False
        self._popen: subprocess.Popen | None = None
        self._fd = -1
        self._ready_fd = -1
        self._stamps_fd = -1            # the outlet's stdout once it is up: its publication stamps
        self._stamps = bytearray()      # a partial record read
        self._ready_byte_due = False    # the stamps' pipe still starts with the outlet's 'R'
        self.lag = Tail()               # write -> published, ms (:meth:`lag_p99_ms`)
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
        os.set_blocking(pipe_w, False)   # a full pipe never blocks the worker (see _send)
        self._fd, self._ready_fd = pipe_w, ready_r
        self._progress_at = time.monotonic()   # a new outlet reads nothing until its node is up

    def ready(self, timeout_s: float = _START_S) -> bool:
        """Wait until the outlet's node is up (its one byte on stdout); false if it ended or is not up by then."""
        if self._ready_fd < 0:
            return self._popen is not None and self._popen.poll() is None
        readable, _, _ = select.select([self._ready_fd], [], [], timeout_s)
        up = bool(readable) and os.read(self._ready_fd, 1) == b'R'
        if up:   # from now on its publication stamps, read without blocking
            os.set_blocking(self._ready_fd, False)
            self._stamps_fd = self._ready_fd
        else:
            os.close(self._ready_fd)
        self._ready_fd = -1
        return up

    def lag_p99_ms(self) -> float | None:
        """The 99th percentile of the lag from the node's write of a turn's results to their publication,
        ms, over the last seconds (``None``: none measured lately)."""
        return self.lag.p99(time.monotonic_ns())

    def _read_stamps(self) -> None:
        """Under the lock: the outlet's publication stamps that came since the last call, into :attr:`lag`."""
        if self._stamps_fd < 0:
            if self._ready_fd < 0:
                return
            # an outlet started again (nobody waited for it): its one byte comes first on the same pipe
            os.set_blocking(self._ready_fd, False)
            self._stamps_fd, self._ready_fd, self._ready_byte_due = self._ready_fd, -1, True
        try:
            while True:
                data = os.read(self._stamps_fd, 4096)
                if not data:
                    break
                self._stamps += data
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return
        if self._ready_byte_due and self._stamps:
            if self._stamps[:1] == b'R':
                del self._stamps[:1]
            self._ready_byte_due = False
        now = time.monotonic_ns()
        whole = len(self._stamps) - len(self._stamps) % _STAMPS.size
        for written, published in _STAMPS.iter_unpack(bytes(self._stamps[:whole])):
            self.lag.add((published - written) / 1e6, now)
        del self._stamps[:whole]

    def _send(self, data: bytes | bytearray, results: int = 0) -> None:
        """Under the lock: ``data`` (whole messages, ``results`` of them results) to the outlet, without ever
        blocking the worker: what the pipe does not take now waits in :attr:`_pending` for the next write,
        up to ``_STUCK_BYTES`` of it; results beyond are lost. An outlet that died is started again, and so is
        one that took nothing for ``_STUCK_S`` with that much waiting (killed first). Every result lost is
        counted in :attr:`lost`."""
        if self.given_up or self._fd < 0:   # given up on, or closed
            self.lost += results
            return
        if results and len(self._pending) >= _STUCK_BYTES:   # not kept up with: these are lost, not kept
            self.lost += results
            if time.monotonic() - self._progress_at > _STUCK_S:
                self._popen.kill()
                self._popen.wait()
                self._restart(f'read nothing for {_STUCK_S:g} s; killed')
            return
        self._pending += data
        self._chunks.append([len(data), results])
        while self._pending:
            try:
                n = os.write(self._fd, self._pending)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:   # BrokenPipeError: it died
                self._restart('ended')
                return
            del self._pending[:n]
            self._progress_at = time.monotonic()
            while n and self._chunks:
                taken = min(n, self._chunks[0][0])
                self._chunks[0][0] -= taken
                n -= taken
                if not self._chunks[0][0]:
                    self._chunks.popleft()

    def _restart(self, why: str) -> None:
        """Under the lock: the outlet is gone. Start another and advertise every publisher there again."""
        code = self._popen.poll() if self._popen is not None else None
        self.lost += sum(results for _, results in self._chunks)
        self._pending.clear()
        self._chunks.clear()
        os.close(self._fd)
        self._fd = -1
        self._close_stdout()
        now = time.monotonic()
        if len(self._restarted) == self._restarted.maxlen and now - self._restarted[0] < 60.0:
            self.given_up = True
            self._log('error', f'outlet: {why} (exit {code}), {len(self._restarted) + 1} times in a minute: not '
                               f'started again; results are not published')
            return
        self._restarted.append(now)
        self.restarts += 1
        self._log('error', f'outlet: {why} (exit {code}); starting another, {len(self._publishers)} topic(s) '
                           'advertised anew')
        self._spawn()
        for pub in self._publishers.values():
            self._send(self._advertise_message(pub))

    # --- publishers --------------------------------------------------------------------------------------
    @staticmethod
    def _message(kind: bytes, pub_id: int, body: bytes = b'') -> bytes:
        return _HEAD.pack(_KIND.size + len(body)) + _KIND.pack(kind, pub_id) + body

    def _advertise_message(self, pub: OutletPublisher) -> bytes:
        return self._message(b'A', pub.id, _DEPTH.pack(pub.depth) + pub.topic.encode())

    def publisher(self, topic: str, depth: int) -> OutletPublisher:
        """A publisher of ``topic`` (an absolute name; reliable, volatile, keep-last ``depth``), inactive and
        not advertised yet: the node advertises it once the request it is for has been admitted, so that a
        refused request puts nothing on the graph (a publisher made and destroyed at once there stayed
        unnamed for seconds, and the next request took it for another node's)."""
        with self._lock:
            self._next_id += 1
            return OutletPublisher(self, self._next_id, topic, depth)

    def advertise(self, pub: OutletPublisher) -> None:
        """Have the outlet make ``pub`` (it keeps it across restarts until :meth:`withdraw`)."""
        with self._lock:
            if pub.id in self._publishers:
                return
            self._publishers[pub.id] = pub
            self._flush_locked()   # what was queued goes first: the order on the pipe is the order of calls
            self._send(self._advertise_message(pub))
            pub.advertised = True

    def withdraw(self, pub: OutletPublisher) -> None:
        pub.active = pub.advertised = False
        with self._lock:
            if self._publishers.pop(pub.id, None) is not None:
                self._flush_locked()
                self._send(self._message(b'W', pub.id))

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
        self._queue += self._message(b'T', 0, _STAMP.pack(time.monotonic_ns()))
        queued, data = self._queued, bytes(self._queue)
        self._queue.clear()
        self._queued = 0
        self._send(data, queued)
        self._read_stamps()

    def _close_stdout(self) -> None:
        for name in ('_ready_fd', '_stamps_fd'):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        self._stamps.clear()
        self._ready_byte_due = False

    def close(self, timeout: float = 3.0) -> None:
        """Flush, then end the outlet (closing its pipe ends it)."""
        with self._lock:
            if self._fd >= 0:
                self._flush_locked()
            deadline = time.monotonic() + 1.0   # the last of it, if the outlet reads it soon
            while self._pending and self._fd >= 0 and time.monotonic() < deadline:
                try:
                    del self._pending[:os.write(self._fd, self._pending)]
                except BlockingIOError:
                    time.sleep(0.01)
                except OSError:
                    break
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._close_stdout()
            self._publishers.clear()
        if self._popen is not None:
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
