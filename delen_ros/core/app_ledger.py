"""One app's ledger, ROS-free: its registration, its counters since it registered, the window of
results that ``~/status`` reads and resets, its measured frame rate, and the admission re-check's
hysteresis. The engine owns one per app and reads and changes them under its lock.
"""
from __future__ import annotations

import collections

from .arrivals import NextFrame, Rate
from .bounds import Bounds, LatePolicy, Objective
from .choice_margin import ChoiceMargin

__all__ = ['AppLedger', 'BEHIND_NS', 'DEMOTED_NOTE', 'HOST_TAILS_NOTE', 'OWN_MISSES_NOTE', 'QUIET_NOTE']

#: an app whose queue pushed a frame out this recently is behind (:meth:`AppLedger.behind`)
BEHIND_NS = 500_000_000

#: how a demoted app's ``unschedulable_reason`` ends (read back by the e2e report)
DEMOTED_NOTE = 'demoted: served after the others until it fits again'
#: how the reason of an app at risk ends while the apps served miss nothing (read back by the placer,
#: which leaves such an app where it is)
QUIET_NOTE = 'at risk, not demoted: the apps served met their bounds since the last re-check'
#: ... while only the apps at risk miss theirs: served after the others, they would miss more and spare nobody
OWN_MISSES_NOTE = ('at risk, not demoted: only the apps at risk missed their bounds, so serving them last '
                   'would spare no other')
#: ... while it misses for the parts of latency outside the device (frame age, serving overhead): served after the
#: others it would get no more device time than it lacks, and miss more
HOST_TAILS_NOTE = ('at risk, not demoted: it is short of time outside the device (frame age, serving overhead, '
                   'delivery), which serving it last would not give back')


class AppLedger:
    """One app's registration, counters and window; ``seq``: its place in the order of admission
    (oldest first: the re-check keeps the oldest apps' guarantees); ``misfit_checks`` /
    ``fit_checks`` / ``demoted``: the re-check's hysteresis (see :meth:`note_check`)."""

    def __init__(self, bounds: Bounds, *, window: int, now_ns: int, num_exits: int,
                 late_policy: LatePolicy, source: str | None, rate_prior_hz: float, seq: int):
        self.bounds = bounds
        self.choice_margin = _choice_margin(bounds)
        self.num_exits = num_exits
        self.late_policy = late_policy
        self.source = source
        self.rate_prior_hz = rate_prior_hz
        self.seq = seq
        self.rate = Rate()
        self.next_frame = NextFrame()   # when its camera's next frame should come (arrival lookahead)
        self.reason = ''   # admission's last verdict on this app ('' = schedulable)
        self.misfit_checks = 0   # consecutive re-checks that found it not fitting beside the older apps
        self.fit_checks = 0      # consecutive re-checks that found it fitting, while demoted
        self.demoted = False     # served after the other apps (Scheduler.set_best_effort)
        self.checked = (0, 0)    # (frames done, of them missed) at the last re-check: see misses_since_check
        self.on_priors = False   # admitted before the engine had measured anything: to be confirmed
        self.registered_ns = now_ns   # when it was first admitted (a change of bounds keeps it)
        self.first_frame_ns: int | None = None
        self.evicted_ns: int | None = None   # when a newer frame last pushed one of its frames out
        self.frames_in = self.results_out = self.dropped_overflow = self.dropped_late = self.expired = self.failed = 0
        self.dropped_malformed = self.served_late = 0
        self.results: collections.deque[tuple[float, float, float, int, bool, bool, bool]] = \
            collections.deque(maxlen=window)
        self.reset_window(now_ns)

    def set_bounds(self, bounds: Bounds) -> None:
        """New bounds: what was learnt for the old ones (the choice margin) starts over."""
        if bounds != self.bounds:
            self.bounds, self.choice_margin = bounds, _choice_margin(bounds)

    def behind(self, now_ns: int) -> bool:
        """Whether a newer frame pushed one of its frames out of its queue in the last :data:`BEHIND_NS`:
        the worker is not keeping up with it."""
        return self.evicted_ns is not None and now_ns - self.evicted_ns <= BEHIND_NS

    @property
    def dropped(self) -> int:
        """Frames that will get no result: pushed out, late, malformed or failed."""
        return self.dropped_overflow + self.dropped_late + self.dropped_malformed + self.failed

    def reset_window(self, now_ns: int) -> None:
        self.window_start_ns = now_ns
        self.w_in = self.w_out = self.w_dropped = self.w_met = self.w_latency_met = self.w_measured = 0
        self.w_late_dropped = 0
        self.w_energy = self.w_accuracy = 0.0
        self.w_exits = [0] * self.num_exits
        self.results.clear()

    def misses_since_check(self) -> tuple[int, int]:
        """Frames done since the last call, and how many of them missed: published after the latency
        bound, or dropped (pushed out, hopeless, failed; not malformed ones). The re-check calls it."""
        dropped = self.dropped - self.dropped_malformed   # a malformed frame is the camera's, not a miss
        done, missed = self.results_out + dropped, self.served_late + dropped
        (done_before, missed_before), self.checked = self.checked, (done, missed)
        return done - done_before, missed - missed_before

    def rate_hz(self, now_ns: int) -> float:
        measured = self.rate.hz(now_ns)
        return self.rate_prior_hz if measured is None else measured

    def note_check(self, *, fits: bool, demote_after: int, restore_after: int, misses_seen: bool = True) -> None:
        """One re-check's finding: demoted after ``demote_after`` consecutive misfits while the apps
        served were seen missing their bounds (``misses_seen``), restored after ``restore_after``
        consecutive fits (one marginal verdict changes nothing). A misfit with no misses seen counts
        for neither: it stays as it is."""
        if fits:
            self.misfit_checks = 0
            self.fit_checks = self.fit_checks + 1 if self.demoted else 0
            if self.fit_checks >= restore_after:
                self.demoted, self.fit_checks = False, 0
        else:
            self.fit_checks = 0
            if not misses_seen and not self.demoted:
                self.misfit_checks = 0
                return
            self.misfit_checks += 1
            if self.misfit_checks >= demote_after:
                self.demoted = True

    def restart_checks(self, *, demoted: bool) -> None:
        """Forget the re-checks so far (its bounds were just admitted, or changed)."""
        self.misfit_checks = self.fit_checks = 0
        self.demoted = demoted


def _choice_margin(bounds: Bounds) -> ChoiceMargin | None:
    """A margin to learn where the app takes steps by choice: a latency bound, accuracy its objective."""
    if bounds.max_latency_ms is None or bounds.effective_objective is not Objective.MAX_ACCURACY:
        return None
    return ChoiceMargin(bounds.max_latency_ms)
