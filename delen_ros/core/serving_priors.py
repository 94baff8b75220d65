"""What an engine learnt about serving on this host, kept for its next start (issue 10).

Admission at configure judges the apps it is given on priors: the profile's step times (a CUDA graph's
replay, or a CPU pass measured alone) and default overheads. Serving costs more than that: the worker's own
Python per turn, its wake-up, publication, frames that arrive older under load. On an H200, 16 cameras,
the engine thread spent about four times a step's replay per frame (``benchmarks/cpu/configure_admission_gap``),
so configure admitted apps that then missed their bounds, where the same apps registered later, judged
on what had been measured, were refused. An engine's learnt costs, written while it serves and read at
the next configure as its priors, let configure judge as the running node would.

Kept: the measured / profile ratio per step (:meth:`~.policies.LatencyCorrector.levels`), the serving
overhead, the frames' age on arrival (99th percentile) and preprocessing's per-call and per-frame cost.
Measurements replace each prior as they come, as before.

Pure (no ROS); :func:`read` never raises: a missing, corrupt or foreign file gives no priors and says why.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Protocol, Sequence

__all__ = ['ServingPriors', 'Keeper', 'merge', 'read', 'write', 'FORMAT']

FORMAT = 'delen_ros.serving_priors/1'


@dataclasses.dataclass(frozen=True)
class ServingPriors:
    """Learnt serving costs of one model on one device.

    :param model: the model's name.
    :param device: the device they were learnt on (``'cuda:0'``, ``'cpu'``).
    :param step_levels: per step, measured time / the profile's p50 (``None``: not measured).
    :param overhead_ms: the serving overhead at its tail (wake-up, decision -> delivery), ms.
    :param transport_ms: the frames' age on arrival, 99th percentile, ms.
    :param preprocess_ms: preprocessing's cost per call and per frame, ms.
    :param saved_unix: when they were written (seconds since the epoch).
    """

    model: str
    device: str
    step_levels: tuple[float | None, ...]
    overhead_ms: float | None = None
    transport_ms: float | None = None
    preprocess_ms: tuple[float, float] | None = None
    saved_unix: float = 0.0

    def __post_init__(self):
        for level in self.step_levels:
            if level is not None and not (math.isfinite(level) and level > 0):
                raise ValueError(f'a step level must be finite and > 0, got {level!r}')
        for name in ('overhead_ms', 'transport_ms'):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be finite and >= 0, got {value!r}')
        if self.preprocess_ms is not None and (
                len(self.preprocess_ms) != 2 or not all(math.isfinite(v) and v >= 0 for v in self.preprocess_ms)):
            raise ValueError(f'preprocess_ms must be two finite values >= 0, got {self.preprocess_ms!r}')

    @property
    def empty(self) -> bool:
        """Nothing measured yet (not worth writing)."""
        return (all(v is None for v in self.step_levels) and self.overhead_ms is None
                and self.transport_ms is None and self.preprocess_ms is None)

    def describe(self) -> str:
        levels = ', '.join('-' if v is None else f'{v:.2f}' for v in self.step_levels)
        parts = [f'step levels {levels}']
        if self.overhead_ms is not None:
            parts.append(f'overhead {self.overhead_ms:.2f} ms')
        if self.transport_ms is not None:
            parts.append(f'age on arrival {self.transport_ms:.2f} ms')
        if self.preprocess_ms is not None:
            parts.append(f'preprocessing {self.preprocess_ms[0]:.2f} ms + {self.preprocess_ms[1]:.3f} ms a frame')
        return ', '.join(parts)


def write(path: str | os.PathLike, priors: ServingPriors) -> None:
    """Write ``priors`` to ``path`` atomically (a temporary file, then a rename).

    :raises OSError: the directory cannot be made or the file written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = dict(dataclasses.asdict(priors), format=FORMAT, saved_unix=priors.saved_unix or time.time())
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(body, indent=1) + '\n')
    os.replace(tmp, path)


def read(path: str | os.PathLike, *, model: str, device: str, num_exits: int) -> tuple[ServingPriors | None, str]:
    """The priors in ``path`` if they are this model's on this device: ``(priors, '')``; else
    ``(None, why)`` (``why`` is ``''`` when there is no file yet)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, ''
    except OSError as exc:
        return None, f'cannot read {path}: {exc.strerror or exc}'
    try:
        body: Any = json.loads(text)
        if not isinstance(body, dict) or body.get('format') != FORMAT:
            raise ValueError(f"not a serving-priors file (format {body.get('format') if isinstance(body, dict) else None!r})")
        levels = body.get('step_levels')
        if not isinstance(levels, list):
            raise ValueError('step_levels is not a list')
        preprocess = body.get('preprocess_ms')
        priors = ServingPriors(
            model=str(body.get('model')), device=str(body.get('device')),
            step_levels=tuple(None if v is None else float(v) for v in levels),
            overhead_ms=_optional_float(body.get('overhead_ms')), transport_ms=_optional_float(body.get('transport_ms')),
            preprocess_ms=None if preprocess is None else tuple(float(v) for v in _sequence(preprocess)),
            saved_unix=float(body.get('saved_unix') or 0.0))
    except (ValueError, TypeError) as exc:
        return None, f'{path} ignored: {exc}'
    if priors.model != model or priors.device != device:
        return None, f'{path} ignored: learnt for {priors.model} on {priors.device}, not {model} on {device}'
    if len(priors.step_levels) != num_exits:
        return None, f'{path} ignored: {len(priors.step_levels)} step levels for a model of {num_exits} exits'
    return priors, ''


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _sequence(value: Any) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'expected a list, got {value!r}')
    return value


def merge(learnt: ServingPriors, before: ServingPriors | None) -> ServingPriors:
    """``learnt``, with what it has not measured (yet) taken from ``before``."""
    if before is None or len(before.step_levels) != len(learnt.step_levels):
        return learnt
    def pick(new, old):
        return old if new is None else new
    return dataclasses.replace(
        learnt, step_levels=tuple(pick(n, o) for n, o in zip(learnt.step_levels, before.step_levels)),
        overhead_ms=pick(learnt.overhead_ms, before.overhead_ms), transport_ms=pick(learnt.transport_ms, before.transport_ms),
        preprocess_ms=pick(learnt.preprocess_ms, before.preprocess_ms))


class _Learner(Protocol):
    def serving_priors(self, *, model: str, device: str) -> ServingPriors: ...
    def use_priors(self, priors: ServingPriors) -> None: ...


class Keeper:
    """One engine's priors file: read once (:meth:`restore`, after the warm-up, before apps are
    registered), written while it serves (:meth:`save_if_due`) and when it stops (:meth:`save`).

    :param path: the file.
    :param engine: has ``serving_priors`` and ``use_priors`` (:class:`~delen_ros.core.engine.Engine`).
    :param every_s: the least time between two writes of :meth:`save_if_due`, s.
    :param clock: monotonic seconds.
    """

    def __init__(self, path: str | os.PathLike, engine: _Learner, *, model: str, device: str, num_exits: int,
                 every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.path = pathlib.Path(path)
        self.engine = engine
        self.model, self.device, self.num_exits = model, device, num_exits
        self.every_s = every_s
        self.clock = clock
        self.error = ''   # the last read's or write's problem ('' = none)
        self.restored: ServingPriors | None = None
        self._last_write = clock()

    def restore(self) -> str:
        """Start the engine from the file's priors, if they are its model's on its device; a line
        for the log saying what was used, or why nothing was."""
        priors, why = read(self.path, model=self.model, device=self.device, num_exits=self.num_exits)
        if priors is None:
            self.error = why
            return why or f'serving priors: none yet in {self.path} (written while serving)'
        try:
            self.engine.use_priors(priors)
        except ValueError as exc:
            self.error = f'{self.path} ignored: {exc}'
            return self.error
        self.restored = priors
        age_h = (time.time() - priors.saved_unix) / 3600 if priors.saved_unix else math.nan
        return f'serving priors from {self.path} (learnt {age_h:.1f} h ago): {priors.describe()}'

    def save_if_due(self) -> bool:
        """:meth:`save` if ``every_s`` passed since the last write; ``False`` only when it failed."""
        if self.clock() - self._last_write < self.every_s:
            return True
        return self.save()

    def save(self) -> bool:
        """Write what the engine learnt (merged with what it started from); ``False`` (and
        :attr:`error` set) when the write failed."""
        self._last_write = self.clock()
        try:
            priors = merge(self.engine.serving_priors(model=self.model, device=self.device), self.restored)
        except ValueError as exc:   # a measurement out of range (never written: the file stays as it was)
            self.error = f'serving priors not written: {exc}'
            return False
        if priors.empty:
            return True
        try:
            write(self.path, priors)
        except OSError as exc:
            self.error = f'could not write serving priors {self.path}: {exc.strerror or exc}'
            return False
        self.restored, self.error = priors, ''
        return True
