"""What the node reports per application and per camera, over one status period (ROS-free).

The engine counts frames and drops; these accumulators count what the node actually *published*
(latency up to publication, bounds met at publication), so ``~/status`` and ``/diagnostics`` agree
with the result messages users see. Memory is bounded: at most ``max_samples`` latencies per period
(a uniform reservoir sample beyond that), counters otherwise.
"""
from __future__ import annotations

import dataclasses
import random
import threading

import numpy as np

__all__ = ['PeriodSummary', 'ResultStats', 'CameraCounters']


@dataclasses.dataclass(frozen=True)
class PeriodSummary:
    """Published results of one app over one period. Means are per result; ``nan`` when there were none."""

    results: int
    bounds_met: int
    latency_p50_ms: float
    latency_p99_ms: float
    energy_mj: float                 # total over the period
    mean_energy_mj: float
    mean_expected_accuracy: float
    exit_counts: tuple[int, ...]
    scored: int                      # results whose true label was known
    correct: int

    @property
    def attainment(self) -> float:
        """Fraction of results with every bound met, 0-1; ``nan`` with no results."""
        return self.bounds_met / self.results if self.results else float('nan')


class ResultStats:
    """Thread-safe accumulator of one app's published results; :meth:`take` ends a period.

    :param num_exits: exits of the model (length of ``exit_counts``).
    :param max_samples: latencies kept per period for the percentiles.
    """

    def __init__(self, *, num_exits: int, max_samples: int = 4096, seed: int = 0):
        if num_exits < 1:
            raise ValueError(f'num_exits must be >= 1, got {num_exits!r}')
        if max_samples < 1:
            raise ValueError(f'max_samples must be >= 1, got {max_samples!r}')
        self.num_exits, self.max_samples = num_exits, max_samples
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._results = self._met = self._scored = self._correct = 0
        self._energy = self._expected_accuracy = 0.0
        self._latencies: list[float] = []
        self._exits = [0] * self.num_exits

    def add(self, *, latency_ms: float, energy_mj: float, expected_accuracy: float, exit_index: int,
            bounds_met: bool, correct: bool | None = None) -> None:
        """Count one published result; ``correct`` is ``None`` when the true label is unknown."""
        with self._lock:
            self._results += 1
            self._met += bool(bounds_met)
            self._energy += energy_mj
            self._expected_accuracy += expected_accuracy
            if 0 <= exit_index < self.num_exits:
                self._exits[exit_index] += 1
            if correct is not None:
                self._scored += 1
                self._correct += bool(correct)
            if len(self._latencies) < self.max_samples:
                self._latencies.append(latency_ms)
            else:  # reservoir sampling keeps a uniform sample of the period
                j = self._rng.randrange(self._results)
                if j < self.max_samples:
                    self._latencies[j] = latency_ms

    def take(self) -> PeriodSummary:
        """The period so far, and start a new one."""
        with self._lock:
            n = self._results
            lat = np.asarray(self._latencies, dtype=np.float64)
            summary = PeriodSummary(
                results=n, bounds_met=self._met,
                latency_p50_ms=float(np.percentile(lat, 50)) if n else float('nan'),
                latency_p99_ms=float(np.percentile(lat, 99)) if n else float('nan'),
                energy_mj=self._energy, mean_energy_mj=self._energy / n if n else float('nan'),
                mean_expected_accuracy=self._expected_accuracy / n if n else float('nan'),
                exit_counts=tuple(self._exits), scored=self._scored, correct=self._correct)
            self._reset()
        return summary


class CameraCounters:
    """Frames received and conversion errors of one camera topic; totals and per period."""

    def __init__(self):
        self._lock = threading.Lock()
        self.frames_total = self.errors_total = 0
        self._frames = self._errors = 0

    def frame(self) -> None:
        with self._lock:
            self.frames_total += 1
            self._frames += 1

    def error(self) -> int:
        """Count a conversion error; returns the total so far."""
        with self._lock:
            self.errors_total += 1
            self._errors += 1
            return self.errors_total

    def take(self) -> tuple[int, int]:
        """``(frames, errors)`` this period, and start a new one."""
        with self._lock:
            out = (self._frames, self._errors)
            self._frames = self._errors = 0
        return out
