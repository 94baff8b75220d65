"""StageRunner: device resolution, staged execution equal to the model's, CUDA graphs where a GPU exists."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from delen_ros.core.multi_exit import ModelInfo, MultiExitModel
from delen_ros.core import runner as runner_module
from delen_ros.core.runner import StageRunner, graph_batch_sizes, resolve_device, resolve_precision
from fakes import fake_model

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='no CUDA device')


def conv_model(num_exits: int = 3, *, seed: int = 0) -> MultiExitModel:
    """A tiny convolutional multi-exit model (batch norm, strides, pooling heads) on 16 x 16 RGB."""
    torch.manual_seed(seed)
    info = ModelInfo(name='tiny', input_size=(16, 16), in_channels=3, mean=(0.0,) * 3, std=(1.0,) * 3,
                     labels=tuple('abcde'), exit_names=tuple(f'e{k}' for k in range(num_exits)),
                     exit_accuracy=(0.5,) * num_exits, accuracy_note='untrained')
    stages, heads, c = [], [], 3
    for k in range(num_exits):
        stages.append(nn.Sequential(nn.Conv2d(c, 8 * (k + 1), 3, stride=2 if k else 1, padding=1),
                                    nn.BatchNorm2d(8 * (k + 1)), nn.ReLU()))
        c = 8 * (k + 1)
        heads.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5)))
    model = MultiExitModel(info, stages, heads)
    for m in model.modules():   # non-trivial running statistics, so eval-mode batch norm matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.prepare('cpu')


@pytest.mark.parametrize('text, expected', [
    ('cpu', torch.device('cpu')),
    ('auto', torch.device('cuda', 0) if CUDA else torch.device('cpu')),
])
def test_resolve_device(text, expected):
    assert resolve_device(text) == expected


@pytest.mark.parametrize('text', ['gpu', 'cuda:x', 'CPU', 'mps', '', 'cuda:'])
def test_resolve_device_rejects(text):
    with pytest.raises(ValueError, match=repr(text).strip("'") or 'device'):
        resolve_device(text)


@pytest.mark.skipif(CUDA, reason='CUDA is available here')
@pytest.mark.parametrize('text', ['cuda', 'cuda:0'])
def test_resolve_device_without_cuda(text):
    with pytest.raises(ValueError, match='not available'):
        resolve_device(text)


@pytest.mark.parametrize('max_batch, expected', [
    (1, (1,)), (2, (1, 2)), (8, (1, 2, 4, 8)), (12, (1, 2, 4, 8, 12)), (33, (1, 2, 4, 8, 16, 32, 33)),
])
def test_graph_batch_sizes(max_batch, expected):
    assert graph_batch_sizes(max_batch) == expected


def test_graph_batch_sizes_rejects_zero():
    with pytest.raises(ValueError, match='0'):
        graph_batch_sizes(0)


@pytest.mark.parametrize('batch', [1, 3, 8])
def test_staged_execution_matches_the_model(batch):
    model = conv_model()
    x = torch.randn(batch, 3, 16, 16)
    expected = model(x)
    runner = StageRunner(model, device='cpu')
    assert (runner.device, runner.dtype, runner.channels_last, runner.cuda_graphs) == \
        (torch.device('cpu'), torch.float32, True, False)
    features = runner.to_input(x)
    for k in range(model.num_exits):
        features = runner.stage(k, features)
        logits = runner.head(k, features)
        assert logits.dtype == torch.float32 and logits.shape == (batch, 5)
        assert logits.is_inference()   # ran under inference_mode
        torch.testing.assert_close(logits, expected[k])


def test_cuda_graphs_are_ignored_on_cpu():
    runner = StageRunner(fake_model(), device='cpu', cuda_graphs=True)
    assert runner.cuda_graphs is False
    runner.warmup([1, 2])
    assert runner.graph_count == 0


@pytest.mark.parametrize('channels_last', [None, True, False])
def test_channels_last_on_cpu_by_default_and_nchw_when_asked(channels_last):
    model = conv_model()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    runner = StageRunner(model, device='cpu', channels_last=channels_last)
    x = runner.to_input(x)
    assert x.is_contiguous(memory_format=torch.channels_last) is (channels_last is not False)
    assert runner.channels_last is (channels_last is not False)
    for k in range(model.num_exits):
        x = runner.stage(k, x)
    torch.testing.assert_close(runner.head(model.num_exits - 1, x), expected[-1], rtol=1e-4, atol=1e-5)


def test_half_on_cpu_is_rejected():
    with pytest.raises(ValueError, match='CUDA'):
        StageRunner(fake_model(), device='cpu', half=True)


@pytest.mark.parametrize('amx', [False, True])
def test_auto_precision_is_float16_on_cuda_and_bfloat16_only_on_a_cpu_with_amx(monkeypatch, amx):
    monkeypatch.setattr(runner_module, '_cpu_has_amx', lambda: amx)
    assert resolve_precision('auto', torch.device('cpu')) == (torch.bfloat16 if amx else torch.float32)
    assert resolve_precision('auto', torch.device('cuda', 0)) == torch.float16
    assert resolve_precision('float32', torch.device('cpu')) == torch.float32
    assert resolve_precision('bfloat16', torch.device('cpu')) == torch.bfloat16


@pytest.mark.parametrize('kwargs, match', [
    ({'precision': 'float16'}, 'float16 needs a CUDA device'),
    ({'precision': 'fp8'}, 'precision must be one of'),
    ({'precision': 'float32', 'half': False}, 'not both'),
])
def test_bad_precision_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StageRunner(fake_model(), device='cpu', **kwargs)


def test_a_bfloat16_runner_on_cpu_answers_as_the_float32_one():
    """Weights, inputs and features in bfloat16 (8 bits of mantissa): the logits stay within a few
    hundredths of float32's and the answers agree on nearly every input."""
    x = torch.randn(64, 3, 16, 16)
    outs = {}
    for precision in ('float32', 'bfloat16'):
        runner = StageRunner(conv_model(seed=3), device='cpu', precision=precision)
        assert runner.dtype == getattr(torch, precision) and runner.model.dtype == runner.dtype
        h = runner.to_input(x)
        assert h.dtype == runner.dtype
        outs[precision] = []
        for k in range(runner.num_exits):
            h = runner.stage(k, h)
            outs[precision].append(runner.head(k, h).float())
    for lo, hi in zip(outs['bfloat16'], outs['float32']):
        torch.testing.assert_close(lo, hi, rtol=0.05, atol=0.05)
        assert (lo.argmax(1) == hi.argmax(1)).float().mean() >= 0.95


@pytest.mark.parametrize('batch, match', [
    (torch.zeros(1, 3, 8, 8), 'N x 1 x H x W'),
    (torch.zeros(8, 8), 'N x 1 x H x W'),
    (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 'float'),
])
def test_to_input_rejects(batch, match):
    with pytest.raises(ValueError, match=match):
        StageRunner(fake_model(), device='cpu').to_input(batch)


@pytest.mark.parametrize('k', [-1, 4])
def test_exit_index_out_of_range(k):
    runner = StageRunner(fake_model(4), device='cpu')
    with pytest.raises(IndexError):
        runner.stage(k, torch.zeros(1, 1, 8, 8))
    with pytest.raises(IndexError):
        runner.head(k, torch.zeros(1, 1, 8, 8))


# --- CUDA ---------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize('half', [False, True])
def test_cuda_graphs_match_eager(half):
    eager = StageRunner(conv_model(seed=1), device='cuda', half=half, cuda_graphs=False, max_batch=8)
    graphs = StageRunner(conv_model(seed=1), device='cuda', half=half, cuda_graphs=True, max_batch=8)
    assert graphs.channels_last and graphs.dtype == (torch.float16 if half else torch.float32)
    tol = dict(rtol=2e-2, atol=2e-2) if half else dict(rtol=1e-4, atol=1e-4)
    for batch in (1, 3, 8, 5, 12):   # 3 and 5 pad up to 4 and 8; 12 > max_batch runs eagerly
        x = torch.randn(batch, 3, 16, 16)
        a, b = eager.to_input(x), graphs.to_input(x)
        for k in range(3):
            a, b = eager.stage(k, a), graphs.stage(k, b)
            assert b.shape == a.shape
            torch.testing.assert_close(graphs.head(k, b), eager.head(k, a), **tol)
    assert graphs.graph_count == 2 * 3 * 3   # stage and head, 3 exits, batch sizes 1, 4, 8


@needs_cuda
def test_cuda_graph_outputs_survive_later_replays():
    runner = StageRunner(conv_model(), device='cuda', cuda_graphs=True, max_batch=4)
    x1, x2 = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    f1 = runner.stage(0, runner.to_input(x1))
    kept = f1.clone()
    runner.stage(0, runner.to_input(x2))   # replays the same graph
    torch.testing.assert_close(f1, kept)


@needs_cuda
def test_to_input_from_pinned_memory():
    runner = StageRunner(fake_model(), device='cuda')
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).pin_memory()
    y = runner.to_input(x)
    runner.synchronize()
    assert y.device.type == 'cuda' and y.dtype == torch.float16
    torch.testing.assert_close(y.float().cpu(), x)


def _serve(device: str, frames, options=None):
    """(tag, class, confidence) of every frame served by an engine on ``device`` (always_final)."""
    import time

    from delen_ros.core.bounds import Bounds
    from delen_ros.core.engine import Engine
    from fakes import synthetic_profile
    results = []
    engine = Engine(conv_model(seed=2), synthetic_profile(3), device=device, policy='always_final', max_batch=8,
                    queue_depth=16, runner_options=options, on_result=results.append)
    engine.set_app('a', Bounds())
    engine.start()
    try:
        for first, last in ((0, 5), (5, 6), (6, len(frames))):   # batches of odd sizes: 5, 1, 7
            for i in range(first, last):
                engine.submit(['a'], frames[i], tag=i)
            end = time.monotonic() + 30
            while len(results) < last and time.monotonic() < end:
                time.sleep(0.005)
    finally:
        engine.stop()
    return sorted((r.tag, r.class_id, r.confidence) for r in results)


@needs_cuda
def test_engine_on_cuda_graphs_serves_odd_batches_as_the_cpu_engine():
    import numpy as np
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(13)]
    cpu = _serve('cpu', frames)
    cuda = _serve('cuda', frames, {'half': False, 'cuda_graphs': True, 'graph_sizes': (1, 8)})
    assert [t for t, _, _ in cuda] == list(range(13)) == [t for t, _, _ in cpu]
    assert [c for _, c, _ in cuda] == [c for _, c, _ in cpu]
    for (_, _, a), (_, _, b) in zip(cuda, cpu):
        assert a == pytest.approx(b, abs=2e-3)


def test_to_host_and_synchronize_on_cpu_are_plain(monkeypatch):
    monkeypatch.setenv('DELEN_BLOCKING_SYNC', '1')
    runner = StageRunner(fake_model(), device='cpu')
    assert runner.blocking_sync
    t = torch.arange(4.0)
    assert runner.to_host(t) is t   # already on the CPU: no copy
    runner.synchronize()            # no-op on CPU


def test_blocking_sync_is_the_default_and_spinning_is_asked_for(monkeypatch):
    monkeypatch.delenv('DELEN_BLOCKING_SYNC', raising=False)
    assert StageRunner(fake_model(), device='cpu').blocking_sync
    monkeypatch.setenv('DELEN_BLOCKING_SYNC', '0')
    assert not StageRunner(fake_model(), device='cpu').blocking_sync


@needs_cuda
def test_cuda_blocking_sync_gives_the_same_answers(monkeypatch):
    """DELEN_BLOCKING_SYNC=1: the worker sleeps in CUDA waits; copies to pinned memory are complete
    after synchronize, and a run's answers are those of the spinning wait."""
    x = torch.randn(5, 3, 16, 16)
    answers = []
    for blocking in ('0', '1'):
        monkeypatch.setenv('DELEN_BLOCKING_SYNC', blocking)
        runner = StageRunner(conv_model(seed=1), device='cuda', cuda_graphs=True, max_batch=8)
        assert runner.blocking_sync is (blocking == '1')
        f = runner.to_input(x)
        for k in range(3):
            f = runner.stage(k, f)
        confidence = torch.softmax(runner.head(2, f).float(), dim=1).max(dim=1)[0]
        host = runner.to_host(confidence)
        runner.synchronize()
        assert host.device.type == 'cpu' and (host.is_pinned() or blocking == '0')
        answers.append(host.tolist())
    assert answers[0] == pytest.approx(answers[1], rel=1e-5, abs=1e-6)


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason='needs two CUDA devices')
@pytest.mark.parametrize('background', [False, True])
def test_graphs_on_the_second_gpu_are_captured_there_with_the_first_current(background):
    """A runner on cuda:1 warmed up with cuda:0 current (a node with device:=cuda:1, or a pool's second
    engine): every capture on cuda:1's own stream. torch.cuda.graph's default capture stream is made
    on the device current at its first use, which invalidated every cuda:1 capture (H200 x2, session 18)."""
    from delen_ros.core.warmup import warm_up
    from delen_ros.core.policies import LatencyCorrector
    from fakes import synthetic_profile
    torch.cuda.set_device(0)
    for device in ('cuda:0', 'cuda:1'):   # cuda:0 first: the default capture stream, if any, is made there
        x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        eager = _eager_chain(conv_model(seed=3), x)
        model = conv_model(seed=3)
        runner = StageRunner(model, device=device, half=False, cuda_graphs=True, max_batch=8,
                             background_capture=background)
        warm_up(runner, model.info, synthetic_profile(runner.num_exits), LatencyCorrector(), max_batch=8)
        if background:
            assert runner.wait_background_capture(timeout=120) and runner.capture_state().error is None
        assert torch.cuda.current_device() == 0
        with torch.cuda.device(runner.device):   # as the engine's worker, which sets its device
            f = runner.to_input(x)
            out = []
            for k in range(runner.num_exits):
                f = runner.stage(k, f)
                out.append(runner.head(k, f).float().cpu())
        assert runner.graph_count > 0
        for a, b in zip(out, eager):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)   # TF32 convolutions on the GPU


def _eager_chain(model, x):
    model = model.eval()
    out = []
    with torch.inference_mode():
        for k in range(model.num_exits):
            x = model.stages[k](x)
            out.append(model.heads[k](x))
    return out


# --- exit graphs: stage, head and look in one replay ---------------------------------------------------------
def test_exit_look_is_each_rows_top_probability_and_class():
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, -1.0, 0.0]], dtype=torch.float16)
    look = runner_module.exit_look(logits)
    probs = torch.softmax(logits.float(), dim=1)
    assert look.dtype == torch.float32 and look.shape == (2, 2)
    assert look[:, 1].tolist() == [1.0, 0.0]
    torch.testing.assert_close(look[:, 0], probs.max(dim=1).values)


def test_a_stage_exit_module_gives_the_stage_and_its_look():
    model = conv_model(seed=3)
    x = torch.randn(2, 3, 16, 16)
    features, look = runner_module._StageExit(model.stages[0], model.heads[0])(x)
    torch.testing.assert_close(features, model.stages[0](x))
    torch.testing.assert_close(look, runner_module.exit_look(model.heads[0](model.stages[0](x))))


def test_no_exit_step_without_cuda_graphs():
    runner = StageRunner(conv_model(), device='cpu', cuda_graphs=True)
    runner.warmup()
    assert not runner.exit_graphs and runner.exit_step(0, runner.to_input(torch.zeros(1, 3, 16, 16))) is None


class _EagerExitSteps(StageRunner):
    """A CPU runner that answers exit_step eagerly, as the exit graphs do on CUDA: the engine's other path."""
    calls = 0

    def exit_step(self, k, x, *, keep_features=True):
        if x.shape[0] != 1:
            return None
        type(self).calls += 1
        features, look = runner_module._StageExit(self.model.stages[k], self.model.heads[k])(x)
        return (features if keep_features else None), look


def test_the_engine_answers_the_same_through_exit_steps():
    import numpy as np

    from delen_ros.core.bounds import Bounds
    from delen_ros.core.engine import Engine
    from fakes import synthetic_profile
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(13)]
    served = {}
    for name, runner in (('plain', None), ('exit_steps', _EagerExitSteps(conv_model(seed=2), device='cpu'))):
        results = []
        engine = Engine(conv_model(seed=2), synthetic_profile(3), device='cpu', policy='always_final',
                        max_batch=8, queue_depth=16, runner=runner, on_result=results.append)
        engine.set_app('a', Bounds())
        with engine:
            _EagerExitSteps.calls = 0   # the warm-up's timings take exit steps too (below): count the frames'
            for i, frame in enumerate(frames):   # one at a time: batch 1, where exit steps serve
                engine.submit(['a'], frame, tag=i)
                end = time.monotonic() + 30
                while len(results) <= i and time.monotonic() < end:
                    time.sleep(0.002)
        served[name] = sorted((r.tag, r.class_id, round(r.confidence, 5), r.exit_index) for r in results)
    assert _EagerExitSteps.calls == len(frames)
    assert served['exit_steps'] == served['plain'] and len(served['plain']) == len(frames)


def test_the_warm_up_times_the_step_the_worker_takes():
    from delen_ros.core.policies import LatencyCorrector
    from delen_ros.core.warmup import warm_up
    from fakes import synthetic_profile
    runner = _EagerExitSteps(conv_model(seed=2), device='cpu')
    _EagerExitSteps.calls = 0
    warm_up(runner, runner.model.info, synthetic_profile(3), LatencyCorrector(), max_batch=8, reps=2)
    assert _EagerExitSteps.calls == 2 * 3   # every exit, every rep, through exit_step


@needs_cuda
@pytest.mark.parametrize('half', [False, True])
def test_exit_graphs_replay_the_stage_and_its_head(half, monkeypatch):
    monkeypatch.delenv('DELEN_EXIT_GRAPHS', raising=False)
    runner = StageRunner(conv_model(seed=4), device='cuda', half=half, cuda_graphs=True, max_batch=4)
    runner.warmup()
    x = runner.to_input(torch.randn(1, 3, 16, 16))
    for k in range(3):
        features, look = runner.exit_step(k, x)
        kept = look.clone()
        expected = runner.stage(k, x)
        torch.testing.assert_close(features, expected)
        torch.testing.assert_close(kept, runner_module.exit_look(runner.head(k, expected)))
        assert runner.exit_step(k, x, keep_features=False)[0] is None
        x = expected
    assert runner.exit_step(0, runner.to_input(torch.randn(2, 3, 16, 16))) is None   # above the smallest size
    monkeypatch.setenv('DELEN_EXIT_GRAPHS', '0')
    off = StageRunner(conv_model(seed=4), device='cuda', half=half, cuda_graphs=True, max_batch=4)
    off.warmup()
    assert off.exit_step(0, off.to_input(torch.randn(1, 3, 16, 16))) is None


@needs_cuda
def test_the_cuda_engine_answers_the_same_without_exit_graphs(monkeypatch):
    import numpy as np
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(13)]
    options = {'half': False, 'cuda_graphs': True, 'graph_sizes': (1, 8)}
    with_graphs = _serve('cuda', frames, options)
    monkeypatch.setenv('DELEN_EXIT_GRAPHS', '0')
    without = _serve('cuda', frames, options)
    assert [(t, c) for t, c, _ in with_graphs] == [(t, c) for t, c, _ in without]
    for (_, _, a), (_, _, b) in zip(with_graphs, without):
        assert a == pytest.approx(b, abs=1e-5)
