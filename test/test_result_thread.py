"""The node's result thread: results published in order on a thread of their own, never dropped."""
import threading
import time

import pytest

from delen_ros.ros.result_thread import ResultThread


class Sink:
    def __init__(self, delay_s: float = 0.0, fail_on=None):
        self.got, self.threads = [], set()
        self.delay_s, self.fail_on = delay_s, fail_on
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, result):
        if threading.current_thread().name == 'delen-publish':
            self.gate.wait(5.0)   # holds the result thread only
        if result == self.fail_on:
            raise RuntimeError('a bad result')
        time.sleep(self.delay_s)
        self.threads.add(threading.current_thread().name)
        self.got.append(result)


def _wait(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.001)
    return predicate()


def test_not_started_it_publishes_on_the_callers_thread():
    sink = Sink()
    results = ResultThread(sink)
    results(1)
    assert sink.got == [1] and sink.threads == {threading.current_thread().name}


def test_started_it_publishes_in_order_on_its_own_thread():
    sink = Sink()
    results = ResultThread(sink)
    results.start()
    try:
        for i in range(500):
            results(i)
        assert _wait(lambda: len(sink.got) == 500)
    finally:
        results.stop()
    assert sink.got == list(range(500))
    assert sink.threads == {'delen-publish'} and results.published_by_caller == 0


def test_stop_publishes_what_is_queued_and_a_stopped_one_publishes_inline():
    sink = Sink()
    results = ResultThread(sink)
    results.start()
    sink.gate.clear()   # the thread holds on its first result
    for i in range(10):
        results(i)
    sink.gate.set()
    results.stop()
    assert sink.got == list(range(10)) and not results.running
    results(10)
    assert sink.got[-1] == 10


def test_a_full_queue_makes_the_caller_wait_then_publish_itself_never_drop():
    sink = Sink()
    results = ResultThread(sink, limit=3, wait_s=0.01)
    results.start()
    try:
        sink.gate.clear()   # the thread is stuck on its first result: the queue fills
        for i in range(8):
            results(i)
        assert results.published_by_caller >= 1    # published on this thread after a short wait
        assert results.pending() <= 3               # bounded
        sink.gate.set()
        assert _wait(lambda: len(sink.got) == 8)
    finally:
        results.stop()
    assert sorted(sink.got) == list(range(8))


def test_a_failing_result_does_not_stop_the_others():
    sink = Sink(fail_on=3)
    results = ResultThread(sink)
    results.start()
    try:
        for i in range(6):
            results(i)
        assert _wait(lambda: len(sink.got) == 5)
    finally:
        results.stop()
    assert sink.got == [0, 1, 2, 4, 5]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        ResultThread(print, limit=0)
