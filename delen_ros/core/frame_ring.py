"""Camera frames handed from one process to another through shared memory (one writer, one reader).

Why: a Python process that takes 30 Hz 640x480 frames from many cameras spends most of a core in
rclpy, and that core is the GIL the inference worker needs. Receiver processes (``ros/ingress.py``)
take the frames instead and copy each into a slot of a :class:`FrameRing`; the node reads the slot
in place and hands a view of it to the engine. The slot is free again once every view of it is
gone (the engine lets go of an image as soon as its pixels are on the device).

Layout of the file (in ``/dev/shm`` where it has room, else the temp folder)::

    magic 'DELENRG1' | slots u32 | pad u32 | slot_bytes u64 | state: one byte per slot | ... | slots

The writer only turns a state byte from 0 (free) to 1 (busy), the reader only from 1 to 0, so the
two processes need no lock. The writer announces a slot (over a pipe) after writing it, which
orders the pixels before the reader's first look; the reader frees it after its last read.
"""
from __future__ import annotations

import mmap
import os
import shutil
import struct
import tempfile
import threading
import weakref

import numpy as np

__all__ = ['FrameRing', 'shared_memory_dir']

_MAGIC = b'DELENRG1'
_HEADER = struct.Struct('<8sIIQ')
_ALIGN = 64   # slots start on cache lines: the pixel copies stay aligned


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def shared_memory_dir(needed_bytes: int = 0) -> str:
    """Where rings live: ``$DELEN_SHM_DIR``, else ``/dev/shm`` if it has ``needed_bytes`` free
    (containers often give it 64 MB), else the temp folder (page cache; still shared memory)."""
    chosen = os.environ.get('DELEN_SHM_DIR')
    if chosen:
        return chosen
    if os.path.isdir('/dev/shm'):
        try:
            if shutil.disk_usage('/dev/shm').free > 2 * needed_bytes:
                return '/dev/shm'
        except OSError:
            pass
    return tempfile.gettempdir()


class FrameRing:
    """``slots`` buffers of ``slot_bytes`` each in one shared file; see the module docstring.

    Make one with :meth:`create` (the writer) and open it with :meth:`attach` (the reader).
    """

    def __init__(self, path: str, mm: mmap.mmap, *, writer: bool):
        magic, slots, _, slot_bytes = _HEADER.unpack_from(mm, 0)
        if magic != _MAGIC or slots <= 0 or slot_bytes <= 0:
            raise ValueError(f'{path} is not a frame ring')
        if len(mm) < self._size(slots, slot_bytes):
            raise ValueError(f'{path} is truncated ({len(mm)} B)')
        self.path, self.slots, self.slot_bytes, self.writer = path, slots, slot_bytes, writer
        self._mm = mm
        view = np.frombuffer(mm, np.uint8)
        self.address, self.map_bytes = view.__array_interface__['data'][0], len(mm)   # the mapping, for pinning
        del view   # a live export would keep close() from unmapping
        self._state = _HEADER.size
        self._first = _aligned(_HEADER.size + slots)
        self._next = 0
        self._lock = threading.Lock()   # reader side: views may be freed on any thread

    @staticmethod
    def _size(slots: int, slot_bytes: int) -> int:
        return _aligned(_HEADER.size + slots) + slots * _aligned(slot_bytes)

    @classmethod
    def create(cls, slots: int, slot_bytes: int, *, directory: str | None = None,
               prefix: str = 'delen-frames-') -> 'FrameRing':
        """A new ring file (all slots free), mapped for writing."""
        if slots < 1 or slot_bytes < 1:
            raise ValueError(f'a ring needs slots >= 1 and slot_bytes >= 1, got {slots}, {slot_bytes}')
        size = cls._size(slots, slot_bytes)
        fd, path = tempfile.mkstemp(prefix=prefix, dir=directory or shared_memory_dir(size))
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        _HEADER.pack_into(mm, 0, _MAGIC, slots, 0, slot_bytes)
        return cls(path, mm, writer=True)

    @classmethod
    def attach(cls, path: str, *, unlink: bool = True) -> 'FrameRing':
        """Map an existing ring for reading; ``unlink``: remove its name now (the mappings stay, and
        nothing is left behind whichever process ends first)."""
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        if unlink:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return cls(path, mm, writer=False)

    def _offset(self, slot: int) -> int:
        return self._first + slot * _aligned(self.slot_bytes)

    # --- writer -------------------------------------------------------------------------------------
    def write(self, data) -> int | None:
        """Copy ``data`` (bytes-like, at most ``slot_bytes``) into a free slot and mark it busy;
        the slot's index, or ``None`` when every slot is still in use (the caller drops the frame)."""
        n = len(data)
        if n > self.slot_bytes:
            raise ValueError(f'{n} B do not fit a {self.slot_bytes} B slot')
        for i in range(self.slots):
            slot = (self._next + i) % self.slots
            if self._mm[self._state + slot] == 0:
                offset = self._offset(slot)
                self._mm[offset:offset + n] = data
                self._mm[self._state + slot] = 1
                self._next = (slot + 1) % self.slots
                return slot
        return None

    # --- reader -------------------------------------------------------------------------------------
    def view(self, slot: int, nbytes: int) -> memoryview:
        """The first ``nbytes`` of a busy slot, in place. The slot is freed when the view and every
        array made from it are gone."""
        if not 0 <= slot < self.slots or not 0 < nbytes <= self.slot_bytes:
            raise ValueError(f'slot {slot} / {nbytes} B outside the ring ({self.slots} x {self.slot_bytes} B)')
        pixels = np.frombuffer(self._mm, np.uint8, count=nbytes, offset=self._offset(slot))
        weakref.finalize(pixels, self.release, slot)
        return memoryview(pixels)

    def release(self, slot: int) -> None:
        """Give a slot back to the writer (also for a frame the reader decided not to look at)."""
        with self._lock:
            if not self._mm.closed:
                self._mm[self._state + slot] = 0

    def busy(self) -> int:
        """Slots in use now."""
        return sum(self._mm[self._state:self._state + self.slots])

    def close(self, *, unlink: bool = False) -> None:
        """Unmap (views still alive keep the memory until they go); ``unlink``: remove the file too."""
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        with self._lock:
            try:
                self._mm.close()
            except BufferError:   # views are alive: the mapping goes with the last of them
                pass
