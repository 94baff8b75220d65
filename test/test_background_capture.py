"""Background graph capture: which sizes are captured when, how a batch runs on the sizes captured so
far, the capture thread's publication, stop and resume, and the engine serving meanwhile.

On CPU the runner's CUDA parts are replaced by fakes (:class:`FakeGraph` runs the module eagerly, the
capture thread gets no CUDA device or stream); the CUDA tests at the end use the real ones.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time

import numpy as np
import pytest
import torch

from delen_ros.core import runner as runner_module
from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine
from delen_ros.core.runner import (StageRunner, capture_order, faster_backend, replay_plan, run_until_stopped,
                                   split_capture_sizes)
from fakes import fake_image, fake_model, synthetic_profile

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='no CUDA device')


# --- the pure parts ----------------------------------------------------------------------------------
@pytest.mark.parametrize('sizes, background, expected', [
    ((1, 2, 4, 8), True, ((1,), (2, 4, 8))),
    ((8, 4, 1, 2, 2), True, ((1,), (2, 4, 8))),   # unordered, repeated
    ((1, 32), True, ((1,), (32,))),
    ((1,), True, ((1,), ())),
    ((1, 2, 4, 8), False, ((1, 2, 4, 8), ())),
    ((2, 4), True, ((2,), (4,))),                 # the smallest first, whatever it is
])
def test_split_capture_sizes(sizes, background, expected):
    assert split_capture_sizes(sizes, background=background) == expected


@pytest.mark.parametrize('sizes', [(), (0, 1), (-1,)])
def test_split_capture_sizes_rejects(sizes):
    with pytest.raises(ValueError, match='sizes'):
        split_capture_sizes(sizes, background=True)


def test_capture_order_goes_size_by_size_then_exit_by_exit():
    assert capture_order((2, 8), 3) == [(2, 0), (2, 1), (2, 2), (8, 0), (8, 1), (8, 2)]
    assert capture_order((), 3) == []


@pytest.mark.parametrize('n, captured, expected', [
    (13, (1, 2, 4), ((4, 4), (4, 4), (4, 4), (1, 1))),
    (13, (4, 1, 2), ((4, 4), (4, 4), (4, 4), (1, 1))),    # order of the captured sizes is no matter
    (7, (1, 4), ((4, 4), (3, 4))),                        # the last chunk padded up
    (6, (1, 2, 4), ((4, 4), (2, 2))),
    (3, (1, 2, 4, 8), ((3, 4),)),                         # a captured size holds it: one padded replay
    (8, (1, 2, 4, 8), ((8, 8),)),
    (5, (1,), ((1, 1),) * 5),
    (1, (1,), ((1, 1),)),
    (9, (1, 8), ((8, 8), (1, 1))),
    (32, (1, 2), ((2, 2),) * 16),
])
def test_replay_plan(n, captured, expected):
    assert replay_plan(n, captured) == expected


@pytest.mark.parametrize('captured', [(1,), (1, 2), (1, 2, 4), (1, 4), (1, 32), (1, 2, 4, 8, 16, 32), (2, 3)])
def test_replay_plan_covers_every_row_with_the_fewest_replays(captured):
    largest = max(captured)
    for n in range(1, 70):
        plan = replay_plan(n, captured)
        assert sum(rows for rows, _ in plan) == n
        assert all(size in captured and 1 <= rows <= size for rows, size in plan)
        assert len(plan) == (1 if n <= largest else math.ceil(n / largest))
        # only the last replay is padded, and up to the smallest captured size that holds its rows
        assert all(rows == size for rows, size in plan[:-1])
        rows, size = plan[-1]
        assert size == min(s for s in captured if s >= rows)


@pytest.mark.parametrize('n, captured', [(0, (1,)), (-3, (1, 2)), (4, ()), (4, (0, 1))])
def test_replay_plan_rejects(n, captured):
    with pytest.raises(ValueError):
        replay_plan(n, captured)


def test_run_until_stopped_looks_at_the_flag_before_each_job():
    stop = threading.Event()
    ran: list[int] = []

    def run(job: int) -> None:
        ran.append(job)
        if job == 2:
            stop.set()   # e.g. Engine.stop during the capture of job 2: it finishes, 3 and 4 don't start

    assert run_until_stopped([1, 2, 3, 4], run, stop) == [1, 2] == ran
    assert run_until_stopped([5, 6], run, stop) == [] and ran == [1, 2]


def test_run_until_stopped_propagates_a_failure_after_the_jobs_before_it():
    ran: list[int] = []

    def run(job: int) -> None:
        if job == 3:
            raise RuntimeError('capture failed')
        ran.append(job)

    with pytest.raises(RuntimeError, match='capture failed'):
        run_until_stopped([1, 2, 3, 4], run, threading.Event())
    assert ran == [1, 2]



def test_run_until_stopped_waits_for_its_gate_before_each_job():
    stop, ran, answers = threading.Event(), [], iter([False, False, True, True, False, True])
    assert run_until_stopped([1, 2, 3], ran.append, stop, gate=lambda: next(answers), poll_s=0.001) == [1, 2, 3]
    assert ran == [1, 2, 3]   # and every answer was asked: two waits before job 1, one before job 3
    assert next(answers, None) is None


def test_a_closed_gate_gives_way_to_stop():
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    ran: list[int] = []
    assert run_until_stopped([1, 2], ran.append, stop, gate=lambda: False, poll_s=0.005) == [] and ran == []


def test_trials_when_idle_lets_them_start_only_while_the_worker_waits_and_no_frame_was_pushed_out():
    model = fake_model()
    engine = Engine(model, synthetic_profile(), on_result=lambda r: None, device='cpu', queue_depth=1)
    engine.set_app('a', Bounds())
    assert engine._trial_may_start()                     # the default: back to back
    engine.trials_when_idle = True                       # the A/B (DELEN_TRIALS_WHEN_IDLE=1)
    assert engine._trial_may_start()                     # not serving: no worker to take the GIL from
    engine._thread = threading.current_thread()          # as if serving (the worker itself is not needed)
    engine._idle = False
    assert not engine._trial_may_start()                 # serving
    engine._idle = True
    assert engine._trial_may_start()                     # waiting for frames
    engine.submit(['a'], fake_image(1))
    engine.submit(['a'], fake_image(2))                  # pushes the first out: behind
    assert not engine._trial_may_start()
    engine.trials_when_idle = False
    assert engine._trial_may_start()
    engine._thread = None

# --- the runner's machinery on CPU, with fake graphs ---------------------------------------------------
class FakeGraph:
    """Stands in for ``runner._Graph`` on CPU: the same buffers and padding, the module run eagerly
    at replay. Every capture and replay is logged; a capture of a size in ``gates`` waits for its
    event first, one in ``fail`` raises."""

    log: list[tuple[str, str, int, object]] = []   # ('capture' | 'replay', thread name, batch, pool)
    gates: dict[int, threading.Event] = {}
    fail: set[int] = set()
    capture_s = 0.0

    def __init__(self, module, example, batch, *, pool, as_float, stream=None, keep_output=False, cudnn=True):
        self.cudnn = cudnn
        if batch in self.gates:
            self.gates[batch].wait(10)
        if batch in self.fail:
            raise RuntimeError(f'fake capture failure at batch {batch}')
        if self.capture_s:
            time.sleep(self.capture_s)
        self.module, self.as_float, self.batch, self.pool = module, as_float, batch, pool
        self.static_in = torch.zeros((batch,) + tuple(example.shape[1:]), dtype=example.dtype)
        self.static_in[:example.shape[0]].copy_(example[:batch])
        self.warm_output = module(self.static_in) if keep_output else None
        self.log.append(('capture', threading.current_thread().name, batch, pool))

    def replay_ms(self):
        """A cuDNN trial's timing: cuDNN wins from batch 4 up (as on an H200: even at 1, 4x faster at 32)."""
        return (0.5 if self.batch >= 4 else 1.2) if self.cudnn else 1.0

    def __call__(self, x):
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        out = self.module(self.static_in)   # the whole padded batch, as a replay runs it
        self.log.append(('replay', threading.current_thread().name, self.batch, self.pool))
        return (out.float() if self.as_float else out)[:n].clone()


@pytest.fixture
def fake_graphs(monkeypatch):
    """Fake graphs, pools and capture-thread context for StageRunner on CPU."""
    FakeGraph.log, FakeGraph.gates, FakeGraph.fail, FakeGraph.capture_s = [], {}, set(), 0.0

    @contextlib.contextmanager
    def no_cuda(self):
        yield None, lambda: None

    monkeypatch.setattr(runner_module, '_Graph', FakeGraph)
    monkeypatch.setattr(StageRunner, '_capture_thread_context', no_cuda)
    monkeypatch.setattr(StageRunner, '_new_pool', lambda self: object())
    yield FakeGraph
    for gate in FakeGraph.gates.values():   # never leave a capture thread waiting
        gate.set()


def graph_runner(num_exits: int = 2, max_batch: int = 8, native_first: bool = False, **kwargs) -> StageRunner:
    """A CPU StageRunner that takes the CUDA-graph paths (with :func:`fake_graphs`); the cuDNN
    trials of ``native_first`` are tested on their own, below."""
    runner = StageRunner(fake_model(num_exits), device='cpu', max_batch=max_batch, native_first=native_first,
                         **kwargs)
    runner.cuda_graphs = True
    return runner


def frames(n: int) -> torch.Tensor:
    """``n`` fake-model inputs, each of its own class and sharpness (rows can be told apart)."""
    return torch.stack([torch.from_numpy(fake_image(i % 4, 40 + 13 * i)).float()[None] for i in range(n)])


def run_chain(runner: StageRunner, x: torch.Tensor) -> list[torch.Tensor]:
    x = runner.to_input(x)
    logits = []
    for k in range(runner.num_exits):
        x = runner.stage(k, x)
        logits.append(runner.head(k, x))
    return logits


def replays(log, since: int = 0) -> list[int]:
    return [b for what, _, b, _ in log[since:] if what == 'replay']


def test_warmup_captures_batch_1_only_and_leaves_the_rest_pending(fake_graphs):
    runner = graph_runner(num_exits=3)
    runner.warmup()
    captures = [(thread, b) for what, thread, b, _ in fake_graphs.log if what == 'capture']
    assert captures == [(threading.current_thread().name, 1)] * 6   # stage and head of 3 exits, batch 1
    state = runner.capture_state()
    assert (state.pending, state.running, state.done, state.error) == ((2, 4, 8), False, False, None)
    assert runner.graph_count == 6


def test_a_pending_size_runs_as_replays_of_captured_ones_never_a_capture_on_the_caller(fake_graphs):
    model = fake_model(2)
    runner = graph_runner()
    runner.warmup()
    expected = model(frames(5))
    mark = len(fake_graphs.log)
    got = run_chain(runner, frames(5))
    assert all(what == 'replay' for what, *_ in fake_graphs.log[mark:])   # nothing captured, nothing eager
    assert replays(fake_graphs.log, mark) == [1] * 5 * 4   # 5 rows x (stage + head) x 2 exits
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)   # chunks concatenated in order


def test_background_capture_publishes_every_size_in_order_each_in_its_own_pool(fake_graphs):
    runner = graph_runner(num_exits=2)
    runner.warmup()
    assert runner.start_background_capture() is True
    assert runner.wait_background_capture(timeout=10) is True
    state = runner.capture_state()
    assert state.done and not state.running and state.error is None and state.seconds > 0
    assert runner.graph_count == 2 * 2 * 4
    background = [(thread, b, pool) for what, thread, b, pool in fake_graphs.log if what == 'capture' and b > 1]
    assert [b for _, b, _ in background] == [2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8]
    assert {thread for thread, _, _ in background} == {'delen-capture'}
    pools = {b: {id(pool) for _, size, pool in background if size == b} for b in (2, 4, 8)}
    assert all(len(p) == 1 for p in pools.values())             # one pool per size ...
    assert len(set().union(*pools.values())) == 3                # ... of its own
    assert runner._pool not in [pool for _, _, pool in background]
    mark = len(fake_graphs.log)
    torch.testing.assert_close(run_chain(runner, frames(5))[-1], fake_model(2)(frames(5))[-1])
    assert replays(fake_graphs.log, mark) == [8] * 4             # padded up to 8 now, one replay a call
    assert runner.start_background_capture() is False            # nothing left


def test_a_size_is_used_as_soon_as_it_is_captured(fake_graphs):
    runner = graph_runner(num_exits=2)
    runner.warmup()
    fake_graphs.gates[4] = threading.Event()   # the capture thread waits before size 4
    runner.start_background_capture()
    end = time.monotonic() + 10
    while runner.capture_state().pending != (4, 8) and time.monotonic() < end:
        time.sleep(0.005)
    assert runner.capture_state().pending == (4, 8) and runner.capture_state().running
    mark = len(fake_graphs.log)
    got = run_chain(runner, frames(7))
    assert replays(fake_graphs.log, mark) == [2, 2, 2, 1] * 4    # 7 = 2 + 2 + 2 + 1, on size 2 and 1
    torch.testing.assert_close(got[-1], fake_model(2)(frames(7))[-1])
    fake_graphs.gates[4].set()
    assert runner.wait_background_capture(timeout=10)


def test_stop_lets_the_capture_under_way_finish_and_start_resumes(fake_graphs):
    runner = graph_runner(num_exits=2)
    runner.warmup()
    fake_graphs.gates[2] = threading.Event()
    runner.start_background_capture()
    time.sleep(0.05)
    assert runner.stop_background_capture(timeout=0.05) is False   # waiting inside a capture: not cut
    assert runner.capture_state().running
    fake_graphs.gates[2].set()
    assert runner.stop_background_capture(timeout=10) is True
    state = runner.capture_state()
    assert not state.running and state.error is None
    # the pair under way (stage 0 and head 0 of size 2) was finished; nothing after it started
    assert [b for what, _, b, _ in fake_graphs.log if what == 'capture' and b > 1] == [2, 2]
    assert state.pending == (2, 4, 8)
    assert runner.start_background_capture() is True               # resumes where it stopped
    assert runner.wait_background_capture(timeout=10)
    assert [b for what, _, b, _ in fake_graphs.log if what == 'capture' and b > 1] == [2] * 4 + [4] * 4 + [8] * 4


def test_a_failed_capture_leaves_its_sizes_pending_and_serving_on_the_others(fake_graphs, caplog):
    runner = graph_runner(num_exits=2)
    runner.warmup()
    fake_graphs.fail.add(4)
    runner.start_background_capture()
    assert runner.wait_background_capture(timeout=10) is False
    state = runner.capture_state()
    assert state.pending == (4, 8) and not state.running
    assert 'fake capture failure at batch 4' in state.error
    assert 'background graph capture stopped' in caplog.text
    mark = len(fake_graphs.log)
    torch.testing.assert_close(run_chain(runner, frames(6))[-1], fake_model(2)(frames(6))[-1])
    assert replays(fake_graphs.log, mark) == [2, 2, 2] * 4


def test_warmup_without_background_captures_every_size_up_front(fake_graphs):
    runner = graph_runner(num_exits=2, background_capture=False)
    runner.warmup()
    assert runner.graph_count == 2 * 2 * 4 and runner.capture_state().done
    assert {thread for what, thread, _, _ in fake_graphs.log if what == 'capture'} == {threading.current_thread().name}
    assert runner.start_background_capture() is False


def test_warmup_without_background_stops_a_running_capture_and_does_the_rest_itself(fake_graphs):
    runner = graph_runner(num_exits=2)
    runner.warmup()
    fake_graphs.capture_s = 0.02
    runner.start_background_capture()
    runner.warmup(background=False)
    assert not runner.capture_state().running and runner.capture_state().done
    assert runner.graph_count == 2 * 2 * 4   # each key captured once, by one thread or the other


def test_explicit_batch_sizes_capture_them_now(fake_graphs):
    runner = graph_runner(num_exits=2)
    runner.warmup([1, 4])
    assert runner.graph_count == 2 * 2 * 2 and runner.capture_state().pending == ()


def test_without_warmup_a_first_use_still_captures_lazily(fake_graphs):
    runner = graph_runner(num_exits=2)
    run_chain(runner, frames(3))   # pads to 4: captured on first use, as before
    assert [b for what, _, b, _ in fake_graphs.log if what == 'capture'] == [4] * 4
    assert runner.start_background_capture() is False   # warmup was not asked to leave anything


# --- native first: PyTorch's own convolutions at once, cuDNN tried afterwards ----------------------------
def test_faster_backend_takes_the_best_replay_of_each_and_native_on_a_tie():
    assert faster_backend([0.80, 0.79], [0.83, 0.82]) == 'native'
    assert faster_backend([6.7, 6.9, 7.1], [1.7, 9.0, 1.6]) == 'cudnn'   # a slowed-down trial does not count
    assert faster_backend([1.0], [1.0]) == 'native'
    with pytest.raises(ValueError):
        faster_backend([], [1.0])


def captures(log, since: int = 0) -> list[int]:
    return [b for what, _, b, _ in log[since:] if what == 'capture']


def test_native_first_captures_every_size_natively_then_tries_cudnn_for_the_larger_ones(fake_graphs):
    runner = graph_runner(num_exits=2, native_first=True, trial_smallest=True)
    runner.warmup()
    # native: 1, 2, 4, 8 (stage and head of 2 exits); then per larger size, largest first, a cuDNN
    # pair and a native twin pair per exit
    assert captures(fake_graphs.log) == [1] * 4 + [2] * 4 + [4] * 4 + [8] * 4 + [8] * 8 + [4] * 8 + [2] * 8
    assert {thread for what, thread, _, _ in fake_graphs.log} == {threading.current_thread().name}
    assert runner.conv_backends() == {(kind, k, b): 'cudnn' if b >= 4 else 'native'
                                      for kind in ('stage', 'head') for k in range(2) for b in (1, 2, 4, 8)}
    assert runner.cudnn_trials()[('stage', 0, 8)] == (1.0, 0.5)
    assert runner.cudnn_trials()[('head', 1, 2)] == (1.0, 1.2)
    state = runner.capture_state()
    assert state.pending == () and state.to_upgrade == (1,) and not state.settled


def test_native_first_keeps_batch_1_native_and_starts_no_thread_by_default(fake_graphs):
    runner = graph_runner(num_exits=2, native_first=True)
    runner.warmup()
    state = runner.capture_state()
    assert state.pending == () and state.to_upgrade == () and state.settled
    assert {runner.conv_backends()[kind, k, 1] for kind in ('stage', 'head') for k in range(2)} == {'native'}
    assert ('stage', 0, 1) not in runner.cudnn_trials() and len(runner.cudnn_trials()) == 2 * 2 * 3
    assert runner.start_background_capture() is False and not runner.capture_state().running


def test_native_first_leaves_batch_1_s_trial_to_the_background(fake_graphs):
    runner = graph_runner(num_exits=2, native_first=True, trial_smallest=True)
    runner.warmup()
    mark = len(fake_graphs.log)
    assert runner.start_background_capture() is True
    end = time.monotonic() + 10
    while not runner.capture_state().settled and time.monotonic() < end:
        time.sleep(0.005)
    state = runner.capture_state()
    assert state.settled and state.error is None
    assert captures(fake_graphs.log, mark) == [1] * 8
    assert {thread for what, thread, _, _ in fake_graphs.log[mark:] if what == 'capture'} == {'delen-capture'}
    assert runner.conv_backends()[('stage', 0, 1)] == 'native' and runner.cudnn_trials()[('stage', 0, 1)] == (1.0, 1.2)
    mark = len(fake_graphs.log)
    torch.testing.assert_close(run_chain(runner, frames(5))[-1], fake_model(2)(frames(5))[-1])
    assert replays(fake_graphs.log, mark) == [8] * 4
    end = time.monotonic() + 10
    while runner.capture_state().running and time.monotonic() < end:
        time.sleep(0.005)
    assert runner.start_background_capture() is False   # nothing left to capture or try


def test_trials_while_serving_leave_warmup_the_native_captures_only(fake_graphs):
    runner = graph_runner(num_exits=2, native_first=True, trials_while_serving=True)
    runner.warmup()
    # every size natively, no trial yet: configure's warm-up in milliseconds
    assert captures(fake_graphs.log) == [1] * 4 + [2] * 4 + [4] * 4 + [8] * 4
    assert set(runner.conv_backends().values()) == {'native'} and runner.cudnn_trials() == {}
    assert runner.capture_state().to_upgrade == (2, 4, 8) and not runner.capture_state().settled
    mark = len(fake_graphs.log)
    assert runner.start_background_capture() is True
    # served meanwhile, on the native graphs
    torch.testing.assert_close(run_chain(runner, frames(5))[-1], fake_model(2)(frames(5))[-1])
    wait_for(lambda: runner.capture_state().settled)
    # on the capture thread, the largest size first (where cuDNN wins most); batch 1 stays native
    trial_sizes = [b for what, thread, b, _ in fake_graphs.log[mark:] if what == 'capture' and thread == 'delen-capture']
    assert trial_sizes == [8] * 8 + [4] * 8 + [2] * 8
    assert runner.conv_backends() == {(kind, k, b): 'cudnn' if b >= 4 else 'native'
                                      for kind in ('stage', 'head') for k in range(2) for b in (1, 2, 4, 8)}
    assert runner.capture_state().error is None


def test_native_first_trials_stop_and_resume(fake_graphs):
    runner = graph_runner(num_exits=2, native_first=True, trial_smallest=True)
    runner.warmup()
    fake_graphs.gates[1] = threading.Event()   # batch 1 is only captured again by its trial
    runner.start_background_capture()
    time.sleep(0.05)
    assert runner.stop_background_capture(timeout=0.05) is False   # inside the trial's first capture
    fake_graphs.gates[1].set()
    assert runner.stop_background_capture(timeout=10)
    assert runner.capture_state().to_upgrade == (1,)   # exit 1 not tried yet
    assert runner.start_background_capture() is True
    end = time.monotonic() + 10
    while not runner.capture_state().settled and time.monotonic() < end:
        time.sleep(0.005)
    assert runner.capture_state().settled and len(runner.cudnn_trials()) == 2 * 2 * 4


def test_without_background_capture_graphs_use_cudnn_and_nothing_is_tried(fake_graphs):
    runner = graph_runner(num_exits=2, native_first=True, background_capture=False)
    runner.warmup()
    assert set(runner.conv_backends().values()) == {'cudnn'} and runner.graph_count == 2 * 2 * 4
    assert runner.capture_state().settled and runner.start_background_capture() is False


# --- the engine ----------------------------------------------------------------------------------------
def graph_engine(runner: StageRunner, results: list) -> Engine:
    return Engine(runner.model, synthetic_profile(runner.num_exits), runner=runner, policy='always_final',
                  max_batch=8, queue_depth=16, on_result=results.append, device_preprocess=False)


def wait_for(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError('timed out')
        time.sleep(0.005)


def test_engine_serves_while_the_larger_sizes_are_captured(fake_graphs):
    runner = graph_runner(num_exits=2)
    fake_graphs.gates[2] = threading.Event()   # the background stays at its first capture
    results: list = []
    engine = graph_engine(runner, results)
    engine.set_app('a', Bounds())
    engine.start()
    try:
        assert runner.capture_state().running and runner.capture_state().pending == (2, 4, 8)
        mark = len(fake_graphs.log)
        for i in range(6):
            engine.submit(['a'], fake_image(i % 4, 200), tag=i)
        wait_for(lambda: len(results) == 6)
        assert sorted(r.tag for r in results) == list(range(6))
        assert all(r.class_id == r.tag % 4 and r.exit_index == 1 for r in results)
        served = [(thread, b) for what, thread, b, _ in fake_graphs.log[mark:]]
        assert all(thread == 'delen-engine' and b == 1 for thread, b in served)   # batch-1 replays only
    finally:
        fake_graphs.gates[2].set()
        engine.stop()
    assert not runner.capture_state().running


def test_engine_stop_does_not_wait_for_the_remaining_sizes_and_start_resumes(fake_graphs):
    runner = graph_runner(num_exits=2, max_batch=32)
    fake_graphs.capture_s = 0.05   # 2 pairs x 5 sizes x 0.1 s: 1 s of background capture
    engine = graph_engine(runner, [])
    engine.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    engine.stop(timeout=5.0)
    assert time.monotonic() - t0 < 0.5   # the capture under way finished; the others did not start
    state = runner.capture_state()
    assert not state.running and not state.done and state.error is None
    engine.start(warm_up=False)
    try:
        assert runner.wait_background_capture(timeout=10)
    finally:
        engine.stop()
    assert runner.graph_count == 2 * 2 * 6


def test_engine_warm_up_without_background_capture_captures_everything(fake_graphs):
    runner = graph_runner(num_exits=2)
    engine = graph_engine(runner, [])
    engine.warm_up(background_capture=False)
    assert runner.graph_count == 2 * 2 * 4 and not runner.capture_state().running


def test_engine_graph_count_follows_the_background(fake_graphs):
    runner = graph_runner(num_exits=2)
    engine = graph_engine(runner, [])
    engine.warm_up()
    runner.wait_background_capture(timeout=10)
    assert engine.graph_count() == runner.graph_count == 16
    engine.stop()


# --- CUDA --------------------------------------------------------------------------------------------
def conv_runner(*, cuda_graphs: bool, max_batch: int = 8, half: bool = False, native_first: bool = True,
                trial_smallest: bool = True) -> StageRunner:
    """With batch 1's cuDNN trial by default: the background thread beside the worker is what these test."""
    from test_runner import conv_model
    return StageRunner(conv_model(seed=1), device='cuda', half=half, cuda_graphs=cuda_graphs, max_batch=max_batch,
                       native_first=native_first, trial_smallest=trial_smallest)


def cuda_chain(runner: StageRunner, x: torch.Tensor) -> list[torch.Tensor]:
    logits = run_chain(runner, x)
    runner.synchronize()
    return [t.cpu() for t in logits]


@needs_cuda
@pytest.mark.parametrize('half', [False, True])
@pytest.mark.parametrize('native_first', [False, True])
def test_cuda_replays_match_eager_while_the_background_captures(half, native_first):
    """The worker's replays go on while the capture thread warms up and captures the larger sizes
    (or tries cuDNN for batch 1, replaying its candidates to time them): every answer must stay the
    eager one (no shared memory, no race on the static buffers)."""
    eager = conv_runner(cuda_graphs=False, half=half)
    graphs = conv_runner(cuda_graphs=True, half=half, native_first=native_first)
    # fp32: native convolutions against cuDNN's (TF32 on by default from Ampere on)
    tol = dict(rtol=2e-2, atol=2e-2) if half else dict(rtol=5e-3, atol=5e-3)
    graphs.warmup()
    if native_first:
        assert graphs.graph_count == 2 * 3 * 4 and graphs.capture_state().to_upgrade == (1,)
    else:
        assert graphs.graph_count == 2 * 3 and graphs.capture_state().pending == (2, 4, 8)
    torch.manual_seed(0)
    inputs = [torch.randn(b, 3, 16, 16) for b in (1, 3, 8, 5, 2, 7)]
    expected = [cuda_chain(eager, x) for x in inputs]
    graphs.start_background_capture()
    rounds = 0
    while graphs.capture_state().running or rounds < 3:
        for x, want in zip(inputs, expected):
            for a, b in zip(cuda_chain(graphs, x), want):
                torch.testing.assert_close(a, b, **tol)
        rounds += 1
    state = graphs.capture_state()
    assert state.settled and state.error is None and state.seconds > 0
    assert graphs.graph_count == 2 * 3 * 4


@needs_cuda
def test_cuda_native_first_settles_on_the_faster_backend_of_each_graph():
    graphs = conv_runner(cuda_graphs=True)
    graphs.warmup()
    assert {graphs.conv_backends()[kind, k, 1] for kind in ('stage', 'head') for k in range(3)} == {'native'}
    assert len(graphs.cudnn_trials()) == 2 * 3 * 3   # sizes 2, 4 and 8 tried in warmup
    graphs.start_background_capture()
    graphs.wait_background_capture(timeout=120)
    end = time.monotonic() + 120
    while graphs.capture_state().running and time.monotonic() < end:
        time.sleep(0.01)
    state = graphs.capture_state()
    assert state.settled and state.error is None
    trials = graphs.cudnn_trials()
    assert set(trials) == set(graphs.conv_backends()) and len(trials) == 2 * 3 * 4
    for key, (native_ms, cudnn_ms) in trials.items():
        assert native_ms > 0 and cudnn_ms > 0
        assert graphs.conv_backends()[key] == ('cudnn' if cudnn_ms < native_ms else 'native'), key
    assert torch.backends.cudnn.enabled   # the process-wide flag is back


@needs_cuda
def test_cuda_pending_sizes_run_as_replays_of_batch_1():
    eager = conv_runner(cuda_graphs=False)
    graphs = conv_runner(cuda_graphs=True, native_first=False)
    graphs.warmup()   # no background thread started: sizes 2, 4 and 8 stay pending
    x = torch.randn(6, 3, 16, 16)
    for a, b in zip(cuda_chain(graphs, x), cuda_chain(eager, x)):
        torch.testing.assert_close(a, b, rtol=5e-3, atol=5e-3)   # native graphs, eager on cuDNN
    assert graphs.graph_count == 2 * 3   # nothing captured on this thread


@needs_cuda
def test_cuda_engine_stop_joins_the_capture_thread_before_memory_is_freed():
    results: list = []
    runner = conv_runner(cuda_graphs=True, max_batch=32)
    engine = Engine(runner.model, synthetic_profile(3), runner=runner, policy='always_final', max_batch=32,
                    on_result=results.append)
    engine.set_app('a', Bounds())
    engine.start()
    engine.submit(['a'], np.zeros((16, 16, 3), np.uint8), tag=0)
    engine.stop(timeout=10.0)
    assert not runner.capture_state().running
    torch.cuda.empty_cache()   # asserts inside PyTorch if a capture were still under way


def test_engine_graph_report_follows_the_cudnn_trials(fake_graphs):
    runner = graph_runner(num_exits=2, native_first=True, trial_smallest=True)
    engine = graph_engine(runner, [])
    start = runner.start_background_capture
    runner.start_background_capture = lambda: False   # batch 1's cuDNN trial held back
    engine.warm_up()
    # every size captured; the larger ones tried in warm-up (the fake's cuDNN wins from batch 4)
    assert engine.graph_report() == {'graphs_captured': 16, 'graphs_on_cudnn': 8, 'pointwise_matmul': False,
                                     'graphs_settled': False}
    assert start() is True
    wait_for(lambda: engine.graph_report()['graphs_settled'])
    assert engine.graph_report() == {'graphs_captured': 16, 'graphs_on_cudnn': 8, 'pointwise_matmul': False,
                                     'graphs_settled': True}
    engine.stop()


def test_engine_graph_report_without_graphs():
    from fakes import FakeRunner
    model = fake_model(2)
    engine = Engine(model, synthetic_profile(2), runner=FakeRunner(model), on_result=lambda r: None)
    assert engine.graph_report() == {'graphs_captured': 0, 'graphs_on_cudnn': 0, 'pointwise_matmul': False,
                                     'graphs_settled': True}


def test_pointwise_matmul_captures_every_size_natively_and_tries_nothing(fake_graphs):
    """1x1 convolutions as matrix products: no cuDNN at all, so warm-up captures every size with it
    off and nothing is left to try, before serving or while (whatever the trial options say)."""
    runner = graph_runner(num_exits=2, pointwise_matmul=True, trial_smallest=True, trials_while_serving=True)
    runner.warmup()
    assert captures(fake_graphs.log) == [1] * 4 + [2] * 4 + [4] * 4 + [8] * 4
    assert set(runner.conv_backends().values()) == {'native'} and runner.cudnn_trials() == {}
    assert runner.capture_state().settled and runner.start_background_capture() is False
