"""glibc heap settings for a process that takes camera frames, so its RSS follows the frames in flight.

Why: a ``raw=True`` subscription hands each 640x480 rgb8 frame over as a fresh 921 KB ``bytes``
object, allocated and freed on the executor thread. After the first such block is freed, glibc's
dynamic mmap threshold rises above the frame size; later frames land in the main heap, and the holes
they leave stay in RSS (benchmarks/cpu/memory_growth: +10-27 MB at 8 cameras, returned by a
``malloc_trim(0)``). Two remedies, each glibc-only (a no-op returning False elsewhere, e.g. musl,
macOS):

- :func:`fix_mmap_threshold`: blocks of 256 KB and more are always mmapped, so a freed frame goes
  back to the OS at once (a fixed threshold also turns the dynamic one off). Costs a mmap, munmap
  and page faults per frame.
- :func:`release_free_heap` (``malloc_trim(0)``), periodically from :func:`start_heap_trimmer`:
  returns freed heap pages, including the worker arena's preprocessing scratch.

:func:`apply_heap_policy` picks them by name; ``DELEN_HEAP`` in the environment overrides the name
(``off``, ``threshold``, ``trim`` or ``both``). The node's default is ``off``: on a 2-core VM
(benchmarks/cpu/memory_growth, session 7) neither remedy brought the 8-camera node's RSS measurably
down, since what grows there is mostly frames still in flight, and the fixed threshold costs 5-29 %
more CPU per frame (a mmap, page faults and a munmap per block). They stay for deployments that
would rather pay CPU than keep a transient high-water mark.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading

__all__ = ['HEAP_POLICIES', 'FRAME_MMAP_THRESHOLD_BYTES', 'TRIM_PERIOD_S', 'is_glibc', 'fix_mmap_threshold',
           'release_free_heap', 'start_heap_trimmer', 'apply_heap_policy']

HEAP_POLICIES = ('off', 'threshold', 'trim', 'both')
FRAME_MMAP_THRESHOLD_BYTES = 256 * 1024   # well under a 640x480 rgb8 frame, above most other blocks
TRIM_PERIOD_S = 1.0                       # a trim costs ~0.04 ms: negligible at 1 Hz, not per frame
_M_MMAP_THRESHOLD = -3                    # mallopt's parameter number, from glibc's <malloc.h>


@functools.lru_cache(maxsize=None)   # looked up once, not on each trim
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it alone has ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith('linux'):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, 'gnu_get_libc_version') and hasattr(libc, 'malloc_trim') else None


def is_glibc() -> bool:
    """Whether this process's allocator is glibc's malloc (what the functions here tune)."""
    return _glibc() is not None


def fix_mmap_threshold(threshold_bytes: int = FRAME_MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc mmap every block of ``threshold_bytes`` or more, so it is unmapped (RSS returned) when
    freed. Returns whether it was set (False: not glibc, or glibc refused the value)."""
    if threshold_bytes <= 0:
        raise ValueError(f'threshold_bytes must be positive, got {threshold_bytes!r}')
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)) == 1)


def release_free_heap() -> bool:
    """``malloc_trim(0)``: give freed pages of every arena back to the OS. Returns whether it ran (glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))   # its return (whether anything was released) is not needed
    return True


def start_heap_trimmer(period_s: float = TRIM_PERIOD_S) -> threading.Thread | None:
    """A daemon thread that calls :func:`release_free_heap` every ``period_s``; None where not glibc.
    ctypes lets go of the GIL for the call, so the trim does not stall the Python threads."""
    if period_s <= 0:
        raise ValueError(f'period_s must be positive, got {period_s!r}')
    if not is_glibc():
        return None
    idle = threading.Event()   # never set: only its timed wait is used

    def trim_forever() -> None:
        while not idle.wait(period_s):
            release_free_heap()
    thread = threading.Thread(target=trim_forever, name='delen-heap-trim', daemon=True)
    thread.start()
    return thread


def apply_heap_policy(policy: str = 'off') -> str:
    """Apply ``policy`` (one of :data:`HEAP_POLICIES`), or ``DELEN_HEAP`` from the environment when
    set. Returns the policy applied: ``off`` where the process is not on glibc."""
    policy = os.environ.get('DELEN_HEAP', policy).strip().lower()
    if policy not in HEAP_POLICIES:
        raise ValueError(f'heap policy must be one of {", ".join(HEAP_POLICIES)}, got {policy!r}')
    if policy == 'off' or not is_glibc():
        return 'off'
    if policy in ('threshold', 'both'):
        fix_mmap_threshold()
    if policy in ('trim', 'both'):
        start_heap_trimmer()
    return policy
