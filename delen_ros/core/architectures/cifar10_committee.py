"""Three trained CIFAR-10 models as one multi-exit model, cheapest first: a committee cascade.

Each member is a model of the zoo, loaded from its own files, so the committee's ``.pt`` holds no
weights. The exits are the first member's own exits, then one exit per further member. That exit
scores the mean of the softmax outputs of every member run so far. Tried on all 10 000 test photos
(fp32, sessions 24 and 27):

    exit         what runs                          test    validation
    layer1..     ResNet-9's four exits (32 px)      0.841 .. 0.923
    +lite0       ResNet-9 and Lite0, averaged       0.9462  0.9450
    +lite2       all three, averaged                0.9515  0.9538

No single network here reached 95 % (Lite2 94.6 %, in every recipe tried: ``models/README.md``). A
committee does, and the frames a cheaper exit is sure of never pay for it. This is the "wisdom of
committees" cascade (Wang et al., ICLR 2022). The order puts Lite0 before Lite2 (session 27; Lite2
came second before): ResNet-9 and Lite0 are within a point of the whole committee at 0.60x its
latency on a 2-core CPU, where ResNet-9 and Lite2 were within a tenth of a point at 0.68x.

The engine hands one tensor from stage to stage. So every stage passes on the input photo, flattened,
beside what the next stage needs (:class:`_Carry`): the first member's features, then the running
sum of the members' probabilities. Later members take the photo at their own normalisation and size
(ResNet-9: the 160 px input averaged down 5x5 to 32 px, which is what ``INTER_AREA`` to 32 px gives).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..multi_exit import ModelInfo, MultiExitModel
from . import register_architecture

__all__ = ['cifar10_committee', 'DEFAULT_MEMBERS']

#: cheapest first; the first member's exits come first, then one exit per further member
DEFAULT_MEMBERS = ('cifar10_resnet9', 'cifar10_lite0', 'cifar10_lite2')


class _Carry:
    """One ``N x D`` tensor holding the input photo (flattened) and one more tensor of a known shape."""

    def __init__(self, image_shape: Sequence[int]):
        self.image_shape = tuple(image_shape)
        self.image_numel = math.prod(self.image_shape)

    def pack(self, image: Tensor, extra: Tensor) -> Tensor:
        return torch.cat([image.reshape(len(image), -1), extra.reshape(len(extra), -1).to(image.dtype)], dim=1)

    def image(self, x: Tensor) -> Tensor:
        return x[:, :self.image_numel].reshape(len(x), *self.image_shape)

    def extra(self, x: Tensor, shape: Sequence[int]) -> Tensor:
        return x[:, self.image_numel:].reshape(len(x), *shape)


class _MemberInput(nn.Module):
    """The committee's normalised photo as ``member`` takes it: its normalisation, its input size."""

    def __init__(self, committee: ModelInfo, member: ModelInfo):
        super().__init__()
        c_mean, c_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (committee.mean, committee.std))
        m_mean, m_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (member.mean, member.std))
        # x_member = (x * c_std + c_mean - m_mean) / m_std, one affine map per channel
        self.register_buffer('scale', c_std / m_std, persistent=False)
        self.register_buffer('shift', (c_mean - m_mean) / m_std, persistent=False)
        size, own = committee.input_size, member.input_size
        if size[0] % own[0] or size[1] % own[1] or size[0] // own[0] != size[1] // own[1]:
            raise ValueError(f'member {member.name!r} takes {own} px, which does not divide the committee\'s {size}')
        self.factor = size[0] // own[0]

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.scale + self.shift
        return F.avg_pool2d(x, self.factor) if self.factor > 1 else x


def _probabilities(logits: Tensor) -> Tensor:
    return torch.softmax(logits.float(), dim=1)


class _FirstMemberStage(nn.Module):
    """Stage ``k`` of the first member: its own stage on the carried features (the photo itself for
    ``k = 0``); after its last stage it passes on that member's probabilities instead of features."""

    def __init__(self, k: int, member: MultiExitModel, to_member: _MemberInput, carry: _Carry,
                 in_shape: Sequence[int] | None, final_head: nn.Module | None):
        super().__init__()
        self.k, self.carry, self.in_shape = k, carry, in_shape
        self.stage, self.to_member, self.final_head = member.stages[k], to_member, final_head

    def forward(self, x: Tensor) -> Tensor:
        image = x if self.k == 0 else self.carry.image(x)
        features = self.to_member(image) if self.k == 0 else self.carry.extra(x, self.in_shape)
        features = self.stage(features)
        if self.final_head is not None:
            features = _probabilities(self.final_head(features))
        return self.carry.pack(image, features)


class _FirstMemberHead(nn.Module):
    """An early exit of the first member: its own head on the carried features."""

    def __init__(self, head: nn.Module, carry: _Carry, shape: Sequence[int]):
        super().__init__()
        self.head, self.carry, self.shape = head, carry, tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.carry.extra(x, self.shape))


class _MemberStage(nn.Module):
    """A further member, whole (every stage, then its final head): adds its probabilities to the sum."""

    def __init__(self, member: MultiExitModel, to_member: _MemberInput, carry: _Carry):
        super().__init__()
        self.stages, self.head = nn.Sequential(*member.stages), member.heads[-1]
        self.to_member, self.carry, self.num_classes = to_member, carry, member.num_classes

    def forward(self, x: Tensor) -> Tensor:
        image = self.carry.image(x)
        total = self.carry.extra(x, (self.num_classes,)).float()
        total = total + _probabilities(self.head(self.stages(self.to_member(image))))
        return self.carry.pack(image, total)


class _CommitteeHead(nn.Module):
    """Logits whose softmax is the mean of the ``count`` members' probabilities: log of that mean (the
    first member's last exit too, ``count`` 1)."""

    def __init__(self, carry: _Carry, count: int, num_classes: int):
        super().__init__()
        self.carry, self.count, self.num_classes = carry, count, num_classes

    def forward(self, x: Tensor) -> Tensor:
        total = self.carry.extra(x, (self.num_classes,)).float()
        return torch.log((total / self.count).clamp_min(1e-12))


@torch.no_grad()
def _feature_shapes(member: MultiExitModel) -> list[tuple[int, ...]]:
    """Per stage of ``member``, the shape of one input's features (a dry run at its input size)."""
    x = torch.zeros(1, member.info.in_channels, *member.info.input_size, dtype=member.dtype, device=member.device)
    shapes = []
    for stage in member.stages:
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


@register_architecture('cifar10_committee')
def cifar10_committee(*, members: Sequence[str] = DEFAULT_MEMBERS, info: ModelInfo | None = None) -> MultiExitModel:
    """The committee of the zoo models ``members`` (cheapest first), at the largest member's input size and
    normalisation; every member must take an input size that divides it."""
    from ..zoo import load_model   # the zoo imports this registry
    if len(members) < 2:
        raise ValueError(f'a committee needs at least two members, got {list(members)}')
    loaded = [load_model(name) for name in members]
    labels = loaded[0].info.labels
    for m in loaded[1:]:
        if m.info.labels != labels:
            raise ValueError(f'members {members[0]!r} and {m.info.name!r} do not share their labels')
    largest = max(loaded, key=lambda m: m.info.input_size[0])
    first = loaded[0]
    exit_names = tuple(first.info.exit_names) + tuple(f'+{name.removeprefix("cifar10_")}' for name in members[1:])
    default = ModelInfo(name='cifar10_committee', input_size=tuple(largest.info.input_size),
                        in_channels=largest.info.in_channels, mean=tuple(largest.info.mean),
                        std=tuple(largest.info.std), labels=tuple(labels), exit_names=exit_names,
                        # until measured (the saved model's are): a later exit scores at least its member alone
                        exit_accuracy=tuple(first.info.exit_accuracy) + tuple(m.info.exit_accuracy[-1] for m in loaded[1:]),
                        accuracy_note=first.info.accuracy_note)
    info = info or default
    carry = _Carry((info.in_channels, *info.input_size))
    shapes = _feature_shapes(first)
    to_first = _MemberInput(info, first.info)
    stages: list[nn.Module] = []
    heads: list[nn.Module] = []
    last = first.num_exits - 1
    for k in range(first.num_exits):
        stages.append(_FirstMemberStage(k, first, to_first, carry, shapes[k - 1] if k else None,
                                        first.heads[k] if k == last else None))
        heads.append(_CommitteeHead(carry, 1, info.num_classes) if k == last
                     else _FirstMemberHead(first.heads[k], carry, shapes[k]))
    for count, member in enumerate(loaded[1:], start=2):
        stages.append(_MemberStage(member, _MemberInput(info, member.info), carry))
        heads.append(_CommitteeHead(carry, count, info.num_classes))
    # every weight comes from the members' own files: the committee's file holds none
    return MultiExitModel(info, stages, heads, frozen_prefixes=('stages.', 'heads.'))
