"""Small fakes for tests of the runtime: a multi-exit model with known answers, a stage runner, a
synthetic profile, and a fake clock. Reusable by other test modules (``from fakes import ...``,
``test/`` is on ``sys.path`` under pytest's rootdir-relative imports).

The fake model takes 8 x 8 grey images (mean 0, std 1: the tensor holds raw pixel values) and has
``num_exits`` stages that pass the pixels through. Pixel ``[0, 0]`` chooses the class
(``value % num_classes``) and pixel ``[0, 1]`` the "sharpness" ``s`` (0-255): head ``k`` gives
logit ``scale_k * s / 255`` to that class and 0 to the others, so the confidence at exit ``k`` is
known in closed form (:func:`fake_confidence`) and grows with ``k``. Make inputs with :func:`fake_image`.
"""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from delen_ros.core.multi_exit import ModelInfo, MultiExitModel
from delen_ros.core.profile import ExitProfile, Profile

if TYPE_CHECKING:
    from delen_ros.core.results import Result

__all__ = ['FAKE_SCALES', 'FakeHead', 'fake_model', 'fake_image', 'fake_confidence', 'FakeRunner',
           'synthetic_profile', 'FakeClock']

#: logit scale of each exit's head: later exits are more confident on the same input
FAKE_SCALES = (2.0, 4.0, 6.0, 8.0)
NUM_CLASSES = 4


class FakeHead(nn.Module):
    """Logits ``scale * s / 255`` for class ``pixel[0,0] % C``, 0 elsewhere (see the module docstring)."""

    def __init__(self, scale: float, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.scale = scale
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)  # gives the model a device/dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        cls = flat[:, 0].round().long() % self.num_classes
        logits = torch.zeros(x.shape[0], self.num_classes, dtype=torch.float32, device=x.device)
        logits[torch.arange(x.shape[0], device=x.device), cls] = self.scale * flat[:, 1].float() / 255.0
        return logits + self.dummy


def fake_model(num_exits: int = 4, *, scales: Sequence[float] = FAKE_SCALES,
               accuracy: Sequence[float] | None = None) -> MultiExitModel:
    """A ``MultiExitModel`` over identity stages and :class:`FakeHead` heads, in eval mode on CPU."""
    if len(scales) < num_exits:
        raise ValueError(f'need {num_exits} scales, got {scales!r}')
    accuracy = tuple(accuracy or default_accuracy(num_exits))
    info = ModelInfo(name='fake', input_size=(8, 8), in_channels=1, mean=(0.0,), std=(1.0,),
                     labels=tuple(f'class{c}' for c in range(NUM_CLASSES)),
                     exit_names=tuple(f'exit{k}' for k in range(num_exits)), exit_accuracy=accuracy,
                     accuracy_note='fake')
    stages = [nn.Identity() for _ in range(num_exits)]
    heads = [FakeHead(s) for s in scales[:num_exits]]
    return MultiExitModel(info, stages, heads).prepare('cpu')


def fake_image(class_id: int = 0, sharpness: int = 255, *, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    """An 8 x 8 grey uint8 image the fake model classifies as ``class_id`` with the given sharpness."""
    image = np.zeros(size, np.uint8)
    image[0, 0] = class_id
    image[0, 1] = sharpness
    return image


def fake_confidence(exit_index: int, sharpness: int, *, scales: Sequence[float] = FAKE_SCALES,
                    num_classes: int = NUM_CLASSES) -> float:
    """Max softmax of the fake model at ``exit_index`` for an image of this sharpness."""
    a = math.exp(scales[exit_index] * sharpness / 255.0)
    return a / (a + num_classes - 1)


class FakeRunner:
    """The ``StageRunner`` API over a model, with optional sleeps standing in for step costs.

    :param sleep_ms: per step ``k``, seconds slept per call is ``sleep_ms[k] / 1000`` (whole batch);
        ``None``: no sleep.
    :param fail_at: raise ``RuntimeError`` whenever this step runs (tests the worker's recovery).

    ``calls`` records ``(step, batch_size)`` of every stage call.
    """

    def __init__(self, model: MultiExitModel, *, sleep_ms: Sequence[float] | None = None,
                 fail_at: int | None = None, device: str = 'cpu'):
        self.model = model
        self.device = torch.device(device)
        self.sleep_ms = sleep_ms
        self.fail_at = fail_at
        self.calls: list[tuple[int, int]] = []

    def to_input(self, cpu_batch: torch.Tensor) -> torch.Tensor:
        return cpu_batch.to(self.device)

    def stage(self, k: int, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((k, x.shape[0]))
        if self.fail_at == k:
            raise RuntimeError(f'fake failure at step {k}')
        if self.sleep_ms is not None:
            time.sleep(self.sleep_ms[k] / 1000.0)
        return self.model.run_stage(k, x)

    def head(self, k: int, features: torch.Tensor) -> torch.Tensor:
        return self.model.run_head(k, features)

    def synchronize(self) -> None:
        pass


def default_accuracy(num_exits: int) -> tuple[float, ...]:
    return tuple(round(0.6 + 0.3 * k / max(1, num_exits - 1), 4) for k in range(num_exits))


def synthetic_profile(num_exits: int = 4, *, step_ms: Sequence[float] | None = None, head_ms: float = 0.1,
                      p99_factor: float = 1.2, power_w: float = 1.0, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
                      batch_cost: float = 0.25, accuracy: Sequence[float] | None = None,
                      calibration: bool = True, model: str = 'fake', device: str = 'cpu') -> Profile:
    """A ``Profile`` with round numbers, for tests of bounds, policies, scheduler and engine.

    :param step_ms: stage time of each exit at batch 1 (default ``1, 2, 3, ...`` ms).
    :param head_ms: head time at batch 1 (every exit).
    :param p99_factor: p99 = p50 x this.
    :param power_w: energy per frame = time x power (W x ms = mJ), per batch divided by its size.
    :param batch_cost: a batch of ``b`` takes ``t1 x (1 + batch_cost x (b - 1))``.
    :param accuracy: per exit (default 0.6 ... 0.9, evenly).
    :param calibration: rows ``(t, acc_k + (0.99 - acc_k) x t, 1 - 0.9 t)`` for
        ``t in 0, 0.5, 0.7, 0.8, 0.9, 0.95``: confident inputs are more accurate and fewer.

    Exit ``k`` at batch 1 therefore takes ``sum(step_ms[:k+1]) + (k+1) x head_ms`` ms.
    """
    step_ms = tuple(step_ms or [float(k + 1) for k in range(num_exits)])
    accuracy = tuple(accuracy or default_accuracy(num_exits))
    if len(step_ms) != num_exits or len(accuracy) != num_exits:
        raise ValueError(f'need {num_exits} step_ms and accuracy values, got {step_ms!r}, {accuracy!r}')

    def table(t1: float, factor: float = 1.0) -> dict[int, float]:
        return {b: t1 * factor * (1 + batch_cost * (b - 1)) for b in batch_sizes}

    exits = []
    for k in range(num_exits):
        step = step_ms[k] + head_ms
        rows = ()
        if calibration:
            rows = tuple((t, round(accuracy[k] + (0.99 - accuracy[k]) * t, 6), round(1 - 0.9 * t, 6))
                         for t in (0.0, 0.5, 0.7, 0.8, 0.9, 0.95))
        exits.append(ExitProfile(
            name=f'exit{k}', accuracy=accuracy[k], stage_ms=table(step_ms[k]),
            stage_p99_ms=table(step_ms[k], p99_factor), head_ms=table(head_ms), head_p99_ms=table(head_ms, p99_factor),
            stage_energy_mj={b: step * power_w * (1 + batch_cost * (b - 1)) / b for b in batch_sizes},
            calibration=rows))
    return Profile(model=model, device=device, exits=tuple(exits), energy_source='estimate')


class FakeClock:
    """A settable nanosecond clock: ``clock()`` returns ``now``; :meth:`advance` moves it in ms."""

    def __init__(self, start_ns: int = 1_000_000_000):
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: float) -> int:
        self.now += int(ms * 1_000_000)
        return self.now


class Collector:
    """An engine's ``on_result``: keeps the results, and waits for a count of them."""

    def __init__(self):
        self.results: list[Result] = []
        self.lock = threading.Lock()

    def __call__(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)

    def wait(self, count: int, timeout: float = 10.0) -> list[Result]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.results) >= count:
                    return list(self.results)
            time.sleep(0.002)
        raise AssertionError(f'{len(self.results)} results of {count} after {timeout} s')

    def of(self, app_id: str) -> list[Result]:
        return [r for r in self.results if r.app_id == app_id]
