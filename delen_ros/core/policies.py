"""Exit policies: after head ``k`` ran for a request, stop there or go on to stage ``k+1``?

A policy sees an :class:`ExitContext` (the app's bounds, the profile, the exit just evaluated, its
confidence, the time since the frame arrived, the energy spent so far, the batch size the next step
would probably run in, and the engine's :class:`LatencyCorrector`) and answers :class:`Decision`.
The last exit always stops. Policies hold no per-request state; one instance serves every app.

Registered policies (:func:`get_policy`, :func:`available_policies`):

* ``delen`` (default, ours) -- predictive latency, energy budget, calibrated per-input accuracy exit
  with a static fallback, and the objective for what the bounds leave free.
* ``always_final`` -- run the whole network.
* ``static_exit`` -- stop at the static plan's exit (:func:`~delen_ros.core.bounds.plan`).
* ``check_after_stage`` -- Dělen's public code: run a stage, then stop if the elapsed time (or the
  energy) already exceeds the bound. It overshoots by up to one stage.
* ``fixed_confidence`` -- BranchyNet-style: stop when confidence >= a fixed threshold (0.9).

Deciding ahead (:meth:`Policy.decide_ahead`): where a decision needs no confidence -- a latency or
energy bound alone under ``delen``, ``always_final``, ``static_exit`` -- the engine asks it before
the head runs, on predicted times, and runs several steps back to back without looking at their
exits.

Expected accuracy of a result (:meth:`Policy.expected_accuracy`): policies that stop on confidence
(``delen``, ``fixed_confidence``) report the calibrated ``profile.expected_accuracy(k, confidence)``;
the others report exit ``k``'s overall accuracy, since their choice of exit does not depend on the input.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
import math
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .arrivals import Mean
from .registry import Registry
from .bounds import Bounds, InfeasibleBounds, Objective, plan

if TYPE_CHECKING:
    from .profile import Profile

__all__ = ['Decision', 'ExitContext', 'LatencyCorrector', 'Policy', 'register_policy', 'get_policy',
           'available_policies', 'DelenPolicy', 'AlwaysFinalPolicy', 'StaticExitPolicy',
           'CheckAfterStagePolicy', 'FixedConfidencePolicy', 'static_fallback_exit', 'NEEDED_EXIT_TAIL', 'DEFAULT_POLICY']

DEFAULT_POLICY = 'delen'


class Decision(str, enum.Enum):
    STOP = 'stop'
    CONTINUE = 'continue'


class LatencyCorrector:
    """Online correction of the profile's step times, per (step, batch size) or per step.

    For each pair it keeps EWMAs of the ratio measured / profile p50 and of that ratio's absolute
    deviation (Jacobson and Karels' estimator, as TCP's retransmission timeout), and predicts
    ``p50 x (mean + margin x deviation)``: the profile's shape, this device's level right now, and
    a margin that grows when step times get jittery. Without a measurement, the prediction is the
    profile's prior ``p50 + safety x (p99 - p50)``, or, where the steps measured lately run slower than
    the profile, that step's p50 at their level (the median of their fresh ratios and deviations): a
    step no frame has reached yet runs on the same device, under the same load (this CPU, through the
    node: ResNet-9's steps measured at about 2x the profile while `+lite2`, never reached, was priced at
    the profile, and an app that needs it was admitted on that and missed).

    Which measurement: the pair's own while fresh (updated within ``stale_s``), else the nearest
    fresh batch size of the same step, else the nearest stale one fading into the prior (time
    constant ``stale_s / 4``). Estimates must age: a frame predicted to overrun is never run, so a
    few slow outliers could otherwise lock an app out of the device for good.

    The engine feeds every measured step (:meth:`update`); the policy and the scheduler read
    :meth:`predict_ms`. Memory is bounded by ``num_exits x max_batch`` pairs.

    :param alpha: EWMA weight of a new ratio (0-1].
    :param beta: EWMA weight of a new absolute deviation (0-1].
    :param margin: deviations added to the mean ratio (0: predict the mean).
    :param safety: where between the profile's p50 (0) and p99 (1) the prior sits; above 1
        extrapolates beyond p99.
    :param min_factor: lower clamp of a measured ratio (a warm cache should not make the policy
        trust near-zero step times).
    :param max_factor: upper clamp (one stall must not move the mean far).
    :param stale_s: seconds after which a pair's estimate starts fading into the prior.
    :param clock: monotonic seconds (a fake one in tests).
    :param pool_batch_sizes: one estimate per step, whatever the batch size (the profile gives the
        shape across sizes, the measurements this device's level). What the engine uses: learnt
        per (step, batch), 32 sizes each learnt from a few, soon stale samples, and a noisy estimate
        for one size kept batches small after a stall (a CPU stand-in of the H200's 32-camera runs,
        ``benchmarks/cpu/fused_runs``: 21 of 24 runs recovered pooled, 8 of 24 per size).
    """

    #: a measurement above this multiple of the mean ratio is folded in as this multiple
    OUTLIER = 4.0

    def __init__(self, *, alpha: float = 0.125, beta: float = 0.25, margin: float = 2.0, safety: float = 1.0,
                 min_factor: float = 0.1, max_factor: float = 16.0, stale_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, pool_batch_sizes: bool = False):
        for name, value in (('alpha', alpha), ('beta', beta)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f'{name} must be in (0, 1], got {value!r}')
        for name, value in (('margin', margin), ('safety', safety)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f'{name} must be >= 0, got {value!r}')
        if not 0.0 < min_factor <= 1.0 <= max_factor:
            raise ValueError(f'need 0 < min_factor <= 1 <= max_factor, got {min_factor!r}, {max_factor!r}')
        if not math.isfinite(stale_s) or stale_s <= 0:
            raise ValueError(f'stale_s must be > 0, got {stale_s!r}')
        self.alpha = alpha
        self.beta = beta
        self.margin = margin
        self.safety = safety
        self.min_factor = min_factor
        self.max_factor = max_factor
        self.stale_s = stale_s
        self.clock = clock
        self.pool_batch_sizes = bool(pool_batch_sizes)
        # (step, batch) -> (mean ratio, mean |deviation|, clock of the last update)
        self._stats: dict[tuple[int, int], tuple[float, float, float]] = {}
        # decision -> result delivered (ms): no step covers it, but the latency bound does
        self._tail = Mean(alpha, beta, self.OUTLIER)
        # a worker turn's own cost (ms: scheduling, planning, the policy's decisions), learnt apart from
        # the steps' only where the engine separates it (Engine(separate_turn_cost=True))
        self._turn = Mean(alpha, beta, self.OUTLIER)
        # (step, batch) -> (p50, prior) of _priors_of, the profile they were read from: predictions
        # run several times per request and step, and a profile never changes
        self._priors: dict[tuple[int, int], tuple[float, float]] = {}
        self._priors_of: 'Profile | None' = None
        self._level: tuple[float, float, float] | None = None   # (clock read, mean, deviation) of _fresh_level
        self.level_prior = True   # false: an unmeasured step at the profile's prior alone (an A/B switch)

    def update_tail(self, measured_ms: float) -> None:
        """Fold in one measured time from the last decision on a request to its result's delivery."""
        self._tail.add(measured_ms)

    @property
    def has_tail(self) -> bool:
        """Whether a decision -> delivery time has been measured."""
        return self._tail.mean is not None

    def tail_ms(self, *, margin: float | None = None) -> float:
        """Predicted decision -> delivery time, ms (mean + ``margin`` deviations; 0 before any)."""
        return self._tail.value(self.margin if margin is None else margin)

    def update_turn(self, measured_ms: float) -> None:
        """Fold in one worker turn's own cost (what it spent besides its steps), ms."""
        self._turn.add(measured_ms)

    def turn_ms(self, *, margin: float | None = None) -> float:
        """Predicted cost of a worker turn besides its steps, ms (0 before any is measured)."""
        return self._turn.value(self.margin if margin is None else margin)

    def update(self, step: int, batch: int, measured_ms: float, predicted_ms: float) -> None:
        """Fold one measured step (``predicted_ms``: the profile's p50 for it) into the estimates."""
        if predicted_ms <= 0 or not math.isfinite(measured_ms) or measured_ms < 0:
            return
        ratio = min(self.max_factor, max(self.min_factor, measured_ms / predicted_ms))
        key = (step, 0 if self.pool_batch_sizes else batch)
        old = self._stats.get(key)
        now = self.clock()
        if old is None:
            self._stats[key] = (ratio, ratio / 4, now)
        else:
            mean, dev, _ = old
            # A lone stall (a page fault, a descheduled thread) counts as at most OUTLIER x the mean:
            # it widens the margin without blowing it up; a lasting slowdown still gets learnt,
            # geometrically, in a few steps.
            ratio = min(ratio, self.OUTLIER * mean)
            dev += self.beta * (abs(ratio - mean) - dev)
            self._stats[key] = (mean + self.alpha * (ratio - mean), dev, now)

    def _lookup(self, step: int, batch: int) -> tuple[float, float, float] | None:
        """(mean, deviation, weight of the measurement against the prior) or ``None``."""
        now = self.clock()
        if self.pool_batch_sizes:
            batch = 0
        own = self._stats.get((step, batch))
        if own is not None and now - own[2] <= self.stale_s:
            return own[0], own[1], 1.0
        same_step = [(abs(b - batch), b, v) for (s, b), v in self._stats.items() if s == step]
        fresh = [c for c in same_step if now - c[2][2] <= self.stale_s]
        if fresh:
            mean, dev, _ = min(fresh)[2]
            return mean, dev, 1.0
        if not same_step:
            return None
        mean, dev, t = own if own is not None else min(same_step)[2]
        return mean, dev, math.exp(-(now - t - self.stale_s) / (self.stale_s / 4))

    def factor(self, step: int, batch: int) -> float:
        """The mean ratio measured / profile p50 in use for ``step`` at ``batch``; none measured: the
        fresh level of the other steps where it is above 1 (see the class), else 1."""
        found = self._lookup(step, batch)
        return max(1.0, self._fresh_level()[0]) if found is None else found[0]

    def deviation(self, step: int, batch: int) -> float:
        found = self._lookup(step, batch)
        return 0.0 if found is None else found[1]

    def predict_ms(self, profile: 'Profile', step: int, batch: int = 1, *, margin: float | None = None) -> float:
        """Predicted time of step ``step`` (stage + head) for a whole batch of ``batch``, ms.

        :param margin: deviations to add; ``None``: :attr:`margin` (0: the expected time).
        """
        margin = self.margin if margin is None else margin
        p50, prior = self._prior(profile, step, batch)
        found = self._lookup(step, batch)
        if found is not None and found[2] >= 1.0:
            return p50 * (found[0] + margin * found[1])
        level_mean, level_dev = self._fresh_level()
        prior = max(prior, p50 * (level_mean + margin * level_dev))
        if found is None:
            return prior
        mean, dev, weight = found
        return weight * p50 * (mean + margin * dev) + (1 - weight) * prior

    def _fresh_level(self) -> tuple[float, float]:
        """The median ratio and deviation of the estimates updated within ``stale_s`` ((0, 0): none,
        or :attr:`level_prior` off), recomputed at most every 0.1 s (it is read for every prediction of
        a step not measured lately)."""
        if not self.level_prior:
            return 0.0, 0.0
        now = self.clock()
        if self._level is None or now - self._level[0] > 0.1:
            fresh = [(mean, dev) for mean, dev, t in self._stats.values() if now - t <= self.stale_s]
            if fresh:
                means, devs = sorted(m for m, _ in fresh), sorted(d for _, d in fresh)
                self._level = (now, means[len(means) // 2], devs[len(devs) // 2])
            else:
                self._level = (now, 0.0, 0.0)
        return self._level[1], self._level[2]

    def _prior(self, profile: 'Profile', step: int, batch: int) -> tuple[float, float]:
        """The profile's p50 for ``step`` at ``batch`` and the prior (p50 moved ``safety`` of the way to p99)."""
        if profile is not self._priors_of:
            self._priors, self._priors_of = {}, profile
        key = (step, batch)
        found = self._priors.get(key)
        if found is None:
            p50 = profile.step_ms(step, batch)
            found = self._priors[key] = (p50, p50 + self.safety * max(0.0, profile.step_ms(step, batch, p99=True) - p50))
        return found

    def snapshot(self) -> dict[str, list[float]]:
        """``{'step/batch': [mean ratio, deviation]}`` (for logs and benchmarks; batch ``0``: every
        size, with ``pool_batch_sizes``)."""
        return {f'{s}/{b}': [round(m, 4), round(d, 4)] for (s, b), (m, d, _) in sorted(self._stats.items())}


@dataclasses.dataclass(frozen=True)
class ExitContext:
    """What a policy knows when head ``exit_index`` has just run for one request.

    :param elapsed_ms: time since the frame arrived at the node, up to now (queueing included).
    :param energy_mj: energy attributed to this request so far (estimate), millijoules.
    :param next_batch: the batch size the next step would probably run in (for its predicted time).
    :param corrector: the engine's online latency correction; ``None``: the profile's p50.
    :param next_ms: :meth:`predicted_next_ms`, when the caller computed it once for a whole batch;
        ``None``: computed here.
    :param delivery_allowance_ms: time kept after publication for the result to reach its
        subscriber: the engine's, so that a policy's latency limit is the scheduler's deadline.
    :param choice_margin_ms: more time a step taken by choice keeps free, learnt from the app's late
        results (:class:`~delen_ros.core.choice_margin.ChoiceMargin`); 0: none.
    """

    bounds: Bounds
    profile: 'Profile'
    exit_index: int
    confidence: float
    elapsed_ms: float
    energy_mj: float = 0.0
    next_batch: int = 1
    corrector: LatencyCorrector | None = None
    next_ms: float | None = None
    delivery_allowance_ms: float = 0.0
    choice_margin_ms: float = 0.0

    @property
    def is_last(self) -> bool:
        return self.exit_index >= self.profile.num_exits - 1

    @property
    def latency_limit_ms(self) -> float | None:
        """When the result must be published, ms after arrival: the latency bound less the delivery
        allowance (the scheduler's deadline); ``None`` without a latency bound."""
        bound = self.bounds.max_latency_ms
        return None if bound is None else bound - self.delivery_allowance_ms

    def predicted_next_ms(self) -> float:
        """Predicted time from now to a result after the next step (stage ``k+1`` + head) at
        ``next_batch``, delivery included when a corrector has measured it."""
        if self.next_ms is not None:
            return self.next_ms
        k = self.exit_index + 1
        if self.corrector is None:
            return self.profile.step_ms(k, self.next_batch)
        # The step (a turn of its own: it follows a look), then what it takes from the decision
        # after it to the delivered result.
        return (self.corrector.predict_ms(self.profile, k, self.next_batch) + self.corrector.turn_ms()
                + self.corrector.tail_ms())

    def predicted_next_energy_mj(self) -> float:
        """Predicted per-frame energy of the next step at ``next_batch``."""
        return self.profile.step_energy_mj(self.exit_index + 1, self.next_batch)


class Policy(abc.ABC):
    """Decides, at each exit, whether a request stops there. Subclasses implement :meth:`_decide`."""

    #: registry name, set by :func:`register_policy`
    name: str = ''
    #: whether the exit depends on the input's confidence (then accuracy is calibrated per result)
    uses_confidence: bool = False
    #: whether the engine should enforce deadlines by prediction for this policy (drop frames that
    #: cannot make it, finish requests early rather than late); baselines run as their systems do
    predictive: bool = False
    #: whether :meth:`decide_ahead` is monotone in the request's pressure: if it answers CONTINUE for
    #: a request of some bounds, it does for one of the same bounds that arrived later, has spent less
    #: energy and is due no sooner. Then the engine asks once per app, for its most pressed frame,
    #: rather than once per frame (``Engine._fuse_to``); False (a policy that does not say): per frame.
    monotone_ahead: bool = False

    def decide(self, ctx: ExitContext) -> Decision:
        """STOP or CONTINUE after head ``ctx.exit_index``; the last exit always stops."""
        if ctx.is_last:
            return Decision.STOP
        return self._decide(ctx)

    @abc.abstractmethod
    def _decide(self, ctx: ExitContext) -> Decision:
        """The decision at a non-final exit."""

    def decide_ahead(self, ctx: ExitContext) -> Decision | None:
        """The decision at ``ctx.exit_index`` before its head has run: what :meth:`decide` answers
        for every confidence, or ``None`` when the answer depends on the confidence.

        ``ctx.confidence`` is not read, and ``ctx.elapsed_ms`` is a prediction (the engine runs the
        steps up to the first exit that is not CONTINUE without a look at the device in between);
        a policy that must check a measured elapsed time answers ``None`` too.
        """
        if ctx.is_last:
            return Decision.STOP
        return self._decide_ahead(ctx)

    def _decide_ahead(self, ctx: ExitContext) -> Decision | None:
        """:meth:`decide_ahead` at a non-final exit; ``None`` unless a policy knows better (then
        the engine looks at every exit, as it always did)."""
        return None

    def first_stop(self, profile: 'Profile', bounds: Bounds) -> int:
        """The first exit this policy may stop a frame at under these bounds, whatever its input and
        timing: the scheduler, where it does not enforce deadlines (the baselines), judges a frame late
        when it cannot get there in time. Here the first exit."""
        return 0

    def needed_exit(self, profile: 'Profile', bounds: Bounds) -> int:
        """The deepest exit that an app's frames need under these bounds, but for a share of at most
        :data:`NEEDED_EXIT_TAIL` of them: what admission makes room for. Here the earliest exit whose
        overall accuracy meets the bound (:func:`static_fallback_exit`)."""
        return static_fallback_exit(profile, bounds.min_accuracy)

    def exit_shares(self, profile: 'Profile', bounds: Bounds) -> tuple[float, ...]:
        """The share of an app's frames expected to stop at each exit under these bounds, where the
        policy knows it (admission's average device time per frame); ``()``: not known."""
        return ()

    def result_accuracy(self, profile: 'Profile', bounds: Bounds, exit_index: int,
                        confidence: float | None) -> tuple[float, float]:
        """``(expected accuracy to report, accuracy to judge the bound by)`` for a result.

        They differ only where a policy calibrates a stream: see :meth:`DelenPolicy.result_accuracy`.
        """
        accuracy = self.expected_accuracy(profile, exit_index, confidence)
        return accuracy, accuracy

    def expected_accuracy(self, profile: 'Profile', exit_index: int, confidence: float | None) -> float:
        """Accuracy to report for a result at ``exit_index`` with this confidence (0-1)."""
        if self.uses_confidence:
            return profile.expected_accuracy(exit_index, confidence)
        return profile.accuracy(exit_index)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name={self.name!r})'


_REGISTRY: Registry[type[Policy]] = Registry('policy')
_P = TypeVar('_P', bound=type[Policy])


def register_policy(name: str) -> Callable[[_P], _P]:
    """Class decorator registering a policy under ``name``; a duplicate name raises ``ValueError``."""
    add = _REGISTRY.decorator(name)

    def wrap(cls: _P) -> _P:
        add(cls)
        cls.name = name
        return cls
    return wrap


def available_policies() -> list[str]:
    return _REGISTRY.names()


def get_policy(name: str, **options: Any) -> Policy:
    """A new instance of the policy registered as ``name``, built with ``options``.

    :raises KeyError: unknown name (the message lists the known ones).
    """
    return _REGISTRY.get(name)(**options)


class _PlanCache:
    """Static plans per (bounds, profile), small and bounded (policies are asked per request per exit)."""

    def __init__(self, size: int = 256):
        self._size = size
        self._plans: dict[tuple[Bounds, int], int | None] = {}

    def exit_for(self, bounds: Bounds, profile: 'Profile') -> int | None:
        """The planned exit; ``None`` when the bounds are infeasible."""
        key = (bounds, id(profile))
        if key not in self._plans:
            if len(self._plans) >= self._size:
                self._plans.clear()
            try:
                self._plans[key] = plan(bounds, profile).exit_index
            except InfeasibleBounds:
                self._plans[key] = None
        return self._plans[key]


#: the share of an app's frames that may need an exit deeper than the one admission makes room for
#: (:meth:`Policy.needed_exit`): half of what a 99 % target leaves, the rest for the way in and out
NEEDED_EXIT_TAIL = 0.005


def static_fallback_exit(profile: 'Profile', min_accuracy: float | None) -> int:
    """Earliest exit whose overall accuracy meets ``min_accuracy`` (the final exit if none does)."""
    if min_accuracy is None:
        return 0
    for k in range(profile.num_exits):
        if profile.accuracy(k) >= min_accuracy:
            return k
    return profile.final_exit


@register_policy('delen')
class DelenPolicy(Policy):
    """Ours: every bound at once, predicted before the step rather than checked after it.

    In order, at exit ``k`` (not the last):

    1. latency: stop when ``elapsed + predicted(step k+1) > max_latency_ms - delivery allowance``
       (the corrector's prediction: profile p50 x online mean ratio + a margin of its deviation;
       profile p99 before any measurement; the allowance: the time the result's way to its
       subscriber is given, as in the scheduler's deadline);
    2. energy: stop when ``energy so far + predicted energy of step k+1 > max_energy_mj``;
    3. accuracy met? -- when ``k`` is at or past the fallback exit (earliest exit whose overall
       accuracy meets ``min_accuracy``), or the confidence reaches the calibrated threshold
       ``profile.confidence_threshold(k, min_accuracy)`` (rows with enough support only, see
       ``min_support``); no accuracy bound: met at once;
    4. objective: MAX_ACCURACY continues (as deep as 1-2 allow), but once 3 holds a step taken by
       choice must be predicted to end ``choice_headroom`` of the latency bound before its deadline,
       and the app's learnt ``ExitContext.choice_margin_ms`` more;
       MIN_LATENCY / MIN_ENERGY stop as soon as 3 holds, and continue otherwise.

    :param calibrated: use the per-input confidence threshold (False: fallback exit only).
    :param min_support: a calibration row counts only if at least this fraction (0-1) of the
        held-out inputs reached its threshold: a row of one lucky input says nothing. 0:
        exactly ``profile.confidence_threshold``.
    :param choice_headroom: fraction (0-1) of the latency bound a step taken by choice keeps free
        before the deadline (rule 4). Such a step buys accuracy the bounds do not ask for; planned to
        the deadline, every prediction error was a miss (H200, 16 cameras: 10 ms apps running as deep
        as allowed published 1-5 % of their results 0-1 ms after the deadline).
    """

    uses_confidence = True
    predictive = True
    monotone_ahead = True   # later, cheaper, due later: never stops where a more pressed frame goes on

    def __init__(self, *, calibrated: bool = True, min_support: float = 0.02, choice_headroom: float = 0.1):
        for name, value in (('min_support', min_support), ('choice_headroom', choice_headroom)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {value!r}')
        self.calibrated = calibrated
        self.min_support = min_support
        self.choice_headroom = choice_headroom
        self._thresholds: dict[tuple[int, int, float], float | None] = {}

    def _threshold(self, profile: 'Profile', k: int, min_accuracy: float) -> float | None:
        key = (id(profile), k, min_accuracy)
        if key not in self._thresholds:
            if len(self._thresholds) > 4096:
                self._thresholds.clear()
            if self.min_support <= 0:
                found = profile.confidence_threshold(k, min_accuracy)
            else:
                found = next((t for t, acc, fraction in sorted(profile.exits[k].calibration)
                              if fraction >= self.min_support and acc >= min_accuracy), None)
            self._thresholds[key] = found
        return self._thresholds[key]

    def _cascade(self, profile: 'Profile', bounds: Bounds):
        """The profile's per-input cascade for these bounds, when they stop on accuracy and the policy
        is calibrated; else ``None``."""
        if not self.calibrated or bounds.min_accuracy is None or bounds.effective_objective is Objective.MAX_ACCURACY:
            return None
        return profile.cascade(bounds.min_accuracy)

    def accuracy_met(self, ctx: ExitContext) -> bool:
        """Whether stopping at ``ctx.exit_index`` with ``ctx.confidence`` meets the accuracy bound."""
        return self._met(ctx, ctx.confidence)

    def _met(self, ctx: ExitContext, confidence: float | None) -> bool | None:
        """Rule 3 (the class docstring) at ``ctx.exit_index``; ``None``: it depends on a ``confidence`` not known yet."""
        rule = self._accuracy_rule(ctx.bounds, ctx.profile, ctx.exit_index)
        if isinstance(rule, bool):
            return rule
        return None if confidence is None else confidence >= rule

    def _accuracy_rule(self, bounds: Bounds, profile: 'Profile', k: int) -> bool | float:
        """How stopping at exit ``k`` meets the accuracy bound: ``True`` or ``False`` whatever the
        confidence, or the confidence threshold it takes."""
        b = bounds.min_accuracy
        if b is None:
            return True
        cascade = self._cascade(profile, bounds)
        if cascade is not None:
            # Calibrated on the inputs that reach this exit, not on all of them (see Cascade).
            threshold = cascade.thresholds[k]
            return False if threshold is None else threshold
        if k >= static_fallback_exit(profile, b):
            return True
        if not self.calibrated:
            return False
        threshold = self._threshold(profile, k, b)
        return False if threshold is None else threshold

    def needed_exit(self, profile: 'Profile', bounds: Bounds) -> int:
        """With a calibrated cascade, the exit past which at most :data:`NEEDED_EXIT_TAIL` of the
        held-out inputs went on: its frames stop on confidence, many of them later than the static
        fallback exit (``cifar10_committee`` at 0.9415: 3-4 % go on to `+lite2`, past the fallback
        `+lite0`), and each of those stopped early by the latency bound misses its accuracy."""
        cascade = self._cascade(profile, bounds)
        if cascade is None:
            return super().needed_exit(profile, bounds)
        beyond = 1.0
        for k, fraction in enumerate(cascade.fractions):
            beyond -= fraction
            if beyond <= NEEDED_EXIT_TAIL:
                return k
        return profile.final_exit

    def exit_shares(self, profile: 'Profile', bounds: Bounds) -> tuple[float, ...]:
        """With a calibrated cascade, where its held-out inputs stopped."""
        cascade = self._cascade(profile, bounds)
        return () if cascade is None else tuple(cascade.fractions)

    def result_accuracy(self, profile: 'Profile', bounds: Bounds, exit_index: int,
                        confidence: float | None) -> tuple[float, float]:
        """With a calibrated cascade (an accuracy bound, objective not MAX_ACCURACY), the bound is on
        the stream: a result that followed the cascade (stopped confident, or at the final exit) is
        judged by the cascade's stream accuracy, and reports the accuracy of its own group on the
        held-out set; a stop forced early by latency or energy reports and is judged by the
        accuracy of the not-confident inputs at that exit. Otherwise: the calibrated bin."""
        cascade = self._cascade(profile, bounds)
        if cascade is None or confidence is None:
            return super().result_accuracy(profile, bounds, exit_index, confidence)
        threshold = cascade.thresholds[exit_index]
        if exit_index == profile.final_exit or (threshold is not None and confidence >= threshold):
            return cascade.exit_accuracy[exit_index], cascade.accuracy
        return cascade.rest_accuracy[exit_index], cascade.rest_accuracy[exit_index]

    def _decide(self, ctx: ExitContext) -> Decision:
        return self._decide_with(ctx, ctx.confidence)

    def _decide_ahead(self, ctx: ExitContext) -> Decision | None:
        # Latency and energy are predicted here anyway: a predicted elapsed time changes nothing.
        return self._decide_with(ctx, None)

    def _decide_with(self, ctx: ExitContext, confidence: float | None) -> Decision | None:
        """Steps 1-4 above; ``confidence`` ``None``: unknown (then ``None`` where step 3 needs it).
        One body for both, so that deciding ahead cannot drift from deciding after the head."""
        bounds, limit = ctx.bounds, ctx.latency_limit_ms
        done_ms = None if limit is None else ctx.elapsed_ms + ctx.predicted_next_ms()
        if done_ms is not None and done_ms > limit:
            return Decision.STOP
        if bounds.max_energy_mj is not None and ctx.energy_mj + ctx.predicted_next_energy_mj() > bounds.max_energy_mj:
            return Decision.STOP
        if bounds.effective_objective is Objective.MAX_ACCURACY:
            # as deep as 1-2 allow, but a step taken by choice (the bounds met already) keeps a headroom
            # before the deadline: within it, stop once the bounds are met, as the other objectives do
            if done_ms is None or done_ms <= limit - self.choice_headroom * bounds.max_latency_ms - ctx.choice_margin_ms:
                return Decision.CONTINUE
        met = self._met(ctx, confidence)
        if met is None:
            return None
        return Decision.STOP if met else Decision.CONTINUE


@register_policy('always_final')
class AlwaysFinalPolicy(Policy):
    """Baseline: the whole network for every frame, whatever the bounds."""

    monotone_ahead = True

    def _decide(self, ctx: ExitContext) -> Decision:
        return Decision.CONTINUE

    def _decide_ahead(self, ctx: ExitContext) -> Decision:
        return Decision.CONTINUE

    def first_stop(self, profile: 'Profile', bounds: Bounds) -> int:
        return profile.final_exit


@register_policy('static_exit')
class StaticExitPolicy(Policy):
    """Baseline: stop at the static plan's exit (:func:`~delen_ros.core.bounds.plan`); the final
    exit when the bounds are infeasible. Ignores the input and the time actually spent."""

    monotone_ahead = True

    def __init__(self):
        self._plans = _PlanCache()

    def _decide(self, ctx: ExitContext) -> Decision:
        planned = self._plans.exit_for(ctx.bounds, ctx.profile)
        if planned is None:
            return Decision.CONTINUE
        return Decision.STOP if ctx.exit_index >= planned else Decision.CONTINUE

    def _decide_ahead(self, ctx: ExitContext) -> Decision:
        return self._decide(ctx)   # reads neither the input nor the time

    def first_stop(self, profile: 'Profile', bounds: Bounds) -> int:
        planned = self._plans.exit_for(bounds, profile)
        return profile.final_exit if planned is None else planned


@register_policy('check_after_stage')
class CheckAfterStagePolicy(Policy):
    """Baseline, as in Dělen's public code: after a stage ran, stop if the elapsed time (or energy)
    already exceeds the bound -- the check comes after the work, so results overshoot by up to
    one stage. An accuracy bound stops at the fallback exit (earliest exit accurate enough on
    average) when the objective is MIN_LATENCY / MIN_ENERGY; MAX_ACCURACY goes on."""

    monotone_ahead = True

    def _decide(self, ctx: ExitContext) -> Decision:
        bounds = ctx.bounds
        if bounds.max_latency_ms is not None and ctx.elapsed_ms >= bounds.max_latency_ms:
            return Decision.STOP
        if bounds.max_energy_mj is not None and ctx.energy_mj >= bounds.max_energy_mj:
            return Decision.STOP
        if bounds.effective_objective is not Objective.MAX_ACCURACY and \
                ctx.exit_index >= static_fallback_exit(ctx.profile, bounds.min_accuracy):
            return Decision.STOP
        return Decision.CONTINUE

    def _decide_ahead(self, ctx: ExitContext) -> Decision | None:
        # Its latency check is on the time measured after the stage, not on a prediction: keep it
        # so. The energy so far is the profile's estimate, the same ahead as after the stage.
        if ctx.bounds.max_latency_ms is not None:
            return None
        return self._decide(ctx)


@register_policy('fixed_confidence')
class FixedConfidencePolicy(Policy):
    """Baseline, BranchyNet-style: stop when max-softmax confidence >= ``threshold``; bounds ignored.

    :param threshold: confidence in (0, 1].
    """

    uses_confidence = True

    def __init__(self, *, threshold: float = 0.9):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f'threshold must be in (0, 1], got {threshold!r}')
        self.threshold = threshold

    def _decide(self, ctx: ExitContext) -> Decision:
        return Decision.STOP if ctx.confidence >= self.threshold else Decision.CONTINUE
