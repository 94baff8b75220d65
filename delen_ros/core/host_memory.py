"""Host memory registered with CUDA (``cudaHostRegister``): frames uploaded from it without a staging copy.

The receivers hand frames over in shared-memory rings (:mod:`delen_ros.core.frame_ring`). Registered
with the driver, a ring's pages are pinned: a ``non_blocking`` copy of a frame viewed in place is
a DMA straight from the slot, instead of a CPU copy into a pinned buffer first: 34 against 131 µs of
the thread that takes every camera's frames, per 640x480 frame on an H200 host
(``benchmarks/upload_paths.py``).

One registry per process (:data:`HOST_MEMORY`), because a registration belongs to the process, not
to any engine. Its owner (the node, for the rings it maps) registers a range once it is mapped and
unregisters it before unmapping; :class:`~delen_ros.core.preprocess.DevicePreprocessor` uploads a frame through
:meth:`HostMemory.copy_from`, which launches the copy only if the frame lies in a registered range
and keeps its event, so that unregistering waits for the last copy from the range. Only rings on
a ``tmpfs`` are registered (:func:`pinnable`); where registration fails anyway (no CUDA), frames take
the staged path.
"""
from __future__ import annotations

import bisect
import ctypes
import os
import threading
from typing import Any, Callable

import numpy as np

__all__ = ['HostMemory', 'HOST_MEMORY', 'cuda_host_api', 'pinnable']

def pinnable(path: str) -> bool:
    """Whether a file mapped from ``path`` can be registered: it is on a ``tmpfs`` (``/dev/shm``).
    The driver refuses file-backed pages elsewhere (they cannot be pinned for long)."""
    real, best, kind = os.path.realpath(path), '', ''
    try:
        with open('/proc/self/mounts') as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace('\\040', ' ')
                if (real == point or real.startswith(point.rstrip('/') + '/')) and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return False
    return kind == 'tmpfs'


def _clear_cuda_error() -> None:
    """Reset the CUDA runtime's last error after a refused registration; torch would otherwise
    report it at its next kernel launch on this thread."""
    try:
        with open('/proc/self/maps') as maps:
            path = next((line.split()[-1] for line in maps if '/libcudart' in line), None)
        if path is not None:
            ctypes.CDLL(path).cudaGetLastError()
    except (OSError, AttributeError):
        pass


def cuda_host_api() -> tuple[Callable[[int, int], bool], Callable[[int], bool]] | None:
    """``(register(address, nbytes), unregister(address))`` on torch's CUDA runtime binding, each
    true on success; ``None`` where CUDA is not available."""
    import torch
    if not torch.cuda.is_available():
        return None
    try:
        cudart = torch.cuda.cudart()
        host_register, host_unregister = cudart.cudaHostRegister, cudart.cudaHostUnregister
    except (AttributeError, RuntimeError):
        return None

    def ok(err: Any) -> bool:
        return int(getattr(err, 'value', err)) == 0   # cudaSuccess

    def register(address: int, nbytes: int) -> bool:
        if ok(host_register(address, nbytes, 0)):
            return True
        _clear_cuda_error()
        return False

    return register, lambda address: ok(host_unregister(address))


class HostMemory:
    """Registered host ranges, by start address; thread-safe.

    :param api: ``(register, unregister)`` as :func:`cuda_host_api` gives (the default, looked up at
        the first registration); tests pass fakes.
    """

    def __init__(self, api: tuple[Callable[[int, int], bool], Callable[[int], bool]] | None = None):
        self._api = api
        self._lock = threading.Lock()
        self._starts: list[int] = []                      # sorted
        self._ranges: dict[int, list[Any]] = {}           # start -> [end, last copy's event or None]
        self.failed = 0                                   # registrations the driver refused

    def register(self, address: int, nbytes: int) -> bool:
        """Register ``[address, address + nbytes)``; false (and nothing changes) where it cannot be."""
        if nbytes <= 0:
            return False
        with self._lock:
            if address in self._ranges:
                return True
            if self._api is None:
                self._api = cuda_host_api() or (None, None)
            register = self._api[0]
            if register is None or not register(address, nbytes):
                self.failed += 1   # the caller logs it: the frames of that range are staged
                return False
            bisect.insort(self._starts, address)
            self._ranges[address] = [address + nbytes, None]
            return True

    def unregister(self, address: int) -> None:
        """Unregister the range starting at ``address`` (no-op if it is not registered), once the
        last copy reported from it is done. Call it before the memory is unmapped."""
        with self._lock:
            entry = self._ranges.pop(address, None)
            if entry is None:
                return
            self._starts.remove(address)
        if entry[1] is not None:
            entry[1].synchronize()
        self._api[1](address)

    def copy_from(self, array: np.ndarray, launch: Callable[[], tuple[Any, Any]]) -> Any | None:
        """``launch()`` -- which queues a copy of ``array`` and returns ``(result, event)``, the event
        completing when the copy is done -- run while ``array``'s range stays registered; its result,
        or ``None`` (nothing launched) where ``array`` is not wholly in a registered range.

        The lock is held across the launch, so that :meth:`unregister` waits for every copy that
        found the range registered.
        """
        if not self._starts:
            return None
        first = array.__array_interface__['data'][0]
        with self._lock:
            i = bisect.bisect_right(self._starts, first) - 1
            if i < 0 or first + array.nbytes > self._ranges[self._starts[i]][0]:
                return None
            result, event = launch()
            self._ranges[self._starts[i]][1] = event
            return result

    def __len__(self) -> int:
        return len(self._starts)


#: the process's registry
HOST_MEMORY = HostMemory()
