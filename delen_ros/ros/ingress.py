"""Receiver processes: camera frames taken outside the node's GIL (``ingress_processes``).

In one Python process, taking 30 Hz 640x480 frames costs rclpy about a core at 16 cameras, and
that core is the GIL the inference worker needs: on a 16-core H200 host the node served 16 cameras
at 0.09x the engine's rate. Here each receiver is its own process (its own GIL) with raw
subscriptions to a share of the cameras. It copies each serialized frame into a
:class:`~delen_ros.core.frame_ring.FrameRing` slot and sends a 25-byte note over a pipe; the node's
one reader thread views the slot in place and hands it to the node's image callback exactly as an
in-process subscription would (same parsing, validation and counting). The engine lets go of the
view once the pixels are on the device, which frees the slot.

Messages on the frames pipe (receiver -> node), ``struct`` little-endian:

* ``F``: camera id u32, slot i32 (-1: every slot busy, frame dropped), bytes u32, arrival ns u64
  (``time.perf_counter_ns``: CLOCK_MONOTONIC, the same clock in every process);
* ``R``: camera id u32, then the path of a new ring for that camera (its first frame, or a bigger one);
* ``E``: a line of text to log as an error.

The control pipe (node -> receiver) carries JSON: ``subscribe`` / ``unsubscribe``. A receiver
exits when the control pipe closes (the node went away); one that dies is started again and given
its cameras back.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import struct
import subprocess
import sys
import collections
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from delen_ros.core.frame_ring import FrameRing

__all__ = ['auto_processes', 'IngressPool', 'main']

_FRAME = struct.Struct('<cIiIQ')
_HEAD = struct.Struct('<cI')
RING_SLOTS = 6            # per camera: queued + in flight; the engine frees a slot at upload
_CONTROL_PERIOD_S = 0.02   # a subscribe takes effect within this
_RESTARTS_PER_MINUTE = 5   # a receiver that keeps dying is given up on (logged), not restarted forever
_WARN_EVERY_S = 5.0


def auto_processes(cpus: int | None = None) -> int:
    """``ingress_processes: -1``: none below 8 cores (the node's own process keeps up there and the
    cores are needed for inference); else a quarter of the cores, at most 8."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return 0 if cpus < 8 else min(8, cpus // 4)


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

    def control(self, message: dict) -> None:
        try:
            if message['op'] == 'subscribe':
                self.subscribe(message['camera'], message['topic'], message['qos'], message['depth'])
            elif message['op'] == 'unsubscribe':
                self.unsubscribe(message['camera'])
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
                receiver.control(json.loads(control.recv_bytes()))
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


@dataclasses.dataclass
class _Process:
    index: int
    popen: subprocess.Popen
    control: Connection
    frames: Connection
    cameras: set = dataclasses.field(default_factory=set)
    dead: bool = False     # given up on after dying too often


class IngressPool:
    """Receiver processes and the node's reader thread (see the module docstring).

    :param processes: how many receivers (>= 1).
    :param on_frame: ``(serialized view, camera, arrival_ns)``, the node's image callback.
    :param log: ``(level, text)`` with level ``'info'``, ``'warning'`` or ``'error'``.
    """

    def __init__(self, processes: int, *, on_frame: Callable[[memoryview, Any, int], None],
                 log: Callable[[str, str], None], qos_name: str, depth: int, slots: int = RING_SLOTS):
        if processes < 1:
            raise ValueError(f'an ingress pool needs >= 1 process, got {processes}')
        self._on_frame, self._log, self._qos, self._depth, self._slots = on_frame, log, qos_name, depth, slots
        self._lock = threading.Lock()
        self._processes = [self._spawn(i) for i in range(processes)]
        self._cameras: dict[int, tuple[Any, int]] = {}    # camera id -> (camera, process index)
        self._rings: dict[int, FrameRing] = {}
        self._next_id = 0
        self.ring_full = 0    # frames a receiver dropped because every slot of their camera was busy
        self.restarts = 0
        self._restarted: dict[int, collections.deque] = {}
        self._warned = 0.0
        self._closing = False
        self._wake_r, self._wake_w = os.pipe()   # wakes the reader when the process set changes
        self._reader = threading.Thread(target=self._read, name='delen-ingress', daemon=True)
        self._reader.start()

    def _spawn(self, index: int) -> _Process:
        ctl_r, ctl_w = os.pipe()
        frm_r, frm_w = os.pipe()
        env = dict(os.environ)
        root = str(pathlib.Path(__file__).resolve().parents[2])   # the folder holding delen_ros
        env['PYTHONPATH'] = root + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
        try:
            popen = subprocess.Popen(
                [sys.executable, '-m', 'delen_ros.ros.ingress', '--control-fd', str(ctl_r), '--frames-fd', str(frm_w),
                 '--index', str(index), '--slots', str(self._slots)], pass_fds=(ctl_r, frm_w), env=env)
        finally:
            os.close(ctl_r)
            os.close(frm_w)
        return _Process(index, popen, Connection(ctl_w, readable=False), Connection(frm_r, writable=False))

    @property
    def processes(self) -> int:
        return len(self._processes)

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self._processes]

    def _send(self, proc: _Process, message: dict) -> None:
        try:
            proc.control.send_bytes(json.dumps(message).encode())
        except OSError:   # it died: the reader notices and restarts it with its cameras
            pass

    def subscribe(self, camera: Any) -> IngressSubscription:
        """Have the least loaded receiver take ``camera`` (``camera.topic``: an absolute topic)."""
        with self._lock:
            proc = min(self._processes, key=lambda p: (p.dead, len(p.cameras)))
            camera_id, self._next_id = self._next_id, self._next_id + 1
            self._cameras[camera_id] = (camera, proc.index)
            proc.cameras.add(camera_id)
            self._send(proc, self._subscribe_message(camera_id, camera.topic))
        return IngressSubscription(proc.index, camera_id)

    def _subscribe_message(self, camera_id: int, topic: str) -> dict:
        return {'op': 'subscribe', 'camera': camera_id, 'topic': topic, 'qos': self._qos, 'depth': self._depth}

    def unsubscribe(self, subscription: IngressSubscription) -> None:
        with self._lock:
            self._cameras.pop(subscription.camera_id, None)
            proc = self._processes[subscription.process]
            proc.cameras.discard(subscription.camera_id)
            self._send(proc, {'op': 'unsubscribe', 'camera': subscription.camera_id})
            ring = self._rings.pop(subscription.camera_id, None)
        if ring is not None:
            ring.close()

    # --- the reader thread ----------------------------------------------------------------------------
    def _read(self) -> None:
        while not self._closing:
            by_conn = {p.frames: p for p in self._processes if not p.dead}
            ready = wait([*by_conn, self._wake_r])
            for conn in ready:
                if conn == self._wake_r:
                    os.read(self._wake_r, 64)
                    continue
                proc = by_conn[conn]
                try:
                    while True:   # drain what is there before waiting again
                        self._handle(conn.recv_bytes())
                        if not conn.poll():
                            break
                except (EOFError, OSError):
                    if not self._closing:
                        self._restart(proc)
                except Exception as exc:  # noqa: BLE001 - one bad note must not stop the reader
                    self._log('error', f'ingress: {type(exc).__name__}: {exc}')

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
                self._rings[camera_id] = ring
            else:
                ring.close()
            if old is not None and old is not ring:
                old.close()
        elif kind == b'E':
            self._log('error', note[1:].decode(errors='replace'))

    def _restart(self, proc: _Process) -> None:
        """A receiver died: start another in its place and give it its cameras back (unless it
        keeps dying: then its cameras go unserved, which the log and the cameras' status say)."""
        code = proc.popen.poll()
        recent = self._restarted.setdefault(proc.index, collections.deque(maxlen=_RESTARTS_PER_MINUTE))
        now = time.monotonic()
        with self._lock:
            proc.control.close()
            proc.frames.close()
            for camera_id in proc.cameras:
                ring = self._rings.pop(camera_id, None)
                if ring is not None:
                    ring.close()
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
            ring.close()
        self._rings.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)


if __name__ == '__main__':
    sys.exit(main())
