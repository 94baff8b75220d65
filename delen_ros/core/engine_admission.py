"""Admission control and its re-check, the part of :class:`~delen_ros.core.engine.Engine` that judges
whether the registered apps can all meet their bounds together (``Engine`` inherits it).

End to end: a frame's latency is its age on arrival, the worker's compute and the serving overhead,
plus the delivery allowance (:meth:`AdmissionMixin._outside_ms`). ``set_app`` admits an app only if
every app stays schedulable beside it (:mod:`~delen_ros.core.admission`'s EDF demand test at measured
rates and costs). Once a second the status tick's ``Engine.stats`` asks for the same test again
(:meth:`~AdmissionMixin.check_schedulable`): apps at risk are told why, and those that no longer
fit beside the apps admitted before them are served after the others. On CUDA the re-check runs on the
worker when it has nothing to serve (``Engine(recheck_on_worker=...)``, ``Engine.call_when_idle``).

The state read here (apps, scheduler, corrector, frame ages) is the engine's; this module keeps none
of its own.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from . import admission
from .app_ledger import DEMOTED_NOTE, HOST_TAILS_NOTE, OWN_MISSES_NOTE, QUIET_NOTE
from .arrivals import SETTLE_NS
from .bounds import Bounds, FeasibleRange, Plan, feasible_range, plan
from .flight_recorder import RECORDER
from .policies import Decision, ExitContext, static_fallback_exit

if TYPE_CHECKING:
    from .app_ledger import AppLedger

__all__ = ['AdmissionMixin', 'risk_summary']

# the logger of the engine: its re-check warnings read as the engine's
_log = logging.getLogger('delen_ros.core.engine')
_RISK_LOG_REPEAT_NS = 60_000_000_000   # the re-check's warning: on every change, else at most this often
# Admissions made on priors are confirmed once frame ages and serving overhead have been measured this long
# (the first seconds of serving are transients of the node's own making: see FrameAge)
_CONFIRM_AFTER_NS = SETTLE_NS
# Misses that let the re-check demote (Engine._served_apps_missing): one app's since the last re-check (3 of
# 30 frames: an app at 99 % misses that many within a second a few times in a thousand), or all the apps'
# together as a share of their frames (the target's 1 %)
_MISSES_SEEN = 3
_MISS_SHARE = 0.01
# A request waits for the frames of apps admitted this recently (Engine.unmeasured_apps): an app whose
# camera never sends is not waited for past it
_UNMEASURED_WITHIN_NS = SETTLE_NS
# an app's results before the costs measured since count its load (a dropped frame measures nothing)
_FRAMES_TO_MEASURE = 3


def _yield_gil() -> None:
    """Let a thread waiting for the GIL have it now: ``time.sleep(0)`` releases it even for 0 s."""
    time.sleep(0)


_RISK_LOG_APPS = 3   # apps whose reason a re-check's warning spells out; each app's is in its AppStatus


def risk_summary(reasons: dict[str, str], spelled_out: int = _RISK_LOG_APPS) -> str:
    """One line for the log: the first apps' reasons in full, the others by name (at 32 apps the full
    text ran to 20 000 characters a warning; every app reads its own reason in ``~/status``).

    >>> risk_summary({'a': 'x', 'b': 'y', 'c': 'z'}, spelled_out=1)
    '3 app(s) at risk or demoted: a: x; and b, c (reasons in ~/status)'
    """
    items = list(reasons.items())
    text = '; '.join(f'{a}: {why}' for a, why in items[:spelled_out])
    rest = [a for a, _ in items[spelled_out:]]
    more = f'; and {", ".join(rest)} (reasons in ~/status)' if rest else ''
    return f'{len(items)} app(s) at risk or demoted: {text}{more}'


class AdmissionMixin:
    """Admission and the re-check, for :class:`~delen_ros.core.engine.Engine` (see the module docstring)."""

    def overhead_ms(self) -> float:
        """Serving overhead now, at its tail: the worker's wake-up and decision -> delivery, each mean
        + ``latency_margin`` deviations, ms; ``overhead_prior_ms`` until a delivery is measured."""
        if not self.corrector.has_tail:
            return self.overhead_prior_ms
        return self.corrector.tail_ms() + self._wake.value(self.corrector.margin)

    def _measured(self) -> bool:
        """Whether admission's costs outside the device have been measured since the start, not priors
        only: frames' age on arrival and the serving overhead. Since the start, not now: while apps
        register one after another every new app's first frame pauses the sampling (FrameAge), and on an
        H200 the apps asking ``~/set_bounds`` 0.5 s apart all counted as admitted on priors."""
        return self._age.ever_sampled() and self.corrector.has_tail

    def unmeasured_apps(self, app_id: str, *, within_ns: int | None = _UNMEASURED_WITHIN_NS) -> list[str]:
        """The apps besides ``app_id``, admitted in the last seconds, whose first frames the worker has not
        served yet (none without admission control). A request judged now would price the device at costs
        measured without their load; the node holds such a request until they are served, up to
        ``admission_settle_s``.

        This CPU (session 37, three cameras at 640x480): a frame to exit 0 cost 1.47 ms on the warm-up's
        idle figures and 3.1-3.9 ms once the 20 ms app's frames were being served. A 10 ms app that asked
        before them was admitted and met its bound for 92-93 % of frames; asking after them, it was
        refused (``benchmarks/cpu/e2e_admission_session37``).

        :param within_ns: admitted this recently (``None``: whenever)."""
        if not self.admission_control:
            return []
        with self._cond:
            now = self.clock()
            return [a for a, app in self._apps.items()
                    if a != app_id and (within_ns is None or now - app.registered_ns < within_ns)
                    and app.results_out < _FRAMES_TO_MEASURE]

    def _outside_ms(self) -> dict[str, float]:
        """The parts of end-to-end latency that are not the worker's compute, ms: ``transport_ms``,
        the frames' age when :meth:`submit` gets them (from the stamp: transport to the node and
        conversion) at their 99th percentile of late (:class:`~delen_ros.core.arrivals.FrameAge`),
        ``transport_prior_ms`` while none is measured; ``overhead_ms`` (:meth:`overhead_ms`);
        ``delivery_ms``, the delivery allowance with the publication lag (``kept_after_handover_ms``)."""
        return {'transport_ms': self._age.p99_ms(self.clock()), 'overhead_ms': self.overhead_ms(),
                'delivery_ms': self.kept_after_handover_ms}

    def exit_latency_ms(self) -> list[float]:
        """End-to-end latency of a lone frame to each exit now, ms, as its subscriber sees it: the
        frames' age on arrival and the serving overhead (tails), the delivery allowance,
        preprocessing, and each step at batch 1 (the profile's p50 x this device's measured ratio)."""
        return self._exit_latency_ms(self._outside_ms())

    def _exit_latency_ms(self, outside: dict[str, float]) -> list[float]:
        base = sum(outside.values()) + self.preprocess_cost.predict_ms(1) + self._turn_ms(0.0)
        out, total = [], base
        for k in range(self.profile.num_exits):
            total += self.corrector.factor(k, 1) * self.profile.step_ms(k, 1)
            out.append(total)
        return out

    def feasible_range(self) -> FeasibleRange:
        """What this engine can serve now, end to end (see :meth:`exit_latency_ms`)."""
        outside = self._outside_ms()   # once: the parts named are the parts summed
        return feasible_range(self.profile, exit_latency_ms=self._exit_latency_ms(outside), **outside)

    def plan(self, bounds: Bounds) -> Plan:
        """The end-to-end plan for ``bounds`` now (no registration, no admission)."""
        outside = self._outside_ms()
        return plan(bounds, self.profile, exit_latency_ms=self._exit_latency_ms(outside), **outside)

    def _required_exit(self, bounds: Bounds) -> int:
        """The exit admission must make room for: a latency-bound app's frames need the exit its
        policy's accuracy rule sends all but a few of them to (:meth:`~delen_ros.core.policies.Policy.needed_exit`);
        an app without one runs where its plan says."""
        if bounds.max_latency_ms is not None:
            if not self.cascade_admission:
                return static_fallback_exit(self.profile, bounds.min_accuracy)
            return self.policy.needed_exit(self.profile, bounds)
        try:
            return plan(bounds, self.profile).exit_index
        except ValueError:
            return self.profile.final_exit

    def _source_rate(self, source: str | None, now: int) -> float:
        """Prior rate of a new app: the measured rate of an app on the same source, else ``rate_prior_hz``."""
        if source is not None:
            rates = [r for st in self._apps.values() if st.source == source
                     for r in (st.rate.hz(now),) if r is not None]
            if rates:
                return max(rates)
        return self.rate_prior_hz

    def _task(self, app_id: str, app: AppLedger, now: int) -> admission.Task:
        exit_index = self._required_exit(app.bounds)
        return admission.Task(app_id, app.rate_hz(now), app.bounds.max_latency_ms, exit_index, app.source,
                              stops=self._run_stops(app.bounds, exit_index),
                              exit_shares=self._exit_shares(app.bounds))

    def _exit_shares(self, bounds: Bounds) -> tuple[float, ...]:
        """Where a latency-bound app's frames stop, where its policy knows (admission's average cost)."""
        if bounds.max_latency_ms is None or not self.cascade_admission:
            return ()
        return self.policy.exit_shares(self.profile, bounds)

    def _run_stops(self, bounds: Bounds, exit_index: int) -> tuple[int, ...]:
        """The exits before ``exit_index`` where the worker ends a fused run of this app's frames
        (:meth:`_fuse_to`): where its policy does not go on without a look, decided with nothing spent
        yet (time and energy spent only end runs sooner). An accuracy bound's cascade looks at every
        exit with a threshold, so its frames run a step at a time there, not as one long run."""
        if not self.fuse_steps:
            return ()
        return tuple(k for k in range(exit_index) if self.policy.decide_ahead(ExitContext(
            bounds=bounds, profile=self.profile, exit_index=k, confidence=math.nan, elapsed_ms=0.0,
            corrector=self.corrector, delivery_allowance_ms=self.policy_allowance_ms)) is not Decision.CONTINUE)

    def _cost_model(self, outside: dict[str, float] | None = None) -> admission.CostModel:
        """Admission's costs now; ``outside``: these parts outside the device instead of :meth:`_outside_ms`."""
        return admission.CostModel(
            # the first step with its batch's preprocessing (per call + per frame: amortised over the batch)
            step_ms=lambda k, b: self._predict_ms(k, b, margin=0.0, turn=False), num_exits=self.profile.num_exits,
            **(outside or self._outside_ms()), max_batch=self.max_batch, default_deadline_ms=self.default_deadline_ms,
            utilisation_limit=self.utilisation_limit, fused_runs=self.fuse_steps, turn_ms=self._turn_ms(0.0))

    def _with_headroom(self, cost: admission.CostModel) -> admission.CostModel:
        """``cost`` as a request is judged: with ``admission_headroom`` of each bound kept free."""
        return dataclasses.replace(cost, headroom=self.admission_headroom,
                                   headroom_min_ms=self.admission_headroom_min_ms)

    def schedulability(self) -> 'admission.Verdict':
        """Admission's test on the registered apps at their measured rates now (nothing stored)."""
        with self._cond:
            now = self.clock()
            tasks = [self._task(a, st, now) for a, st in sorted(self._apps.items(), key=lambda item: item[1].seq)]
        return admission.check(tasks, self._cost_model())

    def check_schedulable(self) -> dict[str, str]:
        """Re-run admission on the registered apps at their measured rates; store and return why each
        app at risk may miss its bounds (``AppStats.unschedulable_reason``; serving goes on).

        When the apps no longer fit together on the device, the fewest are served after the others (demoted:
        :meth:`~delen_ros.core.scheduler.Scheduler.set_best_effort`), the most recently admitted
        first (:func:`~delen_ros.core.admission.misfits`): an app keeps the guarantee it was given
        at admission. Who is at risk is judged at the tails measured now, who is demoted on device demand
        (:meth:`_misfits`): an app short of time outside the device (frame age, serving overhead), even one
        admitted on priors and not confirmed at the tails measured since, is told, not demoted. An app is demoted only after
        ``demote_after`` re-checks in a row found it not fitting while the apps served with the
        others were missing their bounds (:meth:`_served_apps_missing`; ``demote_on_misses``), apps
        other than those it would demote among them (demoting protects the others: where only the
        misfits miss, served last they would miss more and spare nobody), and restored after
        ``restore_after`` in a row found it fitting; its reason is reported at every
        re-check all the same, and says whether it is demoted or only at risk. When no app fits
        even alone, none is demoted (an order among hopeless apps helps nobody). The warning is
        logged when the apps at risk or demoted change, else at most once a minute.
        """
        with self._cond:
            now = self.clock()
            states = sorted(self._apps.items(), key=lambda item: item[1].seq)
            tasks = [self._task(a, st, now) for a, st in states]
            misses = {app_id: app.misses_since_check() for app_id, app in states}
            missing = self._served_apps_missing(states, misses) or not self.demote_on_misses
            # nothing to act on: whom to demote is not worked out (that search is most of a re-check's
            # time, held on the worker: 2 ms for 16 apps at risk, where the demand test alone takes 0.5)
            quiet = not missing and not any(app.demoted for _, app in states)
        outside = self._outside_ms()   # the checks run outside the lock: the worker must not wait for them
        cost = self._cost_model(outside)
        verdict = admission.check(tasks, cost)   # who is at risk: at the tails measured now
        misfit, on_device = ({}, set()) if verdict.ok or quiet else self._misfits(tasks, outside, cost)
        hopeless = len(misfit) == len(tasks) > 0
        confirmed, unconfirmed = ([], {}) if quiet else self._confirm(states, tasks, outside, cost, now)
        misfit.update(unconfirmed)
        # whom serving last would help: every misfit as before session 44 (an A/B), else only those short of
        # device time with the parts outside it no worse than admission priced them (misfits all)
        demotable = set(misfit) if self.demote_on_host_tails else on_device
        with self._cond:
            # session 43, an H200 host that stole CPU: with only the 10 ms apps (the misfits) missing, six to
            # eight of them demoted met 17.7-62 % of their frames, 92.3-98.7 % where none was
            protects = missing and (not self.demote_on_misses or self.demote_for_own_misses or
                                    self._served_apps_missing(states, misses, besides=misfit.keys()))
            for app_id, app in states:
                app.note_check(fits=hopeless or app_id not in demotable, demote_after=self.demote_after,
                               restore_after=self.restore_after, misses_seen=protects)
                # one demoted for not fitting is restored only by confirmations (with the headroom), not by
                # the usual re-check: on an H200 the two in turn demoted and restored it every few seconds
                if app_id in confirmed and not app.demoted:
                    app.on_priors = False
            demoted = {app_id for app_id, app in states if app.demoted}
        # at risk as served now: the apps not demoted (a running step of a demoted app may block them)
        at_risk = verdict.at_risk if not demoted else admission.check(
            [t for t in tasks if t.app_id not in demoted], cost,
            blocking=[t for t in tasks if t.app_id in demoted]).at_risk
        reasons = self._reasons(states, misfit, at_risk, demoted=demoted, hopeless=hopeless, missing=missing,
                                protects=protects, demotable=demotable)
        with self._cond:
            for app_id, app in states:
                if self._apps.get(app_id) is app:   # not removed meanwhile
                    app.reason = reasons.get(app_id, '')
                    self._scheduler.set_best_effort(app_id, app.demoted)
            key = (tuple(sorted(reasons)), tuple(sorted(demoted))) if reasons or demoted else ()
            last_key, last_ns = self._risk_logged
            log = key != last_key or (bool(reasons) and now - last_ns >= _RISK_LOG_REPEAT_NS)
            if log:
                self._risk_logged = (key, now)
        if log and reasons:
            _log.warning('admission re-check at the measured rates: %s', risk_summary(reasons))
        elif log:
            _log.info('admission re-check: every app fits%s', f' ({", ".join(sorted(demoted))} served after the '
                      'others until the next clean re-checks)' if demoted else '')
        return reasons

    def _reasons(self, states: list[tuple[str, AppLedger]], misfit: dict[str, str], at_risk: dict[str, str], *,
                 demoted: set[str], hopeless: bool, missing: bool, protects: bool, demotable: set[str]
                 ) -> dict[str, str]:
        """Each app's reason after a re-check: why it may miss (the search's ``misfit`` verdict, else the
        demand test's ``at_risk``), and what is done about it (``missing``: the apps served missed their
        bounds; ``protects``: apps other than the misfits among them; ``demotable``: the misfits short of
        device time, whom serving last would help)."""
        pending = [a for a in misfit if a in demotable and a not in demoted and not hopeless]
        reasons: dict[str, str] = {}
        for app_id, app in states:
            if app_id in misfit:
                if app.demoted:
                    state = DEMOTED_NOTE
                elif hopeless:
                    state = 'at risk, not demoted: no app fits even alone'
                elif not missing:
                    state = QUIET_NOTE
                elif not protects:
                    state = OWN_MISSES_NOTE
                elif app_id not in demotable:
                    state = HOST_TAILS_NOTE
                else:
                    state = (f'at risk: served after the others if this holds for '
                             f'{self.demote_after - app.misfit_checks} more re-check(s)')
                reasons[app_id] = f'{misfit[app_id]}; {state}'
            elif app_id in at_risk and not missing and not demoted:   # a quiet re-check: no search was run
                reasons[app_id] = f'{at_risk[app_id]}; {QUIET_NOTE}'
            elif app_id in at_risk:
                later = f'; {", ".join(pending)}, admitted after it, would be served after it' if pending else ''
                reasons[app_id] = (f'{at_risk[app_id]}; at risk, not demoted: it fits beside the apps '
                                   f'admitted before it{later}')
        return reasons

    @staticmethod
    def _served_apps_missing(states: list[tuple[str, AppLedger]], misses: dict[str, tuple[int, int]],
                             besides: Iterable[str] = ()) -> bool:
        """Whether the apps served with the others (not demoted; none of ``besides``) missed their bounds
        since the last re-check (``misses``: each app's :meth:`AppLedger.misses_since_check`): one app
        :data:`_MISSES_SEEN` frames or more (or every frame it sent, for an app that sends fewer between
        two re-checks), or all of them together at least :data:`_MISS_SHARE` of their frames and at least
        that many. Under the engine's lock.

        Demotion waits for them: the re-check prices every frame at the tails of frame age and
        serving overhead, and on a slow H200 host (session 32, 16 cameras, 10 ms apps beside
        accuracy cascades admitted at configure) it demoted 6-7 apps of a set that met all its bounds
        undemoted (worst app 99.0-100 % in 5 of 5 runs with admission off). Demoted, the 10 ms apps
        met them for 31-87 % of frames and the kept ones for 80-99 %."""
        done = missed = 0
        one_app_missing = False   # 3 frames, or all it sent (an app too slow to send 3 between re-checks)
        besides = set(besides)
        for app_id, app in states:
            d, m = misses[app_id]
            if not app.demoted and app_id not in besides:
                done, missed = done + d, missed + m
                if m >= _MISSES_SEEN or 0 < m == d:
                    one_app_missing = True
        return one_app_missing or missed >= max(_MISSES_SEEN, _MISS_SHARE * done)

    def _confirm(self, states: list[tuple[str, AppLedger]], tasks: list[admission.Task],
                 outside: dict[str, float], cost: admission.CostModel, now: int
                 ) -> tuple[list[str], dict[str, str]]:
        """Apps admitted on priors (``AppLedger.on_priors``: before anything was measured, e.g. at
        configure) judged again once the costs are measured, as if each asked now, in order of
        admission (:func:`~delen_ros.core.admission.confirm`), at ``cost`` (the re-check's, measured
        at ``outside``) with the admission headroom: (confirmed, app -> why not). One that
        does not fit is a misfit of :meth:`check_schedulable`, told why (demoted after ``demote_after``
        re-checks in a row if it is short of device time too) and judged again at the next re-check.

        A profile prices the device, not the node serving it: on an H200 at 16 cameras, 10 ms apps
        admitted at configure beside cascades met their bounds for 93-98 % of frames, while the same
        apps asking ``~/set_bounds`` under load were refused or met them for all their frames."""
        if self._measured_since_ns is None and self._measured():
            self._measured_since_ns = now
        pending = [i for i, (_, app) in enumerate(states) if app.on_priors]
        if not pending or self._measured_since_ns is None or now - self._measured_since_ns < _CONFIRM_AFTER_NS:
            return [], {}
        cost = self._with_headroom(cost)
        kept = [t for t, (_, app) in zip(tasks, states) if not app.on_priors and not app.demoted]
        confirmed, out = admission.confirm(kept, [tasks[i] for i in pending], cost, pause=self._pause_between_tests())
        if confirmed:   # what these admissions passed with: the re-check's settled costs from now on
            self._admitted_outside = outside
        return confirmed, out

    def _misfits(self, tasks: list[admission.Task], outside: dict[str, float], cost: admission.CostModel
                 ) -> tuple[dict[str, str], set[str]]:
        """Who does not fit, app -> why, and among them whom serving last would help: ``(why, on_device)``.

        Demoting frees device time, so only apps short of it are demoted: those that do not fit beside
        the apps admitted before them (:func:`~delen_ros.core.admission.misfits`) with each part outside
        the device (``outside``, measured now) at most what the last admission priced it at and its prior
        (``transport_prior_ms``, ``overhead_prior_ms``: a host that serves as expected). Demotion cannot
        shorten those parts: the node's own transients (a GIL-bound spell inflates the frame-age and
        overhead tails for their whole window; on an H200 at 32 cameras the tails of a 1 s spike left 7.7
        of 33 ms for the device, 21 apps were demoted and their frames went late), or a host that steals
        CPU (sessions 43-44, 10 ms apps admitted at configure beside cascades, short of time at 5-7 ms
        p99 frame age: demoted, they met 17.7-80 % of their frames, served with the others 92.3-98.7 %,
        and the others missed as much either way). An app that misses even alone at the tails now
        (``cost``) is named, and so told, but not demoted unless it is short of device time too."""
        pause = self._pause_between_tests()
        caps = [self._admitted_outside or {}]
        if not self.demote_on_host_tails:   # the A/B: capped at the last admission's alone, as in session 43
            caps.append(self._prior_outside_ms())
        settled = self._cost_model({k: min([v, *(cap.get(k, v) for cap in caps)]) for k, v in outside.items()})
        alone_now = admission.infeasible_alone(tasks, cost, pause=pause)
        if admission.check(tasks, settled).ok:
            return alone_now, set()
        on_device = admission.misfits(tasks, settled, pause=pause)
        return {**alone_now, **on_device}, set(on_device)

    def _prior_outside_ms(self) -> dict[str, float]:
        """:meth:`_outside_ms` as admission prices it before anything is measured: the priors."""
        return {'transport_ms': self._age.prior_ms, 'overhead_ms': self.overhead_prior_ms,
                'delivery_ms': self.kept_after_handover_ms}

    def _pause_between_tests(self) -> Callable[[], None] | None:
        """A GIL yield between two admission tests on another thread than the worker, whose frames must
        not wait behind them; none on the worker (:attr:`recheck_on_worker`): its frames wait for the
        re-check anyway, and each yield let another thread keep the GIL up to a switch interval (5 ms:
        on an H200 at 16 cameras a re-check of ~3 ms of Python took the worker 15-24 ms)."""
        on_worker = threading.current_thread() is self._thread and not self.recheck_yields_on_worker
        return None if on_worker else _yield_gil

    def at_risk(self, *, recheck_s: float = 1.0) -> dict[str, str]:
        """Why each app at risk may miss its bounds (app -> reason), as the last admission re-check
        found; re-run first (:meth:`check_schedulable`) when that is older than ``recheck_s`` s, as
        :meth:`stats` does. For a monitor that polls often: a re-check is an EDF test over every app."""
        reasons = self._recheck_if_older(recheck_s)
        if reasons is not None:
            return reasons
        with self._cond:
            return {a: app.reason for a, app in self._apps.items() if app.reason}

    @property
    def recheck_on_worker(self) -> bool:
        """Whether the status tick's re-check runs on the worker (see the ``recheck_on_worker`` parameter)."""
        if self._recheck_on_worker is not None:
            return self._recheck_on_worker
        return getattr(self._runner, 'device', torch.device('cpu')).type == 'cuda'

    def _recheck_if_older(self, recheck_s: float) -> dict[str, str] | None:
        """:meth:`check_schedulable`'s reasons if the last re-check is older than ``recheck_s`` s (it
        runs now), else ``None``; the status tick (:meth:`stats`) and a device pool's monitor share it.
        With ``recheck_on_worker`` and a running worker the re-check is asked of the worker instead
        (``None``; the reasons stored by the last one stand), unless ``recheck_s`` is 0."""
        now = self.clock()
        if not self.admission_control or (now - self._last_check_ns) / 1e9 < recheck_s:
            return None
        if self.recheck_on_worker and recheck_s > 0 and self.call_when_idle('recheck', self._recheck):
            return None
        return self._recheck()

    def _recheck(self) -> dict[str, str]:
        self._last_check_ns = self.clock()
        if RECORDER is None:
            return self.check_schedulable()
        t0 = time.perf_counter_ns()
        try:
            return self.check_schedulable()
        finally:
            RECORDER.add('recheck', t0, time.perf_counter_ns())
