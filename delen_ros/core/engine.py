"""The serving engine: many apps' frames, one multi-exit model, one worker on the one accelerator.

:meth:`Engine.submit` only enqueues (a camera callback never waits for inference); one worker
thread loops: ask the :class:`~delen_ros.core.scheduler.Scheduler` for the next batch (EDF, one
step, across apps), preprocess new frames once each, run the step through a stage runner, evaluate
the head (confidence = max softmax), ask the policy per request whether to stop, then deliver
results through ``on_result`` (from the worker thread) and put the others back in flight with their
features. Requests of apps on one camera share one frame object: the frame is preprocessed once,
and while they sit at the same step its features are computed once.

Where the policy decides without the exit's confidence (:meth:`Policy.decide_ahead`: latency or
energy bounds alone, ``always_final``), one worker turn runs several steps back to back with one
head and one device sync at the end (``fuse_steps``): the host's turn-around per step, not the GPU,
limited one node at 32 cameras. A run ends before the most urgent waiting frame must start.

Timing uses the engine's ``clock`` (``time.perf_counter_ns`` by default) for arrivals and results,
and ``perf_counter_ns`` around each step, synchronising CUDA so that the measured time is the work's.
Each measured step feeds the online :class:`~delen_ros.core.policies.LatencyCorrector`.

On CUDA a batch is padded up to the runner's graph batch sizes (1, 2, 4, ...): kernels are picked
per input shape and a new shape's first call can stall for a long time. Batch 1 is captured at warm
up, the other sizes on a background thread while the worker serves (it replays captured sizes
meanwhile).

Latency is defined once, here: frame arrival -> result delivery (:meth:`Engine.deliver`; the ROS
layer calls it with the publication time, otherwise the engine delivers just before ``on_result``).
Bounds are end to end, as the subscriber sees them: :meth:`Engine.feasible_range` and
:meth:`Engine.set_app` add to the compute time the frames' age when :meth:`~Engine.submit` gets
them (transport to the node and conversion, from the image's stamp; its 99th percentile of late),
the serving overhead (the worker's wake-up, decision -> delivery) and the delivery allowance
(publication -> subscriber, which nobody here can see), and admit an app only if every app stays
schedulable at its measured frame rate (:mod:`~delen_ros.core.admission`); :meth:`Engine.stats`
re-checks as rates change, says why an app is at risk (``AppStats.unschedulable_reason``) and, when
the apps no longer fit together, serves the fewest after the others, the latest admitted first and
only once they have not fitted for a few re-checks in a row (:meth:`Engine.check_schedulable`), so
that they cannot make the apps admitted before them miss. That part, admission and its re-check,
lives in :mod:`~delen_ros.core.engine_admission`, how deep a batch goes before the host looks again
(fused runs, steps taken by choice) in :mod:`~delen_ros.core.engine_depth`, and reading the ledger
(:meth:`Engine.stats`, :meth:`Engine.worker_stats`, the counters ``/diagnostics`` shows) in
:mod:`~delen_ros.core.engine_stats` (``Engine`` inherits the three); this module is the serving.

Energy of a result is its share of each batch it ran in: the profile's estimate of the step's
energy split evenly among the batch's requests. With a real meter (``meter.measured``), a thread of
its own reads the meter (never the worker: an NVML read can take milliseconds) every window of at
least the meter's update period, and the measured energy of the last windows (``energy_scaling.HORIZON_S``)
is split over their results: each keeps its steps' estimate (scaled down only where the meter saw less)
plus an even share of the rest, the per-frame work outside the steps (``energy_scaling.attribution``); such results say
``energy_measured=True``. The measured energy is the whole device's over
the window's wall time, gaps between steps included, so it *includes idle power* unless
``idle_power_w`` is given (then ``idle_power_w x window`` is subtracted first).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from . import admission, warmup
from .app_ledger import BEHIND_NS, AppLedger
from .arrivals import SETTLE_NS, FrameAge, Mean, Sizes
from .batch_cost import BatchCost
from .bounds import Bounds, LatePolicy, Plan
from .choice_margin import ChoiceMargin, margin_ms
from .energy_scaling import EnergyScaler
from .engine_admission import AdmissionMixin, _yield_gil
from .engine_depth import CHOICE_YIELDS, DepthMixin
from .engine_stats import StatsMixin
from .flight_recorder import RECORDER
from .policies import DEFAULT_POLICY, Decision, ExitContext, LatencyCorrector, Policy, get_policy
from .preprocess import DevicePreprocessor, check_image, preprocess
from .results import AppStats, Result, WorkerStats
from .runner import StageRunner, step_with_look, to_pinned
from .scheduler import Batch, Expected, Request, Scheduler
from .thread_names import name_os_thread
from .thread_priority import NICE_RANGE, set_own_nice

if TYPE_CHECKING:
    from .multi_exit import MultiExitModel
    from .profile import Profile

__all__ = ['Result', 'AppStats', 'WorkerStats', 'Engine', 'make_runner']

_log = logging.getLogger(__name__)
_NS_PER_MS = 1_000_000
_IDLE_TASK_LATEST_NS = 500_000_000   # a worker that never runs out of frames runs what is asked between two turns after this


class _Frame:
    """One camera image shared by every app on that camera (host array, or on the device once
    uploaded by :meth:`Engine.submit`); preprocessed once, in the worker."""

    __slots__ = ('image', 'batch', 'row')

    def __init__(self, image: np.ndarray | torch.Tensor):
        self.image = image
        self.batch: torch.Tensor | None = None   # the preprocessed batch it is row ``row`` of
        self.row = 0

    @property
    def tensor(self) -> torch.Tensor | None:
        """Its preprocessed ``1 x C x H x W`` input, or ``None`` before preprocessing. A view sliced
        when asked: a turn whose frames are preprocessed together takes their batch as it is."""
        return None if self.batch is None else self.batch[self.row:self.row + 1]


class _Held(NamedTuple):
    """A frame :meth:`Engine.submit` checked within :meth:`Engine.held_submits`, uploaded and queued at its end."""
    app_ids: Sequence[str]
    image: np.ndarray
    ahead: bool | None       # Engine._uploads_ahead's answer at submit
    arrival_ns: int | None
    tag: object
    t_submit: int


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
    idle_submit_ns: int | None = None   # submitted while the worker was idle: measures its wake-up
    choice_margin: ChoiceMargin | None = None   # its app's, when it was submitted (AppLedger owns it)

    @property
    def choice_margin_ms(self) -> float:
        return margin_ms(self.choice_margin)


def _whole_batch(sources: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor | None:
    """The batch that ``(batch, row)`` sources are all the rows of, in its order (taken as it is, no
    copy); ``None`` where they are not."""
    first = sources[0][0]
    if all(t is first for t, _ in sources) and [row for _, row in sources] == list(range(first.shape[0])):
        return first
    return None


@dataclasses.dataclass(eq=False)
class _Run:
    """A batch the worker has launched on the device and not yet looked at (see :meth:`Engine._launch`)."""

    batch: Batch
    decision_ns: int              # the scheduler's decision that chose it
    slot: dict[int, int]          # id(frame) -> row of the batch's unique frames
    n: int                        # unique frames: the device's batch size
    steps: range                  # the steps it runs, fused
    t_start: int                  # perf_counter_ns: the worker took the batch
    t_run: int                    # perf_counter_ns: its input ready, its stages launched from here
    start_clock: int              # engine clock at t_start
    plan_ns: int
    pre_ns: int
    padded: int
    features: torch.Tensor | None   # None after the final exit: nothing goes on from there
    look: torch.Tensor              # N x 2: each frame's confidence and class id (runner.exit_look)
    pipelined: bool = False       # the worker goes on to the next batch before looking at this one
    done: Any = None              # pipelined on CUDA: event after its results' copies to pinned memory
    free_at: int = 0              # engine clock when the device is predicted to be done with it
    predicted_ns: int = 0         # its steps and a turn, as predicted: free_at less when it started on the device
    ended_clock: int = 0          # engine clock when its results were back (set by Engine._complete)


def make_runner(model: 'MultiExitModel', *, device: str = 'cpu', max_batch: int = 32,
                options: dict[str, Any] | None = None) -> StageRunner:
    """The engine's default runner: a ``StageRunner`` for ``model`` (``options``: its extra keyword
    arguments, e.g. ``half``, ``channels_last``, ``cuda_graphs``)."""
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


def _replace(result: Result, **changes: Any) -> Result:
    """``dataclasses.replace(result, **changes)`` at a tenth of its cost, for the once-per-result
    path: ``replace`` re-runs the frozen ``__init__`` (20 guarded ``object.__setattr__``, ~7 us of
    the worker's GIL); this copies the fields. ``Result`` has no ``__post_init__`` to re-run."""
    new = object.__new__(Result)
    new.__dict__.update(result.__dict__, **changes)
    return new


class Engine(AdmissionMixin, DepthMixin, StatsMixin):
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
    :param overhead_prior_ms: serving overhead (the worker's wake-up, decision -> publication)
        assumed until the first delivery is measured, ms.
    :param transport_prior_ms: the frames' age on arrival assumed while none is measured (no frame
        yet, or only frames of a settling camera or app), ms: an app registered before its camera's
        first frames is judged against it, not against fresh frames.
    :param rate_prior_hz: a new app's frame rate while its camera's is not measured (no ``rate_hz``
        given, no other app on its source), Hz.
    :param delivery_allowance_ms: time kept after publication for a result to reach its
        subscriber, ms (that hop is not measured here): frames are planned to be published by their
        bound less this, and feasibility and admission count it; ``latency_ms`` / ``bounds_met`` of
        a result stay arrival -> delivery. The attribute may be changed before apps are registered.
        Where another process publishes the results, the hand-over's lag (:attr:`publication_lag_ms`)
        is kept too (:attr:`kept_after_handover_ms`).
    :param upload_ahead: with device preprocessing, :meth:`submit` starts each frame's upload
        (staging copy included) in the caller's thread, so the worker only converts frames already
        on the device; false: the worker stages and uploads each batch itself.
    :param ahead_when_behind: upload ahead even the frames of apps whose queues push frames out
        (the worker is behind them); false (default): those wait for the worker to upload the ones
        it takes (see :meth:`_uploads_ahead`).
    :param external_delivery: the caller delivers results itself with :meth:`deliver` (the ROS
        layer, at publication); false: the engine delivers each result just before ``on_result``.
    :param admission_control: refuse apps that would make the set unschedulable (see
        :mod:`~delen_ros.core.admission`); false: only per-app feasibility is checked.
    :param utilisation_limit: the most of the device admission hands out (0-1].
    :param admission_headroom: the share of each latency bound a request must leave free to be
        admitted, [0-1); the re-check keeps none (:attr:`admission.CostModel.headroom`). Admission
        judges at the tails measured at the request, and they grow with the load it lets in (H200,
        16 cameras: a 5 ms app admitted with no slack then met its bound for 75 % of its frames).
    :param admission_headroom_min_ms: the least kept free of any bound, ms
        (:attr:`admission.CostModel.headroom_min_ms`): the tails grow by absolute amounts.
    :param demote_after: the admission re-check (:meth:`check_schedulable`) serves an app after the
        others once it has found it not fitting beside the apps admitted before it this many times in
        a row (one marginal verdict demotes nobody; it is reported at once all the same).
    :param restore_after: ... and serves a demoted app with the others again after this many
        re-checks in a row that found it fitting.
    :param device_preprocess: on CUDA, resize and normalise frames on the GPU
        (:class:`~delen_ros.core.preprocess.DevicePreprocessor`); false: on the CPU with OpenCV.
    :param fuse_steps: when the policy can decide a batch's next exits without their confidences
        (:meth:`~delen_ros.core.policies.Policy.decide_ahead`: a latency or energy bound alone under
        ``delen``, ``always_final``, ``static_exit``), run those steps back to back in one worker
        turn, with one head and one device sync at the end; false: one step per turn (for A/B runs).
        The attribute may be changed while serving.
    :param pipeline: when the worker may launch the next batch before it looks at the results of
        the last (:meth:`_serve_once`): 'off', 'behind' (while some app's queue pushes frames out
        unserved) or 'always'. Off by default: on one H200 it served a backlog 1.1-1.7x faster
        engine only, but through ROS above capacity it served no more results and added a worker
        turn of latency (``benchmarks/h200/e2e_session13``). The attribute may be changed while
        serving.
    :param recheck_on_worker: the once-a-second admission re-check asked by :meth:`stats` runs on the
        worker, when it has nothing to serve (or between two turns once it has waited
        :data:`_IDLE_TASK_LATEST_NS`; :meth:`call_when_idle`), not on the caller's thread. Run beside it, its pure Python took
        the GIL from the worker in the middle of runs already planned: on an H200 (16 cameras, 10 ms
        apps beside accuracy cascades) each re-check made every 10 ms app's frame in flight late
        (session 25, ``benchmarks/h200/recheck_session25``). Before a run, a delay is planned for.
        On a CPU the worker computes the steps itself, so the re-check adds to its time, where the
        caller's thread ran it on another core while torch's kernels let go of the GIL: a 10 ms app at
        3 cameras met its bound for 88-92 % of frames against 92-98 % (``benchmarks/cpu/recheck_session25``).
        ``None`` (default): on the worker where the runner's device is CUDA, else on the caller's thread.
    :param separate_turn_cost: learn a worker turn's own cost (scheduling, planning, the policy's
        decisions) apart from its steps' (:meth:`~delen_ros.core.policies.LatencyCorrector.turn_ms`),
        and count it once a turn: in the scheduler's and the policy's predictions, a fused run's and
        admission's costs (:attr:`~delen_ros.core.admission.CostModel.turn_ms`). Off by default,
        where a turn's cost is folded into the steps it ran: then a frame that runs a step at a time
        (a cascade that looks at every exit) is priced below its cost and a fused run above it (session
        16 on the H200: 10 ms apps beside Lite0's cascades met their bound for 98.7 % of frames). On the
        H200 (session 17, ``DELEN_TURN_COST=1`` in the node) it admitted the same apps and did worse
        beside cascades admitted at configure (71.3 % against 86.7 %), so it stays off: an A/B switch.
    :param worker_nice: the worker thread's nice value (:func:`~delen_ros.core.thread_priority.set_own_nice`),
        ``None`` (default): the process's. Lower puts its steps ahead of other threads and processes on
        the same cores (on a 2-core VM a 20 ms app's late frames were its own steps stretched 3-8x,
        ``benchmarks/cpu/e2e_admission_session44``); where that is not permitted the worker says so in
        the log and serves at the process's.
    """

    def __init__(self, model: 'MultiExitModel', profile: 'Profile', *, device: str = 'cpu',
                 policy: str | Policy = DEFAULT_POLICY, meter: Any = None, queue_depth: int = 1,
                 max_batch: int = 8, on_result: Callable[[Result], None],
                 clock: Callable[[], int] = time.perf_counter_ns, runner: Any = None,
                 runner_options: dict[str, Any] | None = None, max_in_flight: int | None = None,
                 default_deadline_ms: float = 250.0, enforce_deadlines: bool | None = None,
                 latency_margin: float = 2.0, stats_window: int = 2000,
                 preprocess_workers: int = 1, energy_window_s: float | None = None,
                 idle_power_w: float = 0.0, device_preprocess: bool = True,
                 overhead_prior_ms: float = 1.0, transport_prior_ms: float = 0.0,
                 rate_prior_hz: float = admission.DEFAULT_RATE_HZ, external_delivery: bool = False,
                 admission_control: bool = True, utilisation_limit: float = 0.9, admission_headroom: float = 0.1,
                 admission_headroom_min_ms: float = 1.0,
                 delivery_allowance_ms: float = 0.0, upload_ahead: bool = True, ahead_when_behind: bool = False,
                 fuse_steps: bool = True, pipeline: str = 'off', recheck_on_worker: bool | None = None,
                 demote_after: int = 3, restore_after: int = 2, separate_turn_cost: bool = False,
                 arrival_lookahead: bool = False, worker_nice: int | None = None):
        if profile.num_exits != model.num_exits:
            raise ValueError(f'profile {profile.model!r} has {profile.num_exits} exits, '
                             f'model has {model.num_exits}')
        if not callable(on_result):
            raise ValueError(f'on_result must be callable, got {on_result!r}')
        if worker_nice is not None and (not isinstance(worker_nice, int) or isinstance(worker_nice, bool)
                                        or not NICE_RANGE[0] <= worker_nice <= NICE_RANGE[1]):
            raise ValueError(f'worker_nice must be an int in {NICE_RANGE[0]}..{NICE_RANGE[1]} or None, '
                             f'got {worker_nice!r}')
        if max_batch < 1 or queue_depth < 1:
            raise ValueError(f'max_batch and queue_depth must be >= 1, got {max_batch!r} and {queue_depth!r}')
        if stats_window < 1:
            raise ValueError(f'stats_window must be >= 1, got {stats_window!r}')
        if preprocess_workers < 1:
            raise ValueError(f'preprocess_workers must be >= 1, got {preprocess_workers!r}')
        if not math.isfinite(idle_power_w) or idle_power_w < 0:
            raise ValueError(f'idle_power_w must be >= 0, got {idle_power_w!r}')
        if not math.isfinite(overhead_prior_ms) or overhead_prior_ms < 0:
            raise ValueError(f'overhead_prior_ms must be >= 0, got {overhead_prior_ms!r}')
        if not math.isfinite(transport_prior_ms) or transport_prior_ms < 0:
            raise ValueError(f'transport_prior_ms must be >= 0, got {transport_prior_ms!r}')
        if not math.isfinite(rate_prior_hz) or rate_prior_hz <= 0:
            raise ValueError(f'rate_prior_hz must be > 0, got {rate_prior_hz!r}')
        self.rate_prior_hz = float(rate_prior_hz)
        if not math.isfinite(delivery_allowance_ms) or delivery_allowance_ms < 0:
            raise ValueError(f'delivery_allowance_ms must be >= 0, got {delivery_allowance_ms!r}')
        if not 0.0 < utilisation_limit <= 1.0:
            raise ValueError(f'utilisation_limit must be in (0, 1], got {utilisation_limit!r}')
        if not 0.0 <= admission_headroom < 1.0:
            raise ValueError(f'admission_headroom must be in [0, 1), got {admission_headroom!r}')
        if not math.isfinite(admission_headroom_min_ms) or admission_headroom_min_ms < 0:
            raise ValueError(f'admission_headroom_min_ms must be >= 0, got {admission_headroom_min_ms!r}')
        if not isinstance(demote_after, int) or demote_after < 1:
            raise ValueError(f'demote_after must be an int >= 1, got {demote_after!r}')
        if not isinstance(restore_after, int) or restore_after < 1:
            raise ValueError(f'restore_after must be an int >= 1, got {restore_after!r}')
        self.model = model
        self.profile = profile
        self.info = model.info
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        # one level per step, whatever the batch size: see LatencyCorrector's pool_batch_sizes
        self.corrector = LatencyCorrector(margin=latency_margin, pool_batch_sizes=True)
        self.on_result = on_result
        #: called on the worker after a turn handed results to ``on_result``: a sink that batches
        #: (the ROS layer's result outlet) writes them out there, once a turn
        self.after_results: Callable[[], None] | None = None
        self._results_in_turn = 0
        self.clock = clock
        self.max_batch = max_batch
        self.queue_depth = queue_depth
        self._runner = runner if runner is not None else make_runner(
            model, device=device, max_batch=max_batch, options=runner_options)
        self._scheduler = Scheduler(self._predict_ms, num_steps=model.num_exits, max_batch=max_batch,
                                    queue_depth=queue_depth, max_in_flight=max_in_flight,
                                    default_deadline_ms=default_deadline_ms,
                                    enforce_deadlines=self.policy.predictive if enforce_deadlines is None
                                    else enforce_deadlines, expected_ms=self._expected_ms,
                                    tail_ms=lambda: self.corrector.tail_ms(margin=0.0),
                                    delivery_allowance_ms=lambda: self.kept_after_handover_ms)
        self.default_deadline_ms = default_deadline_ms
        self.delivery_allowance_ms = delivery_allowance_ms
        #: the time between the worker's hand-over of a result and its publication, at its tail, ms, where
        #: another process publishes (the node's result outlet measures it): kept with the allowance
        self.publication_lag_ms = 0.0
        #: the policy's latency limit keeps the delivery allowance, as the scheduler's deadline does
        #: (session 27; False: the whole bound, as before, for an A/B)
        self.policy_keeps_allowance = True
        #: admission makes room for the exit an accuracy cascade sends all but a few frames to and
        #: charges its average frame (session 29; False: its static fallback exit, for an A/B)
        self.cascade_admission = True
        #: hold a step back for a frame a periodic camera is about to send that is due sooner and would
        #: otherwise wait behind it; runs of fused steps end before such a frame must start
        self.arrival_lookahead = arrival_lookahead
        self.worker_nice = worker_nice
        self.fuse_steps = fuse_steps
        self.separate_turn_cost = bool(separate_turn_cost)
        # What ends a fused run early: 'any' waiting frame that must start before the run would end
        # (the shipped rule), or only work due before the run's own members ('earlier': an A/B,
        # benchmarks/fused_runs.py; DELEN_SPLIT_RUNS=earlier in the node). Not a parameter yet: on
        # this CPU it did not recover from a stall more often (benchmarks/cpu/fused_runs).
        self.split_runs_for = 'any'
        # What end-to-end latency holds besides the steps: _age, a frame's age when submit() gets it
        # (from its stamp, or arrival: transport to the node and conversion), at its 99th
        # percentile; _wake, the worker's wake-up, and decision -> delivery (the corrector's tail),
        # at mean + latency_margin deviations.
        self.overhead_prior_ms = overhead_prior_ms
        self._age = FrameAge(transport_prior_ms)
        self._sizes_preprocessed = Sizes()   # a size's first preprocessing is not its rate
        self._wake = Mean()
        self._idle = False
        self.external_delivery = external_delivery
        self.admission_control = admission_control
        self.utilisation_limit = utilisation_limit
        self.admission_headroom = admission_headroom
        self.admission_headroom_min_ms = float(admission_headroom_min_ms)
        self.demote_after = demote_after
        # demote only while the apps served miss their bounds (check_schedulable); false: on the
        # re-check's verdict alone, as before session 32 (an A/B)
        self.demote_on_misses = True
        # True (an A/B, before session 43): the misfits' own misses are enough to demote them
        self.demote_for_own_misses = False
        # True (an A/B, before session 44): a misfit short of time outside the device (frame age, overhead)
        # is demoted too, not only one short of device time
        self.demote_on_host_tails = False
        self.restore_after = restore_after
        self._admitted = 0   # admissions so far: the next app's AppLedger.seq
        self._risk_logged: tuple[object, int] = ((), 0)   # the re-check's last warning: what, when (ns)
        self._last_check_ns = clock()
        self._recheck_on_worker = recheck_on_worker
        #: the re-check yields the GIL between its tests on the worker too (before session 30; an A/B)
        self.recheck_yields_on_worker = False
        #: on CUDA the worker launches on a stream of the highest priority (False: the default stream, an A/B)
        self.serve_at_priority = True
        #: each app's steps taken by choice keep a margin learnt from its late results (AppLedger.choice_margin;
        #: False: the policy's choice_headroom alone, as before session 30, an A/B)
        self.learn_choice_margin = True
        #: a result published late while its app's frames are being pushed out of its queue raises the
        #: margin too (True: as before session 36, an A/B; see deliver)
        self.margin_learns_when_behind = False
        #: a frame of an app whose queue pushes frames out may still go deeper than its bounds ask, by choice
        #: (True: as before session 39, an A/B). Off, it stops at the first exit that meets them, so that a
        #: fused run cut there for its pressed frames ends for all of them instead of going on in turns of
        #: their own (on slow H200 hosts `delen` at saturation served half the frames so: sat_session36/37).
        #: The CPU stand-in of such a host (benchmarks/cpu/choice_behind_session39): within the bound 0.83-0.95
        #: against 0.34-0.63 in 5 of 5 interleaved pairs; on an H200 that did not collapse, no difference
        #: (benchmarks/h200/session39, 0.83-0.92x the engine against 0.84-0.96x).
        self.choice_steps_when_behind = False
        self.stops_behind = 0   # frames stopped so (their app behind), since start
        #: when a frame whose bounds are met at its exit takes no step by choice, for waiting on-time work due no
        #: earlier (_choice_would_delay): 'pressed' where the step would end after that work must start;
        #: 'demand' where it would end after that work must start to make its deadlines together, batched
        #: (Scheduler.demand_start_ns); 'waiting' where any waits ('pressed' for an app that asked for
        #: MAX_ACCURACY itself: _yield_rule); 'never' (before session 40). EDF puts such a step first (its
        #: frame came first), though it is optional: on an H200 10 ms apps' steps to exits 2-3 by choice left
        #: the next 10 ms frames pressed, then served one per turn and late (session 39's trace). 'waiting'
        #: since session 41: on an H200 it met every app's bound in more runs than the others, at a few
        #: points of the unbounded apps' accuracy. A/Bs: benchmarks/h200/session40, session41,
        #: benchmarks/cpu/mixed_phases_session40.
        self.choice_yields = CHOICE_YIELDS[0]
        #: 'pressed' and 'demand' yield where the step would end less than this before the waiting work must
        #: start (an A/B between the two ends, 0 and 'waiting'; session 41's stand-in)
        self.choice_yield_margin_ms = 0.0
        self.stops_yielded = 0   # frames stopped so (waiting work pressed), since start
        # work asked of the worker for when it has nothing to serve: key -> (function, engine clock asked)
        self._idle_tasks: dict[str, tuple[Callable[[], Any], int]] = {}
        # the outside-the-device parts (transport, overhead, delivery) the last admission passed with:
        # what the apps were guaranteed beside (check_schedulable)
        self._admitted_outside: dict[str, float] | None = None
        self._measured_since_ns: int | None = None   # the first re-check with frame age and overhead measured
        self._stats_window = stats_window
        self._cond = threading.Condition()
        self._apps: dict[str, AppLedger] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        # preprocessing's cost per call and per frame: part of the first step's predicted time
        self.preprocess_cost = BatchCost()
        self._pre_workers = preprocess_workers
        self._pre_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # energy: estimates from the profile, scaled by a meter where one measures
        measuring = meter is not None and getattr(meter, 'measured', False)
        # The label says what the figure holds: '<meter>' includes idle draw, '<meter>_above_idle' not.
        self.energy_source = (meter.source + ('_above_idle' if idle_power_w > 0 else '')) if measuring else 'estimate'
        self.idle_power_w = idle_power_w
        period = getattr(meter, 'update_period_s', None) or 0.1
        self._energy = EnergyScaler(meter, window_s=max(period, energy_window_s or 0.0),
                                     idle_power_w=idle_power_w) if measuring else None
        # CUDA kernels (cuDNN's above all) are chosen per input shape, and the first call of a new
        # shape can take long: eager batches are padded up to a few sizes (the runner's graph sizes).
        # With graphs the runner replays the next captured size itself: no padded copy here.
        cuda = getattr(self._runner, 'device', torch.device('cpu')).type == 'cuda'
        eager = not getattr(self._runner, 'cuda_graphs', False)
        self._pad_sizes: tuple[int, ...] = tuple(getattr(self._runner, 'graph_sizes', ())) if cuda and eager else ()
        # Raw frames go up as uint8 and are resized there: 4x fewer bytes than a float batch, and
        # the CPU (and the GIL) stays free for the node's callbacks.
        self._upload_ahead = upload_ahead
        self._held = threading.local()   # held_submits(): the frames a thread's submits hold
        self._ahead_when_behind = ahead_when_behind
        self.uploads_left_to_worker = 0   # frames of apps it was behind, not uploaded on arrival (load shed)
        if pipeline not in ('off', 'behind', 'always'):
            raise ValueError(f"pipeline must be 'off', 'behind' or 'always', got {pipeline!r}")
        self.pipeline = pipeline
        self._pending_run: _Run | None = None   # launched, not looked at yet (the worker's own)
        self._last_end_ns = 0                   # perf_counter_ns: the last run's results were back
        self._last_evicted_ns = -BEHIND_NS - 1   # engine clock: a queue last pushed a frame out
        # True (an A/B, session 34): the runner's background cuDNN trials wait for an idle worker. Off: at
        # 32 cameras x 120 Hz on an H200 the graphs then stayed native, the GPU was busier per batch and the
        # node served 12 % fewer results than with the trials competing for the GIL (benchmarks/h200/trials_gate_session34)
        self.trials_when_idle = False
        if hasattr(self._runner, 'trial_gate'):
            self._runner.trial_gate = self._trial_may_start
        self._device_pre = DevicePreprocessor(
            self.info, self._runner.device, dtype=getattr(self._runner, 'dtype', torch.float32),
            memory_format=torch.channels_last if getattr(self._runner, 'channels_last', False)
            else torch.contiguous_format) if cuda and device_preprocess else None
        self._reset_worker_stats()
        self.worker_errors = 0   # failures of the worker outside a step (logged, at most every 5 s)

    # --- apps -----------------------------------------------------------------------------------------
    def set_app(self, app_id: str, bounds: Bounds, *, late_policy: LatePolicy | str = LatePolicy.SERVE_FASTEST,
                rate_hz: float | None = None, source: str | None = None) -> Plan:
        """Register an app or update its bounds; returns the plan, in end-to-end figures.

        The bounds must be feasible end to end (compute + the frames' age on arrival + the serving
        overhead, both at their tails, + the delivery allowance: :meth:`exit_latency_ms`) and, with
        admission control, every app must stay schedulable beside the others at their measured frame
        rates (see :mod:`~delen_ros.core.admission`).

        :param late_policy: what happens to a frame that can no longer meet the latency bound
            (:class:`~delen_ros.core.bounds.LatePolicy`): served at the fastest exit, flagged
            ``bounds_met=False``, or dropped; either way counted.
        :param rate_hz: the app's expected frame rate, until its frames are measured; ``None``: the
            measured rate of another app on ``source``, else ``rate_prior_hz``.
        :param source: the camera (e.g. the image topic); apps on one source share each frame's work.
        :raises InfeasibleBounds: no exit meets the bounds end to end (the app is left as it was).
        :raises ~delen_ros.core.admission.Unschedulable: feasible alone, not beside the admitted apps
            (the message says who would miss, and what would fit).
        :raises ValueError: empty ``app_id``, ``bounds`` not a :class:`Bounds`, bad ``rate_hz``.
        """
        if not isinstance(app_id, str) or not app_id:
            raise ValueError(f'app_id must be a non-empty string, got {app_id!r}')
        if not isinstance(bounds, Bounds):
            raise ValueError(f'bounds must be a Bounds, got {bounds!r}')
        late_policy = LatePolicy.parse(late_policy)
        if rate_hz is not None and (not math.isfinite(rate_hz) or rate_hz <= 0):
            raise ValueError(f'rate_hz must be > 0, got {rate_hz!r}')
        with self._cond:
            # admitted or not, what follows holds the caller's thread (the node's executor: the plan's
            # cascade, the admission tests) and a new app's subscription follows: frames aged
            # meanwhile are of the node's making
            self._age.pause(self.clock())
        result = self.plan(bounds)
        with self._cond:
            now = self.clock()
            old = self._apps.get(app_id)
            source = source if source is not None else (old.source if old is not None else None)
            if rate_hz is None:
                rate_hz = old.rate_hz(now) if old is not None else self._source_rate(source, now)
            tasks = [self._task(a, st, now) for a, st in self._apps.items() if a != app_id]
            old_task = self._task(app_id, old, now) if old is not None else None
        exit_index = self._required_exit(bounds)
        new = admission.Task(app_id, rate_hz, bounds.max_latency_ms, exit_index, source,
                             stops=self._run_stops(bounds, exit_index), exit_shares=self._exit_shares(bounds))
        if self.admission_control:
            outside = self._outside_ms()
            measured = self._cost_model(outside)
            cost = self._with_headroom(measured)
            # A request is judged beside the admitted apps it could make miss, not beside those that miss
            # even alone at the costs measured now (this CPU: a 33 ms app whose cascade needs `+lite2`,
            # admitted before the load came, refused every later request, though each met its bound
            # beside it); their running steps still hold a frame up. A demoted app counts in full: it
            # was admitted first, and the re-check restores it before a newer app (misfits).
            hopeless = admission.infeasible_alone(tasks, measured, pause=_yield_gil)
            blocking = [t for t in tasks if t.app_id in hopeless]
            tasks = [t for t in tasks if t.app_id not in hopeless]
            verdict = admission.check(tasks + [new], cost, blocking=blocking)
            if not verdict.ok and self._short_of_headroom_alone(verdict, tasks, cost):
                # Those at risk were short of the headroom before this request, even alone, at the costs
                # measured since their admission: the request must not make them miss at those costs, but
                # cannot give back headroom it did not take (this CPU, session 33: a 20 ms app refused for
                # the 33 ms cascade's want of headroom met its bound for 99.6 % of frames forced in).
                verdict = admission.check(tasks + [new], measured, blocking=blocking)
            if not verdict.ok:
                # on the caller's thread (the node's executor): yield between tests, see suggest
                max_rate, min_latency = admission.suggest(tasks, new, cost, pause=_yield_gil, blocking=blocking)
                fits = [f'at most {max_rate:.3g} Hz at this bound' if max_rate > 0 else 'no rate at this bound']
                if min_latency is not None:
                    fits.append(f'max_latency_ms >= {min_latency:.3g} at {rate_hz:.3g} Hz')
                kept = f' ({cost.headroom_text()} kept as admission headroom)' if cost.headroom else ''
                raise admission.Unschedulable(
                    f'{app_id!r} at {rate_hz:.3g} Hz does not fit '
                    f'{f"beside {len(tasks)} admitted app(s)" if tasks else "even alone"}{kept}: '
                    f'{verdict.message}; would fit: {" or ".join(fits)}',
                    self.feasible_range(), max_rate_hz=max_rate, min_latency_ms=min_latency)
            self._admitted_outside = outside
        on_priors = self.admission_control and not self._measured()
        with self._cond:
            app = self._apps.get(app_id)
            if app is None:
                app = self._apps[app_id] = AppLedger(
                    bounds, window=self._stats_window, now_ns=self.clock(), num_exits=self.profile.num_exits,
                    late_policy=late_policy, source=source, rate_prior_hz=rate_hz, seq=self._admitted)
                self._admitted += 1
            else:
                app.set_bounds(bounds)
                app.late_policy, app.source, app.rate_prior_hz = late_policy, source, rate_hz
                app.reason = ''
                if old_task is None or admission.asks_more(new, old_task):   # a new guarantee: ranks as new
                    app.seq, self._admitted = self._admitted, self._admitted + 1
                # admission just found it fitting beside every app: served with the others again, the
                # re-check's count starts over (without admission control only the count does)
                app.restart_checks(demoted=app.demoted and not self.admission_control)
            app.on_priors = on_priors
            self._scheduler.set_app(app_id, latency_bound_ms=bounds.max_latency_ms, late_policy=late_policy,
                                    first_stop=self.policy.first_stop(self.profile, bounds))
            self._scheduler.set_best_effort(app_id, app.demoted)
        return result

    @staticmethod
    def _short_of_headroom_alone(verdict: 'admission.Verdict', tasks: list[admission.Task],
                                 cost: admission.CostModel) -> bool:
        """Whether every admitted app at risk in ``verdict`` misses its bound alone within the headroom
        ``cost`` keeps (and ``verdict`` names no other: not the new request)."""
        at_risk = [t for t in tasks if t.app_id in verdict.at_risk]
        if not at_risk or len(at_risk) != len(verdict.at_risk):
            return False
        return len(admission.infeasible_alone(at_risk, cost, pause=_yield_gil)) == len(at_risk)

    def remove_app(self, app_id: str) -> bool:
        """Forget an app and its queued frames; results of its frames still running are discarded.
        Its re-check history goes with it (registered again, it ranks as the newest admission); apps
        it had pushed out are restored by the next clean re-checks (``restore_after``)."""
        with self._cond:
            if self._apps.pop(app_id, None) is None:
                return False
            self._scheduler.remove_app(app_id)
            return True

    def apps(self) -> dict[str, Bounds]:
        with self._cond:
            return {a: s.bounds for a, s in self._apps.items()}

    def count_malformed(self, app_ids: Sequence[str], count: int = 1) -> None:
        """Count frames the caller could not convert for these apps (dropped, reason malformed;
        they are frames in, and misses in ``frame_attainment``)."""
        with self._cond:
            for app_id in dict.fromkeys(app_ids):
                app = self._apps.get(app_id)
                if app is not None:
                    app.frames_in += count
                    app.w_in += count
                    app.dropped_malformed += count
                    app.w_dropped += count

    # --- frames ---------------------------------------------------------------------------------------
    def submit(self, app_ids: Sequence[str], image: np.ndarray, *, arrival_ns: int | None = None,
               tag: object = None) -> int:
        """Queue one camera frame for every registered app in ``app_ids``; never waits for inference.

        :param image: uint8 ``H x W x 3`` RGB or ``H x W`` grey; on the CPU not copied (do not modify it
            after); on CUDA its bytes are staged for upload before this returns.
        :param arrival_ns: when the frame arrived (engine clock); ``None``: now.
        :param tag: passed back in each :class:`Result` (e.g. the image header).
        :returns: how many apps it was queued for (unknown app ids are skipped).
        :raises ValueError: a malformed image.
        """
        t_submit = time.perf_counter_ns()
        image = check_image(image)
        ahead = self._upload_ahead and self._device_pre is not None and self._uploads_ahead(app_ids)
        if ahead is None:
            self.uploads_left_to_worker += 1
        held = getattr(self._held, 'frames', None)
        if held is not None:   # within held_submits(): uploaded and queued with the others when it ends
            held.append(_Held(app_ids, image, ahead, arrival_ns, tag, t_submit))
            return sum(app_id in self._apps for app_id in dict.fromkeys(app_ids))
        upload_ns = 0
        if ahead:
            try:   # start its upload now, off the worker; the caller's buffer is free on return
                t_upload = time.perf_counter_ns()
                image = self._device_pre.upload(image)
                upload_ns = time.perf_counter_ns() - t_upload
            except RuntimeError:   # e.g. out of device memory: the worker stages it, as before
                _log.warning('frame upload failed; the worker copies it instead', exc_info=True)
        return self._enqueue(app_ids, image, arrival_ns=arrival_ns, tag=tag, t_submit=t_submit, ahead=ahead,
                             upload_ns=upload_ns)

    @contextlib.contextmanager
    def held_submits(self) -> Iterator[None]:
        """Within it, this thread's :meth:`submit` calls hold their frames; when it ends they are uploaded
        together and queued. A frame reader's burst of same-shaped frames from the receivers' rings is
        then one upload (one device allocation, one event) instead of one per frame: on an H200 the
        reader's submit took 0.32 ms a frame with its upload against 0.07 on a CPU without one
        (session 45). The frames wait for the others of the burst meanwhile: keep it around one read."""
        held: list[_Held] = []
        self._held.frames = held
        try:
            yield
        finally:
            self._held.frames = None
            if held:
                self._submit_held(held)

    def _submit_held(self, held: list[_Held]) -> None:
        images = [h.image for h in held]
        ahead = [i for i, h in enumerate(held) if h.ahead]
        if ahead:
            try:
                for i, frame in zip(ahead, self._device_pre.upload_many([images[i] for i in ahead])):
                    images[i] = frame
            except RuntimeError:   # e.g. out of device memory: the worker stages them, as before
                _log.warning('frame uploads failed; the worker copies them instead', exc_info=True)
        for h, image in zip(held, images):
            self._enqueue(h.app_ids, image, arrival_ns=h.arrival_ns, tag=h.tag, t_submit=h.t_submit, ahead=h.ahead)

    def _enqueue(self, app_ids: Sequence[str], image: np.ndarray | torch.Tensor, *, arrival_ns: int | None,
                 tag: object, t_submit: int, ahead: bool | None, upload_ns: int = 0) -> int:
        """Queue a checked (and maybe uploaded) frame for every registered app in ``app_ids``; how many.
        ``upload_ns``: the part of the submit its upload took (the flight recorder's ``submit`` span)."""
        shape = tuple(image.shape)
        frame = _Frame(image)
        queued = 0
        with self._cond:
            now = self.clock()
            arrival = now if arrival_ns is None else int(arrival_ns)
            settled = False
            for app_id in dict.fromkeys(app_ids):
                app = self._apps.get(app_id)
                if app is None:
                    continue
                if app.first_frame_ns is None:
                    app.first_frame_ns = now
                    # its subscription matched about now, which holds up every camera's frames too
                    self._age.pause(now)
                settled = settled or now - app.first_frame_ns >= SETTLE_NS
                app.rate.add(arrival)
                app.next_frame.add(now, arrival)
                request = self._scheduler.make_request(app_id, frame, arrival, tag=tag)
                request.state = _State(bounds=app.bounds, choice_margin=app.choice_margin,
                                       idle_submit_ns=now if self._idle else None)
                evicted = self._scheduler.push(request)
                app.frames_in += 1
                app.w_in += 1
                if evicted is not None:
                    app.dropped_overflow += 1
                    app.w_dropped += 1
                    app.evicted_ns = self._last_evicted_ns = now
                queued += 1
            if arrival_ns is not None:
                self._age.add(shape, (now - arrival) / _NS_PER_MS, now, app_settled=settled)
            if queued:
                self._cond.notify()
        if RECORDER is not None:
            RECORDER.add('submit', t_submit, time.perf_counter_ns(), apps=len(app_ids), ahead=ahead, queued=queued,
                         arrival_ns=arrival, upload_ns=upload_ns)   # results carry arrival_ns: how long after it was it queued
        return queued

    def _uploads_ahead(self, app_ids: Sequence[str]) -> bool | None:
        """Whether a frame for ``app_ids`` is worth uploading now, in the caller's thread: yes for
        a registered app that has not had a frame pushed out of its queue in the last ``BEHIND_NS``;
        ``None`` where every one of its registered apps has (false: none is registered).

        When the worker is behind an app, most of its frames are pushed out by newer ones before the
        worker takes them: uploading each on arrival spends the node's GIL on frames never served,
        in proportion to the frames offered, and beyond its capacity the node served fewer results
        the more frames came (receive livelock). Those frames keep their buffers (a receiver's slot)
        until the worker takes them and uploads them with their batch, or a newer one pushes them out.
        Read without the lock: a stale answer costs one upload more or less.
        """
        now, behind = self.clock(), False
        for app_id in app_ids:
            app = self._apps.get(app_id)
            if app is None:
                continue
            if self._ahead_when_behind or not app.behind(now):
                return True
            behind = True
        return None if behind else False

    # --- life cycle -----------------------------------------------------------------------------------
    def _trial_may_start(self) -> bool:
        """Whether the runner's next background cuDNN trial may start: only while the worker waits for
        frames and no queue pushed one out lately. A trial is 0.3-2 s of Python (the modules run to
        be captured) holding the GIL against the worker and the frame reader: at 32 cameras x 120 Hz
        on an H200 the capture thread had half of the node's Python samples, its trials unfinished after
        20 s. But under a load that never lets the worker wait the graphs then stay native, and there
        cuDNN's batch-32 graphs are worth more than the GIL the trials take: off by default."""
        if not self.trials_when_idle or self._thread is None:   # no worker to take the GIL from
            return True
        return self._idle and not self._pushed_out_lately(self.clock())

    def _pushed_out_lately(self, now_ns: int) -> bool:
        """Whether some app's queue pushed a frame out within :data:`BEHIND_NS` (the worker is behind someone)."""
        return now_ns - self._last_evicted_ns <= BEHIND_NS

    def warm_up(self, *, reps: int = 3, background_capture: bool | None = None) -> None:
        """Capture graphs, choose kernels and seed the latency corrector before serving
        (:func:`~delen_ros.core.warmup.warm_up`)."""
        warmup.warm_up(self._runner, self.info, self.profile, self.corrector, max_batch=self.max_batch,
                       reps=reps, background_capture=background_capture)

    def start(self, *, warm_up: bool = True, background_capture: bool | None = None) -> None:
        """Start the worker thread, after :meth:`warm_up` unless ``warm_up`` is false (then a
        background capture that :meth:`stop` cut short resumes).

        :param background_capture: passed to :meth:`warm_up`.
        :raises RuntimeError: already running.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError('engine already started')
        if warm_up:
            self.warm_up(background_capture=background_capture)
        elif hasattr(self._runner, 'start_background_capture'):
            self._runner.start_background_capture()   # no-op when nothing is pending
        if self._energy is not None:
            self._energy.start()
        if self._pre_workers > 1 and self._pre_pool is None:
            self._pre_pool = concurrent.futures.ThreadPoolExecutor(
                self._pre_workers, thread_name_prefix='delen-pre', initializer=name_os_thread)
        self._stopping = False
        self._thread = threading.Thread(target=self._worker, name='delen-engine', daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker after its current step and a background graph capture after the graph
        under way (waits up to ``timeout`` s for each); queued frames are discarded, sizes not
        captured stay pending (:meth:`start` resumes them)."""
        stop_capture = getattr(self._runner, 'stop_background_capture', None)
        if stop_capture is not None:
            stop_capture(timeout=0)   # ask now; wait below, while the worker stops too
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning('engine worker did not stop within %.1f s', timeout)
            self._thread = None
        if stop_capture is not None and not stop_capture(timeout=timeout):
            _log.warning('background graph capture did not stop within %.1f s', timeout)
        if self._energy is not None:
            self._energy.stop()
        if self._pre_pool is not None:
            self._pre_pool.shutdown(wait=True)
            self._pre_pool = None
        self._pending_run = None   # a worker that did not stop in time: its run is not looked at
        self._idle_tasks.clear()   # asked of a worker that is gone: the caller asks again
        with self._cond:
            self._scheduler.drain()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def late_riders(self) -> bool:
        """Late frames ride in batches led by on-time work (:meth:`Scheduler.next_batch`); ``False``
        (an A/B): they run in idle time only, as before session 26."""
        return self._scheduler.late_riders

    @late_riders.setter
    def late_riders(self, on: bool) -> None:
        with self._cond:
            self._scheduler.late_riders = bool(on)

    @property
    def demoted_last(self) -> bool:
        """Demoted apps' frames come after every other app's, late ones too (:meth:`Scheduler.next_batch`);
        ``False`` (an A/B): after on-time frames only, as before session 30."""
        return self._scheduler.demoted_last

    @demoted_last.setter
    def demoted_last(self, on: bool) -> None:
        with self._cond:
            self._scheduler.demoted_last = bool(on)

    @property
    def finish_started(self) -> bool:
        """Without enforced deadlines (the baselines), started work keeps its EDF place late or not, and a
        frame is late when it cannot reach its policy's first stop (:attr:`Scheduler.finish_started`);
        ``False`` (an A/B): as before session 34."""
        return self._scheduler.finish_started

    @finish_started.setter
    def finish_started(self, on: bool) -> None:
        with self._cond:
            self._scheduler.finish_started = bool(on)

    def __enter__(self) -> 'Engine':
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the worker -----------------------------------------------------------------------------------
    def _predict_ms(self, step: int, batch: int, *, margin: float | None = None, turn: bool = True) -> float:
        """Step time for the scheduler (first step: with preprocessing), with the corrector's
        margin or ``margin`` deviations; ``turn``: run as a turn of its own (its cost, where it is
        learnt apart: ``separate_turn_cost``)."""
        margin = self.corrector.margin if margin is None else margin
        ms = self.corrector.predict_ms(self.profile, step, batch, margin=margin)
        if turn:
            ms += self._turn_ms(margin)
        if step > 0:
            return ms
        # preprocessing runs on the CPU and jitters too: the same margin as the steps
        return ms + self.preprocess_cost.predict_ms(batch, margin=margin)

    @property
    def kept_after_handover_ms(self) -> float:
        """What a latency bound keeps after the worker hands a result over, ms: the delivery allowance,
        and the publication lag where another process publishes (:attr:`publication_lag_ms`)."""
        return self.delivery_allowance_ms + self.publication_lag_ms

    @property
    def policy_allowance_ms(self) -> float:
        """The delivery allowance a policy's latency limit keeps (:attr:`policy_keeps_allowance`)."""
        return self.kept_after_handover_ms if self.policy_keeps_allowance else 0.0

    def _turn_ms(self, margin: float | None = None) -> float:
        """A worker turn's own cost besides its steps, where it is learnt apart (``separate_turn_cost``), else 0."""
        return self.corrector.turn_ms(margin=margin) if self.separate_turn_cost else 0.0

    def _expected_ms(self, step: int, batch: int) -> float:
        return self._predict_ms(step, batch, margin=0.0)

    def _worker(self) -> None:
        name_os_thread()   # top -H, py-spy and the e2e bench's CPU by thread see it
        if self.worker_nice is not None:
            why_not = set_own_nice(self.worker_nice)
            if why_not:
                _log.warning("the engine worker keeps the process's priority: %s", why_not)
            else:
                _log.info('the engine worker runs at nice %d', self.worker_nice)
        device = getattr(self._runner, 'device', torch.device('cpu'))
        if device.type == 'cuda':
            # The current device is per thread: graphs and default-device ops of this worker must
            # go to its own GPU, not cuda:0, when one process drives several.
            torch.cuda.set_device(device)
            if self.serve_at_priority:
                # Its kernels before the background capture's and cuDNN's trials (a stage's trial holds
                # the GPU on and off for 1-2 s, H200, the first ~4 s of service) where both wait for the
                # GPU: a CUDA graph replays at the priority of the stream it is launched into. Numbers
                # below the device's range mean its highest.
                torch.cuda.set_stream(torch.cuda.Stream(device=device, priority=-100))
        logged = -math.inf
        while True:
            try:
                if not self._serve_once():
                    return
            except Exception:  # noqa: BLE001 -- without this thread nothing is served, so it goes on
                self.worker_errors += 1
                if time.monotonic() - logged >= 5.0:
                    logged = time.monotonic()
                    _log.exception('the engine worker failed outside a step (%d so far); serving goes on',
                                   self.worker_errors)
                time.sleep(0.01)   # an error that repeats does not spin

    def call_when_idle(self, key: str, fn: Callable[[], Any]) -> bool:
        """Ask the worker to call ``fn`` when it has nothing to serve, or between two turns once it has
        been asked :data:`_IDLE_TASK_LATEST_NS` ago; one pending call per ``key`` (asking again before it
        ran changes nothing). On the worker, pure Python cannot take the GIL from a run already planned
        (session 25: the admission re-check). False, and nothing asked, when the worker is not running:
        the caller runs ``fn`` itself."""
        if not self.running:
            return False
        with self._cond:
            if key not in self._idle_tasks:
                self._idle_tasks[key] = (fn, self.clock())
                self._cond.notify()
        return True

    def _run_idle_tasks(self) -> None:
        """Call the functions asked of the worker (:meth:`call_when_idle`) that are due now."""
        with self._cond:
            idle = self._pending_run is None and not self._scheduler.pending()
            oldest = self.clock() - _IDLE_TASK_LATEST_NS
            due = [key for key, (_, asked) in self._idle_tasks.items() if idle or asked <= oldest]
            tasks = [self._idle_tasks.pop(key)[0] for key in due]
        for fn in tasks:
            try:
                fn()
            except Exception:  # noqa: BLE001 -- a task's failure must not stop serving
                _log.exception('a task run on the engine worker failed')

    def _serve_once(self) -> bool:
        """Wait for work, then schedule and launch one batch and look at the results of the batch
        launched before it, if one is pending; false once the engine is stopping.

        Pipelined (:meth:`_pipelining`): while the device runs one batch, the worker chooses,
        prepares and launches the next from the frames that came meanwhile, then looks at the
        first; the device keeps work queued instead of waiting for the worker's Python between
        batches (with nothing to launch, the worker looks at the pending batch at once). Its
        results wait up to one turn of the worker, so it is on only when frames are being pushed
        out unserved (see ``pipeline``).
        """
        if self._idle_tasks:
            self._run_idle_tasks()
        pending, schedule, decision_ns = self._pending_run, None, 0
        t_lock = time.perf_counter_ns()
        with self._cond:
            if RECORDER is not None:   # the lock's wait only: an idle worker's wait for frames follows
                RECORDER.add('worker_lock', t_lock, time.perf_counter_ns())
            while not self._stopping and pending is None and not self._scheduler.pending() and \
                    not self._idle_tasks:
                self._idle = True
                self._cond.wait()
            self._idle = False
            stopping = self._stopping
            if not stopping and self._scheduler.pending():
                t0 = time.perf_counter_ns()
                now = self.clock()
                # behind a pending run the batch starts when the device is done with it
                at = max(now, pending.free_at) if pending is not None else now
                expected = self._expected_frames(at) if self.arrival_lookahead and pending is None else ()
                schedule = self._scheduler.next_batch(at, expected)
                decision_ns = time.perf_counter_ns() - t0
                if RECORDER is not None and schedule.batch is not None:   # why a batch was no bigger
                    batch, (queued, late) = schedule.batch, self._scheduler.queued_counts()
                    RECORDER.add('schedule', t0, t0 + decision_ns, step=batch.step, n=len(batch.requests),
                                 queued_after=queued, queued_late=late, predicted_ms=round(batch.predicted_ms, 3),
                                 head_slack_ms=round((batch.requests[0].deadline_ns - at) / _NS_PER_MS
                                                     - batch.predicted_ms, 3))
                if schedule.wait_until_ns is not None:   # a frame due sooner is about to come: it goes first
                    self._cond.wait(max(0.0, (schedule.wait_until_ns - self.clock()) / 1e9))
                for r in schedule.dropped:
                    app = self._apps.get(r.app_id)
                    if app is not None:
                        app.dropped_late += 1
                        app.w_dropped += 1
                        app.w_late_dropped += 1
        if schedule is not None:
            for r in schedule.expired:   # were waiting in flight, not running: nothing to release
                self._finish(r, expired=True)
        run = None
        if schedule is not None and schedule.batch is not None:
            run = self._guarded(schedule.batch, self._launch, schedule.batch, decision_ns,
                                pipelined=not stopping and self._pipelining(),
                                start_at=pending.free_at if pending is not None else 0)
        if pending is not None:
            self._pending_run = None
            self._guarded(pending.batch, self._complete, pending)
            if run is not None and run.pipelined and pending.ended_clock:
                # Launched behind `pending`, it began on the device when that one ended: re-anchor its
                # predicted end on that measured time. Chained on predictions alone, each turn added the
                # prediction's error, and where it ran long the schedule drifted into the future until
                # every frame looked late (served at its first exit; benchmarks/overload_collapse.py).
                run.free_at = max(run.start_clock, pending.ended_clock) + run.predicted_ns
        if run is not None:
            if run.pipelined:
                self._pending_run = run
            else:
                self._guarded(run.batch, self._complete, run)
        if self._results_in_turn and self.after_results is not None:
            self._results_in_turn = 0
            try:
                self.after_results()
            except Exception:  # noqa: BLE001 -- a sink's failure must not stop serving
                _log.exception('after_results raised')
        return not stopping

    def _expected_frames(self, now_ns: int) -> list[Expected]:
        """The frames that regular cameras should send next, for apps with a latency bound that are
        served with the others and have no frame waiting (:class:`~delen_ros.core.arrivals.NextFrame`;
        ``arrival_lookahead``). Under the lock."""
        out = []
        demoted = self._scheduler.best_effort_apps()
        waiting = self._scheduler.waiting_apps()
        for app_id, app in self._apps.items():
            if app.bounds.max_latency_ms is None or app_id in demoted or app_id in waiting:
                continue
            found = app.next_frame.predict(now_ns)
            if found is not None:
                submit_ns, arrival_ns, jitter_ns = found
                out.append(Expected(app_id, submit_ns, self._scheduler.deadline_ns(app_id, arrival_ns), jitter_ns))
        return out

    def _guarded(self, batch: Batch, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; if it raises, ``batch``'s requests are counted failed and
        dropped (one bad batch must not kill the server) and ``None`` is returned."""
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 -- one bad batch must not kill the server
            _log.exception('step %d failed for %d requests; dropped', batch.step, len(batch.requests))
            with self._cond:
                self._scheduler.finished(len(batch.requests))
                for r in batch.requests:
                    app = self._apps.get(r.app_id)
                    if app is not None:
                        app.failed += 1
                        app.w_dropped += 1
            return None

    def _pipelining(self) -> bool:
        """Whether the next batch may be launched before the last one's results are looked at:
        ``pipeline`` 'always', or 'behind' while some app's queue pushed a frame out in the last
        ``BEHIND_NS`` (the worker cannot keep up: throughput is what its apps lack, and a turn's
        wait is small beside their frames' queueing)."""
        if self.pipeline == 'always':
            return True
        return self.pipeline == 'behind' and self._pushed_out_lately(self.clock())

    def _padded_size(self, n: int) -> int:
        for size in self._pad_sizes:
            if size >= n:
                return size
        return n

    def _preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """``preprocess`` of the images: on the accelerator when there is one, else on the CPU, split
        over the pool when there is one and enough images."""
        if self._device_pre is not None:
            return self._device_pre(images)
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
            todo = [r.frame for r in unique if r.frame.batch is None]
            pre_ns = 0
            if todo:
                t0 = time.perf_counter_ns()
                sizes = {tuple(f.image.shape) for f in todo}
                x = self._preprocess([f.image for f in todo])
                for i, f in enumerate(todo):
                    # The pixels are copied out: let go of the image now (it may be a view of a
                    # shared-memory slot that its camera's receiver wants back).
                    f.batch, f.row, f.image = x, i, None
                pre_ns = time.perf_counter_ns() - t0
                # a size's first run pays one-time costs (kernels, buffers): not the cost to predict from
                if not self._sizes_preprocessed.add_new(sizes):
                    self.preprocess_cost.add(len(todo), pre_ns / 1e6)
            return self._runner.to_input(self._rows_of([r.frame for r in unique])), pre_ns
        sources = [r.state.features for r in unique]
        whole = _whole_batch(sources)
        if whole is not None:
            return whole, 0   # the same batch, in the same order, goes on together: no copy
        first = sources[0][0]
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

    @staticmethod
    def _rows_of(frames: list[_Frame]) -> torch.Tensor:
        """The preprocessed frames as one batch: the batch they were preprocessed in, as it is, when
        they are all of it in its order (a saturated turn: no slice and no copy per frame, where a
        31-frame turn took 31 slices and a cat before session 36; not measured apart)."""
        whole = _whole_batch([(f.batch, f.row) for f in frames])
        if whole is not None:
            return whole
        return frames[0].tensor if len(frames) == 1 else torch.cat([f.tensor for f in frames])

    def _launch(self, batch: Batch, decision_ns: int, *, pipelined: bool = False, start_at: int = 0) -> _Run:
        """Prepare ``batch``'s input and queue its steps on the device, without waiting for them.

        :param pipelined: the worker will launch another batch before it looks at this one: on
            CUDA its results are copied to pinned memory behind an event of their own, so that
            looking at them later waits for this batch only, not for the one launched after it.
        :param start_at: engine clock when the device is predicted to be free (a run pending before
            this one), 0: now.
        """
        step, requests = batch.step, batch.requests
        # Apps on one camera sit at the same step with the same frame: compute its features once.
        slot: dict[int, int] = {}
        unique: list[Request] = []
        for r in requests:
            if id(r.frame) not in slot:
                slot[id(r.frame)] = len(unique)
                unique.append(r)
        n = len(unique)
        t_start = time.perf_counter_ns()
        start_clock = self.clock()
        begins = max(start_clock, start_at)
        enforce = self._scheduler.enforce_deadlines
        last_step = self._fuse_to(step, requests, n, begins, enforce=enforce)
        steps = range(step, last_step + 1)
        plan_ns = time.perf_counter_ns() - t_start
        x, pre_ns = self._batch_input(batch, unique)
        padded = self._padded_size(n)
        if padded > n:
            x = _pad(x, padded)
        t_run = time.perf_counter_ns()
        features = x
        for k in steps[:-1]:   # back to back: no sync, and no head for exits nobody looks at
            features = self._runner.stage(k, features)
        features, look = step_with_look(self._runner, last_step, features,
                                        keep_features=last_step != self.profile.final_exit)
        look = look[:n]
        done = None
        if pipelined and look.device.type == 'cuda':
            look = to_pinned(look)
            # a blocking event where the runner sleeps in its waits (the default; DELEN_BLOCKING_SYNC=0 spins)
            done = torch.cuda.Event(blocking=getattr(self._runner, 'blocking_sync', False))
            done.record()
        if RECORDER is not None:
            RECORDER.add('launch', t_start, time.perf_counter_ns(), run_ns=t_run, plan_ns=plan_ns, pre_ns=pre_ns, n=n,
                         requests=len(requests), steps=(steps[0], steps[-1]), padded=padded,
                         apps=tuple(r.app_id for r in requests))   # tuples: left alone by the collector
        predicted_ns = int((sum(self._predict_ms(k, len(requests), turn=False) for k in steps)
                            + self._turn_ms()) * _NS_PER_MS) if pipelined else 0
        return _Run(batch, decision_ns, slot, n, steps, t_start, t_run, start_clock, plan_ns, pre_ns, padded,
                    features, look, pipelined=pipelined, done=done,
                    free_at=begins + predicted_ns if pipelined else 0, predicted_ns=predicted_ns)

    def _complete(self, run: _Run) -> None:
        """Wait for a launched batch, then decide per request: deliver its result, or put it back in
        flight for its next step; the device's measured time teaches the corrector."""
        requests, steps, n = run.batch.requests, run.steps, run.n
        last_step = steps[-1]
        t_wait = time.perf_counter_ns()
        if run.done is not None:
            run.done.synchronize()
            rows = run.look.tolist()
        else:
            look = run.look
            to_host = getattr(self._runner, 'to_host', None)
            if to_host is not None:   # a StageRunner: with blocking_sync the copy waits in synchronize
                look = to_host(look)
            self._runner.synchronize()
            rows = look.cpu().tolist()
        confidence, class_id = [row[0] for row in rows], [int(row[1]) for row in rows]
        t_end = time.perf_counter_ns()
        run.ended_clock = self.clock()
        # A batch launched while the one before it still ran started on the device when that one
        # ended: its time is from there (in a pipeline, one turn of the worker per batch).
        began = max(run.t_start, self._last_end_ns)
        ran = max(run.t_run, began)
        self._last_end_ns = t_end
        features = run.features[:n] if run.features is not None and run.padded > n else run.features
        step_energy_mj = sum(self.profile.step_energy_mj(k, n) for k in steps) * n
        if self._energy is not None:
            self._energy.add(step_energy_mj)
        share_mj = step_energy_mj / len(requests)
        now = self.clock()
        last = last_step == self.profile.final_exit
        enforce = self._scheduler.enforce_deadlines
        slot, start_clock = run.slot, run.start_clock

        t_decide = time.perf_counter_ns()
        # The next step's prediction is the same for the whole batch: made once, not per request.
        next_ms = None if last else self.corrector.predict_ms(self.profile, last_step + 1, len(requests)) + \
            self._turn_ms() + self.corrector.tail_ms()   # a step after a look is a turn of its own
        finished, going_on = [], []
        allowance_ms = self.policy_allowance_ms
        # A step by choice (the frame's bounds met at this exit) is not taken by a frame of an app whose
        # frames are being pushed out of its queue: it stops here, with the run's others, and its next frames
        # start sooner; nor where it would make waiting work start too late (_choice_would_delay).
        met_at = None if last else getattr(self.policy, 'accuracy_met', None)
        behind: set[str] = set()
        if met_at is not None and not self.choice_steps_when_behind and self._pushed_out_lately(now):
            with self._cond:   # else no app is behind: no lock, no set
                behind = {a for a in {r.app_id for r in requests}
                          if (app := self._apps.get(a)) is not None and app.behind(now)}
        delays: dict[str, bool] = {}   # per yield rule: asked once, where needed
        for r in requests:
            s: _State = r.state
            i = slot[id(r.frame)]
            if s.start_ns is None:
                s.start_ns = start_clock
                if s.idle_submit_ns is not None:   # the worker was idle: how long it took to start
                    self._wake.add((start_clock - s.idle_submit_ns) / _NS_PER_MS)
                    s.idle_submit_ns = None
            s.compute_ns += t_end - began
            s.energy_est_mj += share_mj
            s.features = None if last else (features, i)
            s.class_id, s.confidence, s.exit_index = class_id[i], confidence[i], last_step
            s.decided_ns = now
            ctx = ExitContext(bounds=s.bounds, profile=self.profile, exit_index=last_step, confidence=s.confidence,
                              elapsed_ms=(now - r.arrival_ns) / _NS_PER_MS, energy_mj=s.energy_est_mj,
                              next_batch=len(requests), corrector=self.corrector, next_ms=next_ms,
                              delivery_allowance_ms=allowance_ms, choice_margin_ms=s.choice_margin_ms)
            # A late frame (cannot meet its bound any more) is served at the fastest exit when the
            # engine enforces deadlines; the baselines decide as their systems do.
            stop = (r.late and enforce) or self.policy.decide(ctx) is Decision.STOP
            rule = self._yield_rule(s.bounds)
            if not stop and met_at is not None and (r.app_id in behind or rule != 'never') and met_at(ctx):
                if r.app_id in behind:
                    stop = True
                    self.stops_behind += 1
                else:
                    if rule not in delays:   # from the batch's earliest deadline: work due before goes first anyway
                        delays[rule] = self._choice_would_delay(now, last_step + 1, len(requests),
                                                                min(q.deadline_ns for q in requests), rule)
                    if delays[rule]:
                        stop = True
                        self.stops_yielded += 1
            (finished if stop else going_on).append(r)
        t_decided = time.perf_counter_ns()
        decide_ns = t_decided - t_decide
        if RECORDER is not None:
            RECORDER.add('complete', t_wait, t_decided, synced_ns=t_end, n=n, steps=(steps[0], last_step),
                         finished=len(finished))
        # What a step really costs a request: scheduling, input, stage, head, softmax, decisions
        # (preprocessing is predicted separately, per frame). Launched behind another batch, the
        # scheduling and input were done while the device was busy: from its start there on.
        if began == run.t_start:
            measured_ms = (run.decision_ns + t_decided - run.t_start - run.pre_ns) / 1e6
            turn_own_ms = (run.decision_ns + run.plan_ns + decide_ns) / 1e6
        else:
            measured_ms = (t_decided - ran) / 1e6
            turn_own_ms = decide_ns / 1e6
        if self.separate_turn_cost:   # the turn's own cost once, the steps learn the rest
            self.corrector.update_turn(turn_own_ms)
            measured_ms = max(0.0, measured_ms - turn_own_ms)
        split = self._split_run(steps, n)
        for k, profiled_ms, share in split:
            self.corrector.update(k, n, measured_ms * share, profiled_ms)

        with self._cond:
            self._steps += len(steps)
            self._batched += len(requests) * len(steps)
            self._busy_ns += t_end - began
            self._pipelined += run.pipelined
            self._decision_us.append((run.decision_ns + run.plan_ns + decide_ns) / 1e3)
            self._device_ms.extend((t_end - ran) / 1e6 * share for _, _, share in split)
            if run.pre_ns:
                self._pre_frame_ms.append(run.pre_ns / 1e6 / n)
            self._scheduler.finished(len(finished))
            for r in going_on:
                r.next_step = last_step + 1
                self._scheduler.requeue(r)
        for r in finished:
            r.state.features = None
            self._finish(r, expired=False)

    def _split_run(self, steps: range, n: int) -> list[tuple[int, float, float]]:
        """``(step, profile ms of its work, share of the run's time)`` for a run of ``steps`` at batch ``n``.

        The corrector learns per (step, batch) from measured / profile time, and a fused run is one
        measurement: shared out in proportion to the profile's times, every step of it learns the
        run's ratio. Only the work that ran counts -- every stage, the last head: the skipped heads,
        counted, would make the device look faster than it is.
        """
        profiled = [self.profile.stage_ms(k, n) + (self.profile.head_ms(k, n) if k == steps[-1] else 0.0)
                    for k in steps]
        total = sum(profiled)
        return [(k, p, p / total if total > 0 else 1 / len(steps)) for k, p in zip(steps, profiled)]

    def _finish(self, r: Request, *, expired: bool) -> None:
        s: _State = r.state
        finish = self.clock()
        with self._cond:
            app = self._apps.get(r.app_id)
            if app is None:
                return   # removed while running: nobody to deliver to
            app.expired += expired
        split = None
        if self._energy is not None:
            self._energy.count_result()
            split = self._energy.attribution   # replaced whole by the meter's thread: no lock needed
        measured = split is not None
        energy = s.energy_est_mj * split[0] + split[1] if measured else s.energy_est_mj
        accuracy, judged = self.policy.result_accuracy(self.profile, s.bounds, s.exit_index, s.confidence)
        latency_ms = (finish - r.arrival_ns) / _NS_PER_MS
        labels = self.info.labels
        result = Result(
            app_id=r.app_id, tag=r.tag, class_id=s.class_id,
            label=labels[s.class_id] if 0 <= s.class_id < len(labels) else str(s.class_id),
            confidence=s.confidence, exit_index=s.exit_index, num_exits=self.profile.num_exits,
            expected_accuracy=accuracy, latency_ms=latency_ms,
            queue_ms=((s.start_ns if s.start_ns is not None else finish) - r.arrival_ns) / _NS_PER_MS,
            compute_ms=s.compute_ns / _NS_PER_MS, energy_mj=energy, energy_measured=measured,
            energy_source=self.energy_source if measured else 'estimate',
            bounds_met=s.bounds.met(latency_ms=latency_ms, accuracy=judged, energy_mj=energy),
            arrival_ns=r.arrival_ns, finish_ns=finish, late=r.late, bounds=s.bounds,
            decided_ns=None if expired else s.decided_ns)
        if RECORDER is not None:
            RECORDER.add('result', r.arrival_ns, finish, app=r.app_id, bound_ms=s.bounds.max_latency_ms,
                         exit=s.exit_index, served_ns=s.start_ns,
                         compute_ns=s.compute_ns, late=r.late, expired=expired)
        if not self.external_delivery:
            result = self.deliver(result)
        self._results_in_turn += 1
        try:
            self.on_result(result)
        except Exception:  # noqa: BLE001 -- a subscriber's bug must not stop serving
            _log.exception('on_result raised for app %r', r.app_id)

    def deliver(self, result: Result, *, delivered_ns: int | None = None) -> Result:
        """Record a result as delivered and return it with its end-to-end figures.

        The one definition of latency: ``arrival_ns -> delivered_ns`` (engine clock; ``None``: now).
        With ``external_delivery`` the ROS layer calls this once per result, right before it
        publishes, and puts the returned ``latency_ms`` / ``bounds_met`` in the message; otherwise
        the engine calls it just before ``on_result``. It feeds the ledger (:meth:`stats`) and the
        measured decision -> delivery tail that predictions and the serving overhead use.
        """
        now = self.clock() if delivered_ns is None else int(delivered_ns)
        latency_ms = (now - result.arrival_ns) / _NS_PER_MS
        b = result.bounds if result.bounds is not None else Bounds()
        _, judged = self.policy.result_accuracy(self.profile, b, result.exit_index, result.confidence)
        met = b.met(latency_ms=latency_ms, accuracy=judged, energy_mj=result.energy_mj)
        latency_met = b.max_latency_ms is None or latency_ms <= b.max_latency_ms
        if result.decided_ns is not None:
            self.corrector.update_tail((now - result.decided_ns) / _NS_PER_MS)
        with self._cond:
            app = self._apps.get(result.app_id)
            if app is not None:
                if app.choice_margin is not None and self.learn_choice_margin and result.exit_index > 0 \
                        and not result.late and b == app.bounds:
                    # past the first exit, maybe by choice: published after the scheduler's deadline?
                    late = latency_ms > b.max_latency_ms - self.kept_after_handover_ms
                    # While newer frames push the app's out of its queue, the node is behind it and its
                    # late results are the backlog's, not a step's taken by choice: they do not raise the
                    # margin. (At 32 cameras x 120 Hz on an H200 they raised nearly every app's, up to 5 ms:
                    # steps stopped early, runs split into more turns, and `delen` served half the frames;
                    # benchmarks/h200/sat_session36. Where the device limits instead, they shed depth and
                    # served more frames: benchmarks/cpu/margin_behind.)
                    if not late or not app.behind(now) or self.margin_learns_when_behind:
                        app.choice_margin.note(late=late)
                app.results_out += 1
                app.served_late += not latency_met
                app.w_out += 1
                app.w_met += met
                app.w_latency_met += latency_met
                app.w_measured += result.energy_measured
                app.w_energy += result.energy_mj
                app.w_accuracy += result.expected_accuracy
                app.w_exits[result.exit_index] += 1
                app.results.append((latency_ms, result.energy_mj, result.expected_accuracy, result.exit_index,
                                    met, latency_met, result.energy_measured))
            self._energy_mj += result.energy_mj
        return _replace(result, latency_ms=latency_ms, bounds_met=met, finish_ns=now)
