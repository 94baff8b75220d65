"""Profiling as a library: per-exit latency per batch size, energy, accuracy and calibration of a
multi-exit model on one device (what ``delen_profile`` prints and saves; what the node measures
when no profile is committed for its device). ROS-free; ``tqdm`` bars where installed.
"""
from __future__ import annotations

import datetime
import functools
import math
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
try:
    from tqdm import tqdm
except ImportError:   # progress bars are a nicety: the node and a bare install profile without them
    def tqdm(iterable=None, **_):
        return iterable

from .energy import EnergyMeter, measure_energy, measure_idle_power_w  # re-exported: profiling's API
from .preprocess import preprocess
from .profile import ExitProfile, Profile, device_slug, exits_taken
from .runner import StageRunner, dtype_name

if TYPE_CHECKING:
    from .multi_exit import MultiExitModel

__all__ = ['profile_model', 'quick_profile', 'quick_batch_sizes', 'measure_energy', 'measure_idle_power_w',
           'calibration_table', 'default_estimate_power_w', 'CALIBRATION_THRESHOLDS', 'DEFAULT_BATCH_SIZES',
           'cascade_report', 'format_cascade_report']

#: confidence thresholds of the calibration table
CALIBRATION_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20)) + (0.99,)
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
#: assumed power above idle while computing, for estimates: per busy CPU thread / for a GPU
CPU_THREAD_POWER_W = 5.0
GPU_POWER_W = 100.0


def default_estimate_power_w(device: str | torch.device) -> float:
    """The assumed power (W, above idle) of an energy estimate on ``device``: 5 W per torch CPU
    thread (a busy server or desktop core), 100 W for a GPU (a data-centre GPU at moderate load)."""
    if torch.device(device).type == 'cuda':
        return GPU_POWER_W
    return CPU_THREAD_POWER_W * torch.get_num_threads()


# --- measuring ------------------------------------------------------------------------------------------
def _now() -> float:
    return time.perf_counter()


def _chain(runner: StageRunner, x0: torch.Tensor) -> None:
    x = runner.to_input(x0)
    for k in range(runner.num_exits):
        x = runner.stage(k, x)
        runner.head(k, x)
    runner.synchronize()


def _time_steps(runner: StageRunner, x0: torch.Tensor, *, runs: int, min_runs: int, warmup: int,
                budget_s: float) -> tuple[list[list[float]], list[list[float]]]:
    """Per exit, the stage and head times (ms) of ``n`` timed runs over the batch ``x0``.

    ``n`` is ``runs``, fewer when one run takes so long that ``n`` runs would exceed ``budget_s``
    (but at least ``min_runs``). Warm-up stops early (after two runs) once it has taken a quarter
    of the budget: slow runs are warm after one or two.
    """
    t = _now()
    for i in range(max(1, warmup)):
        _chain(runner, x0)
        if i >= 1 and _now() - t > budget_s / 4:
            break
    t = _now()
    _chain(runner, x0)
    per_run = max(_now() - t, 1e-6)
    n = max(min_runs, min(runs, int(budget_s / per_run)))
    stage = [[] for _ in range(runner.num_exits)]
    head = [[] for _ in range(runner.num_exits)]
    for _ in range(n):
        x = runner.to_input(x0)
        runner.synchronize()
        for k in range(runner.num_exits):
            t0 = time.perf_counter_ns()
            x = runner.stage(k, x)
            runner.synchronize()
            t1 = time.perf_counter_ns()
            runner.head(k, x)
            runner.synchronize()
            t2 = time.perf_counter_ns()
            stage[k].append((t1 - t0) / 1e6)
            head[k].append((t2 - t1) / 1e6)
    return stage, head


def _exit_outputs(runner: StageRunner, images: Sequence[np.ndarray], *, batch: int, progress: bool
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per exit, the max-softmax confidence and the predicted class of every image."""
    info = runner.model.info
    confs = [[] for _ in range(runner.num_exits)]
    preds = [[] for _ in range(runner.num_exits)]
    for i in tqdm(range(0, len(images), batch), desc='accuracy', unit='batch', disable=not progress, leave=False):
        x = runner.to_input(preprocess(images[i:i + batch], info))
        for k in range(runner.num_exits):
            x = runner.stage(k, x)
            c, p = torch.softmax(runner.head(k, x).float(), dim=1).max(dim=1)   # as the engine does
            confs[k].append(c.cpu().numpy())
            preds[k].append(p.cpu().numpy())
    return [np.concatenate(c) for c in confs], [np.concatenate(p) for p in preds]


def calibration_table(confidence: np.ndarray, correct: np.ndarray, thresholds: Sequence[float] = CALIBRATION_THRESHOLDS
                      ) -> tuple[tuple[float, float, float], ...]:
    """Rows ``(threshold, accuracy of inputs with confidence >= threshold, their fraction)``;
    thresholds no input reaches are left out."""
    rows = []
    for t in thresholds:
        sel = confidence >= t
        if sel.any():
            rows.append((float(t), float(correct[sel].mean()), float(sel.mean())))
    return tuple(rows)


def _as_eval(eval_set: Any) -> tuple[list[np.ndarray], np.ndarray | None, str] | None:
    """``EvalSet``-like (``images``, ``labels``, ``note``) or ``(images, labels)`` -> a triple."""
    if eval_set is None:
        return None
    if isinstance(eval_set, tuple):
        images, labels = eval_set
        note = 'top-1 accuracy on the given labelled images' if labels is not None else \
            'top-1 agreement with the final exit on the given images'
    else:
        images, labels, note = eval_set.images, eval_set.labels, eval_set.note
    if len(images) == 0:
        raise ValueError('the eval set is empty')
    return list(images), (None if labels is None else np.asarray(labels)), note


def _sample_batch(info, images: Sequence[np.ndarray] | None, b: int) -> torch.Tensor:
    """A preprocessed batch of ``b`` (real images if any, else zeros)."""
    if images:
        return preprocess([images[i % len(images)] for i in range(b)], info)
    return torch.zeros(b, info.in_channels, *info.input_size)


# --- profiling --------------------------------------------------------------------------------------------
def profile_model(model: 'MultiExitModel', *, device: str = 'cpu', batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                  runs: int = 200, meter: EnergyMeter | None = None, eval_set: Any = None,
                  runner: StageRunner | None = None, runner_options: dict[str, Any] | None = None,
                  warmup: int = 5, min_runs: int = 5, time_budget_s: float = 10.0,
                  energy_window_s: float = 1.0, idle_window_s: float = 2.0, energy_per_step: bool = True,
                  subtract_idle: bool = False, estimate_power_w: float | None = None,
                  thresholds: Sequence[float] = CALIBRATION_THRESHOLDS, eval_batch: int = 64,
                  max_samples: int | None = 5000, progress: bool = True, tool: str = 'delen_profile',
                  calibration_set: Any = None, report_bounds: Sequence[float] | None = None) -> Profile:
    """Measure ``model``'s per-exit profile on ``device`` (see the module docstring for the method).

    :param model: the multi-exit model (moved to ``device`` by the runner).
    :param device: ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    :param batch_sizes: batch sizes to time (each >= 1).
    :param runs: timed runs per batch size (p50 / p99 over them), fewer where ``time_budget_s`` says.
    :param meter: an energy meter; ``None`` or one with ``measured=False``: energy is estimated.
    :param eval_set: held-out data: a ``datasets.EvalSet`` or ``(images, labels)`` (labels ``None``:
        accuracy = agreement with the final exit); ``None``: accuracies from ``model.info``, no calibration.
    :param runner: time through this runner; ``None``: a ``StageRunner(model, device=..., max_batch=
        max(batch_sizes), **runner_options)``.
    :param warmup: untimed runs per batch size first (CUDA graphs are captured then).
    :param min_runs: at least this many timed runs, whatever the budget.
    :param time_budget_s: seconds of timed runs per batch size, roughly.
    :param energy_window_s: shortest energy loop per step, s (at least 5 meter periods are used).
    :param idle_window_s: idle-power window, s.
    :param energy_per_step: loop each step alone (accurate); ``False``: loop the whole chain per
        batch size and split its energy by the steps' time shares (``num_exits`` times quicker).
    :param subtract_idle: store energy above idle power in ``stage_energy_mj`` (default: idle included).
    :param estimate_power_w: assumed power above idle for estimates, W; ``None``:
        :func:`default_estimate_power_w`.
    :param thresholds: calibration thresholds.
    :param eval_batch: batch size of the accuracy pass.
    :param max_samples: per-input confidences and correctness kept in ``Profile.samples`` (for
        cascade calibration): at most this many eval inputs, a seeded random subset; ``None``: all;
        0: none.
    :param progress: tqdm bars on stderr.
    :param calibration_set: held-out data apart from ``eval_set`` (same forms): when given, the
        calibration rows and ``samples`` (cascade thresholds) come from it and only the reported
        accuracy from ``eval_set``, and ``meta['cascade_test']`` holds :func:`cascade_report` on
        ``eval_set``; ``None``: everything from ``eval_set``.
    :param report_bounds: accuracy bounds of that report; ``None``: the calibration set's final-exit
        accuracy minus 0, 0.25, 0.5, 1, 2, 3, 5 and 10 points.
    :raises ValueError: bad batch sizes, runs or windows (the value is shown).
    """
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] < 1:
        raise ValueError(f'batch sizes must be >= 1, got {batch_sizes!r}')
    if runs < 1 or min_runs < 1 or warmup < 0:
        raise ValueError(f'runs and min_runs must be >= 1 and warmup >= 0, got {runs!r}, {min_runs!r}, {warmup!r}')
    if max_samples is not None and max_samples < 0:
        raise ValueError(f'max_samples must be >= 0 or None, got {max_samples!r}')
    if energy_window_s <= 0 or idle_window_s <= 0 or time_budget_s <= 0:
        raise ValueError(f'windows and budgets must be > 0, got energy {energy_window_s!r}, idle {idle_window_s!r}, '
                         f'budget {time_budget_s!r}')
    runner = runner or StageRunner(model, device=device, max_batch=max(batch_sizes), **(runner_options or {}))
    info = model.info
    n_exits = runner.num_exits
    data = _as_eval(eval_set)
    sample_images = data[0][:max(batch_sizes)] if data else None
    measured = meter is not None and meter.measured
    power_w = default_estimate_power_w(runner.device) if estimate_power_w is None else float(estimate_power_w)
    if not math.isfinite(power_w) or power_w < 0:
        raise ValueError(f'estimate_power_w must be >= 0, got {estimate_power_w!r}')
    started = _now()

    # Idle power first, right after one run: the device as it sits between frames while serving
    # (a GPU keeps its clocks up for a while after work; a cold one idles lower).
    idle_w = 0.0
    if measured:
        _chain(runner, _sample_batch(info, sample_images, 1))
        idle_w = measure_idle_power_w(meter, window_s=idle_window_s)
    window = max(energy_window_s, 5 * (meter.period_s or 0.0)) if measured else 0.0

    stage_t: dict[tuple[int, int], list[float]] = {}
    head_t: dict[tuple[int, int], list[float]] = {}
    energy_total: dict[tuple[int, int], float] = {}   # mJ per frame, idle included
    energy_above: dict[tuple[int, int], float] = {}   # mJ per frame, above idle
    runs_done: dict[int, int] = {}
    bar = tqdm(batch_sizes, desc=f'profile {info.name} on {runner.device}', unit='batch size', disable=not progress)
    for b in bar:
        x0 = _sample_batch(info, sample_images, b)
        stage, head = _time_steps(runner, x0, runs=runs, min_runs=min_runs, warmup=warmup, budget_s=time_budget_s)
        runs_done[b] = len(stage[0])
        for k in range(n_exits):
            stage_t[k, b], head_t[k, b] = stage[k], head[k]
        p50 = [float(np.median(stage[k]) + np.median(head[k])) for k in range(n_exits)]
        bar.set_postfix(step0_ms=f'{p50[0]:.2f}', final_ms=f'{sum(p50):.2f}')
        if not measured:
            for k in range(n_exits):
                energy_above[k, b] = p50[k] * power_w / b   # ms x W = mJ
            continue
        if energy_per_step:
            x = runner.to_input(x0)
            for k in range(n_exits):
                def step(x=x, k=k) -> None:
                    runner.head(k, runner.stage(k, x))
                    runner.synchronize()
                mj, s, _ = measure_energy(meter, step, window_s=window)
                energy_total[k, b] = mj / b
                energy_above[k, b] = max(0.0, mj - idle_w * s * 1000.0) / b
                x = runner.stage(k, x)
        else:
            mj, s, _ = measure_energy(meter, functools.partial(_chain, runner, x0), window_s=window)
            for k in range(n_exits):
                share = p50[k] / sum(p50) if sum(p50) > 0 else 1.0 / n_exits
                energy_total[k, b] = mj * share / b
                energy_above[k, b] = max(0.0, mj - idle_w * s * 1000.0) * share / b

    # Accuracy and calibration.
    if data is not None:
        images, labels, note = data
        confs, preds = _exit_outputs(runner, images, batch=eval_batch, progress=progress)
        reference = preds[-1] if labels is None else labels
        accuracy = [float((preds[k] == reference).mean()) for k in range(n_exits)]
        calibration = [calibration_table(confs[k], preds[k] == reference, thresholds) for k in range(n_exits)]
        eval_count = len(images)
        samples = _samples(confs, preds, reference, max_samples)
        calib = _as_eval(calibration_set)
        if calib is not None:
            c_images, c_labels, calib_note = calib
            test_outputs = (confs, [preds[k] == reference for k in range(n_exits)])
            confs, preds = _exit_outputs(runner, c_images, batch=eval_batch, progress=progress)
            c_ref = preds[-1] if c_labels is None else c_labels
            calibration = [calibration_table(confs[k], preds[k] == c_ref, thresholds) for k in range(n_exits)]
            samples = _samples(confs, preds, c_ref, max_samples)
            calib_accuracy = [float((preds[k] == c_ref).mean()) for k in range(n_exits)]
    else:
        note = info.accuracy_note + ' (from the model file; no eval set given)'
        accuracy, calibration, eval_count, samples = list(info.exit_accuracy), [()] * n_exits, 0, {}

    includes_idle = measured and not subtract_idle
    stored, other = (energy_total, energy_above) if includes_idle else (energy_above, energy_total)
    exits = []
    for k in range(n_exits):
        exits.append(ExitProfile(
            name=info.exit_names[k], accuracy=accuracy[k], calibration=calibration[k],
            stage_ms={b: float(np.median(stage_t[k, b])) for b in batch_sizes},
            stage_p99_ms={b: float(np.percentile(stage_t[k, b], 99)) for b in batch_sizes},
            head_ms={b: float(np.median(head_t[k, b])) for b in batch_sizes},
            head_p99_ms={b: float(np.percentile(head_t[k, b], 99)) for b in batch_sizes},
            stage_energy_mj={b: float(stored[k, b]) for b in batch_sizes}))
    meta: dict[str, Any] = {
        'tool': tool,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'torch': torch.__version__,
        'torch_threads': torch.get_num_threads(),
        'device_name': str(runner.device),
        'channels_last': runner.channels_last,
        'cuda_graphs': runner.cuda_graphs,
        'pointwise_matmul': getattr(runner, 'pointwise_matmul', False),
        'folded_batch_norms': runner.folded.batch_norms if getattr(runner, 'folded', None) else 0,
        'runs_per_batch_size': {str(b): n for b, n in runs_done.items()},
        'warmup_runs': warmup,
        'eval_images': eval_count,
        'samples': len(samples['correct'][0]) if samples else 0,
        'samples_from': 'calibration set' if data is not None and calibration_set is not None else 'eval set',
        'energy_meter': meter.source if meter is not None else 'none',
        'energy_meter_detail': meter.detail if meter is not None else '',
        'seconds': round(_now() - started, 1),
    }
    if measured:
        meta.update({
            'idle_power_w': idle_w,
            'energy_window_s': window,
            'energy_method': 'per step' if energy_per_step else 'whole chain split by time share',
            'energy_note': ('stage_energy_mj includes idle power; meta.energy_above_idle_mj subtracts it'
                            if includes_idle else
                            'stage_energy_mj is above idle power; meta.energy_with_idle_mj includes it'),
            ('energy_above_idle_mj' if includes_idle else 'energy_with_idle_mj'):
                {info.exit_names[k]: {str(b): float(other[k, b]) for b in batch_sizes} for k in range(n_exits)},
        })
    else:
        meta.update({'estimate_power_w': power_w,
                     'energy_note': f'estimate: p50 step time x {power_w:g} W (assumed power above idle) / batch size'})
    if data is not None and calibration_set is not None:
        meta.update({'calibration_note': calib_note, 'calibration_images': len(c_images),
                     'calibration_accuracy': calib_accuracy})
    profile = Profile(model=info.name, device=device_slug(str(runner.device)), exits=tuple(exits),
                      energy_source=meter.source if measured else 'estimate', energy_includes_idle=includes_idle,
                      accuracy_note=note, dtype=dtype_name(runner.dtype), meta=meta, samples=samples)
    if data is not None and calibration_set is not None and profile.has_samples:
        if report_bounds is None:
            report_bounds = [round(calib_accuracy[-1] - d / 100, 4) for d in (0, 0.25, 0.5, 1, 2, 3, 5, 10)]
        meta['cascade_test'] = cascade_report(profile, *test_outputs, bounds=report_bounds)
    return profile


def cascade_report(profile: Profile, confidence: Sequence[np.ndarray], correct: Sequence[np.ndarray], *,
                   bounds: Sequence[float], batch: int = 1) -> list[dict[str, Any]]:
    """Per accuracy bound: the cascade ``profile.cascade(bound)`` (thresholds calibrated on the
    profile's samples) applied to other inputs, e.g. the test set.

    :param confidence: per exit, every input's max-softmax confidence.
    :param correct: per exit, whether each input's answer is right (bool / 0-1).
    :param batch: the batch size whose latency and energy are reported.
    :returns: one row per bound: the thresholds, the share of inputs stopping at each exit, the
        stream's accuracy on these inputs (``meets``: >= the bound), what the calibration data
        promised, and the expected compute latency / energy per input (profile, batch ``batch``)
        with their ratios to the final exit's.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    n_exits, n = conf.shape
    final = profile.final_exit
    lat = np.array([profile.exit_latency_ms(k, batch) / batch for k in range(n_exits)])
    energy = np.array([profile.exit_energy_mj(k, batch) for k in range(n_exits)])
    rows = []
    for bound in bounds:
        c = profile.cascade(float(bound))
        if c is None:
            rows.append({'min_accuracy': float(bound), 'feasible': False})
            continue
        stop = exits_taken(conf, c.thresholds)
        fractions = np.bincount(stop, minlength=n_exits) / n
        accuracy = float(right[stop, np.arange(n)].mean())
        rows.append({
            'min_accuracy': float(bound), 'feasible': True,
            'thresholds': [None if t is None else round(float(t), 4) for t in c.thresholds],
            'fractions': [round(float(f), 4) for f in fractions],
            'accuracy': round(accuracy, 4), 'meets': bool(accuracy >= bound),
            'calibration_accuracy': round(float(c.accuracy), 4),
            'latency_ms': float(fractions @ lat), 'latency_ratio': float(fractions @ lat / lat[final]),
            'energy_mj': float(fractions @ energy),
            'energy_ratio': float(fractions @ energy / energy[final]) if energy[final] > 0 else None,
            'inputs': int(n), 'batch': batch})
    return rows


def format_cascade_report(rows: Sequence[dict[str, Any]]) -> str:
    """A table of :func:`cascade_report` rows."""
    lines = [f'{"bound":>7} {"test acc":>8} {"met":>4} {"calib acc":>9} {"latency x":>9} {"energy x":>8}  stop fractions']
    for r in rows:
        if not r['feasible']:
            lines.append(f'{r["min_accuracy"]:7.4f}  infeasible (the final exit misses it on the calibration set)')
            continue
        energy = '-' if r['energy_ratio'] is None else f'{r["energy_ratio"]:.3f}'
        lines.append(f'{r["min_accuracy"]:7.4f} {r["accuracy"]:8.4f} {"yes" if r["meets"] else "NO":>4} '
                     f'{r["calibration_accuracy"]:9.4f} {r["latency_ratio"]:9.3f} {energy:>8}  '
                     + ' '.join(f'{f:.3f}' for f in r['fractions']))
    return '\n'.join(lines)


def _samples(confs: Sequence[np.ndarray], preds: Sequence[np.ndarray], reference: np.ndarray,
             limit: int | None) -> dict[str, list[list[float]]]:
    """``Profile.samples``: per exit, the confidence and 0/1 correctness of the same eval inputs
    (at most ``limit``, a seeded random subset in eval order; ``None``: all; 0: none)."""
    n = len(reference)
    if limit == 0 or n == 0:
        return {}
    idx = np.arange(n) if limit is None or limit >= n else \
        np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))
    return {'confidence': [np.round(c[idx].astype(np.float64), 4).tolist() for c in confs],
            'correct': [(p[idx] == reference[idx]).astype(int).tolist() for p in preds]}


def quick_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Few batch sizes for a quick profile: 1, powers of 4 below ``max_batch``, and ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f'max_batch must be >= 1, got {max_batch!r}')
    sizes = {1, max_batch}
    b = 4
    while b < max_batch:
        sizes.add(b)
        b *= 4
    return tuple(sorted(sizes))


def quick_profile(model: 'MultiExitModel', *, device: str = 'cpu', max_batch: int = 8,
                  reference: Profile | None = None, meter: EnergyMeter | None = None, eval_set: Any = None,
                  runner: StageRunner | None = None, runner_options: dict[str, Any] | None = None,
                  estimate_power_w: float | None = None, progress: bool = False) -> Profile:
    """A profile measured in seconds, for a node that finds none for its device.

    Latency is timed (few runs, :func:`quick_batch_sizes`); energy is estimated, or measured over the
    whole chain per batch size when a measuring ``meter`` is given. Accuracy and calibration do not
    depend on the device: they come from ``reference`` (a profile of the same model elsewhere) when
    given, else from ``eval_set``, else from ``model.info`` (no calibration).

    :raises ValueError: a reference of another model or with another number of exits.
    """
    if reference is not None and (reference.model != model.info.name or reference.num_exits != model.num_exits):
        raise ValueError(f'reference profile is of {reference.model!r} with {reference.num_exits} exits, '
                         f'the model is {model.info.name!r} with {model.num_exits}')
    profile = profile_model(
        model, device=device, batch_sizes=quick_batch_sizes(max_batch), runs=10, min_runs=3, warmup=2,
        time_budget_s=0.5, meter=meter, eval_set=None if reference is not None else eval_set, runner=runner,
        runner_options=runner_options, energy_window_s=0.5, idle_window_s=0.5, energy_per_step=False,
        estimate_power_w=estimate_power_w, progress=progress, tool='quick_profile')
    if reference is None:
        return profile
    exits = tuple(ExitProfile(**{**_fields(e), 'accuracy': r.accuracy, 'calibration': r.calibration})
                  for e, r in zip(profile.exits, reference.exits))
    meta = {**profile.meta, 'accuracy_from': f'{reference.model}__{reference.device}'}
    return Profile(**{**_fields(profile), 'exits': exits, 'accuracy_note': reference.accuracy_note, 'meta': meta,
                      'samples': reference.samples})


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields, shallow (``dataclasses.asdict`` would turn nested ones into dicts)."""
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}
