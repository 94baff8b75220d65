"""What the engine hands out: a frame's :class:`Result`, an app's :class:`AppStats` (its ledger) and the
worker's :class:`WorkerStats`. Plain frozen records, no behaviour: the ROS layer, the placement layer
and the tools read them without the engine's machinery."""
from __future__ import annotations

import dataclasses

from .bounds import Bounds

__all__ = ['Result', 'AppStats', 'WorkerStats']


@dataclasses.dataclass(frozen=True)
class Result:
    """One app's answer for one frame (field meanings as in ``msg/InferenceResult.msg``).

    ``latency_ms`` is arrival -> delivery (:meth:`Engine.deliver`: publication when the ROS layer
    delivers); ``queue_ms`` the wait before the first step ran; ``compute_ms`` the time of the steps
    (and preprocessing) it took part in; ``energy_mj`` its share of those steps' energy; ``tag``
    whatever was given to :meth:`Engine.submit`. ``late``: the frame could no longer meet its latency
    bound when it was scheduled (served at the fastest exit, or as a baseline policy said);
    ``bounds``: the bounds it is judged by; ``decided_ns``: when its last exit was decided.
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
    late: bool = False
    bounds: Bounds | None = None
    decided_ns: int | None = None


@dataclasses.dataclass(frozen=True)
class AppStats:
    """The one ledger of an app. ``frames_in`` .. ``served_late`` count since registration; the
    rest cover the current window (since the last ``stats(reset=True)``; percentiles over its last
    ``window`` results).

    ``dropped`` = every frame that got no result: ``dropped_overflow`` (a newer frame pushed it out)
    + ``dropped_late`` (could not meet the latency bound, the app chose ``LatePolicy.DROP``) +
    ``dropped_malformed`` (the ROS layer could not convert it, :meth:`Engine.count_malformed`) +
    ``failed`` (an error in its step, logged). ``expired``: results delivered early because waiting
    for the next step would have overrun; ``served_late``: results delivered past the latency bound.
    ``attainment``: results with every bound met / results; ``frame_attainment``: the same over
    every frame of the window (unanswered ones, ``window_unanswered``, count as misses);
    ``latency_attainment``: results within the latency bound over the same. Rates in Hz over the
    window's duration; ``rate_measured_hz``: the smoothed arrival rate admission uses.
    ``unschedulable_reason``: why this app's bounds may be missed now ('' = none): the admission
    re-check at measured rates, or a window of frames with no result.
    ``window_energy_mj``: the window's results' energy (above idle where the engine subtracts it).
    ``choice_margin_ms``: how much more of its latency bound a step taken by choice keeps free now,
    learnt from its results published late (:class:`~delen_ros.core.choice_margin.ChoiceMargin`; 0: none
    learnt, or an app that takes no step by choice).
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
    dropped_malformed: int
    served_late: int
    late_policy: str
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
    window_unanswered: int
    window_energy_mj: float
    rate_measured_hz: float
    unschedulable_reason: str
    choice_margin_ms: float = 0.0


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """The worker's own figures since start (or the last reset).

    ``decision_us_*``: scheduler decision plus policy decisions per worker turn (one step, or a
    fused run of several), microseconds;
    ``step_ms_*``: stage + head + softmax + transfer of a step (the device's part; a fused run's time
    shared over its steps), ms;
    ``preprocess_ms_per_frame``: a lone frame's, as predictions use it (:class:`~.batch_cost.BatchCost`),
    ``preprocess_ms_p99`` over frames.
    ``overhead_ms``: the serving overhead in use (measured, or the prior before any delivery);
    ``energy_mj``: results' energy since the reset; ``idle_energy_mj``: ``idle_power_w`` x that time
    (their sum is the device's total); ``pipelined_runs``: worker turns whose batch was launched
    before the last one's results were looked at (``Engine.pipeline``).
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
    overhead_ms: float
    energy_mj: float
    idle_energy_mj: float
    pipelined_runs: int = 0
