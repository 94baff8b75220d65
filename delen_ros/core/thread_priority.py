"""A thread's own scheduling priority: its nice value, set from inside the thread.

On Linux each thread has a nice value of its own (``setpriority`` on its thread id), so the engine's worker
can be put ahead of the cameras, the recorder and the other processes on a robot's few cores without
touching the rest of the node. A lower value needs ``CAP_SYS_NICE`` or an ``RLIMIT_NICE`` that allows it
(``ulimit -e``, ``/etc/security/limits.conf``); a higher one is always allowed. The caller is told why not
rather than stopped: the node serves at the old priority.
"""
from __future__ import annotations

import os
import sys
import threading

__all__ = ['NICE_RANGE', 'own_nice', 'set_own_nice']

#: the values Linux accepts
NICE_RANGE = (-20, 19)


def own_nice() -> int | None:
    """The calling thread's nice value, or ``None`` where a thread has none of its own (not Linux)."""
    if not sys.platform.startswith('linux'):
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def set_own_nice(nice: int) -> str | None:
    """Give the calling thread the nice value ``nice``; ``None`` when done, else why not (one line).

    >>> set_own_nice(own_nice() or 0) is None or not sys.platform.startswith('linux')
    True
    """
    if not NICE_RANGE[0] <= nice <= NICE_RANGE[1]:
        return f'nice {nice} is outside {NICE_RANGE[0]}..{NICE_RANGE[1]}'
    if not sys.platform.startswith('linux'):
        return f'a thread of its own priority needs Linux (this is {sys.platform})'
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except PermissionError:
        return (f'not permitted to lower the nice value to {nice} (needs CAP_SYS_NICE or an RLIMIT_NICE '
                f'that allows it: ulimit -e)')
    except OSError as exc:
        return f'setpriority failed: {exc}'
    return None
