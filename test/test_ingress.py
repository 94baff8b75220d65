"""Receiver processes (``ingress_processes``): the real node over DDS takes its camera frames through
them, answers as it does in-process, and survives a receiver that dies."""
from __future__ import annotations

import os
import pathlib
import signal
import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')

from delen_ros.ros.conversions import array_to_image  # noqa: E402
from delen_ros.ros.ingress import auto_processes, native_receiver  # noqa: E402
from delen_ros.tools.processes import descendants  # noqa: E402

from ros_helpers import ImageFeeder, node_and_peer, register_cameras, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(240)
CAMERAS, RATE_HZ = 3, 20.0


def test_auto_uses_one_c_receiver_on_few_cores_and_a_quarter_of_many():
    assert auto_processes(2, native=False) == 0 and auto_processes(4, native=False) == 0
    assert auto_processes(2, native=True) == 1 and auto_processes(4, native=True) == 1
    assert auto_processes(1, native=True) == 0
    assert auto_processes(16) == 4 and auto_processes(128) == 8


def _receivers(pid: int) -> list[int]:
    """Processes under ``pid`` running the receiver module."""
    found = []
    for child in descendants(pid):
        try:
            cmdline = pathlib.Path(f'/proc/{child}/cmdline').read_bytes()
            if b'delen_ros.ros.ingress' in cmdline or b'delen_receiver' in cmdline:
                found.append(child)
        except OSError:   # a child that just ended (the receiver the test killed)
            pass
    return found


def _answered(collectors, since: int) -> int:
    return sum(len(c.messages(since_ns=since)) for c in collectors)


KINDS = ['python'] + (['C'] if native_receiver() else [])


@pytest.mark.parametrize('kind', KINDS)
def test_frames_come_through_receivers_and_a_killed_receiver_is_replaced(tmp_path: pathlib.Path, monkeypatch, kind):
    monkeypatch.setenv('DELEN_RECEIVER', kind.lower())   # the node's environment comes from this one
    with node_and_peer(tmp_path, ingress_processes=2) as (node, peer):
        said = f'2 {"Python" if kind == "python" else kind} receiver process(es)'
        wait_until(lambda: said in node.log(), timeout=10.0, what=lambda: node.log()[-2000:])
        receivers = _receivers(node.proc.pid)
        assert len(receivers) == 2, node.log()[-2000:]
        collectors = register_cameras(peer, [f'/ingress/cam{i}' for i in range(CAMERAS)])
        frame = array_to_image(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
        feeder = ImageFeeder(peer, {f'/ingress/cam{i}': [frame] for i in range(CAMERAS)}, rate_hz=RATE_HZ,
                             reliable=True)
        time.sleep(2.0)                                   # discovery
        sent0, t0 = sum(feeder.published.values()), time.time_ns()
        time.sleep(4.0)
        sent = sum(feeder.published.values()) - sent0
        time.sleep(0.5)
        answered = _answered(collectors, t0)
        assert answered >= 0.9 * sent, f'{answered} of {sent} frames answered\n{node.log()[-3000:]}'
        assert all(c.messages(since_ns=t0) for c in collectors), 'every camera is served'
        assert all(m.exit_index >= 0 and m.latency_ms > 0 for c in collectors for m in c.messages(since_ns=t0))

        os.kill(receivers[0], signal.SIGKILL)             # a receiver dies: its cameras come back
        wait_until(lambda: len(_receivers(node.proc.pid)) == 2 and receivers[0] not in _receivers(
            node.proc.pid), timeout=20.0, what=lambda: node.log()[-3000:])
        time.sleep(1.5)
        t1 = time.time_ns()
        wait_until(lambda: all(c.messages(since_ns=t1) for c in collectors), timeout=10.0,
                   what=lambda: f'a camera was not served again after its receiver died\n{node.log()[-3000:]}')
        assert 'starting another' in node.log()
        assert node.alive()
        feeder.stop()
        kids = _receivers(node.proc.pid)
    # the node gone, its receivers go too (their control pipe closed) and leave no ring files
    assert wait_until(lambda: not any(pathlib.Path(f'/proc/{k}').exists() for k in kids), timeout=10.0)
    leftovers = [p for d in ('/dev/shm', '/tmp') if os.path.isdir(d) for p in pathlib.Path(d).glob('delen-frames-*')
                 if p.stat().st_uid == os.getuid() and p.stat().st_mtime > time.time() - 300]
    assert not leftovers, leftovers


@pytest.mark.parametrize('kind', KINDS)
def test_ctrl_c_to_the_whole_group_stops_the_node_without_restarting_receivers(tmp_path: pathlib.Path, monkeypatch,
                                                                                kind):
    """A terminal's Ctrl-C signals the foreground process group; the receivers (sessions of their own)
    must not die first and be taken for crashed ones in the middle of the node's shutdown."""
    monkeypatch.setenv('DELEN_RECEIVER', kind.lower())
    with node_and_peer(tmp_path, ingress_processes=2) as (node, peer):
        wait_until(lambda: 'active:' in node.log() and len(_receivers(node.proc.pid)) == 2,
                   timeout=15.0, what=lambda: node.log()[-2000:])
        register_cameras(peer, [f'/ingress/ctrl_c{i}' for i in range(CAMERAS)])   # receivers in DDS waits
        time.sleep(1.0)
        kids = _receivers(node.proc.pid)
        os.killpg(node.proc.pid, signal.SIGINT)
        node.proc.wait(timeout=20.0)
        log = node.log()
        assert node.proc.returncode == 0, log[-2000:]
        assert 'starting another' not in log and 'ended (exit' not in log, log[-2000:]
    assert wait_until(lambda: not any(pathlib.Path(f'/proc/{k}').exists() for k in kids), timeout=10.0)


def test_a_slow_camera_is_not_taken_for_a_silent_one():
    """A camera is subscribed again when quiet for 3 s and for twice its usual gaps: one that sends a
    frame every 5 s is left alone until it has been quiet for 8 s."""
    from delen_ros.ros.manager import Camera
    camera = Camera('/slow')
    for _ in range(3):
        camera.note_period(0, 1.0)
    assert camera.too_quiet(3.0), 'no frame ever: silent after 3 s'
    for _ in range(4):                            # then a frame every 5 s
        camera.note_period(1, 1.0)
        for _ in range(4):
            camera.note_period(0, 1.0)
    assert not camera.too_quiet(3.0), 'quiet 4 s, as it usually is'
    for _ in range(5):
        camera.note_period(0, 1.0)
    assert camera.too_quiet(3.0), 'quiet 9 s, over twice its usual gap'
    for _ in range(60):                           # a minute at 30 Hz: its long gaps are forgotten
        camera.note_period(30, 1.0)
    for _ in range(3):
        camera.note_period(0, 1.0)
    assert camera.too_quiet(3.0)
    due = []
    for _ in range(10):                           # quiet 3 .. 12 s: subscribed again at 3, 6 and 12 s
        due.append(camera.resubscribe_due(60.0))
        camera.note_period(0, 1.0)
    assert [3 + i for i, d in enumerate(due) if d] == [3, 6, 12]


def test_cameras_of_a_receiver_that_hangs_are_subscribed_again_through_another(tmp_path: pathlib.Path):
    """A receiver alive but deaf (here stopped; on the H200 one C receiver's DDS match failed on a
    Fast DDS type lookup error, and its cameras got nothing): the node sees publishers but no frames,
    says so, and subscribes those cameras again through the other receiver."""
    with node_and_peer(tmp_path, ingress_processes=2) as (node, peer):
        wait_until(lambda: 'receiver process(es)' in node.log(), timeout=10.0, what=lambda: node.log()[-2000:])
        receivers = _receivers(node.proc.pid)
        assert len(receivers) == 2, node.log()[-2000:]
        topics = [f'/hang/cam{i}' for i in range(2)]     # one on each receiver (the least loaded takes a camera)
        collectors = register_cameras(peer, topics)
        frame = array_to_image(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
        feeder = ImageFeeder(peer, {t: [frame] for t in topics}, rate_hz=RATE_HZ, reliable=True)
        try:
            wait_until(lambda: all(c.messages() for c in collectors), timeout=15.0, what=lambda: node.log()[-3000:])
            os.kill(receivers[0], signal.SIGSTOP)
            time.sleep(1.0)
            t0 = time.time_ns()
            wait_until(lambda: all(c.messages(since_ns=t0) for c in collectors), timeout=20.0,
                       what=lambda: f'a camera of the hung receiver was not served again\n{node.log()[-3000:]}')
            assert "but no frame for" in node.log() and "subscribed again through receiver 1 (was 0)" in node.log()
            assert node.alive()
        finally:
            os.kill(receivers[0], signal.SIGCONT)
            feeder.stop()


class _Pins:
    """A stand-in for core.host_memory.HostMemory: what the pool registers, and when."""

    def __init__(self):
        self.live: set[int] = set()
        self.calls: list[tuple[str, int]] = []

    def register(self, address: int, nbytes: int) -> bool:
        self.live.add(address)
        self.calls.append(('register', address))
        return True

    def unregister(self, address: int) -> None:
        self.live.discard(address)
        self.calls.append(('unregister', address))

    def __len__(self) -> int:
        return len(self.live)


def test_each_ring_is_pinned_while_mapped_and_unpinned_before_it_goes(monkeypatch):
    from types import SimpleNamespace

    from delen_ros.core.frame_ring import FrameRing
    from delen_ros.core.host_memory import pinnable
    from delen_ros.ros.ingress import _HEAD, IngressPool
    monkeypatch.setenv('DELEN_RECEIVER', 'python')
    pool = IngressPool(1, on_frame=lambda *a: None, log=lambda *a: None, qos_name='sensor_data', depth=2)
    pins = pool.host_memory = _Pins()
    try:
        sub = pool.subscribe(SimpleNamespace(topic='/pins/cam'))
        first, bigger = FrameRing.create(2, 1000), FrameRing.create(2, 4000)   # as a receiver makes them
        if not pinnable(first.path):
            pytest.skip(f'{first.path} is not on a tmpfs')
        pool._handle(_HEAD.pack(b'R', sub.camera_id) + first.path.encode())
        mapped = pool._rings[sub.camera_id]
        assert pins.calls == [('register', mapped.address)]
        pool._handle(_HEAD.pack(b'R', sub.camera_id) + bigger.path.encode())   # a bigger frame: a new ring
        remapped = pool._rings[sub.camera_id]
        assert pins.calls[1:] == [('register', remapped.address), ('unregister', mapped.address)]
        assert mapped._mm.closed, 'the old ring is unmapped after it is unpinned'
        pool.unsubscribe(sub)
        assert pins.calls[-1] == ('unregister', remapped.address) and not pins.live
        pool._handle(_HEAD.pack(b'R', 999) + FrameRing.create(2, 100).path.encode())   # unknown camera
        assert not pins.live, 'a ring for no camera is not pinned'
    finally:
        pool.close()
        for ring in (first, bigger):
            ring.close(unlink=True)


def _reader_alone(log):
    """An IngressPool's frame reader without receiver processes, and the pipe its notes come on."""
    from multiprocessing import Pipe
    from types import SimpleNamespace

    from delen_ros.ros.ingress import IngressPool, NoteBuffer
    pool = object.__new__(IngressPool)
    frames_r, frames_w = Pipe(duplex=False)
    pool._processes = [SimpleNamespace(frames=frames_r, dead=False, notes=NoteBuffer())]
    pool.read_many = True
    pool._wake_r, pool._wake_w = os.pipe()
    pool._closing, pool.ring_full, pool._warned = False, 0, 0.0
    pool._rings, pool._cameras = {}, {}
    pool._log = log
    return pool, frames_w


def _stop_reader(pool, reader) -> None:
    pool._closing = True
    os.write(pool._wake_w, b'x')
    reader.join(timeout=5.0)
    os.close(pool._wake_r)
    os.close(pool._wake_w)


def test_the_reader_outlives_a_log_that_fails():
    """A warning whose logging raised (rclpy once refused it) killed the frame reader: the node then
    served nothing. The reader must go on with the next note."""
    import threading

    from delen_ros.ros.ingress import _FRAME

    def failing_log(level, text):
        raise ValueError('Logger severity cannot be changed between calls.')
    pool, frames_w = _reader_alone(failing_log)
    reader = threading.Thread(target=pool._read, daemon=True)
    reader.start()
    for _ in range(3):   # every slot busy: counted, and a warning that fails to log
        frames_w.send_bytes(_FRAME.pack(b'F', 0, -1, 100, 0))
        pool._warned = 0.0
    wait_until(lambda: pool.ring_full == 3, timeout=5.0,
               what=lambda: f'the reader stopped after {pool.ring_full} note(s)')
    assert reader.is_alive()
    pool._restart = lambda proc: (_ for _ in ()).throw(OSError('cannot start a receiver'))
    frames_w.close()                                  # the receiver "died", and restarting it fails
    time.sleep(0.2)
    assert reader.is_alive(), 'a failed restart must not end the reader'
    _stop_reader(pool, reader)


def test_the_notes_of_one_read_are_handled_within_around_notes():
    """DELEN_BATCH_UPLOADS=1: the node's Engine.held_submits wraps each read's notes, so that a burst's
    frames are uploaded together when the read's notes are done."""
    import contextlib
    import threading

    from delen_ros.ros.ingress import _FRAME
    pool, frames_w = _reader_alone(lambda level, text: None)
    reads = []

    @contextlib.contextmanager
    def around():
        before = pool.ring_full
        yield
        reads.append((before, pool.ring_full))
    pool.around_notes = around
    for _ in range(3):   # three notes in the pipe before the reader looks: one read
        frames_w.send_bytes(_FRAME.pack(b'F', 0, -1, 100, 0))
    reader = threading.Thread(target=pool._read, daemon=True)
    reader.start()
    wait_until(lambda: reads, timeout=5.0, what='a read')
    assert reads == [(0, 3)], 'the three notes handled inside one around_notes'
    _stop_reader(pool, reader)


def test_one_logger_takes_every_severity_in_turn():
    import rclpy.logging

    from delen_ros.ros.node import log_at
    logger = rclpy.logging.get_logger('delen_log_at_test')
    for level in ('info', 'warning', 'error', 'info'):
        log_at(logger, level, f'log_at: {level}')   # rclpy raises if one call site changes severity

    def one_site(level):
        getattr(logger, level)(f'one site: {level}')
    one_site('info')
    with pytest.raises(ValueError, match='severity'):
        one_site('warning')   # why log_at has one call per severity


@pytest.mark.skipif(native_receiver() is None, reason='the C receiver is not built here')
def test_the_c_receiver_takes_frames_into_slots_and_grows_its_ring(tmp_path: pathlib.Path, monkeypatch):
    """DELEN_RECEIVER_IN_SLOT=1: frames are taken straight into ring slots; a bigger frame than the
    slots is taken aside and a bigger ring made, and both sizes are answered intact."""
    monkeypatch.delenv('DELEN_RECEIVER', raising=False)
    monkeypatch.setenv('DELEN_RECEIVER_IN_SLOT', '1')   # the node's environment comes from this one
    with node_and_peer(tmp_path, ingress_processes=1) as (node, peer):
        wait_until(lambda: '1 C receiver process(es)' in node.log(), timeout=10.0, what=lambda: node.log()[-2000:])
        [collector] = register_cameras(peer, ['/slots/cam'])
        rng = np.random.default_rng(1)
        small = array_to_image(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
        big = array_to_image(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        feeder = ImageFeeder(peer, {'/slots/cam': [small]}, rate_hz=RATE_HZ, reliable=True)
        wait_until(lambda: len(collector.messages()) >= 10, timeout=15.0, what=lambda: node.log()[-3000:])
        feeder.set_frames('/slots/cam', [big])
        time.sleep(1.0)                                   # frames of the old size still in flight
        t_after = time.time_ns()
        wait_until(lambda: len(collector.messages(since_ns=t_after)) >= 10, timeout=15.0,
                   what=lambda: f'no results after the frames grew past their slots\n{node.log()[-3000:]}')
        feeder.stop()
        assert 'malformed' not in node.log() and 'ended (exit' not in node.log(), node.log()[-3000:]
        assert node.alive()


# --- the frames pipe's notes, read many at a time -------------------------------------------------------

def _framed(*notes: bytes) -> bytes:
    return b''.join(len(n).to_bytes(4, 'big') + n for n in notes)


def test_notes_are_read_whole_however_the_pipe_cuts_them():
    from delen_ros.ros.ingress import NoteBuffer
    notes = [b'F' + bytes(range(20)), b'Rpath/of/a/ring', b'', b'Ereceiver 1: x' * 3]
    stream = _framed(*notes)
    for cut in range(1, len(stream)):   # every place a read can end
        r, w = os.pipe()
        try:
            buffer, got = NoteBuffer(), []
            os.write(w, stream[:cut])
            got += buffer.take(r)
            os.write(w, stream[cut:])
            got += buffer.take(r)
            assert got == notes, cut
        finally:
            os.close(r)
            os.close(w)


def test_a_closed_pipe_is_an_end_of_file_and_many_notes_come_in_one_read():
    from multiprocessing.connection import Connection
    from delen_ros.ros.ingress import NoteBuffer
    r, w = os.pipe()
    sender = Connection(w, readable=False)   # the Python receiver's framing
    for i in range(100):
        sender.send_bytes(b'F' + i.to_bytes(20, 'little'))
    buffer = NoteBuffer()
    notes = buffer.take(r)
    assert len(notes) == 100 and notes[7] == b'F' + (7).to_bytes(20, 'little')
    sender.close()
    with pytest.raises(EOFError):
        buffer.take(r)
    os.close(r)
