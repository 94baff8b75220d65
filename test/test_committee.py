"""``cifar10_committee``: the shipped CIFAR-10 models as one multi-exit model. Its first exits are
ResNet-9's, each later exit the mean of the members' probabilities so far; run stage by stage (as the
engine does, and through the serving runner) it answers as its members do run alone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from delen_ros.core.architectures import get_architecture
from delen_ros.core.runner import StageRunner
from delen_ros.core.zoo import load_model, read_model_json

MEMBERS = ('cifar10_resnet9', 'cifar10_lite0', 'cifar10_lite2')


@pytest.fixture(scope='module')
def committee():
    return load_model('cifar10_committee')


@pytest.fixture(scope='module')
def members():
    return [load_model(name) for name in MEMBERS]


@pytest.fixture(scope='module')
def photos():
    torch.manual_seed(0)
    # what the committee's preprocessing hands it: 160 px photos normalised as the Lite members take them
    pixels = torch.randint(0, 256, (3, 3, 32, 32)).float().repeat_interleave(5, 2).repeat_interleave(5, 3)
    return pixels, (pixels - 127.0) / 128.0


def _own_input(member, pixels):
    """``member``'s input as its own preprocessing would make it from the same photo."""
    size = member.info.input_size[0]
    x = F.avg_pool2d(pixels, pixels.shape[-1] // size) if size < pixels.shape[-1] else pixels
    mean = torch.tensor(member.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(member.info.std).view(1, -1, 1, 1)
    return (x - mean) / std


def test_the_committee_file_holds_no_weights_of_its_own(committee):
    meta = read_model_json('cifar10_committee')
    assert meta['arch_kwargs']['members'] == list(MEMBERS)
    assert committee.trainable_state_dict() == {}
    assert committee.info.exit_names == ('layer1', 'res1', 'layer2', 'final', '+lite0', '+lite2')
    assert committee.info.input_size == (160, 160)


def test_each_exit_is_its_members_mean_probability(committee, members, photos):
    pixels, x = photos
    r9, lite0, lite2 = members
    with torch.inference_mode():
        exits = committee(x)
        own = [m(_own_input(m, pixels)) for m in members]
    for k in range(4):   # ResNet-9's own exits, on the photo averaged down to its 32 px
        assert torch.allclose(torch.softmax(exits[k], 1), torch.softmax(own[0][k], 1), atol=1e-4)
    probs = [torch.softmax(o[-1], 1) for o in own]
    assert torch.allclose(torch.softmax(exits[4], 1), (probs[0] + probs[1]) / 2, atol=1e-4)
    assert torch.allclose(torch.softmax(exits[5], 1), sum(probs) / 3, atol=1e-4)


def test_stage_by_stage_through_the_serving_runner(photos):
    """Folded batch norms, channels-last, one tensor handed from stage to stage: the engine's path."""
    _, x = photos
    model = load_model('cifar10_committee')
    with torch.inference_mode():
        expected = model(x)
    runner = StageRunner(model, device='cpu')
    features = runner.to_input(x)
    for k in range(model.num_exits):
        features = runner.stage(k, features)
        assert torch.allclose(torch.softmax(runner.head(k, features), 1), torch.softmax(expected[k], 1), atol=1e-3)


def test_members_must_fit_one_input():
    build = get_architecture('cifar10_committee')
    with pytest.raises(ValueError, match='at least two members'):
        build(members=['cifar10_resnet9'])
    with pytest.raises(ValueError, match='labels'):
        build(members=['cifar10_resnet9', 'fashion_mnist'])
