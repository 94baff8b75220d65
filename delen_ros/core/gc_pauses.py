"""Python's garbage collector kept off the frame path.

A full collection walks every object the collector tracks. In a process that has imported torch and
rclpy and loaded a model that is ~190 000 objects, and one full collection took 85 ms on a 2-core VM:
a stall of the GIL, so of the inference worker, the frames' hand-over and the publication, during
which frames under a 33 ms bound go late. Full collections come more often the more frames a second
the process serves (every frame leaves objects that live a while: queued requests, results, stats).

Everything alive when the node activates lives as long as the engine: :func:`freeze_long_lived`
moves it to the permanent generation, which collections skip (``gc.freeze``); :func:`thaw` undoes it
when the engine goes, so that what it leaves behind can be collected. :class:`PauseRecorder` times
every collection (``gc.callbacks``): the node's ``/diagnostics`` report the longest of each period.

``DELEN_GC_FREEZE=0`` leaves the collector as Python sets it (an A/B switch for benchmarks).
"""
from __future__ import annotations

import gc
import os
import threading
import time

__all__ = ['freeze_long_lived', 'thaw', 'PauseRecorder', 'pause_recorder', 'pause_report']


def freeze_long_lived() -> int:
    """Collect once, then exempt every object alive now from later collections. Returns how many
    objects are frozen (0 with ``DELEN_GC_FREEZE=0``)."""
    if os.environ.get('DELEN_GC_FREEZE', '1') == '0':
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw() -> None:
    """Return the frozen objects to the collector (before freeing what :func:`freeze_long_lived` kept)."""
    gc.unfreeze()


class PauseRecorder:
    """Times Python's collections: per generation, how many and the longest, since the last read.

    A callback of ``gc.callbacks`` runs at each collection's start and stop, on the thread that
    triggered it and under the GIL: it only reads the clock and adds to counters.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start_ns = 0
        self._counts = [0, 0, 0]
        self._max_ms = [0.0, 0.0, 0.0]
        self._total_ms = 0.0

    def install(self) -> 'PauseRecorder':
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == 'start':
            self._start_ns = time.perf_counter_ns()
            return
        ms = (time.perf_counter_ns() - self._start_ns) / 1e6
        generation = min(2, max(0, int(info.get('generation', 0))))
        with self._lock:
            self._counts[generation] += 1
            self._max_ms[generation] = max(self._max_ms[generation], ms)
            self._total_ms += ms

    def read(self, *, reset: bool = True) -> dict[str, float | int]:
        """``collections_gen{0,1,2}``, ``pause_max_ms_gen{0,1,2}`` and ``pause_total_ms`` since the
        last reset."""
        with self._lock:
            out: dict[str, float | int] = {f'collections_gen{g}': self._counts[g] for g in range(3)}
            out.update({f'pause_max_ms_gen{g}': round(self._max_ms[g], 3) for g in range(3)})
            out['pause_total_ms'] = round(self._total_ms, 3)
            if reset:
                self._counts, self._max_ms, self._total_ms = [0, 0, 0], [0.0, 0.0, 0.0], 0.0
        return out


_recorder: PauseRecorder | None = None
_recorder_lock = threading.Lock()


def pause_recorder() -> PauseRecorder:
    """The process's recorder, installed on first use."""
    global _recorder
    with _recorder_lock:
        if _recorder is None:
            _recorder = PauseRecorder().install()
        return _recorder


def pause_report() -> dict:
    """For ``/diagnostics``: Python's collections since the last report (a long one stalls every thread)."""
    pauses = pause_recorder().read()
    return {'gc_full_collections': pauses['collections_gen2'], 'gc_pause_total_ms': pauses['pause_total_ms'],
            'gc_pause_max_ms': max(pauses[f'pause_max_ms_gen{g}'] for g in range(3))}
