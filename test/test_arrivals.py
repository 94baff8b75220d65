"""The engine's measurements of arriving frames: percentiles as numpy's, without its per-call cost."""
from __future__ import annotations

import doctest
import random

import numpy as np
import pytest

from delen_ros.core import arrivals
from delen_ros.core.arrivals import Tail, percentile


def test_doctests():
    assert doctest.testmod(arrivals).failed == 0


@pytest.mark.parametrize('n', [1, 2, 3, 10, 511, 512])
@pytest.mark.parametrize('q', [0, 1, 50, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(n, q):
    values = [random.Random(n).uniform(0, 50) for _ in range(n)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-9)


def test_percentile_of_nothing_is_nan_and_input_is_left_alone():
    assert np.isnan(percentile([], 50))
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


def test_tail_forgets_values_past_its_horizon():
    tail = Tail(window=8, horizon_ns=1_000)
    tail.add(100.0, now_ns=0)
    tail.add(1.0, now_ns=900)
    assert tail.p99(now_ns=950) == pytest.approx(float(np.percentile([100.0, 1.0], 99)))
    assert tail.p99(now_ns=1_500) == 1.0   # the stall at t=0 is forgotten
    assert tail.p99(now_ns=5_000) is None


def test_tail_can_be_read_while_another_thread_adds_to_it():
    """The engine reads the frames' age tail outside its lock (admission's checks) while submit()
    appends to it: a read must never see the deque change under it (it raised 'deque mutated during
    iteration' in 572 of 20 000 reads here, before the read copied it first)."""
    import sys
    import threading
    import time
    tail, stop, errors = Tail(), threading.Event(), []
    tail.add(1.0, time.perf_counter_ns())

    def writer() -> None:
        while not stop.is_set():
            tail.add(1.0, time.perf_counter_ns())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # hand the GIL over as often as the interpreter allows
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(20_000):
            try:
                assert tail.p99(time.perf_counter_ns()) == 1.0
            except RuntimeError as exc:
                errors.append(exc)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
