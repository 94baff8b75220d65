"""1x1 convolutions as matrix products (core/pointwise.py; the node's ``conv_kernels:=matmul``, issue 8):
the same answers as the convolutions, the runner serving a model changed so, its profile's name.
The speed is measured on an H200 (``scripts/device/conv_kernels_probe.py``), not here."""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from delen_ros.core.multi_exit import ModelInfo, MultiExitModel
from delen_ros.core.pointwise import (CONV_KERNELS, PointwiseMatmul, PointwiseNative, is_pointwise, nchw_matmul,
                                     nhwc_linear, pointwise_as_matmul, pointwise_native_linear)
from delen_ros.core.profile import profile_filename
from delen_ros.core.runner import StageRunner

HAVE_LITE = importlib.util.find_spec('efficientnet_lite_pytorch') is not None
needs_lite = pytest.mark.skipif(not HAVE_LITE, reason='efficientnet-lite-pytorch wheel not installed')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')


def mbconv_like() -> nn.Sequential:
    """Expand 1x1, depthwise 3x3, project 1x1 (with and without bias), as an MBConv block."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.ReLU6(),
                         nn.Sequential(nn.Conv2d(32, 16, 1)), nn.Conv2d(16, 16, 3, padding=1)).eval()


def test_pointwise_convolutions_become_matrix_products_with_the_same_answers():
    net = mbconv_like()
    x = torch.randn(3, 8, 10, 7)
    want = net(x)
    changed = copy.deepcopy(net)
    assert pointwise_as_matmul(changed) == 2   # the nested one too; the 3x3 ones stay
    assert isinstance(changed[0], PointwiseMatmul) and isinstance(changed[5][0], PointwiseMatmul)
    assert isinstance(changed[3], nn.Conv2d) and isinstance(changed[6], nn.Conv2d)
    torch.testing.assert_close(changed(x), want, rtol=1e-5, atol=1e-5)
    assert pointwise_as_matmul(changed) == 0   # nothing left to replace


@pytest.mark.parametrize('conv', [nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1, stride=2), nn.Conv2d(4, 4, 1, groups=2),
                                  nn.Conv2d(4, 4, 1, padding=1), nn.Conv2d(4, 4, 1, dilation=2)])
def test_only_true_pointwise_convolutions_qualify(conv):
    assert not is_pointwise(conv)
    with pytest.raises(ValueError, match='not a 1x1'):
        PointwiseMatmul(conv)


def test_profiles_of_other_kernels_have_names_of_their_own():
    assert profile_filename('cifar10_lite0', 'cuda-nvidia-h200') == 'cifar10_lite0__cuda-nvidia-h200.json'
    assert profile_filename('cifar10_lite0', 'cuda-nvidia-h200', 'matmul') == \
        'cifar10_lite0__cuda-nvidia-h200__matmul.json'
    assert CONV_KERNELS[0] == 'cudnn'   # the node's default


def mbconv_model(num_exits: int = 3) -> MultiExitModel:
    """A tiny multi-exit model of MBConv-like stages (1x1 expand, depthwise 3x3, 1x1 project) on 16 x 16 RGB."""
    torch.manual_seed(1)
    info = ModelInfo(name='tiny_mbconv', input_size=(16, 16), in_channels=3, mean=(0.0,) * 3, std=(1.0,) * 3,
                     labels=tuple('abcde'), exit_names=tuple(f'e{k}' for k in range(num_exits)),
                     exit_accuracy=(0.5,) * num_exits, accuracy_note='untrained')
    stages, heads, c = [], [], 3
    for k in range(num_exits):
        wide, out = 16 * (k + 1), 8 * (k + 1)
        stages.append(nn.Sequential(nn.Conv2d(c, wide, 1, bias=False), nn.BatchNorm2d(wide), nn.ReLU6(),
                                    nn.Conv2d(wide, wide, 3, stride=2 if k else 1, padding=1, groups=wide),
                                    nn.ReLU6(), nn.Conv2d(wide, out, 1)))
        c = out
        heads.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5)))
    return MultiExitModel(info, stages, heads)


def chain(runner: StageRunner, x: torch.Tensor) -> list[torch.Tensor]:
    x, logits = runner.to_input(x), []
    for k in range(runner.num_exits):
        x = runner.stage(k, x)
        logits.append(runner.head(k, x).cpu())
    return logits


def test_the_runner_serves_a_model_changed_so_with_the_same_answers():
    x = torch.randn(4, 3, 16, 16)
    plain = StageRunner(mbconv_model(), device='cpu')
    matmul = StageRunner(mbconv_model(), device='cpu', pointwise_matmul=True)
    assert matmul.pointwise_matmul and not matmul.channels_last and 'pointwise_matmul=True' in repr(matmul)
    assert not any(is_pointwise(m) for m in matmul.model.modules())
    assert sum(isinstance(m, PointwiseMatmul) for m in matmul.model.modules()) == 6
    for got, want in zip(chain(matmul, x), chain(plain, x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_cuda_matmul_graphs_need_no_cudnn_and_answer_as_cudnn_does():
    """Every size captured in warm-up with cuDNN off, nothing tried: the graphs' answers are the
    eager cuDNN ones (fp16 tolerance)."""
    x = torch.randn(5, 3, 16, 16)
    eager = StageRunner(mbconv_model(), device='cuda', cuda_graphs=False)
    graphs = StageRunner(mbconv_model(), device='cuda', cuda_graphs=True, max_batch=8, pointwise_matmul=True,
                         trials_while_serving=True, trial_smallest=True)
    graphs.warmup()
    assert graphs.graph_count == 2 * 3 * 4 and set(graphs.conv_backends().values()) == {'native'}
    assert graphs.cudnn_trials() == {} and graphs.capture_state().settled
    assert graphs.start_background_capture() is False
    for got, want in zip(chain(graphs, x), chain(eager, x)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('bias', [False, True])
def test_a_pointwise_convolution_as_matrix_products_is_the_convolution(bias):
    torch.manual_seed(2)
    conv = nn.Conv2d(12, 20, 1, bias=bias).eval()
    x = torch.randn(5, 12, 7, 9).contiguous(memory_format=torch.channels_last)
    got = nhwc_linear(conv, x)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == (5, 20, 7, 9)
    torch.testing.assert_close(got, conv(x), rtol=1e-5, atol=1e-5)
    nchw = x.contiguous()
    torch.testing.assert_close(nchw_matmul(conv, nchw), conv(nchw), rtol=1e-5, atol=1e-5)


def test_the_native_wrapper_is_the_convolution_where_it_takes_no_product():
    model = mbconv_model()
    assert pointwise_native_linear(model) == 6 and pointwise_native_linear(model) == 0   # not wrapped twice
    wrapper = next(m for m in model.modules() if isinstance(m, PointwiseNative))
    x = torch.randn(8, wrapper.conv.in_channels, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(enabled=False):   # cuDNN off, but a CPU batch
        assert torch.equal(wrapper(x), wrapper.conv(x))
    with pytest.raises(ValueError, match='1x1'):
        PointwiseNative(nn.Conv2d(4, 4, 3))


def test_runners_wrap_only_on_cuda_with_cudnn_kernels():
    cpu = StageRunner(mbconv_model(), device='cpu')
    assert not cpu.native_linear and not any(isinstance(m, PointwiseNative) for m in cpu.model.modules())


@needs_cuda
def test_cuda_native_graphs_run_the_1x1_convolutions_as_products_with_the_same_answers():
    """Native first: every size captured with cuDNN off, the 1x1 convolutions of batch 4 and up as matrix
    products over the NHWC view; the cuDNN trial of the larger size follows. Answers as eager cuDNN's."""
    x = torch.randn(6, 3, 16, 16)
    eager = StageRunner(mbconv_model(), device='cuda', cuda_graphs=False, native_linear=False)
    graphs = StageRunner(mbconv_model(), device='cuda', cuda_graphs=True, max_batch=8, background_capture=True)
    assert graphs.native_linear and sum(isinstance(m, PointwiseNative) for m in graphs.model.modules()) == 6
    graphs.warmup()
    for got, want in zip(chain(graphs, x), chain(eager, x)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@needs_lite
def test_cifar10_lite0_answers_the_same_with_its_1x1_convolutions_as_matrix_products():
    from delen_ros.core.zoo import load_model
    model = load_model('cifar10_lite0').eval()
    x = torch.randn(2, 3, 64, 64)
    want = model.forward(x)
    assert pointwise_as_matmul(model) == 35
    for got, expected in zip(model.forward(x), want):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_node_takes_the_profile_measured_with_its_kernels(monkeypatch):
    """conv_kernels:=matmul on CUDA loads <model>__<device>__matmul.json where it is committed (its steps
    run longer at batch 32 than the default profile says: 1.4x for block 2 in session 21), else the default one."""
    pytest.importorskip('rcl_interfaces')
    import dataclasses

    from delen_ros.core import profile as profile_module
    from delen_ros.ros import assembly, params

    monkeypatch.setattr(profile_module, 'device_slug', lambda device='cpu': 'cuda-nvidia-h200')
    defaults = params.NodeParams(**{name: spec[0] for name, spec in params._SPECS.items()})
    model = type('M', (), {'info': type('I', (), {'name': 'cifar10_lite0'})()})()
    for kernels, device, expected in (('matmul', 'cuda:0', '__matmul.json'), ('cudnn', 'cuda:0', 'h200.json'),
                                      ('matmul', 'cpu', 'h200.json')):
        p = dataclasses.replace(defaults, conv_kernels=kernels)
        profile, source = assembly.load_profile(p, model, device, meter=None, log=print)
        assert source.endswith(expected) and profile.num_exits == 4, (kernels, device, source)
    matmul = assembly.load_profile(dataclasses.replace(defaults, conv_kernels='matmul'), model, 'cuda:0', None, print)[0]
    cudnn = assembly.load_profile(defaults, model, 'cuda:0', None, print)[0]
    assert matmul.meta['pointwise_matmul'] and not cudnn.meta.get('pointwise_matmul')
    assert matmul.step_ms(0, 32) > 1.2 * cudnn.step_ms(0, 32)
