"""The serving engine: many apps' frames, one multi-exit model, one worker on the one accelerator.

:meth:`Engine.submit` only enqueues (a camera callback never waits for inference); one worker
thread loops: ask the :class:`~delen_ros.core.scheduler.Scheduler` for the next batch (EDF, one
step, across apps), preprocess new frames once each, run the step through a stage runner, evaluate
the head (confidence = max softmax), ask the policy per request whether to stop, then deliver
results through ``on_result`` (from the worker thread) and put the others back in flight with their
features. Requests of apps on one camera share one frame object: the frame is preprocessed once,
and while they sit at the same step its features are computed once.

Timing uses the engine's ``clock`` (``time.perf_counter_ns`` by default) for arrivals and results,
and ``perf_counter_ns`` around each step, synchronising CUDA so that the measured time is the work's.
Each measured step feeds the online :class:`~delen_ros.core.policies.LatencyCorrector`.

On CUDA a batch is padded up to the runner's graph batch sizes (1, 2, 4, ...): kernels are picked
per input shape and a new shape's first call can stall for a long time.

Energy of a result is its share of each batch it ran in: the profile's estimate of the step's
energy split evenly among the batch's requests. With a real meter (``meter.measured``), a thread of
its own reads the meter (never the worker: an NVML read can take milliseconds) every window of at
least the meter's update period, and results are scaled by measured / estimated over the last
windows; such results say ``energy_measured=True``. The measured energy is the whole device's over
the window's wall time, gaps between steps included, so it *includes idle power* unless
``idle_power_w`` is given (then ``idle_power_w x window`` is subtracted first).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from .bounds import Bounds, FeasibleRange, Plan, feasible_range, plan
from .policies import DEFAULT_POLICY, Decision, ExitContext, LatencyCorrector, Policy, get_policy
from .preprocess import check_image, preprocess
from .scheduler import Batch, Request, Scheduler

if TYPE_CHECKING:
    from .multi_exit import MultiExitModel
    from .profile import Profile
    from .runner import StageRunner

__all__ = ['Result', 'AppStats', 'WorkerStats', 'Engine', 'make_runner']

_log = logging.getLogger(__name__)
_NS_PER_MS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Result:
    """One app's answer for one frame (field meanings as in ``msg/InferenceResult.msg``).

    ``latency_ms`` is arrival -> delivery; ``queue_ms`` the wait before the first step ran;
    ``compute_ms`` the time of the steps (and preprocessing) it took part in; ``energy_mj`` its share
    of those steps' energy; ``tag`` whatever was given to :meth:`Engine.submit`.
    """

    app_id: str
    tag: object
    class_id: int
    label: str
    confidence: float
    exit_index: int
    num_exits: int
    expected_accuracy: float
    latency_ms: float
    queue_ms: float
    compute_ms: float
    energy_mj: float
    energy_measured: bool
    energy_source: str
    bounds_met: bool
    arrival_ns: int
    finish_ns: int


@dataclasses.dataclass(frozen=True)
class AppStats:
    """Counters of one app. ``frames_in`` .. ``expired`` count since registration; the rest cover the
    current window (since the last ``stats(reset=True)``; percentiles over its last ``window`` results).

    ``dropped`` = queue overflow (a newer frame pushed it out) + late (could not meet the latency
    bound, never started); ``failed``: lost to an error in their step (logged; counted among the
    window's drops). ``expired``: results delivered early because waiting for the next step would
    have overrun (they are results, not drops). ``attainment``: results with every bound met /
    results; ``frame_attainment``: the same over results + drops; ``latency_attainment``: results
    within the latency bound / (results + drops). Rates in Hz over the window's duration.
    """

    app_id: str
    bounds: Bounds
    frames_in: int
    results_out: int
    dropped: int
    dropped_overflow: int
    dropped_late: int
    failed: int
    expired: int
    window_s: float
    window_frames_in: int
    window_results: int
    window_dropped: int
    rate_in_hz: float
    rate_out_hz: float
    attainment: float
    frame_attainment: float
    latency_attainment: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    mean_energy_mj: float
    mean_expected_accuracy: float
    energy_measured_fraction: float
    exit_counts: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """The worker's own figures since start (or the last reset).

    ``decision_us_*``: scheduler decision plus policy decisions per step, microseconds;
    ``step_ms_*``: stage + head + softmax + transfer of a step (the device's part), ms;
    ``preprocess_ms_per_frame``: EWMA (what predictions use), ``preprocess_ms_p99`` over frames.
    """

    steps: int
    mean_batch: float
    busy_s: float
    decision_us_mean: float
    decision_us_p50: float
    decision_us_p99: float
    step_ms_p50: float
    step_ms_p99: float
    preprocess_ms_per_frame: float
    preprocess_ms_p99: float
    energy_scale: float | None
    corrections: dict[str, float]


class _Frame:
    """One camera image shared by every app on that camera; preprocessed once, in the worker."""

    __slots__ = ('image', 'tensor')

    def __init__(self, image: np.ndarray):
        self.image = image
        self.tensor: torch.Tensor | None = None


@dataclasses.dataclass(eq=False)
class _State:
    """What the engine keeps per request: its bounds, features, best result so far and costs."""

    bounds: Bounds
    features: tuple[torch.Tensor, int] | None = None   # (batch tensor, row)
    class_id: int = -1
    confidence: float = 0.0
    exit_index: int = -1
    start_ns: int | None = None
    compute_ns: int = 0
    energy_est_mj: float = 0.0
    decided_ns: int | None = None    # engine clock when the last exit's decision was taken


class _AppState:
    def __init__(self, bounds: Bounds, *, window: int, now_ns: int, num_exits: int):
        self.bounds = bounds
        self.num_exits = num_exits
        self.frames_in = self.results_out = self.dropped_overflow = self.dropped_late = self.expired = self.failed = 0
        self.results: collections.deque[tuple[float, float, float, int, bool, bool, bool]] = \
            collections.deque(maxlen=window)
        self.reset_window(now_ns)

    def reset_window(self, now_ns: int) -> None:
        self.window_start_ns = now_ns
        self.w_in = self.w_out = self.w_dropped = self.w_met = self.w_latency_met = self.w_measured = 0
        self.w_energy = self.w_accuracy = 0.0
        self.w_exits = [0] * self.num_exits
        self.results.clear()


class _EnergyScaler:
    """Scale of measured over estimated energy, from a meter read on its own thread.

    A meter read can take milliseconds (NVML) and the counter only moves every ``period_s``: it is
    never read on the worker's path. Every ``window_s`` the thread reads the meter and sets
    ``scale = (measured - idle_power_w x window) / estimated`` for the energy the worker estimated in
    that window (:meth:`add`); windows without work are skipped. ``scale`` is ``None`` until the
    first window with work has closed.
    """

    def __init__(self, meter: Any, *, window_s: float, idle_power_w: float):
        self.meter = meter
        self.window_s = window_s
        self.idle_power_w = idle_power_w
        self.scale: float | None = None
        self._lock = threading.Lock()
        self._estimated_mj = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, estimate_mj: float) -> None:
        with self._lock:
            self._estimated_mj += estimate_mj

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name='delen-energy', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _read(self) -> tuple[int, float | None]:
        try:
            return time.perf_counter_ns(), self.meter.energy_mj()
        except Exception:  # noqa: BLE001 -- a flaky sensor must not take serving down
            _log.exception('energy meter read failed')
            return time.perf_counter_ns(), None

    def _run(self) -> None:
        t_prev, e_prev = self._read()
        with self._lock:
            self._estimated_mj = 0.0
        while not self._stop.wait(self.window_s):
            t, e = self._read()
            with self._lock:
                estimated, self._estimated_mj = self._estimated_mj, 0.0
            if e is None or e_prev is None:
                t_prev, e_prev = t, e
                continue
            measured = e - e_prev - self.idle_power_w * (t - t_prev) / 1e6   # W x ms = mJ
            t_prev, e_prev = t, e
            if estimated > 0 and measured >= 0:
                scale = measured / estimated
                self.scale = scale if self.scale is None else 0.5 * (self.scale + scale)


def make_runner(model: 'MultiExitModel', *, device: str = 'cpu', max_batch: int = 32,
                options: dict[str, Any] | None = None) -> 'StageRunner':
    """The engine's default runner: a ``StageRunner`` for ``model`` (``options``: its extra keyword
    arguments, e.g. ``half``, ``channels_last``, ``cuda_graphs``)."""
    from .runner import StageRunner
    return StageRunner(model, device=device, max_batch=max_batch, **dict(options or {}))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """NHWC or not: kernels are chosen per layout too, so copies must keep it."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``size``, in ``x``'s memory format."""
    out = torch.empty((size,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device,
                      memory_format=_memory_format(x))
    out[:x.shape[0]].copy_(x)
    out[x.shape[0]:].zero_()
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


class Engine:
    """Serves one multi-exit model to many apps under their bounds (see the module docstring).

    :param model: the multi-exit model (its ``info`` gives labels and input format).
    :param profile: its profile on this device (latency, energy, accuracy, calibration).
    :param device: where the stages run (``'cpu'``, ``'cuda'``, ``'cuda:N'``).
    :param policy: a registered policy name (see :mod:`~delen_ros.core.policies`) or an instance.
    :param meter: an :class:`~delen_ros.core.energy.EnergyMeter`; ``None`` or an estimate meter:
        energy comes from the profile only.
    :param queue_depth: newest frames kept per app before they start.
    :param max_batch: most requests per step (1 = per-frame execution).
    :param on_result: called from the worker thread with each :class:`Result`; its exceptions are
        logged and do not stop the worker.
    :param clock: integer nanoseconds, monotonic; arrivals, deadlines and result times.
    :param runner: a stage runner (``StageRunner`` API); ``None``: built from ``model`` and ``device``.
    :param runner_options: extra keyword arguments for ``StageRunner`` (``half``, ``cuda_graphs``, ...).
    :param max_in_flight: most started, unfinished requests; ``None``: ``4 x max_batch``.
    :param default_deadline_ms: EDF horizon for apps without a latency bound.
    :param enforce_deadlines: drop frames that cannot meet their latency bound and finish requests
        at their last exit rather than run a step predicted to overrun; ``None``: as the policy says
        (``policy.predictive``: on for ``delen``, off for the baselines, which run as their systems do).
    :param latency_margin: deviations of the measured step-time ratio added to its mean in every
        prediction (see :class:`~delen_ros.core.policies.LatencyCorrector`); larger: fewer overruns,
        shallower exits, more drops.
    :param stats_window: results kept per app for percentiles.
    :param preprocess_workers: threads that preprocess the new frames of a batch in parallel; 1:
        inline in the worker (best on small CPUs; on a many-core host serving a GPU, a few threads
        keep preprocessing from capping throughput).
    :param energy_window_s: shortest meter window; ``None``: the meter's ``update_period_s`` or 0.1 s.
    :param idle_power_w: subtracted from measured energy (x window duration) before scaling; 0: idle
        power stays in the measured figures.
    """

    def __init__(self, model: 'MultiExitModel', profile: 'Profile', *, device: str = 'cpu',
                 policy: str | Policy = DEFAULT_POLICY, meter: Any = None, queue_depth: int = 1,
                 max_batch: int = 8, on_result: Callable[[Result], None],
                 clock: Callable[[], int] = time.perf_counter_ns, runner: Any = None,
                 runner_options: dict[str, Any] | None = None, max_in_flight: int | None = None,
                 default_deadline_ms: float = 250.0, enforce_deadlines: bool | None = None,
                 latency_margin: float = 2.0, stats_window: int = 2000,
                 preprocess_workers: int = 1, energy_window_s: float | None = None,
                 idle_power_w: float = 0.0):
        if profile.num_exits != model.num_exits:
            raise ValueError(f'profile {profile.model!r} has {profile.num_exits} exits, '
                             f'model has {model.num_exits}')
        if not callable(on_result):
            raise ValueError(f'on_result must be callable, got {on_result!r}')
        if max_batch < 1 or queue_depth < 1:
            raise ValueError(f'max_batch and queue_depth must be >= 1, got {max_batch!r} and {queue_depth!r}')
        if stats_window < 1:
            raise ValueError(f'stats_window must be >= 1, got {stats_window!r}')
        if preprocess_workers < 1:
            raise ValueError(f'preprocess_workers must be >= 1, got {preprocess_workers!r}')
        if not math.isfinite(idle_power_w) or idle_power_w < 0:
            raise ValueError(f'idle_power_w must be >= 0, got {idle_power_w!r}')
        self.model = model
        self.profile = profile
        self.info = model.info
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.corrector = LatencyCorrector(margin=latency_margin)
        self.on_result = on_result
        self.clock = clock
        self.max_batch = max_batch
        self.queue_depth = queue_depth
        self._runner = runner if runner is not None else make_runner(
            model, device=device, max_batch=max_batch, options=runner_options)
        self._scheduler = Scheduler(self._predict_ms, num_steps=model.num_exits, max_batch=max_batch,
                                    queue_depth=queue_depth, max_in_flight=max_in_flight,
                                    default_deadline_ms=default_deadline_ms,
                                    enforce_deadlines=self.policy.predictive if enforce_deadlines is None
                                    else enforce_deadlines, expected_ms=self._expected_ms)
        self._stats_window = stats_window
        self._cond = threading.Condition()
        self._apps: dict[str, _AppState] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        # preprocessing cost per frame (EWMA, ms): part of the first step's predicted time
        self._pre_ms = 0.0
        self._pre_dev_ms = 0.0
        self._pre_workers = preprocess_workers
        self._pre_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # energy: estimates from the profile, scaled by a meter where one measures
        measuring = meter is not None and getattr(meter, 'measured', False)
        self.energy_source = meter.source if measuring else 'estimate'
        period = getattr(meter, 'update_period_s', None) or 0.1
        self._energy = _EnergyScaler(meter, window_s=max(period, energy_window_s or 0.0),
                                     idle_power_w=idle_power_w) if measuring else None
        # CUDA kernels (cuDNN's above all) are chosen per input shape, and the first call of a new
        # shape can take long: batches are padded up to a few sizes (the runner's graph sizes).
        cuda = getattr(self._runner, 'device', torch.device('cpu')).type == 'cuda'
        self._pad_sizes: tuple[int, ...] = tuple(getattr(self._runner, 'graph_sizes', ())) if cuda else ()
        self._reset_worker_stats()

    # --- apps -----------------------------------------------------------------------------------------
    def set_app(self, app_id: str, bounds: Bounds) -> Plan:
        """Register an app or update its bounds; returns the static plan.

        :raises InfeasibleBounds: no exit meets the bounds (the app is left as it was).
        :raises ValueError: empty ``app_id`` or ``bounds`` not a :class:`Bounds`.
        """
        if not isinstance(app_id, str) or not app_id:
            raise ValueError(f'app_id must be a non-empty string, got {app_id!r}')
        if not isinstance(bounds, Bounds):
            raise ValueError(f'bounds must be a Bounds, got {bounds!r}')
        result = plan(bounds, self.profile)
        with self._cond:
            app = self._apps.get(app_id)
            if app is None:
                self._apps[app_id] = _AppState(bounds, window=self._stats_window, now_ns=self.clock(),
                                               num_exits=self.profile.num_exits)
            else:
                app.bounds = bounds
            self._scheduler.set_app(app_id, latency_bound_ms=bounds.max_latency_ms)
        return result

    def remove_app(self, app_id: str) -> bool:
        """Forget an app and its queued frames; results of its frames still running are discarded."""
        with self._cond:
            if self._apps.pop(app_id, None) is None:
                return False
            self._scheduler.remove_app(app_id)
            return True

    def apps(self) -> dict[str, Bounds]:
        with self._cond:
            return {a: s.bounds for a, s in self._apps.items()}

    def feasible_range(self) -> FeasibleRange:
        return feasible_range(self.profile)

    # --- frames ---------------------------------------------------------------------------------------
    def submit(self, app_ids: Sequence[str], image: np.ndarray, *, arrival_ns: int | None = None,
               tag: object = None) -> int:
        """Queue one camera frame for every registered app in ``app_ids``; never waits for inference.

        :param image: uint8 ``H x W x 3`` RGB or ``H x W`` grey; not copied (do not modify it after).
        :param arrival_ns: when the frame arrived (engine clock); ``None``: now.
        :param tag: passed back in each :class:`Result` (e.g. the image header).
        :returns: how many apps it was queued for (unknown app ids are skipped).
        :raises ValueError: a malformed image.
        """
        image = check_image(image)
        frame = _Frame(image)
        queued = 0
        with self._cond:
            arrival = self.clock() if arrival_ns is None else int(arrival_ns)
            for app_id in dict.fromkeys(app_ids):
                app = self._apps.get(app_id)
                if app is None:
                    continue
                request = self._scheduler.make_request(app_id, frame, arrival, tag=tag)
                request.state = _State(bounds=app.bounds)
                evicted = self._scheduler.push(request)
                app.frames_in += 1
                app.w_in += 1
                if evicted is not None:
                    app.dropped_overflow += 1
                    app.w_dropped += 1
                queued += 1
            if queued:
                self._cond.notify()
        return queued

    # --- life cycle -----------------------------------------------------------------------------------
    def warm_up(self, *, reps: int = 3) -> None:
        """Run every step ``reps`` times on a noise frame at batch 1, before serving.

        The first calls of a stage pay for lazy allocation, kernel selection or graph capture (on
        CUDA the runner's own ``warmup`` first covers every batch size). The fastest of the later
        reps, timed as the worker times a step (softmax and transfer included), seeds the latency
        corrector, so that the first real frames are predicted from this device rather than from
        the profile alone -- the fastest, because a stall here must not lock tight apps out.
        """
        if getattr(self._runner, 'device', torch.device('cpu')).type == 'cuda' and hasattr(self._runner, 'warmup'):
            self._runner.warmup()   # every batch size: graph capture and kernel choice happen now
        h, w = self.info.input_size
        # A noise image, not zeros: all-zero activations can go subnormal and run 100x slower on CPUs.
        noise = np.random.default_rng(0).integers(0, 256, (h, w) if self.info.in_channels == 1 else (h, w, 3),
                                                  dtype=np.uint8)
        x0 = preprocess([noise], self.info)
        best = [math.inf] * self.profile.num_exits
        for rep in range(reps):
            x = self._runner.to_input(x0)
            for k in range(self.profile.num_exits):
                t0 = time.perf_counter_ns()
                x = self._runner.stage(k, x)
                logits = self._runner.head(k, x)
                torch.softmax(logits.float(), dim=1).max(dim=1)[0].cpu()
                self._runner.synchronize()
                if rep > 0 or reps == 1:
                    best[k] = min(best[k], (time.perf_counter_ns() - t0) / 1e6)
        for k, ms in enumerate(best):
            self.corrector.update(k, 1, ms, self.profile.step_ms(k, 1))

    def start(self, *, warm_up: bool = True) -> None:
        """Start the worker thread, after :meth:`warm_up` unless ``warm_up`` is false.

        :raises RuntimeError: already running.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError('engine already started')
        if warm_up:
            self.warm_up()
        if self._energy is not None:
            self._energy.start()
        if self._pre_workers > 1 and self._pre_pool is None:
            self._pre_pool = concurrent.futures.ThreadPoolExecutor(self._pre_workers, thread_name_prefix='delen-pre')
        self._stopping = False
        self._thread = threading.Thread(target=self._worker, name='delen-engine', daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker after its current step (waits up to ``timeout`` s); queued frames are discarded."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning('engine worker did not stop within %.1f s', timeout)
            self._thread = None
        if self._energy is not None:
            self._energy.stop()
        if self._pre_pool is not None:
            self._pre_pool.shutdown(wait=True)
            self._pre_pool = None
        with self._cond:
            self._scheduler.drain()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> 'Engine':
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- statistics -----------------------------------------------------------------------------------
    def stats(self, app_id: str, *, reset: bool = False) -> AppStats:
        """Counters and window figures of ``app_id`` (see :class:`AppStats`).

        :param reset: start a new window after reading (for per-period status).
        :raises KeyError: unknown app (the message lists the known ones).
        """
        with self._cond:
            try:
                app = self._apps[app_id]
            except KeyError:
                raise KeyError(f'unknown app {app_id!r}; known: {sorted(self._apps)}') from None
            now = self.clock()
            window_s = max(0.0, (now - app.window_start_ns) / 1e9)
            latencies = [r[0] for r in app.results]
            decided = app.w_out + app.w_dropped
            stats = AppStats(
                app_id=app_id, bounds=app.bounds, frames_in=app.frames_in, results_out=app.results_out,
                dropped=app.dropped_overflow + app.dropped_late, dropped_overflow=app.dropped_overflow,
                dropped_late=app.dropped_late, failed=app.failed, expired=app.expired, window_s=window_s,
                window_frames_in=app.w_in, window_results=app.w_out, window_dropped=app.w_dropped,
                rate_in_hz=app.w_in / window_s if window_s > 0 else 0.0,
                rate_out_hz=app.w_out / window_s if window_s > 0 else 0.0,
                attainment=app.w_met / app.w_out if app.w_out else math.nan,
                frame_attainment=app.w_met / decided if decided else math.nan,
                latency_attainment=app.w_latency_met / decided if decided else math.nan,
                latency_p50_ms=_percentile(latencies, 50), latency_p99_ms=_percentile(latencies, 99),
                latency_max_ms=max(latencies) if latencies else math.nan,
                mean_energy_mj=app.w_energy / app.w_out if app.w_out else math.nan,
                mean_expected_accuracy=app.w_accuracy / app.w_out if app.w_out else math.nan,
                energy_measured_fraction=app.w_measured / app.w_out if app.w_out else math.nan,
                exit_counts=tuple(app.w_exits))
            if reset:
                app.reset_window(now)
            return stats

    def recent_results(self, app_id: str) -> list[tuple[float, float, float, int, bool, bool, bool]]:
        """The window's last results of ``app_id`` as ``(latency_ms, energy_mj, expected_accuracy,
        exit_index, bounds_met, latency_met, energy_measured)`` tuples (for benchmarks and plots)."""
        with self._cond:
            return list(self._apps[app_id].results)

    def worker_stats(self, *, reset: bool = False) -> WorkerStats:
        """The worker's step count, batch sizes, busy time and decision overhead (see :class:`WorkerStats`)."""
        with self._cond:
            us, device, pre = list(self._decision_us), list(self._device_ms), list(self._pre_frame_ms)
            out = WorkerStats(
                steps=self._steps, mean_batch=self._batched / self._steps if self._steps else math.nan,
                busy_s=self._busy_ns / 1e9, decision_us_mean=float(np.mean(us)) if us else math.nan,
                decision_us_p50=_percentile(us, 50), decision_us_p99=_percentile(us, 99),
                step_ms_p50=_percentile(device, 50), step_ms_p99=_percentile(device, 99),
                preprocess_ms_per_frame=self._pre_ms, preprocess_ms_p99=_percentile(pre, 99),
                energy_scale=self._energy.scale if self._energy is not None else None,
                corrections=self.corrector.snapshot())
            if reset:
                self._reset_worker_stats()
            return out

    def _reset_worker_stats(self) -> None:
        self._steps = self._batched = self._busy_ns = 0
        self._decision_us: collections.deque[float] = collections.deque(maxlen=10_000)
        self._device_ms: collections.deque[float] = collections.deque(maxlen=10_000)
        self._pre_frame_ms: collections.deque[float] = collections.deque(maxlen=10_000)

    # --- the worker -----------------------------------------------------------------------------------
    def _predict_ms(self, step: int, batch: int, *, margin: float | None = None) -> float:
        """Step time for the scheduler (first step: with preprocessing), with the corrector's
        margin or ``margin`` deviations."""
        margin = self.corrector.margin if margin is None else margin
        ms = self.corrector.predict_ms(self.profile, step, batch, margin=margin)
        if step > 0:
            return ms
        # preprocessing runs on the CPU and jitters too: the same margin as the steps
        return ms + (self._pre_ms + margin * self._pre_dev_ms) * batch

    def _expected_ms(self, step: int, batch: int) -> float:
        return self._predict_ms(step, batch, margin=0.0)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._scheduler.pending():
                    self._cond.wait()
                if self._stopping:
                    return
                t0 = time.perf_counter_ns()
                schedule = self._scheduler.next_batch(self.clock())
                decision_ns = time.perf_counter_ns() - t0
                for r in schedule.dropped:
                    app = self._apps.get(r.app_id)
                    if app is not None:
                        app.dropped_late += 1
                        app.w_dropped += 1
            for r in schedule.expired:   # were waiting in flight, not running: nothing to release
                self._finish(r, expired=True)
            if schedule.batch is not None:
                try:
                    self._execute(schedule.batch, decision_ns)
                except Exception:  # noqa: BLE001 -- one bad batch must not kill the server
                    _log.exception('step %d failed for %d requests; dropped', schedule.batch.step,
                                   len(schedule.batch.requests))
                    with self._cond:
                        self._scheduler.finished(len(schedule.batch.requests))
                        for r in schedule.batch.requests:
                            app = self._apps.get(r.app_id)
                            if app is not None:
                                app.failed += 1
                                app.w_dropped += 1

    def _padded_size(self, n: int) -> int:
        for size in self._pad_sizes:
            if size >= n:
                return size
        return n

    def _preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """``preprocess`` of the images, split over the pool when there is one and enough images."""
        pool, workers = self._pre_pool, self._pre_workers
        if pool is None or len(images) < 2 * workers:
            return preprocess(images, self.info)
        size = math.ceil(len(images) / workers)
        chunks = [images[i:i + size] for i in range(0, len(images), size)]
        # OpenCV's resize and torch's ops release the GIL: the chunks run in parallel.
        return torch.cat(list(pool.map(partial(preprocess, info=self.info), chunks)))

    def _batch_input(self, batch: Batch, unique: list[Request]) -> tuple[torch.Tensor, int]:
        """The step's input for the unique frames: preprocessed images (step 0) or their features;
        and the nanoseconds spent preprocessing."""
        if batch.step == 0:
            todo = [r.frame for r in unique if r.frame.tensor is None]
            pre_ns = 0
            if todo:
                t0 = time.perf_counter_ns()
                x = self._preprocess([f.image for f in todo])
                for i, f in enumerate(todo):
                    f.tensor = x[i:i + 1]
                pre_ns = time.perf_counter_ns() - t0
                per_frame = pre_ns / 1e6 / len(todo)
                if self._pre_ms == 0:
                    self._pre_ms, self._pre_dev_ms = per_frame, per_frame / 4
                else:
                    self._pre_dev_ms += 0.25 * (abs(per_frame - self._pre_ms) - self._pre_dev_ms)
                    self._pre_ms += 0.125 * (per_frame - self._pre_ms)
            cpu = unique[0].frame.tensor if len(unique) == 1 else torch.cat([r.frame.tensor for r in unique])
            return self._runner.to_input(cpu), pre_ns
        sources = [r.state.features for r in unique]
        first = sources[0][0]
        if all(t is first for t, _ in sources) and [row for _, row in sources] == list(range(first.shape[0])):
            return first, 0   # the same batch, in the same order, goes on together: no copy
        out = torch.empty((len(sources),) + tuple(first.shape[1:]), dtype=first.dtype, device=first.device,
                          memory_format=_memory_format(first))
        groups: dict[int, tuple[torch.Tensor, list[int], list[int]]] = {}
        for i, (t, row) in enumerate(sources):
            _, positions, rows = groups.setdefault(id(t), (t, [], []))
            positions.append(i)
            rows.append(row)
        for t, positions, rows in groups.values():   # one gather per earlier batch
            out[torch.tensor(positions, device=t.device)] = t[torch.tensor(rows, device=t.device)]
        return out, 0

    def _execute(self, batch: Batch, decision_ns: int) -> None:
        step, requests = batch.step, batch.requests
        # Apps on one camera sit at the same step with the same frame: compute its features once.
        slot: dict[int, int] = {}
        unique: list[Request] = []
        for r in requests:
            if id(r.frame) not in slot:
                slot[id(r.frame)] = len(unique)
                unique.append(r)
        t_start = time.perf_counter_ns()
        start_clock = self.clock()
        x, pre_ns = self._batch_input(batch, unique)
        n = len(unique)
        padded = self._padded_size(n)
        if padded > n:
            x = _pad(x, padded)
        t_run = time.perf_counter_ns()
        features = self._runner.stage(step, x)
        logits = self._runner.head(step, features)
        confidence, class_id = torch.softmax(logits[:n].float(), dim=1).max(dim=1)
        confidence, class_id = confidence.cpu().tolist(), class_id.cpu().tolist()
        self._runner.synchronize()
        t_end = time.perf_counter_ns()
        features = features[:n] if padded > n else features
        step_energy_mj = self.profile.step_energy_mj(step, n) * n
        if self._energy is not None:
            self._energy.add(step_energy_mj)
        share_mj = step_energy_mj / len(requests)
        now = self.clock()
        last = step == self.profile.final_exit

        t_decide = time.perf_counter_ns()
        finished, going_on = [], []
        for r in requests:
            s: _State = r.state
            i = slot[id(r.frame)]
            if s.start_ns is None:
                s.start_ns = start_clock
            s.compute_ns += t_end - t_start
            s.energy_est_mj += share_mj
            s.features = None if last else (features, i)
            s.class_id, s.confidence, s.exit_index = class_id[i], confidence[i], step
            s.decided_ns = now
            ctx = ExitContext(bounds=s.bounds, profile=self.profile, exit_index=step, confidence=s.confidence,
                              elapsed_ms=(now - r.arrival_ns) / _NS_PER_MS, energy_mj=s.energy_est_mj,
                              next_batch=len(requests), corrector=self.corrector)
            (finished if self.policy.decide(ctx) is Decision.STOP else going_on).append(r)
        t_decided = time.perf_counter_ns()
        decide_ns = t_decided - t_decide
        # What a step really costs a request: scheduling, input, stage, head, softmax, decisions
        # (preprocessing is predicted separately, per frame).
        self.corrector.update(step, n, (decision_ns + t_decided - t_start - pre_ns) / 1e6,
                              self.profile.step_ms(step, n))

        with self._cond:
            self._steps += 1
            self._batched += len(requests)
            self._busy_ns += t_end - t_start
            self._decision_us.append((decision_ns + decide_ns) / 1e3)
            self._device_ms.append((t_end - t_run) / 1e6)
            if pre_ns:
                self._pre_frame_ms.append(pre_ns / 1e6 / n)
            self._scheduler.finished(len(finished))
            for r in going_on:
                r.next_step = step + 1
                self._scheduler.requeue(r)
        for r in finished:
            r.state.features = None
            self._finish(r, expired=False)

    def _finish(self, r: Request, *, expired: bool) -> None:
        s: _State = r.state
        finish = self.clock()
        latency_ms = (finish - r.arrival_ns) / _NS_PER_MS
        if not expired and s.decided_ns is not None:
            self.corrector.update_tail((finish - s.decided_ns) / _NS_PER_MS)
        with self._cond:
            app = self._apps.get(r.app_id)
            if app is None:
                return   # removed while running: nobody to deliver to
            scale = self._energy.scale if self._energy is not None else None
            measured = scale is not None
            energy = s.energy_est_mj * scale if measured else s.energy_est_mj
            b = s.bounds
            accuracy, judged = self.policy.result_accuracy(self.profile, b, s.exit_index, s.confidence)
            met = b.met(latency_ms=latency_ms, accuracy=judged, energy_mj=energy)
            latency_met = b.max_latency_ms is None or latency_ms <= b.max_latency_ms
            app.results_out += 1
            app.expired += expired
            app.w_out += 1
            app.w_met += met
            app.w_latency_met += latency_met
            app.w_measured += measured
            app.w_energy += energy
            app.w_accuracy += accuracy
            app.w_exits[s.exit_index] += 1
            app.results.append((latency_ms, energy, accuracy, s.exit_index, met, latency_met, measured))
        labels = self.info.labels
        result = Result(
            app_id=r.app_id, tag=r.tag, class_id=s.class_id,
            label=labels[s.class_id] if 0 <= s.class_id < len(labels) else str(s.class_id),
            confidence=s.confidence, exit_index=s.exit_index, num_exits=self.profile.num_exits,
            expected_accuracy=accuracy, latency_ms=latency_ms,
            queue_ms=((s.start_ns if s.start_ns is not None else finish) - r.arrival_ns) / _NS_PER_MS,
            compute_ms=s.compute_ns / _NS_PER_MS, energy_mj=energy, energy_measured=measured,
            energy_source=self.energy_source if measured else 'estimate', bounds_met=met,
            arrival_ns=r.arrival_ns, finish_ns=finish)
        try:
            self.on_result(result)
        except Exception:  # noqa: BLE001 -- a subscriber's bug must not stop serving
            _log.exception('on_result raised for app %r', r.app_id)
