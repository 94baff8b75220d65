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
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ['HostMemory', 'HOST_MEMORY', 'cuda_host_api', 'pinnable', 'raw_copy_api']

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


def _loaded_cudart() -> ctypes.CDLL | None:
    """The CUDA runtime library torch loaded in this process (the same instance: same per-thread
    device, same streams), or ``None`` where there is none to find (torch built with it inside)."""
    try:
        with open('/proc/self/maps') as maps:
            path = next((line.split()[-1] for line in maps if '/libcudart' in line), None)
        return None if path is None else ctypes.CDLL(path)
    except OSError:
        return None


def _clear_cuda_error() -> None:
    """Reset the CUDA runtime's last error after a refused registration; torch would otherwise
    report it at its next kernel launch on this thread."""
    try:
        cudart = _loaded_cudart()
        if cudart is not None:
            cudart.cudaGetLastError()
    except AttributeError:
        pass


_H2D = 1   # cudaMemcpyHostToDevice
_HOST_REGISTER_PORTABLE = 1   # cudaHostRegisterPortable


def raw_copy_api() -> Callable[[int, int, int, int], bool] | None:
    """``copy(device_address, host_address, nbytes, stream_handle)``: one ``cudaMemcpyAsync`` host to
    device on the runtime torch loaded, true on success; ``None`` where that runtime cannot be
    reached (or ``DELEN_RAW_COPY=0``). Cheaper for the calling thread than a torch copy per frame
    (dispatch, stream bookkeeping): 14 against 25 µs a frame of a 32-frame batch on the H200 host
    (``benchmarks/upload_paths.py``)."""
    if os.environ.get('DELEN_RAW_COPY') == '0':
        return None
    cudart = _loaded_cudart()
    memcpy = getattr(cudart, 'cudaMemcpyAsync', None)
    if memcpy is None:
        return None
    memcpy.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p)
    memcpy.restype = ctypes.c_int

    def copy(device_address: int, host_address: int, nbytes: int, stream: int) -> bool:
        if memcpy(device_address, host_address, nbytes, _H2D, stream) == 0:
            return True
        cudart.cudaGetLastError()   # not torch's to report: the caller copies the frame another way
        return False

    return copy


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
        # Portable: pinned for every device's context, not only the current one's (a node driving
        # cuda:0 and cuda:1 copies frames of one ring to both); cudaHostAlloc's memory is portable
        # under UVA, cudaHostRegister's is not unless asked
        if ok(host_register(address, nbytes, _HOST_REGISTER_PORTABLE)):
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
        return self.copy_all_from((array,), launch)

    def copy_all_from(self, arrays: Sequence[np.ndarray], launch: Callable[[], tuple[Any, Any]]) -> Any | None:
        """:meth:`copy_from` for several arrays copied by one ``launch`` (one event): ``None``, and
        nothing launched, unless every one of them lies wholly in a registered range."""
        if not self._starts or not arrays:
            return None
        with self._lock:
            starts = {self._start_of(array) for array in arrays}
            if None in starts:
                return None
            result, event = launch()
            for start in starts:
                self._ranges[start][1] = event
            return result

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` lies wholly in a registered range now (a hint: it may be unregistered
        next; :meth:`copy_all_from` checks again under the lock)."""
        if not self._starts:
            return False
        with self._lock:
            return self._start_of(array) is not None

    def _start_of(self, array: np.ndarray) -> int | None:
        """The start of the registered range ``array`` lies wholly in, or ``None``. Under ``_lock``."""
        first = array.__array_interface__['data'][0]
        i = bisect.bisect_right(self._starts, first) - 1
        if i < 0 or first + array.nbytes > self._ranges[self._starts[i]][0]:
            return None
        return self._starts[i]

    def __len__(self) -> int:
        return len(self._starts)


#: the process's registry
HOST_MEMORY = HostMemory()
