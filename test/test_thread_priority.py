"""The engine worker's own nice value (``worker_nice``): set from inside the thread, the rest of the process
untouched, and a refusal logged rather than fatal."""
import os
import sys
import threading
import time

import pytest

from delen_ros.core.engine import Engine
from delen_ros.core.thread_priority import own_nice, set_own_nice
from fakes import FakeRunner, fake_model, synthetic_profile

linux = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='a thread of its own priority: Linux')


def _in_thread(fn):
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=fn(), nice=own_nice()))
    thread.start()
    thread.join()
    return out


@linux
def test_a_thread_sets_its_own_nice_and_leaves_the_others_alone():
    before = own_nice()
    higher = min(before + 3, 19)   # a higher value is always allowed
    out = _in_thread(lambda: set_own_nice(higher))
    assert out == {'result': None, 'nice': higher}
    assert own_nice() == before


def test_a_value_linux_does_not_take_is_refused_with_its_range():
    out = _in_thread(lambda: set_own_nice(25))
    assert out['result'] == 'nice 25 is outside -20..19' and out['nice'] == own_nice()


@linux
def test_a_refused_raise_says_what_would_permit_it(monkeypatch):
    def refuse(*args):
        raise PermissionError(1, 'Operation not permitted')
    monkeypatch.setattr(os, 'setpriority', refuse)
    assert 'CAP_SYS_NICE' in set_own_nice(-5) and 'ulimit -e' in set_own_nice(-5)


def _engine(**kwargs) -> Engine:
    model = fake_model()
    return Engine(model, synthetic_profile(), on_result=lambda r: None,
                  runner=FakeRunner(model, sleep_ms=(0, 0, 0, 0)), **kwargs)


@pytest.mark.parametrize('bad', [20, -21, True, 1.5, '5'])
def test_the_engine_refuses_a_nice_value_linux_does_not_take(bad):
    with pytest.raises(ValueError, match='worker_nice'):
        _engine(worker_nice=bad)


def _worker_nice(engine: Engine) -> int:
    engine.start()
    try:
        deadline = time.monotonic() + 5.0
        while engine._thread.native_id is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)   # past the worker's first lines
        return os.getpriority(os.PRIO_PROCESS, engine._thread.native_id)
    finally:
        engine.stop()


@linux
def test_the_worker_runs_at_its_nice_value_and_the_process_keeps_its_own():
    before = own_nice()
    assert _worker_nice(_engine(worker_nice=min(before + 2, 19))) == min(before + 2, 19)
    assert _worker_nice(_engine()) == before   # None: the process's
    assert own_nice() == before


@linux
def test_a_worker_not_permitted_its_nice_logs_why_and_serves(monkeypatch, caplog):
    def refuse(*args):
        raise PermissionError(1, 'Operation not permitted')
    monkeypatch.setattr(os, 'setpriority', refuse)
    with caplog.at_level('WARNING', logger='delen_ros.core.engine'):
        assert _worker_nice(_engine(worker_nice=-5)) == own_nice()
    assert any("keeps the process's priority" in r.getMessage() and 'CAP_SYS_NICE' in r.getMessage()
               for r in caplog.records)
