"""How deep a batch goes before the host looks at it again, the part of :class:`~delen_ros.core.engine.Engine`
that plans runs of steps (``Engine`` inherits it).

A worker turn runs one step, or several back to back where the policy would go on whatever the
confidence (:meth:`DepthMixin._fuse_to`: a fused run). Steps are not preempted, so a run ends before the
most urgent waiting frame must start. Between turns, a frame whose bounds are already met takes no
further step by choice while on-time work waits (:meth:`DepthMixin._choice_would_delay`,
``Engine.choice_yields``).

The state read here (profile, policy, corrector, scheduler, the frames about to come) is the engine's;
this module keeps none of its own.
"""
from __future__ import annotations

import math
from typing import Sequence

from .bounds import Bounds, Objective
from .policies import Decision, ExitContext
from .scheduler import Request

__all__ = ['CHOICE_YIELDS', 'DepthMixin']

_NS_PER_MS = 1_000_000
#: when a frame whose bounds are met takes no step by choice (Engine.choice_yields), the default first
CHOICE_YIELDS = ('waiting', 'pressed', 'demand', 'never')


def _ahead_deciders(requests: Sequence[Request], enforce: bool, *,
                    grouped: bool) -> list[tuple[Bounds, float, int, float, float]]:
    """Whom :meth:`DepthMixin._fuse_to` asks at each exit ahead: ``(bounds, choice margin ms, arrival ns,
    energy so far mJ, hard deadline ns or inf)``. ``grouped`` (a policy whose ahead decisions are
    monotone, :attr:`~delen_ros.core.policies.Policy.monotone_ahead`): one per app, its most pressed
    member (the oldest arrival, the most energy, the earliest hard deadline): if that one goes on,
    every member does. Else one per request. A batch of 28 frames from as many apps asked each of 6
    exits in turn was ~15 % of the saturated worker's Python time on an H200 (py-spy, session 35)."""
    if not grouped:
        return [(r.state.bounds, r.state.choice_margin_ms, r.arrival_ns, r.state.energy_est_mj,
                 r.deadline_ns if enforce and r.hard else math.inf) for r in requests]
    worst: dict[tuple[Bounds, float], list] = {}
    for r in requests:
        s = r.state
        deadline_ns = r.deadline_ns if enforce and r.hard else math.inf
        key = (s.bounds, s.choice_margin_ms)
        found = worst.get(key)
        if found is None:
            worst[key] = [r.arrival_ns, s.energy_est_mj, deadline_ns]
        else:
            found[0] = min(found[0], r.arrival_ns)
            found[1] = max(found[1], s.energy_est_mj)
            found[2] = min(found[2], deadline_ns)
    return [(bounds, choice_ms, *values) for (bounds, choice_ms), values in worst.items()]


class DepthMixin:
    """Planning runs of steps, for :class:`~delen_ros.core.engine.Engine` (see the module docstring)."""

    def _fuse_to(self, step: int, requests: Sequence[Request], n: int, now_ns: int, *, enforce: bool) -> int:
        """The last step to run before the host looks at the results: ``step``, or further while the
        policy would go on with every request of the batch whatever its confidence.

        It walks the exits ahead on predictions -- this step's as the scheduler made it, then the
        corrector's for each next step at this batch size, the same ``next_ms`` the policy reads --
        and on the profile's energy shares (what the accounting will add), up to the first exit
        where some request would stop, needs its confidence (:meth:`Policy.decide_ahead` gives
        ``None``), would be expired by the scheduler before its next step, or where the next step
        would end after the most urgent waiting frame must start. Whoever would go
        further is decided again there, on the measured time, as always. With enforcement a late
        request does not steer the run: alone (idle time) it stops at this step, the fastest exit;
        riding in a batch of on-time work it stops where the run ends, at no later time.

        :param n: the batch's unique frames (the device's batch size).
        """
        final = self.profile.final_exit
        size = len(requests)
        if enforce:
            requests = [r for r in requests if not r.late]
        if not self.fuse_steps or step >= final or not requests:
            return step
        tail_ms, expiry_tail_ms = self.corrector.tail_ms(), self._scheduler.tail_ms()
        # Steps are not preempted: a run must end before waiting work has to start ('earlier': only
        # work due before the run's own members, which EDF would put first).
        members_due = min((r.deadline_ns for r in requests if r.hard and not r.late), default=math.inf)
        due_ns = math.inf if self.split_runs_for == 'any' else members_due
        with self._cond:   # a frame about to come, due before the run's members, must start too
            latest_ns = min(self._scheduler.latest_start_ns(due_before_ns=due_ns),
                            self._expected_start_ns(now_ns, due_before_ns=members_due))
        ahead_ms = self._predict_ms(step, size)   # from now to the decision at exit `step`
        deciders = _ahead_deciders(requests, enforce, grouped=self.policy.monotone_ahead)
        added_mj = 0.0
        allowance_ms = self.policy_allowance_ms
        for k in range(step, final):
            added_mj += self.profile.step_energy_mj(k, n) * n / size
            next_ms = self.corrector.predict_ms(self.profile, k + 1, size)
            at_ns = now_ns + int(ahead_ms * _NS_PER_MS)
            if at_ns + next_ms * _NS_PER_MS > latest_ns:
                return k
            # the scheduler's expiry test, as it would run right after this exit
            expire_ns = at_ns + int((self._predict_ms(k + 1, 1) + expiry_tail_ms) * _NS_PER_MS)
            for bounds, choice_ms, arrival_ns, energy_mj, hard_deadline_ns in deciders:
                ctx = ExitContext(bounds=bounds, profile=self.profile, exit_index=k, confidence=math.nan,
                                  elapsed_ms=(at_ns - arrival_ns) / _NS_PER_MS, energy_mj=energy_mj + added_mj,
                                  next_batch=size, corrector=self.corrector, next_ms=next_ms + tail_ms,
                                  delivery_allowance_ms=allowance_ms, choice_margin_ms=choice_ms)
                if self.policy.decide_ahead(ctx) is not Decision.CONTINUE or expire_ns > hard_deadline_ns:
                    return k
            ahead_ms += next_ms
        return final

    def _expected_start_ns(self, now_ns: int, *, due_from_ns: float = -math.inf,
                           due_before_ns: float = math.inf) -> float:
        """When the most urgent frame about to come (:attr:`arrival_lookahead`), due in ``[due_from_ns,
        due_before_ns)``, must start its first step; ``inf``: none, or the look-ahead off. Under the lock."""
        if not self.arrival_lookahead:
            return math.inf
        first_ns = self._scheduler.first_step_ns(self._scheduler.tail_ms())
        return min((e.deadline_ns - first_ns for e in self._expected_frames(now_ns)
                    if due_from_ns <= e.deadline_ns < due_before_ns), default=math.inf)

    def _yield_rule(self, bounds: Bounds) -> str:
        """:attr:`choice_yields` for a frame with these bounds: an app that asked for ``MAX_ACCURACY`` in so
        many words keeps its depth unless a step would make waiting work start too late (``'pressed'``)."""
        if self.choice_yields == 'waiting' and bounds.objective is Objective.MAX_ACCURACY:
            return 'pressed'
        return self.choice_yields

    def _choice_would_delay(self, now_ns: int, step: int, size: int, due_ns: int, rule: str | None = None) -> bool:
        """Whether ``step``, as a turn of its own for ``size`` frames due from ``due_ns``, would end after
        waiting on-time work due no earlier (or a frame about to come) must start for its next step to make
        its deadline: the fused runs' gate (:meth:`_fuse_to`), for the steps taken by choice between turns.
        With ``rule`` (:attr:`choice_yields` unless given) ``'waiting'``: whether any such work waits;
        ``'demand'``: that work's latest start is when it must start to make its deadlines together
        (:meth:`Scheduler.demand_start_ns`)."""
        rule = rule or self.choice_yields
        with self._cond:
            waiting = self._scheduler.demand_start_ns if rule == 'demand' else self._scheduler.latest_start_ns
            latest_ns = min(waiting(due_from_ns=due_ns), self._expected_start_ns(now_ns, due_from_ns=due_ns))
        if rule == 'waiting' or latest_ns == math.inf:
            return latest_ns < math.inf
        step_ms = self.corrector.predict_ms(self.profile, step, size) + self._turn_ms()
        return now_ns + (step_ms + self.choice_yield_margin_ms) * _NS_PER_MS > latest_ns
