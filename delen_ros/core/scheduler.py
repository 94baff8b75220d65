"""Multi-tenant scheduling of multi-exit inference steps on one accelerator (no ROS, no torch).

Work is a *step*: stage ``k`` plus head ``k`` for a batch of requests that all sit at step ``k``.
Each call of :meth:`Scheduler.next_batch` (made by the engine's worker whenever the device is free):

1. classifies every waiting request with a latency bound as *on time* or *late*: a queued frame is
   late when even the fastest exit cannot make its deadline (``now + expected first step + expected
   tail > deadline``; *expected*, not the safe prediction: giving up is a certain miss, running is
   only a likely one), a started one when its next step cannot. Without enforcement the fastest
   exit is the first one the app's policy may stop at (``first_stop`` in :meth:`Scheduler.set_app`:
   ``always_final`` runs every frame to the last), so a frame that cannot get there in time is
   late before it starts, not part-way through;
2. (with ``enforce_deadlines``, the default) drops late frames of apps that chose
   :attr:`~delen_ros.core.bounds.LatePolicy.DROP` (except one in ``probe_every`` in a row, which is
   served late, so that measurements never stop and an app is never locked out by a stale
   prediction), and expires requests in flight whose next step (safely predicted) and the expected
   tail to publication would overrun their deadline: they have a result from their last exit
   already, and the caller finishes them;
3. picks the request with the earliest deadline (EDF across apps) among the *on-time* queued frames
   and requests in flight; late ones lead a batch only when nothing on time is waiting (idle time),
   so a hopeless frame never goes before a feasible one of an app that fits, whatever the policy; the
   same holds for started work only with enforcement (a started request that goes late is finished
   at once); without it a started request keeps its EDF place, late or not, so that work begun is
   finished (under overload, late frames left part-way through the network waited up to 1.3 s for
   idle time that never came and held their in-flight slots: ``benchmarks/overload_collapse.py``); the
   work of apps marked *best effort* (:meth:`Scheduler.set_best_effort`: admission's re-check found
   them, for several checks in a row, not fitting beside the apps admitted before them) comes after
   every other app's, late or not, EDF among themselves, so that they cannot make the apps that fit
   miss (a frame marked late on the expected times still makes its deadline about as often as not);
   a request's deadline (when its result must be *published*) is ``arrival + max_latency_ms -
   delivery allowance`` (the allowance is time kept for the result to reach its subscriber), or
   ``arrival + default_deadline_ms`` for an app without a latency bound (so it gets served, not
   starved);
4. batches with it other requests at the same step, in deadline order, while the predicted batch
   time (and the expected tail to publication) keeps every on-time bounded member's deadline (the
   head's included), up to ``max_batch``; late requests come last in that order, so they *ride*
   in a batch led by on-time work where it has room for them, and never lead one but in idle time;
   frames start only while fewer than ``max_in_flight`` requests are in flight.

Late requests are marked (``Request.late``): with enforcement the engine serves a late frame at its
fastest exit, or where the run it rides in ends, and counts it as served late.

Memory is bounded under any load: each app keeps at most ``queue_depth`` newest frames (a new frame
pushes out the oldest, counted), requests in flight are at most ``max_in_flight`` (+ one batch).
Time is integer nanoseconds from the caller's clock, so tests can drive it with a fake clock.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from typing import Any, Callable, Iterator, Sequence

from .bounds import LatePolicy

__all__ = ['Request', 'Batch', 'Schedule', 'Expected', 'AppQueue', 'Scheduler', 'PredictFn']

#: ``predict_ms(step, batch_size) -> ms``: predicted time of one step for a whole batch.
PredictFn = Callable[[int, int], float]

_NS_PER_MS = 1_000_000
#: how long past its expected submission a frame is waited for at least (Scheduler._wait_for)
WAIT_SLACK_NS = 1_000_000


def _memo(fn: PredictFn) -> PredictFn:
    """``fn`` remembering its answers: one decision is taken at one instant, so each ``(step,
    batch)`` it asks about needs predicting once (predictions cost microseconds of the worker's GIL)."""
    answers: dict[tuple[int, int], float] = {}

    def predict(step: int, batch: int) -> float:
        ms = answers.get((step, batch))
        if ms is None:
            ms = answers[step, batch] = fn(step, batch)
        return ms
    return predict


@dataclasses.dataclass(eq=False)
class Request:
    """One frame for one app, as the scheduler sees it.

    :param frame: opaque to the scheduler (the engine shares one frame object among the apps on a camera).
    :param latency_bound_ms: the app's latency bound when the frame arrived; ``None`` = unbounded.
    :param deadline_ns: EDF priority; a hard deadline only when ``latency_bound_ms`` is set: when the
        result must be published (the bound less the delivery allowance, see :meth:`Scheduler.make_request`).
    :param next_step: the step this request runs next (0 = not started).
    :param state: opaque engine data (features, best result so far).
    :param late: cannot meet its deadline any more (set by the scheduler; it stays set).
    :param first_stop: the first exit its app's policy may stop it at (without enforcement, lateness
        is judged on the way there).
    """

    app_id: str
    frame: Any
    arrival_ns: int
    deadline_ns: int
    latency_bound_ms: float | None = None
    next_step: int = 0
    state: Any = None
    tag: Any = None
    late: bool = False
    first_stop: int = 0

    @property
    def started(self) -> bool:
        """Ran at least one step: it has a result from exit ``next_step - 1`` to fall back on."""
        return self.next_step > 0

    @property
    def hard(self) -> bool:
        return self.latency_bound_ms is not None


@dataclasses.dataclass(frozen=True)
class Batch:
    """Requests that run step ``step`` together, deadline order (the EDF head first)."""

    step: int
    requests: tuple[Request, ...]
    predicted_ms: float


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The outcome of one scheduling decision.

    ``batch``: what to run now (``None``: nothing to do); ``dropped``: queued frames that cannot meet
    their bound (never started); ``expired``: started requests to finish now with their last result.
    """

    batch: Batch | None
    dropped: tuple[Request, ...] = ()
    expired: tuple[Request, ...] = ()
    #: no batch now: an expected frame due sooner should come first; wait for it until then (clock ns)
    wait_until_ns: int | None = None


@dataclasses.dataclass(frozen=True)
class Expected:
    """A frame not here yet that a periodic camera should send (the engine's arrival lookahead):
    when it should be submitted, give or take ``jitter_ns``, and its deadline."""

    app_id: str
    submit_ns: int
    deadline_ns: int
    jitter_ns: int


class AppQueue:
    """One app's bounded queue of frames not yet started, newest kept; ``late_drops``: late frames
    dropped in a row (a probe is served when it reaches ``probe_every``)."""

    def __init__(self, app_id: str, *, latency_bound_ms: float | None, queue_depth: int,
                 late_policy: LatePolicy = LatePolicy.SERVE_FASTEST, first_stop: int = 0):
        self.app_id = app_id
        self.latency_bound_ms = latency_bound_ms
        self.late_policy = late_policy
        self.first_stop = first_stop
        self.late_drops = 0
        self.best_effort = False   # admission found it unschedulable: served after the others
        self.frames: collections.deque[Request] = collections.deque(maxlen=queue_depth)


def _due_by(request: Request) -> float:
    """When ``request`` must be done for batching to keep it on time: its deadline if it is bounded
    and on time, else never (a late or unbounded request does not limit a batch)."""
    return request.deadline_ns if request.hard and not request.late else math.inf


class Scheduler:
    """EDF across apps at step granularity, with cross-app batching; see the module docstring.

    :param predict_ms: predicted time (ms) of step ``k`` for a batch of ``n``, on the safe side (the
        engine passes profile x online correction, with its margin).
    :param expected_ms: the expected time, for drops; ``None``: ``predict_ms``.
    :param num_steps: the model's number of exits (steps ``0..num_steps-1``).
    :param max_batch: most requests in one step (1 = per-frame execution).
    :param queue_depth: newest frames kept per app before they start.
    :param max_in_flight: most started, unfinished requests; ``None``: ``4 x max_batch``.
    :param default_deadline_ms: EDF horizon of apps without a latency bound.
    :param enforce_deadlines: drop late frames (apps with ``LatePolicy.DROP``) and expire requests
        in flight (step 2 above); ``False`` runs everything as the policy says, late or not (the
        baselines' behaviour: they have no prediction) -- but late work still waits for idle time.
    :param tail_ms: expected time from the last decision on a request to its result's publication
        (the engine's measured serving tail), part of the late, expiry and batching tests; ``None``: 0.
    :param delivery_allowance_ms: time kept after publication for the result to reach its
        subscriber, ms: a bounded request is due at ``arrival + bound - allowance``; ``None``: 0.
    :param probe_every: with ``LatePolicy.DROP``, the late frame after this many late drops in a row
        is served (late) instead: a measurement, so that a pessimistic prediction gets corrected.
    """

    def __init__(self, predict_ms: PredictFn, *, num_steps: int, max_batch: int = 8, queue_depth: int = 1,
                 max_in_flight: int | None = None, default_deadline_ms: float = 250.0,
                 enforce_deadlines: bool = True, expected_ms: PredictFn | None = None,
                 tail_ms: Callable[[], float] | None = None, probe_every: int = 32,
                 delivery_allowance_ms: Callable[[], float] | None = None):
        if num_steps < 1:
            raise ValueError(f'num_steps must be >= 1, got {num_steps!r}')
        if max_batch < 1:
            raise ValueError(f'max_batch must be >= 1, got {max_batch!r}')
        if queue_depth < 1:
            raise ValueError(f'queue_depth must be >= 1, got {queue_depth!r}')
        max_in_flight = 4 * max_batch if max_in_flight is None else max_in_flight
        if max_in_flight < 1:
            raise ValueError(f'max_in_flight must be >= 1, got {max_in_flight!r}')
        if not math.isfinite(default_deadline_ms) or default_deadline_ms <= 0:
            raise ValueError(f'default_deadline_ms must be > 0, got {default_deadline_ms!r}')
        if probe_every < 1:
            raise ValueError(f'probe_every must be >= 1, got {probe_every!r}')
        self.tail_ms = tail_ms or (lambda: 0.0)
        self.delivery_allowance_ms = delivery_allowance_ms or (lambda: 0.0)
        self.probe_every = probe_every
        self.predict_ms = predict_ms
        self.expected_ms = expected_ms or predict_ms
        self.num_steps = num_steps
        self.max_batch = max_batch
        self.queue_depth = queue_depth
        self.max_in_flight = max_in_flight
        self.default_deadline_ms = default_deadline_ms
        self.enforce_deadlines = enforce_deadlines
        self.late_riders = True   # False (an A/B, before session 26): late work runs in idle time only
        # False (an A/B, before session 30): a late frame of an app that fits waits for demoted apps' frames
        # too (H200 trace: a kept 10 ms app's frame, marked late 5.5 ms after its stamp, waited 7 ms behind
        # two demoted apps' frames; served first it would have ended ~7.5 ms after its stamp)
        self.demoted_last = True
        # False (an A/B, before session 34): without enforcement a started request that goes late waits
        # for idle time, and a frame is judged late on its first step only (benchmarks/overload_collapse.py)
        self.finish_started = True
        self._apps: dict[str, AppQueue] = {}
        self._in_flight: list[Request] = []   # started, waiting for their next step
        self._running = 0                     # started requests handed out in a batch, not yet back

    # --- apps -----------------------------------------------------------------------------------------
    def set_app(self, app_id: str, *, latency_bound_ms: float | None,
                late_policy: LatePolicy | str = LatePolicy.SERVE_FASTEST, first_stop: int = 0) -> None:
        """Add an app or change its latency bound, late policy and first possible stop (queued frames
        keep the deadline and first stop they arrived with).

        :param first_stop: the first exit its policy may stop a frame at, whatever its input and time
            (:meth:`~delen_ros.core.policies.Policy.first_stop`); without enforcement a frame is late
            when it cannot get there in time.
        """
        late_policy = LatePolicy.parse(late_policy)
        if not 0 <= first_stop < self.num_steps:
            raise ValueError(f'first_stop must be in 0..{self.num_steps - 1}, got {first_stop!r}')
        queue = self._apps.get(app_id)
        if queue is None:
            self._apps[app_id] = AppQueue(app_id, latency_bound_ms=latency_bound_ms, queue_depth=self.queue_depth,
                                          late_policy=late_policy, first_stop=first_stop)
        else:
            queue.latency_bound_ms = latency_bound_ms
            queue.late_policy = late_policy
            queue.first_stop = first_stop

    def remove_app(self, app_id: str) -> list[Request]:
        """Forget an app; returns its queued and in-flight requests (the caller counts or finishes them)."""
        queue = self._apps.pop(app_id, None)
        if queue is None:
            return []
        gone = list(queue.frames)
        gone += [r for r in self._in_flight if r.app_id == app_id]
        self._in_flight = [r for r in self._in_flight if r.app_id != app_id]
        return gone

    def set_best_effort(self, app_id: str, best_effort: bool) -> None:
        """Serve an app's work after every other app's (admission found its bounds unschedulable:
        its frames must not make the schedulable apps miss); false: EDF with the others again."""
        queue = self._apps.get(app_id)
        if queue is not None:
            queue.best_effort = best_effort

    def best_effort_apps(self) -> frozenset[str]:
        """The apps served after the others (:meth:`set_best_effort`)."""
        return frozenset(a for a, q in self._apps.items() if q.best_effort)

    def has_app(self, app_id: str) -> bool:
        return app_id in self._apps

    # --- arrivals -----------------------------------------------------------------------------------
    def make_request(self, app_id: str, frame: Any, arrival_ns: int, *, tag: Any = None) -> Request:
        """A request for ``app_id``'s frame with the deadline its current bound gives (:meth:`deadline_ns`)."""
        queue = self._apps[app_id]
        return Request(app_id=app_id, frame=frame, arrival_ns=arrival_ns, deadline_ns=self.deadline_ns(app_id, arrival_ns),
                       latency_bound_ms=queue.latency_bound_ms, tag=tag, first_stop=queue.first_stop)

    def deadline_ns(self, app_id: str, arrival_ns: int) -> int:
        """The one definition of a frame's deadline: ``arrival + bound - delivery allowance`` (when its
        result must be published), or the default horizon for an unbounded app."""
        bound = self._apps[app_id].latency_bound_ms
        horizon = bound - self.delivery_allowance_ms() if bound is not None else self.default_deadline_ms
        return arrival_ns + int(horizon * _NS_PER_MS)

    def waiting_apps(self) -> set[str]:
        """The apps with a frame queued or a request waiting for its next step."""
        return {a for a, q in self._apps.items() if q.frames} | {r.app_id for r in self._in_flight}

    def push(self, request: Request) -> Request | None:
        """Queue a new frame; returns the oldest frame it pushed out of a full queue, if any.

        :raises KeyError: the app is not registered.
        """
        try:
            queue = self._apps[request.app_id]
        except KeyError:
            raise KeyError(f'unknown app {request.app_id!r}; known: {sorted(self._apps)}') from None
        evicted = queue.frames[0] if len(queue.frames) == queue.frames.maxlen else None
        queue.frames.append(request)
        return evicted

    def requeue(self, request: Request) -> None:
        """Put back a request that ran a step and goes on (its ``next_step`` already advanced)."""
        self._running = max(0, self._running - 1)
        if request.app_id in self._apps:
            self._in_flight.append(request)

    def finished(self, count: int = 1) -> None:
        """Tell the scheduler that ``count`` started requests of the last batch are done."""
        self._running = max(0, self._running - count)

    # --- state ----------------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return sum(len(q.frames) for q in self._apps.values())

    @property
    def in_flight(self) -> int:
        """Started, unfinished requests (waiting for a step or running in one)."""
        return len(self._in_flight) + self._running

    def queued_counts(self) -> tuple[int, int]:
        """(frames queued, not started; of them marked late), for the flight recorder."""
        frames = [r for q in self._apps.values() for r in q.frames]
        return len(frames), sum(r.late for r in frames)

    def pending(self) -> bool:
        return bool(self._in_flight) or any(q.frames for q in self._apps.values())

    def latest_start_ns(self, due_before_ns: float = math.inf, due_from_ns: float = -math.inf) -> float:
        """When the most urgent waiting work must start for its next step to make its deadline:
        min over on-time bounded requests due in ``[due_from_ns, due_before_ns)`` of ``deadline - (that
        step at batch 1 + tail)``; ``inf``: nothing waits that could be made late. A run that ends after
        it would cost that request its bound (the engine stops fusing steps there).

        ``due_before_ns``: the running batch's earliest deadline (the engine's ``split_runs_for``
        'earlier' A/B): work due later would come after the batch in EDF order anyway.
        ``due_from_ns``: a step by choice's deadline: work due before it goes first in EDF order."""
        tail_ms = self.tail_ms()
        return min((r.deadline_ns - (self.predict_ms(r.next_step, 1) + tail_ms) * _NS_PER_MS
                    for r in self._on_time_waiting(due_from_ns, due_before_ns)), default=math.inf)

    def _on_time_waiting(self, due_from_ns: float, due_before_ns: float) -> Iterator[Request]:
        """The waiting (queued or started) on-time requests with a latency bound, due in ``[due_from_ns,
        due_before_ns)``: the work a run or a step by choice could make late."""
        for r in itertools.chain(self._in_flight, *(q.frames for q in self._apps.values())):
            if r.hard and not r.late and due_from_ns <= r.deadline_ns < due_before_ns:
                yield r

    def demand_start_ns(self, due_from_ns: float = -math.inf) -> float:
        """When the waiting on-time bounded work due from ``due_from_ns`` must start for all of it to make its
        deadlines, run in EDF order with the requests at one step batched: min over each such deadline ``D`` of
        ``D - tail - sum over steps of that step for the requests at it due by D`` (in batches of at most
        ``max_batch``); ``inf``: nothing waits. :meth:`latest_start_ns` asks the same of each request alone:
        four frames that came together need one batch of four, which takes longer than one."""
        tail_ms = self.tail_ms()
        predict_ms = _memo(self.predict_ms)
        waiting = sorted(self._on_time_waiting(due_from_ns, math.inf), key=lambda r: r.deadline_ns)
        at_step: collections.Counter[int] = collections.Counter()
        latest = math.inf
        for r in waiting:
            at_step[r.next_step] += 1
            ms = tail_ms
            for step, n in at_step.items():
                full, rest = divmod(n, self.max_batch)
                ms += full * predict_ms(step, self.max_batch) + (predict_ms(step, rest) if rest else 0.0)
            latest = min(latest, r.deadline_ns - ms * _NS_PER_MS)
        return latest

    # --- the decision ---------------------------------------------------------------------------------
    def _behind(self, request: Request) -> bool:
        """Whether ``request`` waits behind on-time work: late and not started (a started one only
        without :attr:`finish_started`; with enforcement a started request never waits late)."""
        return request.late and not (request.started and self.finish_started)

    def _fits(self, request: Request, now_ns: int, ms: float) -> bool:
        return not request.hard or now_ns + ms * _NS_PER_MS <= request.deadline_ns

    def next_batch(self, now_ns: int, expected: Sequence[Expected] = ()) -> Schedule:
        """Decide what runs now (see the module docstring); the returned batch's requests leave the
        queues, and started ones must come back through :meth:`requeue` or :meth:`finished`.

        :param expected: frames about to come (:class:`Expected`). Steps are not preempted: a batch
            whose step would still run when an expected frame due sooner must start is held back, if
            it keeps its own deadlines behind that frame (:meth:`_wait_for`); the schedule then has no
            batch and says until when to wait.
        """
        dropped: list[Request] = []
        expired: list[Request] = []
        predict_ms, tail_ms = _memo(self.predict_ms), self.tail_ms()
        self._classify(now_ns, dropped, expired, predict_ms, tail_ms)
        can_start = self.max_in_flight - self.in_flight
        candidates = list(self._in_flight)
        if can_start > 0:
            for q in self._apps.values():
                candidates += q.frames
        if not candidates:
            return Schedule(None, tuple(dropped), tuple(expired))
        # Late work heads a batch only in idle time: it must never delay a frame that can still make
        # its deadline. It may ride behind every on-time candidate, in a batch at its step that keeps
        # the on-time members' deadlines (a late frame does not limit a batch, see _due_by): marked
        # late on a prediction with margins, a frame served in the next batch often still makes it,
        # while in idle time, at 16 busy cameras, it waited 12-20 ms (H200 traces, session 26).
        behind = self._behind
        if not self.late_riders:
            candidates = [r for r in candidates if not behind(r)] or candidates
        demoted = self.best_effort_apps()
        if self.demoted_last:
            candidates.sort(key=lambda r: (r.app_id in demoted, behind(r), r.deadline_ns, r.arrival_ns))
        else:
            candidates.sort(key=lambda r: (behind(r), r.app_id in demoted, r.deadline_ns, r.arrival_ns))
        head = candidates[0]
        step = head.next_step
        limit = self.max_batch if step > 0 else min(self.max_batch, can_start)
        members = [head]
        predicted = predict_ms(step, 1)
        # the earliest deadline among the on-time bounded members: the one a longer batch must keep
        earliest = _due_by(head)
        for r in candidates[1:]:
            if len(members) >= limit:
                break
            if r.next_step != step:
                continue
            ms = predict_ms(step, len(members) + 1)
            # The batch grows only if no on-time bounded member (the EDF head included) would miss its
            # deadline (also without enforce_deadlines: batching must not make anyone late).
            finish_ns = now_ns + (ms + tail_ms) * _NS_PER_MS
            if finish_ns <= min(earliest, _due_by(r)):
                members.append(r)
                predicted = ms
                earliest = min(earliest, _due_by(r))
        if len(members) > 1:
            # the EDF prefix that costs least per frame: where a batch costs more than its frames one
            # after another (a 2-core CPU: a batch of 2 took 3.7x one frame at cifar10_lite0's first
            # stage), the others wait for the next turn; padded CUDA graphs make the largest cheapest
            size = min(range(1, len(members) + 1), key=lambda m: (predict_ms(step, m) / m, -m))
            members, predicted = members[:size], predict_ms(step, size)
        if expected:
            wait_until = self._wait_for(expected, members, predicted, now_ns, tail_ms)
            if wait_until is not None:
                return Schedule(None, tuple(dropped), tuple(expired), wait_until_ns=wait_until)
        self._take(members)
        return Schedule(Batch(step, tuple(members), predicted), tuple(dropped), tuple(expired))

    def first_step_ns(self, tail_ms: float) -> float:
        """A frame's own first step at its expected time, ``tail_ms`` on top, ns: an expected frame must
        start by its deadline less this, both for holding work back for it (:meth:`_wait_for`) and for
        ending a run of fused steps before it (the engine). The expected time, as the drop rule judges a
        frame hopeless: with the margin, a 10 ms app beside its transport on a 2-core CPU looked
        hopeless and was never waited for."""
        return (self.expected_ms(0, 1) + tail_ms) * _NS_PER_MS

    def _wait_for(self, expected: Sequence[Expected], members: list[Request], predicted_ms: float, now_ns: int,
                  tail_ms: float) -> int | None:
        """Until when to hold ``members`` back for an expected frame, or ``None``: one that would come
        while their step runs, must start before it ends, is due before all of them, can still make
        its own deadline, and after which they still make theirs. A frame overdue by more than
        :data:`WAIT_SLACK_NS` (or twice its jitter) is not waited for: its camera is late or stopped."""
        due = min(_due_by(r) for r in members)
        if due == math.inf:
            return None
        own = {r.app_id for r in members}
        first_ns = self.first_step_ns(tail_ms)
        step_ns = (predicted_ms + tail_ms) * _NS_PER_MS            # this batch's step, on the safe side
        for e in expected:
            slack = max(2 * e.jitter_ns, WAIT_SLACK_NS)
            latest = e.deadline_ns - first_ns
            if (e.app_id in own or e.deadline_ns >= due or now_ns > e.submit_ns + slack
                    or e.submit_ns > now_ns + step_ns or latest >= now_ns + step_ns or e.submit_ns > latest):
                continue
            if e.submit_ns + slack + first_ns + step_ns <= due:
                return e.submit_ns + slack
        return None

    def _classify(self, now_ns: int, dropped: list[Request], expired: list[Request], predict_ms: PredictFn,
                  tail_ms: float) -> None:
        """Mark late requests; with enforcement, drop late frames of DROP apps (but for probes) and
        expire requests in flight whose next step would overrun."""
        expected_ms = predict_ms if self.expected_ms is self.predict_ms else _memo(self.expected_ms)
        on_path = not self.enforce_deadlines and self.finish_started
        spans: dict[tuple[int, int], float] = {}

        def to_stop(r: Request) -> float:
            """Expected time from now to the first exit ``r`` may stop at, at batch 1, tail included
            (with enforcement, the next one: a late request is served at its fastest exit)."""
            span = (r.next_step, max(r.next_step, r.first_stop) if on_path else r.next_step)
            ms = spans.get(span)
            if ms is None:
                ms = spans[span] = sum(expected_ms(k, 1) for k in range(span[0], span[1] + 1)) + tail_ms
            return ms

        for q in self._apps.values():
            if not q.frames or not any(r.hard for r in q.frames):
                continue
            keep = []
            for r in q.frames:
                if not r.late and not self._fits(r, now_ns, to_stop(r)):
                    r.late = True
                    if self.enforce_deadlines and q.late_policy is LatePolicy.DROP:
                        q.late_drops += 1
                        if q.late_drops < self.probe_every:
                            dropped.append(r)
                            continue
                        q.late_drops = 0   # a probe: served late, measured
                keep.append(r)
            if len(keep) != len(q.frames):
                q.frames.clear()
                q.frames.extend(keep)
        if not self._in_flight:
            return
        if self.enforce_deadlines:
            keep = []
            for r in self._in_flight:
                (keep if self._fits(r, now_ns, predict_ms(r.next_step, 1) + tail_ms) else expired).append(r)
            self._in_flight = keep
        else:
            for r in self._in_flight:
                if r.hard and not r.late and not self._fits(r, now_ns, to_stop(r)):
                    r.late = True

    def _take(self, members: list[Request]) -> None:
        chosen = {id(r) for r in members}
        if any(r.started for r in members):
            self._in_flight = [r for r in self._in_flight if id(r) not in chosen]
        for r in members:
            if not r.started:
                q = self._apps[r.app_id]
                q.frames.remove(r)
                if not r.late:
                    q.late_drops = 0
        self._running += len(members)

    def drain(self) -> list[Request]:
        """Remove and return everything waiting (on shutdown)."""
        out = list(self._in_flight)
        self._in_flight = []
        for q in self._apps.values():
            out += q.frames
            q.frames.clear()
        return out
