"""delen_profile: profile_model / quick_profile on the fake model, energy windows, calibration, CLI."""
from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch

from delen_ros.core.cpu_threads import auto_intra_op_threads
from delen_ros.core.energy import EnergyMeter, EstimateMeter
from delen_ros.core.profile import Profile
from delen_ros.tools.profile import (CALIBRATION_THRESHOLDS, calibration_table, format_profile, main,
                                     measure_energy, plot_profile, profile_model, quick_batch_sizes,
                                     quick_profile)
from fakes import FAKE_SCALES, fake_confidence, fake_image, fake_model, synthetic_profile

FAST = dict(runs=3, min_runs=2, warmup=1, time_budget_s=0.05, progress=False)


def eval_images(n: int = 10) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` sharp images labelled right and ``n`` blurry ones (confidence 1/4, predicted class 0)
    labelled wrong (1): accuracy 0.5 at every exit, 1.0 among the confident half."""
    images = [fake_image(i % 4, 255) for i in range(n)] + [fake_image(0, 0) for _ in range(n)]
    labels = np.array([i % 4 for i in range(n)] + [1] * n)
    return images, labels


class TimeMeter(EnergyMeter):
    """A measuring meter of constant power on the real clock, updated in steps of ``period_s``."""

    source = 'fake'

    def __init__(self, power_w: float = 50.0, period_s: float = 0.01):
        self.power = power_w
        self.period_s = period_s
        self.t0 = time.perf_counter()

    def energy_mj(self) -> float:
        t = time.perf_counter() - self.t0
        return self.power * math.floor(t / self.period_s) * self.period_s * 1000.0


def test_profile_model_estimate():
    model = fake_model(4)
    profile = profile_model(model, device='cpu', batch_sizes=[2, 1], meter=EstimateMeter(), eval_set=eval_images(),
                            estimate_power_w=10.0, **FAST)
    assert isinstance(profile, Profile)
    assert (profile.model, profile.num_exits, profile.dtype) == ('fake', 4, 'float32')
    assert profile.device.startswith('cpu-')
    assert (profile.energy_source, profile.energy_includes_idle) == ('estimate', False)
    assert profile.meta['estimate_power_w'] == 10.0
    assert profile.meta['runs_per_batch_size'].keys() == {'1', '2'}
    for k, e in enumerate(profile.exits):
        assert e.name == f'exit{k}'
        for b in (1, 2):
            assert e.stage_p99_ms[b] >= e.stage_ms[b] > 0 and e.head_p99_ms[b] >= e.head_ms[b] > 0
            assert e.stage_energy_mj[b] == pytest.approx((e.stage_ms[b] + e.head_ms[b]) * 10.0 / b)
        assert e.accuracy == pytest.approx(0.5)


def test_profile_calibration_from_known_confidences():
    profile = profile_model(fake_model(4), device='cpu', batch_sizes=[1], eval_set=eval_images(), **FAST)
    for k, e in enumerate(profile.exits):
        rows = {t: (acc, frac) for t, acc, frac in e.calibration}
        sharp = fake_confidence(k, 255)
        assert rows[0.0] == pytest.approx((0.5, 1.0)) and rows[0.2] == pytest.approx((0.5, 1.0))
        assert rows[0.3] == pytest.approx((1.0, 0.5))   # only the sharp half is this confident
        assert set(rows) == {t for t in CALIBRATION_THRESHOLDS if t <= sharp}
    assert profile.confidence_threshold(0, 0.9) == pytest.approx(0.3)
    assert profile.expected_accuracy(3, 0.995) == pytest.approx(1.0)
    # sharp confidences 0.711, 0.948, 0.993, 0.999: the highest threshold each exit reaches
    assert [max(t for t, _, _ in e.calibration) for e in profile.exits] == [0.7, 0.9, 0.99, 0.99]


@pytest.mark.parametrize('max_samples, expected', [(None, 20), (5000, 20), (7, 7), (0, 0)])
def test_profile_keeps_per_input_samples(max_samples, expected):
    profile = profile_model(fake_model(3), device='cpu', batch_sizes=[1], eval_set=eval_images(),
                            max_samples=max_samples, **FAST)
    assert profile.meta['samples'] == expected
    if expected == 0:
        assert profile.samples == {} and not profile.has_samples
        return
    conf, correct = profile.samples['confidence'], profile.samples['correct']
    assert len(conf) == len(correct) == 3 and {len(c) for c in (*conf, *correct)} == {expected}
    for k in range(3):   # a sharp input is right and confident, a blurry one wrong at 1/4
        for c, ok in zip(conf[k], correct[k]):
            assert (ok, c) in ((1, pytest.approx(fake_confidence(k, 255), abs=1e-4)), (0, 0.25))
    if expected == 20:
        assert [np.mean(c) for c in correct] == [e.accuracy for e in profile.exits]
    restored = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored.samples['correct'] == correct
    assert restored.cascade(0.5) is not None


def test_profile_without_labels_is_agreement_with_the_final_exit():
    images, _ = eval_images()
    profile = profile_model(fake_model(3, scales=FAKE_SCALES), device='cpu', batch_sizes=[1],
                            eval_set=(images, None), **FAST)
    assert 'agreement' in profile.accuracy_note
    assert [e.accuracy for e in profile.exits] == [1.0, 1.0, 1.0]


def test_profile_without_eval_set_takes_the_model_file_accuracy():
    model = fake_model(2, accuracy=(0.7, 0.8))
    profile = profile_model(model, device='cpu', batch_sizes=[1], **FAST)
    assert [e.accuracy for e in profile.exits] == [0.7, 0.8]
    assert all(e.calibration == () for e in profile.exits)
    assert 'no eval set' in profile.accuracy_note


@pytest.mark.parametrize('subtract_idle', [False, True])
@pytest.mark.parametrize('per_step', [True, False])
def test_profile_with_a_measuring_meter(subtract_idle, per_step):
    meter = TimeMeter(power_w=50.0, period_s=0.01)
    profile = profile_model(fake_model(2), device='cpu', batch_sizes=[1, 2], meter=meter, energy_window_s=0.03,
                            idle_window_s=0.05, subtract_idle=subtract_idle, energy_per_step=per_step, **FAST)
    assert profile.energy_source == 'fake'
    assert profile.energy_includes_idle is (not subtract_idle)
    assert profile.meta['idle_power_w'] == pytest.approx(50.0, rel=0.2)
    assert profile.meta['energy_window_s'] == pytest.approx(0.05)   # 5 meter periods > the asked 0.03 s
    other = profile.meta['energy_with_idle_mj' if subtract_idle else 'energy_above_idle_mj']
    for e in profile.exits:
        for b in (1, 2):
            stored, alt = e.stage_energy_mj[b], other[e.name][str(b)]
            total, above = (alt, stored) if subtract_idle else (stored, alt)
            assert total > 0 and 0 <= above <= total


class SteppedMeter(EnergyMeter):
    """NVML-like: constant power, a counter that moves only every 100 ms, on a fake clock."""

    source = 'fake'
    period_s = 0.1

    def __init__(self, clock, power_w: float):
        self.clock, self.power = clock, power_w

    def energy_mj(self) -> float:
        return self.power * math.floor(self.clock.t / 0.1 + 1e-9) * 0.1 * 1000.0


class SecondsClock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize('start, call_s', [(0.0, 0.003), (0.05, 0.003), (0.0371, 0.0007), (0.09, 0.011)])
def test_measure_energy_aligns_to_meter_updates(start, call_s):
    clock = SecondsClock(start)
    meter = SteppedMeter(clock, power_w=120.0)

    def work():
        clock.t += call_s
    mj, s, n = measure_energy(meter, work, window_s=1.0, clock=clock)
    assert s == pytest.approx(call_s)
    # One meter step is 10 % of the window; aligned, the error is about one call (<= 1.1 %).
    assert mj == pytest.approx(120.0 * call_s * 1000.0, rel=0.012)
    assert n * call_s >= 1.0


def test_calibration_table():
    conf = np.array([0.1, 0.5, 0.9, 0.95])
    correct = np.array([False, True, True, True])
    assert calibration_table(conf, correct, (0.0, 0.5, 0.92, 0.99)) == (
        (0.0, 0.75, 1.0), (0.5, 1.0, 0.75), (0.92, 1.0, 0.25))


@pytest.mark.parametrize('max_batch, expected', [(1, (1,)), (4, (1, 4)), (8, (1, 4, 8)), (32, (1, 4, 16, 32))])
def test_quick_batch_sizes(max_batch, expected):
    assert quick_batch_sizes(max_batch) == expected


def test_quick_profile_takes_accuracy_from_a_reference():
    reference = dataclasses.replace(synthetic_profile(3, accuracy=(0.61, 0.72, 0.83), device='cuda-some-gpu'),
                                    samples={'confidence': [[0.5, 0.9]] * 3, 'correct': [[0, 1]] * 3})
    profile = quick_profile(fake_model(3), device='cpu', max_batch=8, reference=reference)
    assert [e.accuracy for e in profile.exits] == [0.61, 0.72, 0.83]
    assert [e.calibration for e in profile.exits] == [e.calibration for e in reference.exits]
    assert profile.accuracy_note == reference.accuracy_note
    assert sorted(profile.exits[0].stage_ms) == [1, 4, 8]
    assert profile.meta['accuracy_from'] == 'fake__cuda-some-gpu'
    assert profile.samples == reference.samples
    assert profile.device.startswith('cpu-')


@pytest.mark.parametrize('reference', [synthetic_profile(2), synthetic_profile(3, model='other')])
def test_quick_profile_rejects_a_mismatched_reference(reference):
    with pytest.raises(ValueError, match='reference'):
        quick_profile(fake_model(3), device='cpu', max_batch=2, reference=reference)


@pytest.mark.parametrize('options, match', [
    (dict(batch_sizes=[0, 1]), 'batch sizes'),
    (dict(batch_sizes=[]), 'batch sizes'),
    (dict(runs=0), 'runs'),
    (dict(energy_window_s=0.0), 'windows'),
    (dict(estimate_power_w=-1.0), 'estimate_power_w'),
    (dict(max_samples=-1), 'max_samples'),
])
def test_profile_model_rejects(options, match):
    args = {**FAST, 'batch_sizes': [1], **options}
    with pytest.raises(ValueError, match=match):
        profile_model(fake_model(2), device='cpu', **args)


def test_plots_and_table(tmp_path):
    profile = synthetic_profile(4)
    paths = plot_profile(profile, tmp_path / 'fake__cpu-x.json')
    assert [p.name for p in paths] == ['fake__cpu-x.latency.png', 'fake__cpu-x.energy.png']
    for p in paths:
        assert p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = format_profile(profile)
    assert all(f'exit{k}' in table for k in range(4)) and '~' in table   # estimates are marked


def _saved_fashion_mnist(tmp_path) -> str:
    """An untrained fashion_mnist saved under ``tmp_path/models``; the path of its JSON, for the CLI."""
    from delen_ros.core.architectures import get_architecture
    from delen_ros.core.zoo import save_model
    save_model(get_architecture('fashion_mnist')(info=None), tmp_path / 'models' / 'fashion_mnist',
               architecture='fashion_mnist')
    return str(tmp_path / 'models' / 'fashion_mnist.json')


def test_cli_quick(tmp_path, capsys):
    model_json = _saved_fashion_mnist(tmp_path)
    out = tmp_path / 'profiles'
    threads_before = torch.get_num_threads()
    rc = main([model_json, '--quick', '--quiet', '--out', str(out),
               '--meter', 'estimate', '--batch-sizes', '1,2', '--eval-limit', '40'])
    assert rc == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3 and files[0].startswith('fashion_mnist__cpu-') and files[0].endswith('.energy.png')
    data = json.loads((out / files[1]).read_text())
    profile = Profile.from_dict(data)
    assert profile.energy_source == 'estimate' and sorted(profile.exits[0].stage_ms) == [1, 2]
    assert profile.meta['tool'] == 'delen_profile --quick'
    assert 'wrote' in capsys.readouterr().out
    # measured on the node's threads on a CPU (half the cores), the caller's torch left as it was
    assert profile.meta['torch_threads'] == auto_intra_op_threads('cpu')
    assert torch.get_num_threads() == threads_before


def test_cli_profile_of_matmul_kernels_has_a_name_of_its_own(tmp_path):
    """--conv-kernels matmul (the node's conv_kernels:=matmul) is timed through a runner serving 1x1
    convolutions as matrix products and saved beside the default profile, not over it."""
    model_json = _saved_fashion_mnist(tmp_path)
    out = tmp_path / 'profiles'
    rc = main([model_json, '--quick', '--quiet', '--out', str(out), '--no-plots',
               '--meter', 'estimate', '--batch-sizes', '1', '--eval-limit', '20', '--conv-kernels', 'matmul',
               '--precision', 'float32'])
    assert rc == 0
    [path] = out.iterdir()
    assert path.name.startswith('fashion_mnist__cpu-') and path.name.endswith('__matmul.json')
    assert Profile.from_dict(json.loads(path.read_text())).meta['pointwise_matmul'] is True


def test_cli_profile_in_bfloat16_has_a_name_of_its_own(tmp_path):
    """--precision bfloat16 times the model in bfloat16, records it and saves beside the float32
    profile (the node serving in bfloat16 looks for that name first)."""
    model_json = _saved_fashion_mnist(tmp_path)
    out = tmp_path / 'profiles'
    common = [model_json, '--quick', '--quiet', '--out', str(out), '--no-plots',
              '--meter', 'estimate', '--batch-sizes', '1', '--eval-limit', '20']
    assert main(common + ['--precision', 'bfloat16']) == 0
    assert main(common + ['--precision', 'float32']) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and names[1].endswith('__bfloat16.json'), names
    dtypes = [Profile.from_dict(json.loads((out / n).read_text())).dtype for n in names]
    assert dtypes == ['float32', 'bfloat16']
    assert main(common + ['--precision', 'float16']) == 1      # CPU float16: a clear error, nothing written
    assert main(common + ['--half', '--precision', 'float32']) == 1
    assert sorted(p.name for p in out.iterdir()) == names


@pytest.mark.parametrize('argv, rc', [
    (['fashion_mnist', '--meter', 'tegrastats'], 2),
    (['no_such_model', '--meter', 'estimate', '--quick', '--quiet'], 1),
])
def test_cli_errors(tmp_path, monkeypatch, argv, rc):
    monkeypatch.setenv('DELEN_MODELS_DIR', str(tmp_path))
    assert main(argv + ['--out', str(tmp_path)]) == rc


def test_idle_power_of_a_meter_that_measures_nothing_is_zero():
    from delen_ros.core.profiling import measure_idle_power_w
    assert measure_idle_power_w(EstimateMeter(), window_s=0.01) == 0.0


def test_the_node_takes_the_profile_timed_in_its_precision(monkeypatch, tmp_path):
    """precision bfloat16 on this Xeon loads <model>__<device>__bfloat16.json where it is committed (the
    committee's steps take 0.80x float32's at batch 1 there), else the plain profile, and says so."""
    pytest.importorskip('rcl_interfaces')
    import dataclasses

    from delen_ros.core import profile as profile_module
    from delen_ros.ros import assembly, params

    from delen_ros.core import zoo

    slug = 'cpu-intel-r-xeon-r-processor'
    folder = tmp_path / 'profiles'   # the committee timed in both precisions, Lite2 in float32 only
    folder.mkdir()
    for name in (f'cifar10_committee__{slug}.json', f'cifar10_committee__{slug}__bfloat16.json',
                 f'cifar10_lite2__{slug}.json'):
        (folder / name).write_bytes((zoo.models_dir() / 'profiles' / name).read_bytes())
    monkeypatch.setattr(zoo, 'models_dir', lambda: tmp_path)
    monkeypatch.setattr(profile_module, 'device_slug', lambda device='cpu': slug)
    defaults = params.NodeParams(**{name: spec[0] for name, spec in params._SPECS.items()})

    def load(name: str, precision: str) -> tuple[Profile, str, list[str]]:
        model = type('M', (), {'info': type('I', (), {'name': name})()})()
        said: list[str] = []
        profile, source = assembly.load_profile(dataclasses.replace(defaults, precision=precision), model, 'cpu',
                                                meter=None, log=said.append)
        return profile, source, said

    bf16, source, said = load('cifar10_committee', 'bfloat16')
    assert source.endswith('__bfloat16.json') and bf16.dtype == 'bfloat16' and not said
    fp32, source, said = load('cifar10_committee', 'float32')
    assert source.endswith('processor.json') and fp32.dtype == 'float32' and not said
    assert bf16.exit_latency_ms(bf16.final_exit) < 0.9 * fp32.exit_latency_ms(fp32.final_exit)
    plain, source, said = load('cifar10_lite2', 'bfloat16')   # no bfloat16 profile there
    assert source.endswith('processor.json') and plain.dtype == 'float32'
    assert said == ['profile cifar10_lite2__cpu-intel-r-xeon-r-processor.json was timed in float32; serving in bfloat16']
