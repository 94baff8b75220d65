"""OS-level names for the threads the project starts.

Python's ``threading`` keeps a thread's name to itself: at the OS level every thread shows as the
process (``python3``) in ``/proc/<pid>/task/*/comm``, ``top -H``, ``perf`` and ``py-spy``, so the
CPU of the engine worker cannot be told from that of the frame reader or of rclpy. A thread calls
:func:`name_os_thread` first thing to fix that: the OS gets the name the thread has in Python. Linux
only; elsewhere it does nothing.

Threads that a named thread starts (torch's intra-op pool, the CUDA driver's) inherit its name
until they set their own.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import threading
from typing import Callable

__all__ = ['OS_NAME_MAX_BYTES', 'name_os_thread']

#: Linux keeps 15 bytes of a thread's name (16 with the terminating NUL); a longer one fails with ERANGE
OS_NAME_MAX_BYTES = 15


@functools.lru_cache(maxsize=1)
def _set_own_name() -> Callable[[bytes], int] | None:
    """``name -> pthread_setname_np(pthread_self(), name)`` from libc on Linux, else ``None``
    (macOS's takes no thread argument, and other systems spell it differently)."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        setname, self_id = libc.pthread_setname_np, libc.pthread_self
    except (OSError, AttributeError):
        return None
    setname.argtypes, setname.restype = [ctypes.c_ulong, ctypes.c_char_p], ctypes.c_int
    self_id.argtypes, self_id.restype = [], ctypes.c_ulong
    return lambda name: setname(self_id(), name)


def _os_name(name: str) -> bytes:
    """``name`` in UTF-8 cut to what the OS keeps, never inside a character (tools decode it)."""
    return name.encode('utf-8', 'replace')[:OS_NAME_MAX_BYTES].decode('utf-8', 'ignore').encode('utf-8')


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread the OS-level name ``name`` (``None``: its Python name), as much of it
    as fits in 15 bytes of UTF-8; a no-op where the platform has no way to, or if it fails: a name is
    a diagnostic, never worth an error."""
    set_own_name = _set_own_name()
    if set_own_name is None:
        return
    try:
        set_own_name(_os_name(threading.current_thread().name if name is None else name))   # failure: a return code, ignored
    except (OSError, ValueError, ctypes.ArgumentError):
        pass
