"""Batch norms folded into convolutions, "same" padding into them (core/fold.py): same outputs, fewer modules."""
import copy

import pytest
import torch
from torch import nn

from delen_ros.core.fold import fold_for_inference, is_folded
from delen_ros.core.runner import StageRunner
from delen_ros.core.zoo import load_model, save_model

SHIPPED = ['fashion_mnist', 'cifar10_lite0', 'cifar10_lite2', 'cifar10_resnet9', 'efficientnet_lite0']


def _outputs(model, x):
    with torch.inference_mode():
        return [t.clone() for t in model(x)]


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _after_a_pool(model):
    """Batch norms behind a max pool (ResNet-9 pools first, which is cheaper): not foldable, since a
    max commutes with a per-channel scale only where it is positive."""
    return [b for m in model.modules() if isinstance(m, nn.Sequential)
            for a, b in zip(m, list(m)[1:]) if isinstance(a, nn.MaxPool2d) and isinstance(b, nn.BatchNorm2d)]


@pytest.mark.parametrize('name', SHIPPED)
def test_every_shipped_model_folds_and_computes_the_same(name):
    model = load_model(name)
    folded = copy.deepcopy(model)
    torch.manual_seed(0)
    x = torch.randn(3, model.info.in_channels, *model.info.input_size)
    count = fold_for_inference(folded)
    kept = len(_after_a_pool(model))
    assert count.batch_norms == len(_batch_norms(model)) - kept > 0
    assert len(_batch_norms(folded)) == kept == (3 if name == 'cifar10_resnet9' else 0)
    for before, after in zip(_outputs(model, x), _outputs(folded, x)):
        assert torch.allclose(before, after, rtol=1e-4, atol=1e-4), float((before - after).abs().max())
        assert torch.equal(before.argmax(1), after.argmax(1))


def test_symmetric_same_padding_moves_into_the_convolution_and_strided_padding_stays():
    model = load_model('cifar10_lite0')
    pads = [m for m in model.modules() if isinstance(m, nn.ZeroPad2d)]
    symmetric = [p for p in pads if p.padding[0] == p.padding[1] and p.padding[2] == p.padding[3]]
    assert 0 < len(symmetric) < len(pads)
    count = fold_for_inference(model)
    assert count.paddings == len(symmetric)
    left = [m for m in model.modules() if isinstance(m, nn.ZeroPad2d)]
    assert len(left) == len(pads) - len(symmetric)
    assert all(p.padding[0] != p.padding[1] or p.padding[2] != p.padding[3] for p in left)


def test_a_second_fold_changes_nothing():
    model = load_model('fashion_mnist')
    first = fold_for_inference(model)
    x = torch.randn(2, 1, 28, 28)
    before = _outputs(model, x)
    second = fold_for_inference(model)
    assert first.batch_norms > 0 and (second.batch_norms, second.paddings) == (0, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, _outputs(model, x)))


def test_a_model_in_training_is_refused_and_left_alone():
    model = load_model('fashion_mnist').train()
    n = len(_batch_norms(model))
    with pytest.raises(ValueError, match='eval mode'):
        fold_for_inference(model)
    assert len(_batch_norms(model)) == n and not is_folded(model)


@pytest.mark.parametrize('affine, conv_bias', [(True, False), (False, True), (True, True)])
def test_folding_covers_batch_norms_without_affine_and_convolutions_with_a_bias(affine, conv_bias):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(5, affine=affine), nn.ReLU())
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        if affine:
            net[1].weight.uniform_(0.5, 1.5)
            net[1].bias.uniform_(-1, 1)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = net(x).detach()
    assert fold_for_inference(net).batch_norms == 1
    assert isinstance(net[1], nn.Identity)
    assert torch.allclose(net(x), expected, atol=1e-5)


def test_a_batch_norm_that_does_not_follow_a_convolution_is_kept():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert fold_for_inference(net).batch_norms == 0
    assert len(_batch_norms(net)) == 2


def test_the_runner_serves_the_folded_network_and_save_model_refuses_it(tmp_path):
    model = load_model('fashion_mnist')
    reference = copy.deepcopy(model)
    x = torch.randn(4, 1, 28, 28)
    runner = StageRunner(model, device='cpu')
    assert runner.folded is not None and runner.folded.batch_norms > 0 and is_folded(model)
    with torch.inference_mode():
        h = runner.to_input(x)
        for k in range(model.num_exits):
            h = runner.stage(k, h)
            assert torch.allclose(runner.head(k, h), _outputs(reference, x)[k], atol=1e-4)
    with pytest.raises(ValueError, match='folded'):
        save_model(model, tmp_path / 'm', architecture='fashion_mnist')
    assert not list(tmp_path.iterdir())
    unfolded = StageRunner(copy.deepcopy(reference), device='cpu', fold_batch_norms=False)
    assert unfolded.folded is None and len(_batch_norms(unfolded.model)) == len(_batch_norms(reference))
