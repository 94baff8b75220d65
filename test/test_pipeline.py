"""The worker's pipeline (``Engine.pipeline``): the next batch launched before the last one's
results are looked at. On the CPU nothing overlaps, but the bookkeeping is the same as on CUDA:
every frame answered as without it, a pending run looked at when no work follows, on stop, and
after a failure."""
import time

import pytest
import torch

from delen_ros.core.app_ledger import BEHIND_NS
from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine
from fakes import Collector, FakeRunner, fake_image, fake_model, synthetic_profile

torch.set_num_threads(1)
PROFILE = synthetic_profile()


class FakeClockNs:
    def __init__(self):
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.perf_counter_ns() + self.offset_ns


def make_engine(collector, runner=None, **kwargs):
    model = fake_model()
    return Engine(model, PROFILE, on_result=collector, runner=runner or FakeRunner(model), **kwargs)


def serve(pipeline):
    """A backlog of frames for three apps (one goes exit by exit on its frames' confidence), served
    to the end; returns what each frame got and the worker's pipelined runs."""
    c = Collector()
    engine = make_engine(c, pipeline=pipeline, max_batch=2, queue_depth=64)
    engine.set_app('final', Bounds())
    engine.set_app('accurate', Bounds(min_accuracy=0.8, objective='min_energy'))
    engine.set_app('other_camera', Bounds(max_latency_ms=5000.0))
    for i in range(12):   # queued before the worker starts: it is behind from its first batch
        engine.submit(['final', 'accurate'], fake_image(i % 4, (80, 160, 250)[i % 3]), tag=i)
        engine.submit(['other_camera'], fake_image((i + 1) % 4), tag=100 + i)
    with engine:
        results = c.wait(36)
        pipelined = engine.worker_stats().pipelined_runs
    return {(r.app_id, r.tag): (r.class_id, r.exit_index) for r in results}, pipelined


def test_a_pipelined_worker_answers_every_frame_as_an_unpipelined_one():
    plain, none_pipelined = serve('off')
    pipelined, pipelined_runs = serve('always')
    assert len(plain) == 36 and pipelined == plain
    assert none_pipelined == 0 and pipelined_runs > 0
    assert {exit_index for (app, _), (_, exit_index) in plain.items() if app == 'accurate'} != {3}


def test_a_pending_run_is_looked_at_when_no_work_follows_it():
    c = Collector()
    engine = make_engine(c, pipeline='always', max_batch=1)
    engine.set_app('a', Bounds())
    engine.set_app('b', Bounds())
    engine.submit(['a'], fake_image(1), tag='a')
    engine.submit(['b'], fake_image(2), tag='b')
    engine._serve_once()             # the worker's turn: one frame launched, the other still queued
    assert engine._pending_run is not None and c.results == []
    first = engine._pending_run.batch.requests[0].app_id
    engine.remove_app('b' if first == 'a' else 'a')   # nothing left to launch behind it
    assert engine._serve_once()
    assert engine._pending_run is None and [r.app_id for r in c.results] == [first]


def test_stopping_looks_at_the_pending_run_first():
    c = Collector()
    engine = make_engine(c, pipeline='always', max_batch=1)
    engine.set_app('a', Bounds())
    engine.set_app('b', Bounds())
    engine.submit(['a'], fake_image(1), tag=1)
    engine.submit(['b'], fake_image(3), tag=3)
    engine._serve_once()
    assert engine._pending_run is not None
    engine._stopping = True
    assert engine._serve_once() is False
    assert engine._pending_run is None and len(c.results) == 1


class FailingOnce(FakeRunner):
    """Its first synchronize (looking at a run's results) raises."""

    failed = False

    def synchronize(self):
        if not self.failed:
            self.failed = True
            raise RuntimeError('fake device failure')


def test_a_failure_looking_at_a_pending_run_counts_its_frames_failed_and_serving_goes_on():
    c = Collector()
    engine = make_engine(c, FailingOnce(fake_model()), pipeline='always', max_batch=1, queue_depth=8)
    engine.set_app('a', Bounds())
    for i in range(4):
        engine.submit(['a'], fake_image(i), tag=i)
    engine.start(warm_up=False)
    try:
        results = c.wait(3)
        time.sleep(0.05)
    finally:
        engine.stop()
    assert engine.stats('a').failed == 1
    assert sorted(r.tag for r in results) == [1, 2, 3]


def test_behind_pipelines_only_while_queues_push_frames_out():
    clock = FakeClockNs()
    engine = make_engine(Collector(), pipeline='behind', clock=clock)
    engine.set_app('a', Bounds())
    assert not engine._pipelining()
    engine.submit(['a'], fake_image(0))
    engine.submit(['a'], fake_image(1))   # queue_depth 1: frame 0 pushed out unserved
    assert engine._pipelining()
    clock.offset_ns += BEHIND_NS + 100_000_000
    assert not engine._pipelining()


def test_pipeline_defaults_and_validation():
    assert make_engine(Collector()).pipeline == 'off'
    with pytest.raises(ValueError, match='pipeline'):
        make_engine(Collector(), pipeline='sometimes')



def test_a_pipelined_runs_predicted_end_is_anchored_on_the_measured_end_of_the_one_before():
    """Chained on predictions alone, each turn added the prediction's error: with steps predicted at the
    profile's 1-4 ms and done at once, the predicted end ran ahead of the clock by more every turn, until
    every frame looked late and was served at its first exit (benchmarks/overload_collapse.py's sim)."""
    c = Collector()
    engine = make_engine(c, pipeline='always', max_batch=1, queue_depth=64)
    engine.corrector.update = lambda *args, **kwargs: None   # predictions stay the profile's, above the real time
    engine.set_app('a', Bounds(max_latency_ms=5000.0))
    for i in range(30):
        engine.submit(['a'], fake_image(i % 4), tag=i)
    ahead_ms, predicted_ms = [], []
    for _ in range(25):
        engine._serve_once()
        run = engine._pending_run
        if run is not None:
            ahead_ms.append((run.free_at - engine.clock()) / 1e6)
            predicted_ms.append(run.predicted_ns / 1e6)
    assert len(ahead_ms) >= 20
    assert max(ahead_ms) <= max(predicted_ms) + 1.0   # one run's prediction ahead at most, not one a turn
