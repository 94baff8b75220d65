"""An opt-in flight recorder: what each of the node's threads did, and when, to find out why a frame
was late.

The figures a user sees (latency at the result topic, its split into queue / compute / the rest) say
*that* a frame was late, not what held it up. With ``DELEN_TRACE=<file>`` in its environment, the
process keeps the last :data:`CAPACITY` spans of the threads that share the GIL and the device
(the worker's turns, frame submissions, status ticks, admission re-checks, meter reads, graph
captures, garbage collections, result publications), each as ``(kind, thread, start_ns, end_ns,
fields)`` on the engine's clock (``time.perf_counter_ns``), and writes them as JSON lines when it
exits. Without it :data:`RECORDER` is ``None`` and every hook costs one attribute test.
"""
from __future__ import annotations

import atexit
import collections
import gc
import itertools
import json
import os
import threading
import time
from typing import Any

__all__ = ['CAPACITY', 'FlightRecorder', 'RECORDER']

#: spans kept (the newest): ~60 s of a 16-camera node at 30 Hz
CAPACITY = 400_000


class FlightRecorder:
    """Spans kept in a bounded deque (appends are atomic under the GIL: no lock on the hot path).

    Give fields as numbers, strings and tuples of them, not lists. Each span is kept as one flat tuple,
    which the collector stops tracking at its first young collection. Kept as a tuple holding a dict, 400 000
    spans brought 7 full collections of up to 44 ms on the 2-core VM (and one of 8-19 ms into each of session
    25's traced H200 runs); flat, 2 of up to 2 ms."""

    def __init__(self, path: str, capacity: int = CAPACITY):
        self.path = path
        self.spans: collections.deque = collections.deque(maxlen=capacity)
        self._gc_start = 0
        self._written = False

    def add(self, kind: str, start_ns: int, end_ns: int, /, **fields: Any) -> None:
        # one flat tuple of atomic values: the collector untracks it at its first young collection (a
        # tuple holding a dict or other tuples stays tracked, or adds to the young collections' work)
        self.spans.append((kind, threading.current_thread().name, start_ns, end_ns, *itertools.chain(*fields.items())))

    def _gc(self, phase: str, info: dict) -> None:
        if phase == 'start':
            self._gc_start = time.perf_counter_ns()
        else:
            self.add('gc', self._gc_start, time.perf_counter_ns(), generation=info.get('generation'))

    def write(self) -> None:
        """Write every span kept as JSON lines (once; later calls do nothing)."""
        if self._written:
            return
        self._written = True
        with open(self.path, 'w', encoding='utf-8') as f:
            for kind, thread, start, end, *fields in list(self.spans):
                f.write(json.dumps({'kind': kind, 'thread': thread, 'start_ns': start, 'end_ns': end,
                                    **dict(zip(fields[::2], fields[1::2]))},
                                   default=str) + '\n')


def _from_environment() -> FlightRecorder | None:
    path = os.environ.get('DELEN_TRACE', '')
    if not path:
        return None
    recorder = FlightRecorder(path.replace('{pid}', str(os.getpid())))
    gc.callbacks.append(recorder._gc)
    atexit.register(recorder.write)
    return recorder


#: the process's recorder, or ``None`` (``DELEN_TRACE`` unset)
RECORDER: FlightRecorder | None = _from_environment()
