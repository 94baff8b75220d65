"""CUDA graphs off configure's critical path (issue 8): batch 1 captured at warm-up, the other sizes
on a background thread while calls run eagerly; the bookkeeping on the CPU with a fake capture, the
real thing on CUDA (skipped without a GPU).

On a GPU: ``.venv/bin/python -m pytest -q test/test_graphs_background.py``.
"""
from __future__ import annotations

import threading
import time

import pytest
import torch

from delen_ros.core.engine import Engine
from delen_ros.core.runner import GraphSet, StageRunner, graph_batch_sizes
from fakes import fake_model, synthetic_profile

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='no CUDA device')


class FakeGraph:
    """Stands in for a CUDA graph: runs the module eagerly, remembers where it was built."""

    def __init__(self, module, example, batch, *, as_float):
        self.module, self.batch, self.as_float = module, batch, as_float
        self.static_in = torch.zeros((batch,) + tuple(example.shape[1:]), dtype=example.dtype)
        self.thread = threading.current_thread().name
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        out = self.module(x)
        return out.float() if self.as_float else out


def fake_runner(*, num_exits=4, max_batch=8, background=True, capture=FakeGraph) -> StageRunner:
    return StageRunner(fake_model(num_exits), device='cpu', cuda_graphs=True, max_batch=max_batch,
                       background_graphs=background, capture_graph=capture)


def keys(sizes, num_exits=4):
    return [(kind, k, s) for s in sizes for k in range(num_exits) for kind in ('stage', 'head')]


class Gate:
    """A fake capture that records its keys and blocks on ``release`` after ``block_after`` captures."""

    def __init__(self, *, block_after=0, fail=()):
        self.order, self.fail = [], set(fail)
        self.block_after = block_after
        self.release, self.blocked = threading.Event(), threading.Event()

    def __call__(self, key):
        if len(self.order) >= self.block_after and not self.release.is_set():
            self.blocked.set()
            self.release.wait(10)
        self.order.append(key)
        if key in self.fail:
            raise RuntimeError('capture failed')
        return key


# --- GraphSet: the schedule alone ------------------------------------------------------------------------
def test_planned_keys_are_captured_in_order_on_a_background_thread():
    gate = Gate()
    gate.release.set()
    graphs = GraphSet(gate)
    graphs.plan(keys([2, 4]))
    assert graphs.pending == 16 and not graphs.graphs
    assert graphs.wait(5)
    assert gate.order == keys([2, 4]) and graphs.pending == 0 and len(graphs.graphs) == 16
    assert graphs.planned(('head', 3, 4)) and not graphs.planned(('head', 3, 1))


def test_a_missed_size_is_captured_next():
    gate = Gate()
    graphs = GraphSet(gate)
    graphs.plan(keys([2, 4, 8]))
    graphs.start()
    assert gate.blocked.wait(5)   # the first key is being captured
    graphs.request(8)
    gate.release.set()
    assert graphs.wait(5)
    assert gate.order[0] == ('stage', 0, 2)
    assert [key[2] for key in gate.order[1:9]] == [8] * 8   # then all of batch 8
    assert sorted(gate.order) == sorted(keys([2, 4, 8]))


def test_stop_waits_for_the_capture_in_progress_and_leaves_the_rest_pending():
    gate = Gate(block_after=3)
    graphs = GraphSet(gate)
    graphs.plan(keys([2, 4]))
    graphs.start()
    assert gate.blocked.wait(5)
    assert graphs.stop(timeout=0.05) is False   # still in its fourth capture
    gate.release.set()
    assert graphs.stop(timeout=5) is True
    assert len(graphs.graphs) == 4 and graphs.pending == 12   # that capture finished, then the flag held
    assert graphs.wait(5)                                        # resumes
    assert len(graphs.graphs) == 16 and graphs.pending == 0


def test_a_failed_capture_is_not_retried_and_stays_planned():
    bad = ('head', 1, 4)
    gate = Gate(fail={bad})
    gate.release.set()
    graphs = GraphSet(gate)
    graphs.plan(keys([4]))
    assert graphs.wait(5)
    assert bad in graphs.failed and bad not in graphs.graphs and graphs.planned(bad)
    assert len(graphs.graphs) == 7 and graphs.pending == 0


def test_wait_times_out_while_capturing():
    gate = Gate()
    graphs = GraphSet(gate)
    graphs.plan(keys([2]))
    assert graphs.wait(0.05) is False
    gate.release.set()
    assert graphs.wait(5)


# --- StageRunner with a fake capture --------------------------------------------------------------------
def chain(runner, batch):
    x = runner.to_input(torch.rand(batch, 1, 8, 8) * 255)
    out = []
    for k in range(runner.num_exits):
        x = runner.stage(k, x)
        out.append(runner.head(k, x))
    return out


def test_warmup_captures_batch_1_and_plans_the_other_sizes():
    runner = fake_runner(max_batch=8)
    runner.warmup()
    graphs = runner._graphs.graphs
    assert sorted(graphs) == sorted(keys([1]))
    assert all(g.thread == threading.current_thread().name for g in graphs.values())
    assert runner.graph_count == 8 and runner.graphs_pending == 8 * 3   # sizes 2, 4, 8


def test_a_pending_size_runs_eagerly_and_is_never_captured_by_the_caller():
    runner = fake_runner(max_batch=8)
    runner.warmup()
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8) * 255
    eager = StageRunner(fake_model(), device='cpu')
    a, b = eager.to_input(x), runner.to_input(x)
    for k in range(4):
        a, b = eager.stage(k, a), runner.stage(k, b)
        torch.testing.assert_close(runner.head(k, b), eager.head(k, a))
    assert runner.graph_count == 8 and runner.graphs_pending == 24   # nothing captured inline
    assert runner._graphs._wanted == [4]                               # 3 pads up to 4: asked for next
    assert runner.wait_for_graphs(5)
    assert runner.graph_count == 8 * 4 and runner.graphs_pending == 0
    graphs = runner._graphs.graphs
    assert {g.thread for k, g in graphs.items() if k[2] > 1} == {'delen-graphs'}
    chain(runner, 3)
    assert graphs[('stage', 0, 4)].calls == 1   # now replayed


def test_without_background_warmup_captures_every_size_before_returning():
    runner = fake_runner(max_batch=8, background=False)
    runner.warmup()
    assert runner.graph_count == 8 * 4 and runner.graphs_pending == 0
    assert runner.wait_for_graphs(0) is True   # nothing to wait for (what the tools call)


def test_graphs_are_ignored_on_cpu_without_a_capture_function():
    runner = StageRunner(fake_model(), device='cpu', cuda_graphs=True, background_graphs=True)
    runner.warmup()
    assert (runner.cuda_graphs, runner.graph_count, runner.graphs_pending) == (False, 0, 0)


class SlowGraph(FakeGraph):
    release = threading.Event()

    def __init__(self, module, example, batch, *, as_float):
        if batch > 1:
            SlowGraph.release.wait(10)
        super().__init__(module, example, batch, as_float=as_float)


def test_engine_reports_graphs_and_stop_ends_the_capture():
    SlowGraph.release.clear()
    runner = fake_runner(max_batch=4, capture=SlowGraph)
    engine = Engine(fake_model(), synthetic_profile(4), on_result=lambda r: None, runner=runner, max_batch=4)
    runner.warmup()        # what Engine.warm_up does on CUDA
    engine.start()         # warm_up at batch 1 (seeds the corrector), then the background thread
    w = engine.worker_stats()
    assert (w.graphs_captured, w.graphs_pending) == (8, 16)
    thread = runner._graphs._thread
    assert thread is not None and thread.is_alive()
    threading.Timer(0.2, SlowGraph.release.set).start()
    engine.stop(timeout=5)
    assert not thread.is_alive()
    assert runner.graph_count == 9 and runner.graphs_pending == 15   # the capture in progress, no more
    engine.start(warm_up=False)   # activate again: capture resumes
    assert runner.wait_for_graphs(5)
    engine.stop()
    w = engine.worker_stats()
    assert (w.graphs_captured, w.graphs_pending) == (24, 0)


# --- the node's assembly ---------------------------------------------------------------------------------
def node_params(**overrides):
    from delen_ros.ros.params import _SPECS, NodeParams
    from delen_ros.core.zoo import models_dir
    values = {name: spec[0] for name, spec in _SPECS.items()}
    profile = sorted((models_dir() / 'profiles').glob('fashion_mnist__cpu-*.json'))[0]
    values.update(model='fashion_mnist', device='cpu', profile=str(profile), energy_meter='estimate',
                  max_batch=8, apps='')
    values.update(overrides)
    return NodeParams(**values)


def test_build_logs_its_phases():
    from delen_ros.ros.assembly import build
    lines = []
    served = build(node_params(), on_result=lambda r: None, log=lines.append)
    try:
        assert list(served.phases) == ['model', 'meter', 'profile', 'idle power', 'engine', 'warm-up']
        assert all(s >= 0 for s in served.phases.values())
        assert [line for line in lines if line.startswith('configure phases: model ')]
    finally:
        served.close()


# --- CUDA --------------------------------------------------------------------------------------------------
@needs_cuda
def test_background_capture_while_serving_matches_eager():
    from delen_ros.core.zoo import load_model
    sizes = graph_batch_sizes(32)
    graphs = StageRunner(load_model('fashion_mnist'), device='cuda', cuda_graphs=True, background_graphs=True,
                         max_batch=32)
    eager = StageRunner(load_model('fashion_mnist'), device='cuda', cuda_graphs=False, max_batch=32)
    modules = 2 * graphs.num_exits
    assert modules == 8
    graphs.warmup()
    assert graphs.graph_count == modules and graphs.graphs_pending == modules * (len(sizes) - 1)
    tol = dict(rtol=2e-2, atol=5e-2) if graphs.dtype == torch.float16 else dict(rtol=1e-4, atol=1e-4)
    failures, calls = [], {'during': 0, 'after': 0}
    done = threading.Event()

    def serve():
        rng = torch.Generator().manual_seed(0)
        try:
            while not done.is_set():
                phase = 'during' if graphs.graphs_pending else 'after'
                batch = int(torch.randint(1, 33, (1,), generator=rng))
                x = torch.randn(batch, 1, 28, 28, generator=rng)
                a, b = eager.to_input(x), graphs.to_input(x)
                for k in range(graphs.num_exits):
                    a, b = eager.stage(k, a), graphs.stage(k, b)
                    torch.testing.assert_close(graphs.head(k, b), eager.head(k, a), **tol)
                graphs.synchronize()
                calls[phase] += 1
        except BaseException as exc:  # noqa: BLE001 -- reported by the test thread
            failures.append(exc)

    server = threading.Thread(target=serve, name='serve')
    started = time.perf_counter()
    graphs.capture_in_background()
    server.start()
    try:
        assert graphs.wait_for_graphs(timeout=300), 'background capture did not finish'
        capture_s = time.perf_counter() - started
        deadline = time.perf_counter() + 1.0
        while calls['after'] < 5 and time.perf_counter() < deadline and not failures:
            time.sleep(0.01)
    finally:
        done.set()
        server.join(60)
    assert not failures, failures[0]
    assert calls['during'] > 0, f'no call ran during the capture ({capture_s:.2f} s)'
    assert calls['after'] > 0
    assert not graphs._graphs.failed
    assert graphs.graph_count == modules * len(sizes)
    assert graphs.stop_capture(5)


@needs_cuda
def test_stopped_capture_resumes_and_frees_cleanly():
    from delen_ros.core.zoo import load_model
    runner = StageRunner(load_model('fashion_mnist'), device='cuda', cuda_graphs=True, background_graphs=True,
                         max_batch=32)
    runner.warmup()
    runner.capture_in_background()
    assert runner.stop_capture(timeout=30)
    stopped_at = runner.graph_count
    assert runner.graph_count + runner.graphs_pending == 8 * len(runner.graph_sizes)
    assert runner.wait_for_graphs(timeout=300)
    assert runner.graph_count == 8 * len(runner.graph_sizes) >= stopped_at
    x = runner.to_input(torch.randn(5, 1, 28, 28))
    for k in range(runner.num_exits):
        x = runner.stage(k, x)
    assert torch.isfinite(runner.head(runner.num_exits - 1, x)).all()
    runner.stop_capture()
    del runner, x
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def test_padded_graph_sizes_keep_only_sizes_worth_a_capture():
    from delen_ros.core.runner import padded_graph_sizes
    h200 = {1: 1.11, 2: 1.08, 4: 1.11, 8: 1.24, 16: 1.39, 32: 1.75}   # cifar10_lite0, ms to the final exit
    assert padded_graph_sizes(32, h200.__getitem__) == (1, 32)
    assert padded_graph_sizes(32, lambda b: 0.5 * b) == (1, 2, 4, 8, 16, 32)   # time grows with the batch
    assert padded_graph_sizes(1, lambda b: 1.0) == (1,)
    assert padded_graph_sizes(8, lambda b: 1.0 + b / 16) == (1, 8)
    assert padded_graph_sizes(8, lambda b: 1.0 + b / 4) == (1, 2, 8)   # 8 costs 2x what 2 does
