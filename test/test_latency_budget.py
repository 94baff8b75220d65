"""What an end-to-end bound holds besides compute, in the engine: the frames' age on arrival (from their
stamp), learnt with its tail, and the delivery allowance (publication -> subscriber); both count in
feasibility, admission and its re-check, and the allowance moves the planned deadline but not the
judgement of a result."""
import re
import time

import numpy as np
import pytest

from delen_ros.core.admission import Unschedulable
from delen_ros.core.app_ledger import HOST_TAILS_NOTE
from delen_ros.core.bounds import Bounds, InfeasibleBounds
from delen_ros.core.engine import Engine
from delen_ros.core.policies import DelenPolicy
from fakes import FakeClock, FakeRunner, fake_image, fake_model, synthetic_profile

PROFILE = synthetic_profile()   # exit 0: 1.1 ms at batch 1, exit 1: 3.2 ms, ...


def make_engine(**kwargs) -> Engine:
    model = fake_model()
    return Engine(model, PROFILE, on_result=kwargs.pop('on_result', lambda r: None),
                  runner=FakeRunner(model, sleep_ms=(0, 0, 0, 0)),
                  **{'overhead_prior_ms': 0.0, 'utilisation_limit': 1.0, 'max_batch': 1, 'admission_headroom': 0.0,
                     **kwargs})


def submit_aged(engine: Engine, clock: FakeClock, app_ids, *, age_ms: float, count: int = 30,
                every_ms: float = 100.0) -> None:
    """Frames that reach the engine ``age_ms`` after their stamp, every ``every_ms``."""
    for _ in range(count):
        engine.submit(app_ids, np.zeros((8, 8), np.uint8), arrival_ns=clock() - int(age_ms * 1e6))
        clock.advance(every_ms)


def test_a_bound_feasible_for_fresh_frames_is_rejected_once_frames_arrive_old():
    clock = FakeClock()
    engine = make_engine(clock=clock)
    assert engine.plan(Bounds(max_latency_ms=6.0)).exit_index == 1       # 3.2 ms: fits at age 0
    engine.set_app('cam', Bounds(max_latency_ms=100.0), source='cam')
    submit_aged(engine, clock, ['cam'], age_ms=5.0)
    assert engine.feasible_range().transport_ms == pytest.approx(5.0, abs=0.05)
    assert engine.exit_latency_ms()[0] == pytest.approx(5.0 + 1.1, abs=0.05)
    with pytest.raises(InfeasibleBounds, match=r'below the fastest exit end to end \(6\.1\d* ms, of it 5(\.0\d*)? ms '
                                               r'frame age on arrival\)'):
        engine.set_app('tight', Bounds(max_latency_ms=6.0), source='cam')


def test_the_age_is_taken_at_its_tail_and_one_stall_does_not_move_it():
    clock = FakeClock()
    engine = make_engine(clock=clock)
    engine.set_app('cam', Bounds(), source='cam')
    submit_aged(engine, clock, ['cam'], age_ms=1.0, count=100, every_ms=10.0)   # the app's first 1 s: not sampled
    for i in range(200):
        submit_aged(engine, clock, ['cam'], age_ms=1.0 + i % 100, count=1, every_ms=10.0)   # 1 .. 100 ms, evenly
    assert engine.feasible_range().transport_ms == pytest.approx(99.0, abs=0.1)   # the 99th percentile
    for i in range(600):                               # a window (512 frames) later: 2 ms but for one stall
        submit_aged(engine, clock, ['cam'], age_ms=500.0 if i == 300 else 2.0, count=1, every_ms=10.0)
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)


def test_recheck_flags_an_admitted_app_whose_frames_arrive_old():
    clock = FakeClock()
    engine = make_engine(clock=clock)
    engine.set_app('a', Bounds(max_latency_ms=6.0), rate_hz=10.0)          # 1.1 + 1.1 blocking <= 6
    assert engine.stats('a', recheck_s=0).unschedulable_reason == ''
    submit_aged(engine, clock, ['a'], age_ms=5.0)
    reason = engine.stats('a', recheck_s=0).unschedulable_reason
    assert re.search(r'leaves (1|0\.9\d*) ms of device time \(after 5(\.0\d*)? ms frame age on arrival\)', reason), reason


def test_delivery_allowance_counts_in_feasibility_and_admission():
    plain = make_engine()
    engine = make_engine(delivery_allowance_ms=2.0)
    assert engine.exit_latency_ms() == pytest.approx([v + 2.0 for v in plain.exit_latency_ms()])
    assert engine.feasible_range().delivery_ms == 2.0
    assert plain.plan(Bounds(max_latency_ms=4.0)).exit_index == 1
    assert engine.plan(Bounds(max_latency_ms=4.0)).exit_index == 0
    with pytest.raises(InfeasibleBounds, match='2 ms delivery allowance'):
        engine.set_app('a', Bounds(max_latency_ms=3.0))
    engine.set_app('a', Bounds(max_latency_ms=5.0), rate_hz=10.0)            # alone: 5 - 2 >= 1.32 (prior)
    # 'b' is due before 'a', so a running 1.32 ms step of 'a' may hold it up: 4 - 2 < 1.32 + 1.32
    with pytest.raises(Unschedulable, match=r'leaves 2 ms .*2 ms delivery allowance.* up to 1.32 ms'):
        engine.set_app('b', Bounds(max_latency_ms=4.0), rate_hz=10.0)
    plain.set_app('a', Bounds(max_latency_ms=5.0), rate_hz=10.0)
    plain.set_app('b', Bounds(max_latency_ms=4.0), rate_hz=10.0)             # 4 >= 1.32 + 1.32: fits without it
    with pytest.raises(ValueError, match='delivery_allowance_ms'):
        make_engine(delivery_allowance_ms=-1.0)


def test_a_publication_lag_is_kept_with_the_allowance():
    """Another process publishing (the node's outlet) adds its measured lag to what each bound keeps:
    feasibility, plans, and the scheduler's deadlines read the sum."""
    allowance = make_engine(delivery_allowance_ms=2.0)
    lagging = make_engine(delivery_allowance_ms=1.5)
    lagging.publication_lag_ms = 0.5
    assert lagging.kept_after_handover_ms == 2.0 and lagging.delivery_allowance_ms == 1.5
    assert lagging.exit_latency_ms() == pytest.approx(allowance.exit_latency_ms())
    assert lagging.feasible_range().delivery_ms == 2.0
    assert lagging.plan(Bounds(max_latency_ms=4.0)).exit_index == allowance.plan(Bounds(max_latency_ms=4.0)).exit_index
    lagging.set_app('a', Bounds(max_latency_ms=10.0))
    assert lagging._scheduler.deadline_ns('a', 0) == allowance_deadline(10.0, 2.0)


def allowance_deadline(bound_ms: float, kept_ms: float) -> int:
    return int((bound_ms - kept_ms) * 1e6)


@pytest.mark.parametrize('allowance_ms', [0.0, 100.0])
def test_the_allowance_moves_the_planned_deadline_not_the_judgement(allowance_ms):
    """A frame 150 ms old with a 200 ms bound: without an allowance there is time for the final exit;
    with 100 ms kept for delivery its deadline has passed (served at the fastest exit, late), yet
    it is published within its bound, and judged so."""
    results = []
    engine = make_engine(on_result=results.append, delivery_allowance_ms=allowance_ms)
    engine.set_app('a', Bounds(max_latency_ms=200.0))
    with engine:
        engine.submit(['a'], fake_image(0), arrival_ns=time.perf_counter_ns() - 150_000_000)
        end = time.monotonic() + 10.0
        while not results and time.monotonic() < end:
            time.sleep(0.002)
    (result,) = results
    assert result.latency_ms < 200.0 and result.bounds_met
    if allowance_ms:
        assert result.late and result.exit_index == 0
    else:
        assert not result.late and result.exit_index == PROFILE.final_exit


class _Spy(DelenPolicy):
    """Ours, noting the latency limit of every decision it is asked for."""

    def __init__(self):
        super().__init__()
        self.limits: list[float | None] = []

    def _decide_with(self, ctx, confidence):
        self.limits.append(ctx.latency_limit_ms)
        return super()._decide_with(ctx, confidence)


@pytest.mark.parametrize('keeps', [True, False])
def test_the_policy_decides_by_the_schedulers_deadline(keeps):
    """The engine hands its delivery allowance to the policy, whose latency limit is then the
    deadline the scheduler plans by (bound - allowance); turned off (an A/B), the whole bound."""
    results, spy = [], _Spy()
    engine = make_engine(on_result=results.append, delivery_allowance_ms=2.0, policy=spy)
    engine.policy_keeps_allowance = keeps
    engine.set_app('a', Bounds(max_latency_ms=50.0))
    with engine:
        engine.submit(['a'], fake_image(0))
        end = time.monotonic() + 10.0
        while not results and time.monotonic() < end:
            time.sleep(0.002)
    assert results and spy.limits
    assert set(spy.limits) == {48.0 if keeps else 50.0}


def test_recheck_tells_an_app_whose_frames_arrive_too_old_and_serves_it_with_the_others():
    """Short of time outside the device (its frames' age), not of device time: served after the other it
    would get none of what it lacks (session 44: on H200 hosts that stole CPU such 10 ms apps, demoted, met
    17.7-80 % of their frames; served with the others 92.3-98.7 %). Session 43's rule demoted it."""
    clock = FakeClock()
    engine = make_engine(clock=clock)
    engine.set_app('tight', Bounds(max_latency_ms=6.0), rate_hz=10.0)
    engine.set_app('loose', Bounds(max_latency_ms=100.0), rate_hz=10.0)
    submit_aged(engine, clock, ['tight', 'loose'], age_ms=5.0)   # too old for 'tight' only
    tight, loose = engine._apps['tight'], engine._apps['loose']

    def late_frames() -> None:   # the other app's frames missing theirs too: what lets the re-check demote
        for app in (tight, loose):
            app.results_out += 3
            app.served_late += 3

    for _ in range(engine.demote_after + 1):
        late_frames()
        reason = engine.stats('tight', recheck_s=0).unschedulable_reason
        assert 'frame age' in reason and reason.endswith(HOST_TAILS_NOTE)
        assert engine._scheduler.best_effort_apps() == set()
    engine.demote_on_host_tails = True                           # the A/B: session 43's rule
    for _ in range(engine.demote_after):
        late_frames()
        reason = engine.stats('tight', recheck_s=0).unschedulable_reason
    assert 'demoted' in reason
    assert engine._scheduler.best_effort_apps() == {'tight'}
