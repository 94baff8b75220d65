"""Admission control: is a set of apps schedulable on the one accelerator at their frame rates?

Each app is a sporadic task (:class:`Task`): frames at ``rate_hz``, each needing the steps up to
``exit_index`` by an end-to-end deadline ``deadline_ms`` (its latency bound; ``None``: no bound, a
soft task with the engine's default horizon). ``exit_index`` is the exit all but a few of its frames
need (:meth:`~delen_ros.core.policies.Policy.needed_exit`): the cheapest its bounds accept, or for an
accuracy cascade the one past which almost no frame goes; with ``exit_shares`` (a cascade's frames
stop at many exits) the device time a frame takes on average counts towards utilisation and demand,
while every deadline must still hold a frame that goes to ``exit_index``.

Apps on one ``source`` (camera) share each frame's preprocessing and steps, so a source is one task:
the highest rate of its apps, the deepest of their exits, the tightest of their deadlines
(conservative). Work is batched across sources: a step's per-frame cost is taken at the batch size
the load implies (the frames that arrive within the tightest deadline window, at most ``max_batch``
and at most one per source).

The test (:func:`check`) is EDF's processor-demand test on one processor, with non-preemptive runs
(George, Rivierre and Spuri, 1996): a frame due at ``t`` may find the device busy with one run of an
app due later than ``t`` or of a demoted app (``blocking(t)``: ``blocking_ms``, the longest step at
that batch size, a first step with its preprocessing, or where the engine fuses steps the longest
run of them: up to the exit, or to an exit where the app's policy must look at a confidence,
``Task.stops``), and what is not device time shortens every
deadline (:attr:`CostModel.outside_ms`): the frames' age when they reach the engine (transport from
the camera's stamp, conversion), the serving overhead (wake-up, publication) and the delivery
allowance (publication -> subscriber). It passes when utilisation <= ``utilisation_limit`` and, for every
checkpoint ``t`` (each deadline ``D_i + m T_i`` up to the busy-period bound), the demand
``sum_i max(0, floor((t - D_i) / T_i) + 1) C_i + blocking(t) <= t``.

:func:`misfits` says, when admitted apps no longer fit together (their rates or the device changed),
which to serve after the others: the fewest, latest admitted first, so that an app keeps the
guarantee it was given at admission. :func:`confirm` judges again, at measured costs, apps admitted on
priors (before anything was measured), as if each asked now. :func:`suggest` says what would fit for an app the test
rejects: the highest frame rate at its bound, and the tightest latency bound at its rate.
Everything is pure (no engine, no clock).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Callable, Sequence

from .bounds import FeasibleRange, InfeasibleBounds, latency_parts

if TYPE_CHECKING:
    from .profile import Profile

__all__ = ['DEFAULT_RATE_HZ', 'Task', 'Verdict', 'Unschedulable', 'CostModel', 'asks_more', 'check', 'confirm',
           'infeasible_alone', 'misfits', 'suggest']

#: frame rate assumed for a new app whose camera has sent nothing yet and that gave no hint, Hz
DEFAULT_RATE_HZ = 30.0
_MAX_CHECKPOINTS = 20_000
#: relative precision of :func:`suggest`'s answers
SUGGEST_PRECISION = 1e-3


@dataclasses.dataclass(frozen=True)
class Task:
    """One app as admission sees it.

    :param rate_hz: its frames per second (measured, or a prior).
    :param deadline_ms: end-to-end latency bound, ms; ``None``: unbounded (soft).
    :param exit_index: the exit its frames need at least.
    :param source: camera name; apps on one source share every frame's work (``None``: its own).
    :param stops: exits before ``exit_index`` where a fused run of its frames ends, for the policy
        to look at their confidences (an accuracy bound's cascade); ``()``: it may run them all
        back to back.
    :param exit_shares: the share of its frames that stop at each exit, from exit 0 (an accuracy
        bound's cascade); ``()``: every frame at ``exit_index``.
    """

    app_id: str
    rate_hz: float
    deadline_ms: float | None
    exit_index: int
    source: str | None = None
    stops: tuple[int, ...] = ()
    exit_shares: tuple[float, ...] = ()

    def reached(self, num_exits: int) -> tuple[float, ...]:
        """The share of its frames that run step ``k``, for each ``k``: those that stop at ``k`` or
        later, none past ``exit_index``."""
        return _reached(self.exit_shares, self.exit_index, num_exits)


@functools.lru_cache(maxsize=256)   # a re-check asks it of every app in every one of its tests
def _reached(exit_shares: tuple[float, ...], exit_index: int, num_exits: int) -> tuple[float, ...]:
    if not exit_shares:
        return tuple(1.0 if k <= exit_index else 0.0 for k in range(num_exits))
    total = sum(exit_shares)
    stopped, out = 0.0, []
    for k in range(num_exits):
        out.append(0.0 if k > exit_index else max(0.0, 1.0 - stopped / total))
        stopped += exit_shares[k] if k < len(exit_shares) else 0.0
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check`: ``ok``; ``at_risk``: app -> why its bound may be missed;
    ``utilisation`` of the device (0-1 and above); ``batch``: the batch size costs were taken at."""

    ok: bool
    at_risk: dict[str, str]
    utilisation: float
    batch: int
    message: str


class Unschedulable(InfeasibleBounds):
    """The bounds are feasible alone, but not beside the apps already admitted at their rates.

    ``max_rate_hz``: the highest rate that would fit at the requested bound (0: none);
    ``min_latency_ms``: the tightest latency bound that would fit at the app's rate (``None``: none).
    """

    def __init__(self, message: str, feasible: FeasibleRange, *, max_rate_hz: float = 0.0,
                 min_latency_ms: float | None = None):
        super().__init__(message, feasible)
        self.max_rate_hz = max_rate_hz
        self.min_latency_ms = min_latency_ms


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Device costs for :func:`check`.

    :param step_ms: ``(step, batch) -> ms`` of one step for a whole batch (the engine passes the
        profile corrected by its measurements).
    :param num_exits: the model's exits.
    :param preprocess_ms: per frame, ms (counted as device-path work: it runs in the worker).
    :param overhead_ms: serving overhead outside the worker's steps, ms (subtracted from deadlines).
    :param transport_ms: age of a frame when it reaches the engine (stamp -> submission), ms
        (subtracted from deadlines).
    :param delivery_ms: delivery allowance, publication -> subscriber, ms (subtracted from deadlines).
    :param max_batch: most frames per step.
    :param default_deadline_ms: horizon of unbounded apps.
    :param utilisation_limit: the most of the device admission hands out (headroom for jitter).
    :param fused_runs: the engine may run a frame's steps back to back (``Engine(fuse_steps=True)``):
        a frame arriving meanwhile waits for the whole run, not one step (see :meth:`blocking_ms`).
    :param headroom: the share of every latency bound kept free (0-1): deadlines are taken as
        ``bound - kept_ms(bound) - outside_ms``. The engine admits a request with some and re-checks
        admitted apps with none, so the tails may grow that much before an admitted app is at risk.
    :param headroom_min_ms: the least kept free of any bound when ``headroom`` is kept, ms: the tails
        grow by absolute amounts, not in proportion to the bound (H200, 16 cameras: frame age and
        serving overhead grew 1.1 ms from a 5 ms app's admission to full load; kept 10 %, 0.5 ms, it met
        its bound for 84 % of its frames).
    :param turn_ms: a worker turn's own cost besides its steps (scheduling, planning, decisions), ms,
        paid once per run (:meth:`runs`); 0 where ``step_ms`` has it folded in (the engine's default).
        Folded into the steps, a frame that runs a step at a time is priced below its cost and a fused
        run above it.
    """

    step_ms: Callable[[int, int], float]
    num_exits: int
    preprocess_ms: float = 0.0
    overhead_ms: float = 0.0
    transport_ms: float = 0.0
    delivery_ms: float = 0.0
    max_batch: int = 8
    default_deadline_ms: float = 250.0
    utilisation_limit: float = 0.9
    fused_runs: bool = False
    headroom: float = 0.0
    headroom_min_ms: float = 0.0
    turn_ms: float = 0.0
    # every price (and a source's group) taken once: the node's re-check asks the same ones in each of
    # its ~2n tests (H200, 16 apps, 6 demoted: 15-24 ms on the engine's worker, which frames waited for).
    # So a cost model is a snapshot, made for one decision: the engine makes a new one each time.
    _memo: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_profile(cls, profile: 'Profile', **kwargs) -> 'CostModel':
        return cls(step_ms=lambda k, b: profile.step_ms(k, b), num_exits=profile.num_exits, **kwargs)

    @property
    def outside_ms(self) -> float:
        """What an end-to-end deadline loses before the device can use it, ms: age on arrival +
        serving overhead + delivery allowance."""
        return self.transport_ms + self.overhead_ms + self.delivery_ms

    def kept_ms(self, bound_ms: float) -> float:
        """What admission keeps free of a latency bound, ms: ``headroom`` of it, at least
        ``headroom_min_ms``; nothing without ``headroom`` (the re-check)."""
        return max(bound_ms * self.headroom, self.headroom_min_ms) if self.headroom > 0 else 0.0

    def headroom_text(self) -> str:
        """``'max(10% of the bound, 1 ms)'``, or ``''`` without headroom."""
        if self.headroom <= 0:
            return ''
        share = f'{self.headroom:.0%} of the bound'
        return f'max({share}, {self.headroom_min_ms:.3g} ms)' if self.headroom_min_ms > 0 else share

    def outside_text(self) -> str:
        """``outside_ms`` in its parts, e.g. ``'2.1 ms frame age on arrival, 1.3 ms serving overhead,
        1 ms delivery allowance'`` (the serving overhead always named), and the headroom if any."""
        parts = latency_parts(transport_ms=self.transport_ms, overhead_ms=self.overhead_ms,
                              delivery_ms=self.delivery_ms) or '0 ms serving overhead'
        return parts + (f', {self.headroom_text()} kept as admission headroom' if self.headroom else '')

    def runs(self, exit_index: int, stops: Sequence[int] = ()) -> int:
        """Worker turns a frame takes to ``exit_index``: one a step, or with ``fused_runs`` one a stretch
        between the ``stops`` before the exit."""
        if not self.fused_runs:
            return exit_index + 1
        return 1 + len({k for k in stops if k < exit_index})

    def _priced(self, key: tuple, price: Callable[[], float]) -> float:
        ms = self._memo.get(key)
        if ms is None:
            ms = self._memo[key] = price()
        return ms

    def _step_ms(self, k: int, batch: int) -> float:
        return self._priced(('step', k, batch), lambda: self.step_ms(k, batch))

    def frame_ms(self, exit_index: int, batch: int, stops: Sequence[int] = ()) -> float:
        """Device time of one frame up to ``exit_index`` when steps run in batches of ``batch``, with its
        share of each turn's own cost (:attr:`turn_ms`)."""
        return self._priced(('frame', exit_index, batch, frozenset(stops)), lambda: (
            self.preprocess_ms + sum(self._step_ms(k, batch) / batch for k in range(exit_index + 1))
            + self.runs(exit_index, stops) * self.turn_ms / batch))

    def mean_frame_ms(self, reached: Sequence[float], batch: int, stops: Sequence[int] = ()) -> float:
        """Device time a frame takes on average when the share ``reached[k]`` of frames runs step
        ``k`` (:meth:`Task.reached`): :meth:`frame_ms` weighted by where they stop."""
        def price() -> float:
            shares = list(reached) + [0.0]
            return sum((shares[j] - shares[j + 1]) * self.frame_ms(j, batch, stops)
                       for j in range(len(shares) - 1) if shares[j] > shares[j + 1])
        return self._priced(('mean', tuple(reached), batch, frozenset(stops)), price)

    def blocking_ms(self, exit_index: int, batch: int, stops: Sequence[int] = ()) -> float:
        """The longest run (a whole batch) a new frame may have to wait for: one step, a first step
        with its frames' preprocessing, which the worker runs inside it; with ``fused_runs`` (the
        engine runs steps decided without confidences back to back), the longest stretch of steps
        up to the exit between the ``stops`` (exits where the run ends for a confidence); and that
        run's turn (:attr:`turn_ms`)."""
        return self._priced(('block', exit_index, batch, frozenset(stops)),
                            lambda: self._blocking_ms(exit_index, batch, stops))

    def _blocking_ms(self, exit_index: int, batch: int, stops: Sequence[int]) -> float:
        steps = [self._step_ms(k, batch) + (self.preprocess_ms * batch if k == 0 else 0.0)
                 for k in range(exit_index + 1)]
        if not self.fused_runs:
            return max(steps) + self.turn_ms
        longest = run = 0.0
        for k, ms in enumerate(steps):
            run += ms
            longest = max(longest, run)
            if k in stops:
                run = 0.0
        return longest + self.turn_ms


@dataclasses.dataclass(frozen=True)
class _Group:
    apps: tuple[str, ...]
    period_ms: float
    deadline_ms: float        # shortened by cost.outside_ms; the soft horizon for unbounded apps
    hard: bool
    exit_index: int
    stops: frozenset[int] = frozenset()
    reached: tuple[float, ...] = ()   # the share of its frames that run each step; (): all, to exit_index


def _groups(tasks: Sequence[Task], cost: CostModel) -> list[_Group]:
    by_source: dict[str, list[Task]] = {}
    for t in tasks:
        by_source.setdefault(t.source if t.source is not None else f'\0{t.app_id}', []).append(t)
    out = []
    for members in by_source.values():
        key = ('group', tuple(members))
        if key not in cost._memo:
            cost._memo[key] = _group(members, cost)
        if cost._memo[key] is not None:
            out.append(cost._memo[key])
    return out


def _group(members: Sequence[Task], cost: CostModel) -> _Group | None:
    """The apps on one source as one stream of frames; ``None``: no frames."""
    rate = max(t.rate_hz for t in members)
    if rate <= 0:
        return None
    hard = [t.deadline_ms for t in members if t.deadline_ms is not None]
    deadline = min(hard) - cost.kept_ms(min(hard)) - cost.outside_ms if hard else cost.default_deadline_ms
    # a frame's run ends only where every app on it must look (the others go on without it)
    stops = frozenset.intersection(*(frozenset(t.stops) for t in members))
    # a frame goes on while any of its apps does; an input hard for one app is hard for the others
    # too, so the shares that go on are taken as the largest of its apps' (not as independent)
    reached = tuple(max(shares) for shares in zip(*(t.reached(cost.num_exits) for t in members))) \
        if any(t.exit_shares for t in members) else ()
    return _Group(apps=tuple(t.app_id for t in members), period_ms=1000.0 / rate, deadline_ms=deadline,
                  hard=bool(hard), exit_index=max(t.exit_index for t in members), stops=stops, reached=reached)


def _batch(groups: Sequence[_Group], cost: CostModel) -> int:
    """Frames that arrive within the tightest deadline window, one per source, at most max_batch."""
    if not groups:
        return 1
    window_ms = max(1e-9, min(g.deadline_ms for g in groups))
    arriving = sum(window_ms / g.period_ms for g in groups)
    return max(1, min(cost.max_batch, len(groups), int(arriving)))


def check(tasks: Sequence[Task], cost: CostModel, *, blocking: Sequence[Task] = ()) -> Verdict:
    """Whether ``tasks`` are schedulable together (see the module docstring), and who is at risk.

    :param blocking: other tasks, served after ``tasks`` (demoted): they take no deadline and no
        share of the device here, but one of their steps may be running when a frame arrives (steps
        are not preempted), so their longest step counts as blocking.
    """
    groups = _groups(tasks, cost)
    if not groups:
        return Verdict(True, {}, 0.0, 1, 'nothing to schedule')
    b = _batch(groups, cost)
    # the device's share and the demand at each frame's average cost; each deadline at the deepest
    deepest = [cost.frame_ms(g.exit_index, b, g.stops) for g in groups]
    c = [cost.mean_frame_ms(g.reached, b, g.stops) if g.reached else d for g, d in zip(groups, deepest)]
    # Non-preemptive EDF: a frame due at t waits at most for one run that started before it came, of
    # an app due later than t (one due sooner is the frame's own demand), or of a demoted app
    runs = [(g.deadline_ms, cost.blocking_ms(g.exit_index, b, g.stops)) for g in groups]
    demoted = [cost.blocking_ms(g.exit_index, b, g.stops) for g in _groups(blocking, cost)]

    def block_at(t: float) -> float:
        return max([run for due, run in runs if due > t] + demoted, default=0.0)

    u = sum(ci / g.period_ms for ci, g in zip(c, groups))
    at_risk: dict[str, str] = {}

    def risk(gs: Sequence[_Group], why: str) -> None:
        for g in gs:
            for app in g.apps:
                at_risk.setdefault(app, why)

    for g, ci in zip(groups, deepest):   # each alone: its deadline must hold the frame's work and one blocking run
        block_ms = block_at(g.deadline_ms)
        if g.hard and ci + block_ms > g.deadline_ms:
            risk([g], f'its end-to-end deadline leaves {g.deadline_ms:.3g} ms of device time (after '
                      f'{cost.outside_text()}), a frame to exit {g.exit_index} needs {ci:.3g} ms after waiting up to '
                      f'{block_ms:.3g} ms for a running step')
    if u > cost.utilisation_limit:
        risk(groups,
             f'the device would be {u:.0%} busy (limit {cost.utilisation_limit:.0%}) at the measured frame rates')
    elif not at_risk:
        failing = _first_overload(groups, c, block_at, u)
        if failing is not None:
            t, demand = failing
            risk([g for g in groups if g.hard and g.deadline_ms <= t],
                 f'frames due within {t:.3g} ms need {demand:.3g} ms of device time (EDF demand test)')
    ok = not at_risk
    message = (f'schedulable: device {u:.0%} busy at batch {b}' if ok else
               'unschedulable: ' + '; '.join(f'{a}: {why}' for a, why in sorted(at_risk.items())))
    return Verdict(ok, at_risk, u, b, message)


def asks_more(new: Task, old: Task) -> bool:
    """Whether ``new`` asks more of the device than ``old`` (a tighter or new deadline, a deeper
    exit, a higher rate, another source): admitting it is a new guarantee, not the old one kept.

    >>> asks_more(Task('a', 30.0, 10.0, 0), Task('a', 30.0, 33.0, 0))
    True
    >>> asks_more(Task('a', 30.0, 50.0, 0), Task('a', 30.0, 33.0, 1))
    False
    """
    deadline_tighter = new.deadline_ms is not None and (old.deadline_ms is None or new.deadline_ms < old.deadline_ms)
    return (deadline_tighter or new.exit_index > old.exit_index or new.rate_hz > old.rate_hz
            or new.source != old.source)


def infeasible_alone(tasks: Sequence[Task], cost: CostModel, *, pause: Callable[[], None] | None = None
                     ) -> dict[str, str]:
    """The tasks that miss their bounds even alone on the device: app -> why (``pause``: as :func:`misfits`)."""
    out: dict[str, str] = {}
    for task in tasks:
        if pause is not None:
            pause()
        alone = check([task], cost)
        if not alone.ok:
            out[task.app_id] = alone.at_risk.get(task.app_id, alone.message)
    return out


def misfits(tasks: Sequence[Task], cost: CostModel, *, alone: CostModel | None = None,
            pause: Callable[[], None] | None = None) -> dict[str, str]:
    """The apps to serve after the others when ``tasks`` (in order of admission, oldest first) are
    not schedulable together: each task in turn is kept if the kept ones stay schedulable with it
    (:func:`check`), so apps admitted earlier keep the guarantee they were given and only those that
    do not fit beside the apps admitted before them are named; a task infeasible alone (at ``alone``'s
    costs, default ``cost``) is always named. Returns app -> why (empty: every task fits). At most
    ``2 n`` checks of at most ``n`` tasks, with ``pause()`` before each (the node's re-check passes a
    GIL yield: at 32 apps the checks take ~13 ms of pure Python on a 2-core VM).

    >>> cost = CostModel(step_ms=lambda k, b: 1.0, num_exits=1)
    >>> sorted(misfits([Task('old', 10.0, 1.5, 0), Task('new', 10.0, 1.5, 0)], cost))
    ['new']
    """
    out = infeasible_alone(tasks, alone or cost, pause=pause)
    kept: list[Task] = []
    for task in tasks:
        if task.app_id in out:
            continue
        if not kept:
            kept.append(task)
            continue
        if pause is not None:
            pause()
        verdict = check([*kept, task], cost)
        if verdict.ok:
            kept.append(task)
            continue
        out[task.app_id] = (f'it does not fit beside the {len(kept)} app(s) admitted before it: '
                            f'{_why(verdict, task.app_id)}')
    return out


def confirm(kept: Sequence[Task], pending: Sequence[Task], cost: CostModel, *,
            pause: Callable[[], None] | None = None) -> tuple[list[str], dict[str, str]]:
    """Admit ``pending`` (apps admitted on priors, in order of admission) again at ``cost`` (measured
    now, with the admission headroom), each beside ``kept`` and the pending apps confirmed before it,
    as if each asked now. Returns (the apps confirmed, app -> why for the others). ``pause``: as
    :func:`misfits`.

    >>> cost = CostModel(step_ms=lambda k, b: 1.0, num_exits=1)
    >>> confirm([Task('old', 10.0, 5.0, 0)], [Task('a', 10.0, 5.0, 0), Task('b', 10.0, 1.5, 0)], cost)[0]
    ['a']
    """
    kept = list(kept)
    confirmed: list[str] = []
    out: dict[str, str] = {}
    for task in pending:
        if pause is not None:
            pause()
        verdict = check([*kept, task], cost)
        if verdict.ok:
            kept.append(task)
            confirmed.append(task.app_id)
            continue
        out[task.app_id] = (f'admitted on priors, before anything was measured; at the costs measured since '
                            f'({cost.headroom_text() or "no"} headroom) it does not fit beside the {len(kept)} '
                            f'app(s) confirmed before it: {_why(verdict, task.app_id)}')
    return confirmed, out


def _why(verdict: Verdict, app_id: str) -> str:
    """Why ``app_id`` does not fit in ``verdict``: its own risk, else who it would make miss."""
    own = verdict.at_risk.get(app_id)
    if own is None:
        who = sorted(verdict.at_risk)
        own = f'{", ".join(who)} would miss ({verdict.at_risk[who[0]]})'
    return own


def _first_overload(groups: Sequence[_Group], c: Sequence[float], block_at: Callable[[float], float], u: float
                    ) -> tuple[float, float] | None:
    """The first checkpoint ``t`` whose demand (+ ``block_at(t)``, the longest run that may hold it
    up) exceeds it, with that demand; ``None``: none."""
    d_max = max(g.deadline_ms for g in groups)
    if u < 1.0:
        busy = sum((g.period_ms - g.deadline_ms) * ci / g.period_ms for g, ci in zip(groups, c)) / (1.0 - u)
        horizon = max(d_max, busy + block_at(0.0) / (1.0 - u))
    else:
        horizon = d_max
    points = sorted({g.deadline_ms + m * g.period_ms for g in groups
                     for m in range(min(_MAX_CHECKPOINTS, int(max(0.0, horizon - g.deadline_ms) / g.period_ms) + 1))
                     if g.deadline_ms > 0})
    for t in points[:_MAX_CHECKPOINTS]:
        demand = sum(max(0, math.floor((t - g.deadline_ms) / g.period_ms + 1e-9) + 1) * ci
                     for g, ci in zip(groups, c))
        blocking = block_at(t)
        if demand + blocking > t * (1 + 1e-9):
            return t, demand + blocking
    return None


def suggest(others: Sequence[Task], new: Task, cost: CostModel, *, pause: Callable[[], None] | None = None,
            blocking: Sequence[Task] = ()) -> tuple[float, float | None]:
    """What would fit for ``new`` beside ``others``: ``(highest rate at its bound, Hz (0: none),
    tightest latency bound at its rate, ms (None: none up to 100 x the bound or 10 s))``, each found by
    bisection to ``SUGGEST_PRECISION`` (the messages print three digits), on the fitting side.

    :param pause: called between two tests. A refusal runs up to ~35 tests, pure Python; the node
        passes a GIL yield, for its image threads must not wait behind them (H200, 16 cameras: a
        refusal that held the GIL ~20 ms aged every camera's frames 12-45 ms on arrival, and that
        tail refused the next requests as infeasible).
    :param blocking: as :func:`check`'s.
    """
    def fits(task: Task) -> bool:
        if pause is not None:
            pause()
        return check(list(others) + [task], cost, blocking=blocking).ok

    def close(lo: float, hi: float) -> bool:
        return hi - lo <= SUGGEST_PRECISION * hi

    lo, hi = 0.0, new.rate_hz
    if not fits(dataclasses.replace(new, rate_hz=1e-3)):
        max_rate = 0.0
    else:
        lo = 1e-3
        while not close(lo, hi):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if fits(dataclasses.replace(new, rate_hz=mid)) else (lo, mid)
        max_rate = lo
    min_latency = None
    if new.deadline_ms is not None:
        top = max(10_000.0, 100.0 * new.deadline_ms)
        if fits(dataclasses.replace(new, deadline_ms=top)):
            lo, hi = new.deadline_ms, top
            while not close(lo, hi):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if fits(dataclasses.replace(new, deadline_ms=mid)) else (mid, hi)
            min_latency = hi
    return max_rate, min_latency
