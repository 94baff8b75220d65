"""FrameRing: frames handed between processes through shared memory (ROS-free)."""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from delen_ros.core.frame_ring import FrameRing


@pytest.fixture
def ring(tmp_path):
    writer = FrameRing.create(3, 100, directory=str(tmp_path))
    reader = FrameRing.attach(writer.path)
    yield writer, reader
    reader.close()
    writer.close(unlink=True)


def test_a_written_frame_is_read_in_place_and_its_slot_freed_with_the_last_view(ring):
    writer, reader = ring
    slot = writer.write(b'abcdef')
    assert slot == 0 and reader.busy() == 1
    view = reader.view(slot, 6)
    assert bytes(view) == b'abcdef'
    pixels = np.frombuffer(view, np.uint8, count=3, offset=2)   # what the node makes of it
    del view
    gc.collect()
    assert reader.busy() == 1, 'an array made from the view still holds the slot'
    assert bytes(pixels) == b'cde'
    del pixels
    assert reader.busy() == 0


def test_a_full_ring_refuses_a_frame_instead_of_overwriting_one(ring):
    writer, reader = ring
    slots = [writer.write(bytes([i]) * 10) for i in range(3)]
    assert sorted(slots) == [0, 1, 2]
    views = [reader.view(s, 10) for s in slots]
    assert writer.write(b'x' * 10) is None
    assert [bytes(v)[0] for v in views] == [0, 1, 2]
    del views[1]
    assert writer.write(b'y' * 10) == 1
    with pytest.raises(ValueError, match='do not fit'):
        writer.write(b'z' * 101)


def test_attach_removes_the_name_and_rejects_what_is_not_a_ring(tmp_path):
    writer = FrameRing.create(2, 8, directory=str(tmp_path))
    reader = FrameRing.attach(writer.path)
    assert not os.path.exists(writer.path)
    reader.close()
    writer.close()
    bogus = tmp_path / 'bogus'
    bogus.write_bytes(b'\0' * 256)
    with pytest.raises(ValueError, match='not a frame ring'):
        FrameRing.attach(str(bogus))
    with pytest.raises(ValueError):
        reader.view(5, 4)


def test_another_process_writes_what_this_one_reads(tmp_path):
    writer = FrameRing.create(2, 1 << 20, directory=str(tmp_path))
    reader = FrameRing.attach(writer.path, unlink=False)
    code = ('import sys; from delen_ros.core.frame_ring import FrameRing; import mmap, os\n'
            'fd = os.open(sys.argv[1], os.O_RDWR); mm = mmap.mmap(fd, os.fstat(fd).st_size); os.close(fd)\n'
            'r = FrameRing(sys.argv[1], mm, writer=True); print(r.write(bytes(range(256)) * 4096))')
    out = subprocess.run([sys.executable, '-c', code, writer.path], capture_output=True, text=True, check=True)
    slot = int(out.stdout)
    assert bytes(reader.view(slot, 1 << 20)) == bytes(range(256)) * 4096
    reader.close()
    writer.close(unlink=True)


def test_close_with_live_views_keeps_them_readable(ring):
    writer, reader = ring
    view = reader.view(writer.write(b'kept'), 4)
    reader.close()
    assert bytes(view) == b'kept'
