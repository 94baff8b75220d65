"""Runtime bounds of an application, their feasibility on a profiled device, and the static plan.

An application states what it needs from each result as :class:`Bounds`: a latency bound (frame
arrival -> result, ms), an accuracy bound (expected accuracy of the result, 0-1) and an energy bound
(energy attributed to the inference, mJ), each ``None`` when unbounded, plus an :class:`Objective`
for what the bounds leave free. :meth:`Bounds.conditions` gives the same bounds in Dělen's compact
``(metric, op, threshold)`` vocabulary, which serialises to JSON.

:func:`feasible_range` says what this device can do at all (from the fastest / cheapest / least
accurate exit to the slowest / most expensive / most accurate one); :func:`plan` picks the exit a
typical frame stops at, or raises :class:`InfeasibleBounds` carrying that range.

>>> Bounds(max_latency_ms=40.0).conditions()[0].to_dict()
{'metric': 'latency_ms', 'op': 'less_eq', 'threshold': 40.0}
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import operator
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from .profile import Profile

__all__ = ['Objective', 'LatePolicy', 'Metric', 'Op', 'Condition', 'Bounds', 'FeasibleRange', 'Plan',
           'InfeasibleBounds', 'feasible_range', 'latency_parts', 'plan', 'SRV_OBJECTIVES']

# Bounds are compared with a little slack so that a bound copied from a profile figure (and rounded
# through float32 in a ROS message) still admits that figure.
_REL_TOL = 1e-6


class Objective(str, enum.Enum):
    """What to optimise within the bounds.

    ``DEFAULT`` is Dělen's semantics: with an accuracy bound and no latency or energy bound, stop at
    the *first* exit that meets it (as ``MIN_LATENCY``); otherwise go as deep as the bounds allow
    (as ``MAX_ACCURACY``). See :attr:`Bounds.effective_objective`.
    """

    DEFAULT = 'default'             # Dělen: accuracy alone stops at the first exit meeting it
    MAX_ACCURACY = 'max_accuracy'   # go as deep as the bounds allow
    MIN_LATENCY = 'min_latency'     # stop as soon as the accuracy bound (if any) is met
    MIN_ENERGY = 'min_energy'       # likewise; differs from MIN_LATENCY in the static plan's tie-break

    @classmethod
    def parse(cls, value: 'Objective | str | int') -> 'Objective':
        """From an ``Objective``, its value or name in any case (``'min_energy'``, ``'MIN_ENERGY'``),
        or the ``SetBounds.srv`` constant (:data:`SRV_OBJECTIVES`: 0 = DEFAULT, 1 = MAX_ACCURACY,
        2 = MIN_LATENCY, 3 = MIN_ENERGY)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value in SRV_OBJECTIVES:
                return cls(SRV_OBJECTIVES[value])
        elif isinstance(value, str):
            text = value.strip().lower()
            if text == 'auto':
                return cls.DEFAULT
            for member in cls:
                if text in (member.value, member.name.lower()):
                    return member
        raise ValueError(f'unknown objective {value!r}; known: {[m.value for m in cls]} '
                         f'(or {sorted(SRV_OBJECTIVES)} as in SetBounds.srv)')


#: ``SetBounds.srv``'s ``objective`` constants: the message's zero value is the default objective.
SRV_OBJECTIVES: dict[int, str] = {0: 'default', 1: 'max_accuracy', 2: 'min_latency', 3: 'min_energy'}


class LatePolicy(str, enum.Enum):
    """What the engine does with a frame that can no longer meet its app's latency bound.

    ``SERVE_FASTEST``: run it at the fastest exit when the device has nothing on time to do, and
    deliver it flagged ``bounds_met=False`` (counted ``served_late``); ``DROP``: drop it (counted
    ``dropped_late``; one in a while is still served, so that measurements never stop).
    """

    SERVE_FASTEST = 'serve_fastest'
    DROP = 'drop'

    @classmethod
    def parse(cls, value: 'LatePolicy | str') -> 'LatePolicy':
        return _parse_enum(cls, value, 'late_policy')


class Metric(str, enum.Enum):
    """What a condition constrains (units in the name, as in the result message)."""

    LATENCY_MS = 'latency_ms'
    ACCURACY = 'accuracy'
    ENERGY_MJ = 'energy_mj'
    CONFIDENCE = 'confidence'


class Op(str, enum.Enum):
    """Comparison of a measured value against a threshold; names as in Dělen's condition files."""

    LESS = 'less'
    LESS_EQ = 'less_eq'
    EQUAL = 'equal'
    GREATER = 'greater'
    GREATER_EQ = 'greater_eq'


# Functions live in a dict, not in the enum: enum members whose values are functions become methods.
_COMPARE: dict[Op, Callable[[float, float], bool]] = {
    Op.LESS: operator.lt,
    Op.LESS_EQ: operator.le,
    Op.EQUAL: operator.eq,
    Op.GREATER: operator.gt,
    Op.GREATER_EQ: operator.ge,
}


def _parse_enum(cls: type[enum.Enum], value: Any, what: str) -> Any:
    if isinstance(value, cls):
        return value
    text = str(value).strip().lower()
    for member in cls:
        if text in (member.value, member.name.lower()):
            return member
    raise ValueError(f'unknown {what} {value!r}; known: {[m.value for m in cls]}')


@dataclasses.dataclass(frozen=True)
class Condition:
    """``metric op threshold``, e.g. ``latency_ms less_eq 40``; holds for a value when the comparison does."""

    metric: Metric
    op: Op
    threshold: float

    def __post_init__(self):
        object.__setattr__(self, 'metric', _parse_enum(Metric, self.metric, 'metric'))
        object.__setattr__(self, 'op', _parse_enum(Op, self.op, 'op'))
        threshold = float(self.threshold)
        if not math.isfinite(threshold):
            raise ValueError(f'condition threshold must be finite, got {self.threshold!r}')
        object.__setattr__(self, 'threshold', threshold)

    def holds(self, value: float) -> bool:
        """Whether ``value`` (in the metric's units) satisfies the condition."""
        return _COMPARE[self.op](value, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {'metric': self.metric.value, 'op': self.op.value, 'threshold': self.threshold}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'Condition':
        """Inverse of :meth:`to_dict`; names in any case (Dělen's files use ``LESS_EQ`` style too)."""
        missing = {'metric', 'op', 'threshold'} - set(d)
        if missing:
            raise ValueError(f'condition {dict(d)!r} lacks {sorted(missing)}')
        return cls(d['metric'], d['op'], d['threshold'])

    @staticmethod
    def list_to_json(conditions: Sequence['Condition']) -> str:
        return json.dumps([c.to_dict() for c in conditions])

    @classmethod
    def list_from_json(cls, text: str) -> list['Condition']:
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f'expected a JSON list of conditions, got {type(data).__name__}')
        return [cls.from_dict(d) for d in data]


def _check_bound(name: str, value: float | None, *, upper: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{name} must be a number or None, got {value!r}')
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f'{name} must be finite, got {value!r} (use None for unbounded)')
    if value < 0:
        raise ValueError(f'{name} must be >= 0, got {value!r}')
    if upper is not None and value > upper:
        raise ValueError(f'{name} must be <= {upper}, got {value!r}')
    return value


@dataclasses.dataclass(frozen=True)
class Bounds:
    """An application's bounds on each result; ``None`` = unbounded.

    :param max_latency_ms: frame arrival at the node -> result, milliseconds.
    :param min_accuracy: expected accuracy of the result (calibrated at its exit and confidence), 0-1.
    :param max_energy_mj: energy attributed to the inference, millijoules.
    :param objective: what to optimise within the bounds.
    :raises ValueError: NaN, infinite or negative bounds, accuracy above 1, unknown objective.
    """

    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    max_energy_mj: float | None = None
    objective: Objective = Objective.DEFAULT

    def __post_init__(self):
        object.__setattr__(self, 'max_latency_ms', _check_bound('max_latency_ms', self.max_latency_ms))
        object.__setattr__(self, 'min_accuracy', _check_bound('min_accuracy', self.min_accuracy, upper=1.0))
        object.__setattr__(self, 'max_energy_mj', _check_bound('max_energy_mj', self.max_energy_mj))
        object.__setattr__(self, 'objective', Objective.parse(self.objective))

    @classmethod
    def from_request(cls, max_latency_ms: float, min_accuracy: float, max_energy_mj: float,
                     objective: Objective | str | int = Objective.DEFAULT) -> 'Bounds':
        """Bounds from ``SetBounds.srv`` fields, where 0 means unbounded (NaN / negative still raise)."""
        def none_if_zero(v: float) -> float | None:
            return None if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0 else v
        return cls(max_latency_ms=none_if_zero(max_latency_ms), min_accuracy=none_if_zero(min_accuracy),
                   max_energy_mj=none_if_zero(max_energy_mj), objective=objective)

    @property
    def effective_objective(self) -> Objective:
        """The objective in force: ``DEFAULT`` resolved (MIN_LATENCY with an accuracy bound alone,
        Dělen's "stop at the first exit that meets it"; MAX_ACCURACY otherwise)."""
        if self.objective is not Objective.DEFAULT:
            return self.objective
        if self.min_accuracy is not None and self.max_latency_ms is None and self.max_energy_mj is None:
            return Objective.MIN_LATENCY
        return Objective.MAX_ACCURACY

    @property
    def unbounded(self) -> bool:
        return self.max_latency_ms is None and self.min_accuracy is None and self.max_energy_mj is None

    def conditions(self) -> list[Condition]:
        """The bounds as Dělen-style conditions a result must satisfy (unbounded ones left out)."""
        out = []
        if self.max_latency_ms is not None:
            out.append(Condition(Metric.LATENCY_MS, Op.LESS_EQ, self.max_latency_ms))
        if self.min_accuracy is not None:
            out.append(Condition(Metric.ACCURACY, Op.GREATER_EQ, self.min_accuracy))
        if self.max_energy_mj is not None:
            out.append(Condition(Metric.ENERGY_MJ, Op.LESS_EQ, self.max_energy_mj))
        return out

    @classmethod
    def from_conditions(cls, conditions: Sequence[Condition],
                        objective: Objective | str | int = Objective.DEFAULT) -> 'Bounds':
        """Inverse of :meth:`conditions`: one ``latency_ms``/``energy_mj`` upper bound and one
        ``accuracy`` lower bound at most; anything else raises ``ValueError``."""
        expected = {Metric.LATENCY_MS: ((Op.LESS_EQ, Op.LESS), 'max_latency_ms'),
                    Metric.ACCURACY: ((Op.GREATER_EQ, Op.GREATER), 'min_accuracy'),
                    Metric.ENERGY_MJ: ((Op.LESS_EQ, Op.LESS), 'max_energy_mj')}
        values: dict[str, float] = {}
        for c in conditions:
            if c.metric not in expected or c.op not in expected[c.metric][0]:
                raise ValueError(f'condition {c.to_dict()} is not a bound; bounds are latency_ms less_eq, '
                                 'accuracy greater_eq, energy_mj less_eq')
            field = expected[c.metric][1]
            if field in values:
                raise ValueError(f'two conditions on {c.metric.value}: {values[field]} and {c.threshold}')
            values[field] = c.threshold
        return cls(objective=objective, **values)

    def met(self, *, latency_ms: float, accuracy: float, energy_mj: float) -> bool:
        """Whether a result with these figures meets every bound (:meth:`conditions`' comparisons,
        written out: this runs twice per result, and building the conditions took ~15 µs of the
        worker's GIL each time)."""
        return ((self.max_latency_ms is None or latency_ms <= self.max_latency_ms)
                and (self.min_accuracy is None or accuracy >= self.min_accuracy)
                and (self.max_energy_mj is None or energy_mj <= self.max_energy_mj))

    def to_dict(self) -> dict[str, Any]:
        return {'max_latency_ms': self.max_latency_ms, 'min_accuracy': self.min_accuracy,
                'max_energy_mj': self.max_energy_mj, 'objective': self.objective.value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'Bounds':
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f'unknown bounds fields {sorted(unknown)}; known: {sorted(known)}')
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class FeasibleRange:
    """What the device can deliver, as ``(low, high)`` per metric over the model's exits.

    ``latency_ms``: (fastest exit, slowest exit) at batch 1, end to end when the caller gave
    end-to-end exit latencies (the engine does: compute + the parts below); ``accuracy``: (least,
    most accurate exit); ``energy_mj``: (cheapest exit, most expensive exit), per frame at batch 1.
    The parts of ``latency_ms`` that are not compute (0: not included), ms: ``transport_ms``, the
    age of frames when they reach the engine (from the image stamp: transport to the node and its
    conversion); ``overhead_ms``, the serving overhead (the worker's wake-up, decision ->
    publication); ``delivery_ms``, the delivery allowance (publication -> the subscriber).
    """

    latency_ms: tuple[float, float]
    accuracy: tuple[float, float]
    energy_mj: tuple[float, float]
    overhead_ms: float = 0.0
    transport_ms: float = 0.0
    delivery_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {'latency_ms': list(self.latency_ms), 'accuracy': list(self.accuracy),
                'energy_mj': list(self.energy_mj), 'overhead_ms': self.overhead_ms,
                'transport_ms': self.transport_ms, 'delivery_ms': self.delivery_ms}

    def parts(self) -> str:
        """The non-compute parts of ``latency_ms`` in words ('' when none), e.g. ``'2.1 ms frame age on
        arrival, 1.3 ms serving overhead, 1 ms delivery allowance'``."""
        return latency_parts(transport_ms=self.transport_ms, overhead_ms=self.overhead_ms,
                             delivery_ms=self.delivery_ms)

    def __str__(self) -> str:
        (l0, l1), (a0, a1), (e0, e1) = self.latency_ms, self.accuracy, self.energy_mj
        parts = self.parts()
        end = f' end to end, of it {parts}' if parts else ''
        return (f'latency {l0:.3g}-{l1:.3g} ms{end}, accuracy {a0:.3g}-{a1:.3g}, '
                f'energy {e0:.3g}-{e1:.3g} mJ')


def latency_parts(*, transport_ms: float = 0.0, overhead_ms: float = 0.0, delivery_ms: float = 0.0) -> str:
    """The non-compute parts of an end-to-end latency in words, the zero ones left out ('' if all are).

    >>> latency_parts(transport_ms=2.1, overhead_ms=1.3, delivery_ms=1.0)
    '2.1 ms frame age on arrival, 1.3 ms serving overhead, 1 ms delivery allowance'
    """
    named = ((transport_ms, 'frame age on arrival'), (overhead_ms, 'serving overhead'),
             (delivery_ms, 'delivery allowance'))
    return ', '.join(f'{ms:.3g} ms {name}' for ms, name in named if ms)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The exit a typical frame stops at under some bounds, with its predicted figures at batch 1."""

    exit_index: int
    latency_ms: float
    accuracy: float
    energy_mj: float


class InfeasibleBounds(ValueError):
    """No exit meets the bounds on this device; ``feasible`` says what would be accepted."""

    def __init__(self, message: str, feasible: FeasibleRange):
        super().__init__(f'{message} (feasible on this device: {feasible})')
        self.feasible = feasible


def _exit_figures(profile: 'Profile', exit_latency_ms: Sequence[float] | None = None
                  ) -> list[tuple[float, float, float]]:
    """(latency_ms, accuracy, energy_mj) of every exit at batch 1: p50 compute latency, or
    ``exit_latency_ms`` (per exit, e.g. end to end) when given."""
    if exit_latency_ms is not None and len(exit_latency_ms) != profile.num_exits:
        raise ValueError(f'exit_latency_ms needs {profile.num_exits} values, got {len(exit_latency_ms)}')
    return [(profile.exit_latency_ms(k) if exit_latency_ms is None else float(exit_latency_ms[k]),
             profile.accuracy(k), profile.exit_energy_mj(k)) for k in range(profile.num_exits)]


def feasible_range(profile: 'Profile', *, exit_latency_ms: Sequence[float] | None = None,
                   overhead_ms: float = 0.0, transport_ms: float = 0.0, delivery_ms: float = 0.0) -> FeasibleRange:
    """The range of each metric over ``profile``'s exits (see :class:`FeasibleRange`).

    :param exit_latency_ms: latency of each exit to use instead of the profile's p50 compute time
        (the engine passes end-to-end figures: image stamp -> the subscriber).
    :param overhead_ms: how much of ``exit_latency_ms`` is serving overhead (reported only).
    :param transport_ms: how much is the frames' age on arrival (reported only).
    :param delivery_ms: how much is the delivery allowance (reported only).
    """
    lat, acc, energy = zip(*_exit_figures(profile, exit_latency_ms))
    return FeasibleRange((min(lat), max(lat)), (min(acc), max(acc)), (min(energy), max(energy)),
                         overhead_ms=float(overhead_ms), transport_ms=float(transport_ms),
                         delivery_ms=float(delivery_ms))


def _le(value: float, bound: float | None) -> bool:
    return bound is None or value <= bound * (1 + _REL_TOL) + 1e-12


def _ge(value: float, bound: float | None) -> bool:
    return bound is None or value >= bound * (1 - _REL_TOL) - 1e-12


def plan(bounds: Bounds, profile: 'Profile', *, exit_latency_ms: Sequence[float] | None = None,
         overhead_ms: float = 0.0, transport_ms: float = 0.0, delivery_ms: float = 0.0) -> Plan:
    """The static plan: of the exits that meet every bound at batch 1, the best for the objective.

    Latency is the profile's p50 cumulative time to the exit (or ``exit_latency_ms``, e.g. end to
    end), accuracy the exit's overall accuracy, energy the cumulative per-frame energy. The
    objective is :attr:`Bounds.effective_objective`: MAX_ACCURACY picks the most accurate exit (then
    the fastest); MIN_LATENCY the fastest (then the most accurate); MIN_ENERGY the cheapest (then
    the most accurate). With an accuracy bound and a stopping objective, the plan is the
    calibrated cascade's (typical exit, expectations over where inputs stop).

    :raises InfeasibleBounds: no exit meets them; the message says which bound fails and why.
    """
    figures = _exit_figures(profile, exit_latency_ms)
    feasible = feasible_range(profile, exit_latency_ms=exit_latency_ms, overhead_ms=overhead_ms,
                              transport_ms=transport_ms, delivery_ms=delivery_ms)
    ok = [k for k, (lat, acc, energy) in enumerate(figures)
          if _le(lat, bounds.max_latency_ms) and _ge(acc, bounds.min_accuracy) and _le(energy, bounds.max_energy_mj)]
    if not ok:
        raise InfeasibleBounds(_why_infeasible(bounds, feasible), feasible)
    keys = {
        Objective.MAX_ACCURACY: lambda k: (-figures[k][1], figures[k][0], k),
        Objective.MIN_LATENCY: lambda k: (figures[k][0], -figures[k][1], k),
        Objective.MIN_ENERGY: lambda k: (figures[k][2], -figures[k][1], k),
    }
    objective = bounds.effective_objective
    best = min(ok, key=keys[objective])
    lat, acc, energy = figures[best]
    cascade = profile.cascade(bounds.min_accuracy) \
        if bounds.min_accuracy is not None and objective is not Objective.MAX_ACCURACY else None
    if cascade is not None and profile.final_exit in ok:
        # Per-input early exit: the typical exit, and expectations over where inputs stop.
        f = cascade.fractions
        return Plan(exit_index=cascade.typical_exit,
                    latency_ms=sum(f[k] * figures[k][0] for k in range(len(f))),
                    accuracy=cascade.accuracy,
                    energy_mj=sum(f[k] * figures[k][2] for k in range(len(f))))
    return Plan(exit_index=best, latency_ms=lat, accuracy=acc, energy_mj=energy)


def _why_infeasible(bounds: Bounds, feasible: FeasibleRange) -> str:
    reasons = []
    if not _le(feasible.latency_ms[0], bounds.max_latency_ms):
        parts = feasible.parts()
        what = (f'end to end ({feasible.latency_ms[0]:.3g} ms, of it {parts})' if parts
                else f'({feasible.latency_ms[0]:.3g} ms)')
        reasons.append(f'max_latency_ms={bounds.max_latency_ms:g} is below the fastest exit {what}')
    if not _ge(feasible.accuracy[1], bounds.min_accuracy):
        reasons.append(f'min_accuracy={bounds.min_accuracy:g} is above the best exit ({feasible.accuracy[1]:.3g})')
    if not _le(feasible.energy_mj[0], bounds.max_energy_mj):
        reasons.append(f'max_energy_mj={bounds.max_energy_mj:g} is below the cheapest exit '
                       f'({feasible.energy_mj[0]:.3g} mJ)')
    if not reasons:
        given = ', '.join(f'{k}={v:g}' for k, v in bounds.to_dict().items() if isinstance(v, float))
        reasons.append(f'no single exit meets {given} together')
    return 'infeasible bounds: ' + '; '.join(reasons)
