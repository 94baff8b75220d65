"""Receiver processes: camera frames taken outside the node's GIL (``ingress_processes``).

In one Python process, taking 30 Hz 640x480 frames costs rclpy about a core at 16 cameras, and
that core is the GIL the inference worker needs: on a 16-core H200 host the node served 16 cameras
at 0.09x the engine's rate. Here each receiver is its own process (its own GIL) with raw
subscriptions to a share of the cameras. It copies each serialized frame into a
:class:`~delen_ros.core.frame_ring.FrameRing` slot and sends a 21-byte note over a pipe; the node's
one reader thread views the slot in place and hands it to the node's image callback exactly as an
in-process subscription would (same parsing, validation and counting). The engine lets go of the
view once the pixels are on the device, which frees the slot.

Messages on the frames pipe (receiver -> node), ``struct`` little-endian:

* ``F``: camera id u32, slot i32 (-1: every slot busy, frame dropped), bytes u32, arrival ns u64
  (``time.perf_counter_ns``: CLOCK_MONOTONIC, the same clock in every process);
* ``R``: camera id u32, then the path of a new ring for that camera (its first frame, or a bigger one);
* ``E``: a line of text to log as an error.

The control pipe (node -> receiver) carries one line per message: ``subscribe <camera> <depth>
<qos> <topic>`` or ``unsubscribe <camera>``. Both pipes use ``multiprocessing.connection``'s framing
(a 4-byte big-endian length). A receiver exits when the control pipe closes (the node went away);
one that dies is started again and given its cameras back.

Two receivers speak this protocol: ``delen_receiver`` (``src/delen_receiver.c``, on rcl: a fraction
of the CPU per frame), used where the build made it, and this module's Python one, used otherwise,
with ``DELEN_RECEIVER=python``, or when the C one cannot start (logged).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import pathlib
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from delen_ros.core.cpu_threads import usable_cpus
from delen_ros.core.frame_ring import FrameRing
from delen_ros.core.host_memory import HostMemory, pinnable
from delen_ros.core.thread_names import name_os_thread

from .native import native_env, native_program

__all__ = ['auto_processes', 'native_receiver', 'IngressPool', 'NoteBuffer', 'main']

_FRAME = struct.Struct('<cIiIQ')
_HEAD = struct.Struct('<cI')
RING_SLOTS = 6            # per camera: queued + in flight; the engine frees a slot at upload
_CONTROL_PERIOD_S = 0.02   # a subscribe takes effect within this
_RESTARTS_PER_MINUTE = 5   # a receiver that keeps dying is given up on (logged), not restarted forever
_WARN_EVERY_S = 5.0
_NATIVE_START_S = 3.0      # a C receiver that ends sooner did not start: fall back to Python
_READ_BYTES = 1 << 16      # notes read at once from a frames pipe (~3 000 frame notes)


def native_receiver() -> str | None:
    """The built C receiver (``<prefix>/lib/delen_ros/delen_receiver``), unless ``DELEN_RECEIVER=python``."""
    if os.environ.get('DELEN_RECEIVER', '').lower() == 'python':
        return None
    return native_program('delen_receiver')


def auto_processes(cpus: int | None = None, *, native: bool | None = None) -> int:
    """``ingress_processes: -1``: from 8 cores a quarter of them, at most 8. Below 8 cores one where
    the C receiver is built (``native``; default: :func:`native_receiver`): it takes a frame for
    ~0.5 ms of CPU in its own process, where the node's executor spends ~3 ms of the GIL that the
    worker needs (a 2-core VM, 8 cameras x 15 Hz: 32-41 % of frames within 33 ms in-process, 90-99 %
    with it); none with only the Python receiver, which costs as much as the node's own take, or on
    one core."""
    if cpus is None:
        cpus = usable_cpus()
    if cpus >= 8:
        return min(8, cpus // 4)
    if native is None:
        native = native_receiver() is not None
    return 1 if native and cpus >= 2 else 0


# --- the receiver process ---------------------------------------------------------------------------
class _Receiver:
    """One receiver process's state: its node, its cameras and their rings."""

    def __init__(self, node, frames: Connection, *, slots: int):
        self.node, self.frames, self.slots = node, frames, slots
        self.subscriptions: dict[int, Any] = {}
        self.rings: dict[int, FrameRing] = {}
        self.created: list[str] = []

    def subscribe(self, camera_id: int, topic: str, qos_name: str, depth: int) -> None:
        from sensor_msgs.msg import Image

        from .qos import image_qos
        if camera_id in self.subscriptions:
            return
        self.subscriptions[camera_id] = self.node.create_subscription(
            Image, topic, lambda data, c=camera_id: self.on_frame(c, data), image_qos(qos_name, depth=depth), raw=True)

    def unsubscribe(self, camera_id: int) -> None:
        sub = self.subscriptions.pop(camera_id, None)
        if sub is not None:
            self.node.destroy_subscription(sub)
        ring = self.rings.pop(camera_id, None)
        if ring is not None:
            ring.close()

    def on_frame(self, camera_id: int, data: bytes) -> None:
        arrival = time.perf_counter_ns()
        n = len(data)
        ring = self.rings.get(camera_id)
        if ring is None or n > ring.slot_bytes:
            if ring is not None:
                ring.close()   # the node keeps its own mapping while it still holds views
            ring = self.rings[camera_id] = FrameRing.create(self.slots, n)
            self.created.append(ring.path)
            self.frames.send_bytes(_HEAD.pack(b'R', camera_id) + ring.path.encode())
        slot = ring.write(data) if n else None
        self.frames.send_bytes(_FRAME.pack(b'F', camera_id, -1 if slot is None else slot, n, arrival))

    def control(self, message: str) -> None:
        try:
            op, *args = message.split()
            if op == 'subscribe':
                camera, depth, qos, topic = args
                self.subscribe(int(camera), topic, qos, int(depth))
            elif op == 'unsubscribe':
                self.unsubscribe(int(args[0]))
            else:
                raise ValueError('unknown control message')
        except Exception as exc:  # noqa: BLE001 - report, keep receiving the other cameras
            self.frames.send_bytes(b'E' + f'receiver {os.getpid()}: {message}: {exc}'.encode())

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        for path in self.created:   # names the node has not taken over (it unlinks those it attaches)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _serve(control: Connection, frames: Connection, *, index: int, slots: int) -> None:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=None, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node(f'_delen_ingress_{index}_{os.getpid()}')   # '_': hidden from `ros2 node list`
    receiver = _Receiver(node, frames, slots=slots)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    done = threading.Event()

    def read_control() -> None:   # on the executor thread: rclpy calls stay on one thread
        try:
            while control.poll():
                receiver.control(control.recv_bytes().decode())
        except (EOFError, OSError):   # the node closed the pipe, or went away
            done.set()

    node.create_timer(_CONTROL_PERIOD_S, read_control)
    try:
        while not done.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=_CONTROL_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException, BrokenPipeError):
        pass
    finally:
        receiver.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='delen frame receiver (started by the delen node)')
    parser.add_argument('--control-fd', type=int, required=True)
    parser.add_argument('--frames-fd', type=int, required=True)
    parser.add_argument('--index', type=int, default=0)
    parser.add_argument('--slots', type=int, default=RING_SLOTS)
    args = parser.parse_args(argv)
    _serve(Connection(args.control_fd, writable=False), Connection(args.frames_fd, readable=False),
           index=args.index, slots=args.slots)
    return 0


# --- the node's side --------------------------------------------------------------------------------
@dataclasses.dataclass
class IngressSubscription:
    """Stands for a camera's subscription when a receiver process holds it."""

    process: int
    camera_id: int


class NoteBuffer:
    """The notes of one frames pipe, read many at a time: one ``read`` for every note there, where
    ``Connection.recv_bytes`` and ``poll`` take three system calls a note (the framing: a 4-byte
    big-endian length, then the note). A note cut off at the end of a read waits for the rest."""

    def __init__(self):
        self._pending = b''

    def take(self, fd: int) -> list[bytes]:
        """The whole notes readable now from ``fd`` (which must be readable: this blocks otherwise).

        :raises EOFError: the writer closed the pipe.
        """
        data = os.read(fd, _READ_BYTES)
        if not data:
            raise EOFError('frames pipe closed')
        buf = self._pending + data if self._pending else data
        notes, at, end = [], 0, len(buf)
        while end - at >= 4:
            n = int.from_bytes(buf[at:at + 4], 'big')
            if end - at - 4 < n:
                break
            notes.append(buf[at + 4:at + 4 + n])
            at += 4 + n
        self._pending = buf[at:]
        return notes


@dataclasses.dataclass
class _Process:
    index: int
    popen: subprocess.Popen
    control: Connection
    frames: Connection
    cameras: set = dataclasses.field(default_factory=set)
    dead: bool = False     # given up on after dying too often
    native: bool = False   # the C receiver
    started: float = 0.0   # time.monotonic() at start
    notes: NoteBuffer = dataclasses.field(default_factory=NoteBuffer)


class IngressPool:
    """Receiver processes and the node's reader thread (see the module docstring).

    :param processes: how many receivers (>= 1).
    :param on_frame: ``(serialized view, camera, arrival_ns)``, the node's image callback.
    :param log: ``(level, text)`` with level ``'info'``, ``'warning'`` or ``'error'``.

    :attr:`host_memory`: set it (a :class:`~delen_ros.core.host_memory.HostMemory`) when frames go to a
    CUDA device: each ring is then registered with the driver once mapped, and unregistered before it
    is unmapped, so that frames are uploaded from their slots without a staging copy.
    """

    #: a context the notes of one read are handled within (the node's ``Engine.held_submits``: the frames of a
    #: burst uploaded together; DELEN_BATCH_UPLOADS=1, an A/B), or None
    around_notes: Callable[[], contextlib.AbstractContextManager] | None = None

    def __init__(self, processes: int, *, on_frame: Callable[[memoryview, Any, int], None],
                 log: Callable[[str, str], None], qos_name: str, depth: int, slots: int = RING_SLOTS):
        if processes < 1:
            raise ValueError(f'an ingress pool needs >= 1 process, got {processes}')
        self._on_frame, self._log, self._qos, self._depth, self._slots = on_frame, log, qos_name, depth, slots
        self._lock = threading.Lock()
        self._native = native_receiver()
        self._native_env = native_env() if self._native else None
        self._processes = [self._spawn(i) for i in range(processes)]
        self._cameras: dict[int, tuple[Any, int]] = {}    # camera id -> (camera, process index)
        self._rings: dict[int, FrameRing] = {}
        self._next_id = 0
        self.ring_full = 0    # frames a receiver dropped because every slot of their camera was busy
        self.restarts = 0
        self._restarted: dict[int, collections.deque] = {}
        self._warned = 0.0
        self._closing = False
        self.host_memory: HostMemory | None = None
        self._pin_said: bool | None = None   # the last registration outcome logged
        self._wake_r, self._wake_w = os.pipe()   # wakes the reader when the process set changes
        #: notes read many at a time (NoteBuffer); False: one by one, as before session 35 (an A/B)
        self.read_many = os.environ.get('DELEN_NOTE_READS') != 'one'
        self._reader = threading.Thread(target=self._read, name='delen-ingress', daemon=True)
        self._reader.start()

    def _spawn(self, index: int) -> _Process:
        ctl_r, ctl_w = os.pipe()
        frm_r, frm_w = os.pipe()
        args = ['--control-fd', str(ctl_r), '--frames-fd', str(frm_w), '--index', str(index), '--slots', str(self._slots)]
        native = self._native
        if native is not None:
            cmd, env = [native, *args], self._native_env
        else:
            env = dict(os.environ)
            root = str(pathlib.Path(__file__).resolve().parents[2])   # the folder holding delen_ros
            env['PYTHONPATH'] = root + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
            cmd = [sys.executable, '-m', 'delen_ros.ros.ingress', *args]
        try:
            # A session of its own: a terminal's Ctrl-C (SIGINT to the whole foreground group) must not
            # end it before the node, whose reader would take that for a crash and start another in
            # the middle of the shutdown. It ends when the node closes its control pipe, or dies.
            popen = subprocess.Popen(cmd, pass_fds=(ctl_r, frm_w), env=env, start_new_session=True)
        finally:
            os.close(ctl_r)
            os.close(frm_w)
        return _Process(index, popen, Connection(ctl_w, readable=False), Connection(frm_r, writable=False),
                        native=native is not None, started=time.monotonic())

    @property
    def processes(self) -> int:
        return len(self._processes)

    @property
    def kind(self) -> str:
        """Which receiver new processes run: ``'C'`` or ``'Python'``."""
        return 'C' if self._native else 'Python'

    def _send(self, proc: _Process, message: str) -> None:
        try:
            proc.control.send_bytes(message.encode())
        except OSError:   # it died: the reader notices and restarts it with its cameras
            pass

    def subscribe(self, camera: Any, *, avoid: int | None = None) -> IngressSubscription:
        """Have the least loaded receiver take ``camera`` (``camera.topic``: an absolute topic);
        ``avoid``: a receiver's index not to take it unless it is the only one."""
        with self._lock:
            proc = min(self._processes, key=lambda p: (p.dead, p.index == avoid, len(p.cameras)))
            camera_id, self._next_id = self._next_id, self._next_id + 1
            self._cameras[camera_id] = (camera, proc.index)
            proc.cameras.add(camera_id)
            self._send(proc, self._subscribe_message(camera_id, camera.topic))
        return IngressSubscription(proc.index, camera_id)

    def _subscribe_message(self, camera_id: int, topic: str) -> str:
        return f'subscribe {camera_id} {self._depth} {self._qos} {topic}'

    def unsubscribe(self, subscription: IngressSubscription) -> None:
        with self._lock:
            self._cameras.pop(subscription.camera_id, None)
            proc = self._processes[subscription.process]
            proc.cameras.discard(subscription.camera_id)
            self._send(proc, f'unsubscribe {subscription.camera_id}')
            ring = self._rings.pop(subscription.camera_id, None)
        if ring is not None:
            self._close_ring(ring)

    # --- the reader thread ----------------------------------------------------------------------------
    def _read(self) -> None:
        name_os_thread()
        while not self._closing:
            try:
                self._read_once()
            except Exception as exc:  # noqa: BLE001 - the node serves nothing without this thread
                self._report(exc)
                time.sleep(0.01)   # an error that repeats does not spin

    def _read_once(self) -> None:
        by_conn = {p.frames: p for p in self._processes if not p.dead}
        ready = wait([*by_conn, self._wake_r])
        for conn in ready:
            if conn == self._wake_r:
                os.read(self._wake_r, 64)
                continue
            proc = by_conn[conn]
            try:
                notes = proc.notes.take(conn.fileno()) if self.read_many else self._drain_one_by_one(conn)
            except (EOFError, OSError):
                if not self._closing:
                    self._restart(proc)
                continue
            around = self.around_notes
            with around() if around is not None else contextlib.nullcontext():
                for note in notes:
                    try:
                        self._handle(note)
                    except Exception as exc:  # noqa: BLE001 - one bad note must not stop the reader
                        self._report(exc)

    @staticmethod
    def _drain_one_by_one(conn: Connection) -> list[bytes]:
        """What is there, a note at a time (before session 35; ``DELEN_NOTE_READS=one``, an A/B)."""
        notes = [conn.recv_bytes()]
        while conn.poll():
            notes.append(conn.recv_bytes())
        return notes

    def _report(self, exc: Exception) -> None:
        try:
            self._log('error', f'ingress: {type(exc).__name__}: {exc}')
        except Exception:  # noqa: BLE001 - nor a log that fails (rclpy's once ended the reader)
            pass

    def _handle(self, note: bytes) -> None:
        kind = note[:1]
        if kind == b'F':
            _, camera_id, slot, nbytes, arrival_ns = _FRAME.unpack(note)
            ring = self._rings.get(camera_id)
            entry = self._cameras.get(camera_id)
            if slot < 0:
                self.ring_full += 1
                now = time.monotonic()
                if now - self._warned >= _WARN_EVERY_S:
                    self._warned = now
                    self._log('warning', f'ingress: {self.ring_full} camera frame(s) dropped at their receiver so far '
                                         f'(every slot of the camera still in use: the engine is behind)')
                return
            if ring is None:
                return
            if entry is None:   # unsubscribed meanwhile
                ring.release(slot)
                return
            self._on_frame(ring.view(slot, nbytes), entry[0], arrival_ns)
        elif kind == b'R':
            _, camera_id = _HEAD.unpack_from(note)
            ring = FrameRing.attach(note[_HEAD.size:].decode())
            old = self._rings.get(camera_id)
            if camera_id in self._cameras:
                if self.host_memory is not None:
                    self._pin(ring)
                self._rings[camera_id] = ring
            else:
                ring.close()
            if old is not None and old is not ring:
                self._close_ring(old)
        elif kind == b'E':
            self._log('error', note[1:].decode(errors='replace'))

    def _pin(self, ring: FrameRing) -> None:
        """Register ``ring`` with CUDA; the outcome is logged when it changes (it decides the upload path)."""
        pinned = pinnable(ring.path) and self.host_memory.register(ring.address, ring.map_bytes)
        if self._pin_said is not pinned:
            self._pin_said = pinned
            self._log('info', 'ingress: frames are uploaded from their shared-memory rings (registered with CUDA)'
                      if pinned else f'ingress: {ring.path} could not be registered with CUDA: its frames are '
                                     'staged through pinned buffers')

    def _close_ring(self, ring: FrameRing) -> None:
        if self.host_memory is not None:
            self.host_memory.unregister(ring.address)   # before unmapping; waits for copies still running
        ring.close()

    def _restart(self, proc: _Process) -> None:
        """A receiver died: start another in its place and give it its cameras back (unless it
        keeps dying: then its cameras go unserved, which the log and the cameras' status say)."""
        code = proc.popen.poll()
        if proc.native and self._native is not None and time.monotonic() - proc.started < _NATIVE_START_S:
            self._log('error', f'ingress: the C receiver ended at start (exit {code}); using the Python receiver')
            self._native = None   # e.g. a library it needs is missing here
        recent = self._restarted.setdefault(proc.index, collections.deque(maxlen=_RESTARTS_PER_MINUTE))
        now = time.monotonic()
        with self._lock:
            proc.control.close()
            proc.frames.close()
            for camera_id in proc.cameras:
                ring = self._rings.pop(camera_id, None)
                if ring is not None:
                    self._close_ring(ring)
            if len(recent) == recent.maxlen and now - recent[0] < 60.0:
                self._log('error', f'ingress: receiver {proc.index} ended (exit {code}) {len(recent) + 1} times in a '
                                   f'minute: not restarted; its {len(proc.cameras)} camera(s) are not served')
                proc.dead = True
                return
            recent.append(now)
            self.restarts += 1
            self._log('error', f'ingress: receiver {proc.index} (pid {proc.popen.pid}) ended (exit {code}); '
                               'starting another')
            fresh = self._spawn(proc.index)
            fresh.cameras = set(proc.cameras)
            self._processes[proc.index] = fresh
            for camera_id in fresh.cameras:
                self._send(fresh, self._subscribe_message(camera_id, self._cameras[camera_id][0].topic))

    def close(self, timeout: float = 3.0) -> None:
        """Stop the receivers (closing their control pipe ends them) and the reader."""
        self._closing = True
        os.write(self._wake_w, b'x')
        with self._lock:
            for proc in self._processes:
                if not proc.control.closed:
                    proc.control.close()
        deadline = time.monotonic() + timeout
        for proc in self._processes:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self._reader.join(timeout=1.0)
        for proc in self._processes:
            if not proc.frames.closed:
                proc.frames.close()
        for ring in self._rings.values():
            self._close_ring(ring)
        self._rings.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)


if __name__ == '__main__':
    sys.exit(main())
