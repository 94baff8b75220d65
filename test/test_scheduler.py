"""The scheduler with a fake clock: EDF, hopeless drops, bounded queues, cross-app batching, expiry."""
import math

import pytest

from delen_ros.core.scheduler import WAIT_SLACK_NS, Expected, Request, Scheduler
from fakes import FakeClock, synthetic_profile

PROFILE = synthetic_profile()   # steps 1.1, 2.1, 3.1, 4.1 ms at batch 1; batch b costs (1 + 0.25 (b-1))x


def predict(step: int, batch: int) -> float:
    return PROFILE.step_ms(step, batch)


def make(apps=(), *, clock=None, late_policy='serve_fastest', **kwargs):
    s = Scheduler(predict, num_steps=PROFILE.num_exits, **kwargs)
    for app_id, bound in apps:
        s.set_app(app_id, latency_bound_ms=bound, late_policy=late_policy)
    return s


def arrive(s: Scheduler, app_id: str, clock: FakeClock, frame=None) -> Request:
    r = s.make_request(app_id, frame if frame is not None else object(), clock())
    s.push(r)
    return r


@pytest.mark.parametrize('kwargs', [
    {'num_steps': 0}, {'max_batch': 0}, {'queue_depth': 0}, {'max_in_flight': 0}, {'default_deadline_ms': 0.0},
    {'default_deadline_ms': float('nan')}, {'probe_every': 0},
])
def test_validates(kwargs):
    options = {'num_steps': 4, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Scheduler(predict, **options)


def test_deadlines():
    clock = FakeClock()
    s = make([('bounded', 20.0), ('free', None)], default_deadline_ms=300.0)
    a, b = arrive(s, 'bounded', clock), arrive(s, 'free', clock)
    assert a.deadline_ns - a.arrival_ns == 20_000_000 and a.hard
    assert b.deadline_ns - b.arrival_ns == 300_000_000 and not b.hard


def test_edf_order_across_apps():
    clock = FakeClock()
    s = make([('slow', 100.0), ('fast', 10.0), ('mid', 50.0)], max_batch=1)
    for app in ('slow', 'fast', 'mid'):
        arrive(s, app, clock)
    order = []
    while s.pending():
        batch = s.next_batch(clock()).batch
        order.append(batch.requests[0].app_id)
        s.finished(1)
    assert order == ['fast', 'mid', 'slow']


def test_best_effort_app_goes_after_the_others_whatever_its_deadline():
    clock = FakeClock()
    s = make([('hopeless', 5.0), ('tight', 10.0), ('loose', 50.0)], max_batch=1)
    s.set_best_effort('hopeless', True)
    for app in ('hopeless', 'tight', 'loose'):
        arrive(s, app, clock)
    order = []
    while s.pending():
        order.append(s.next_batch(clock()).batch.requests[0].app_id)
        s.finished(1)
    assert order == ['tight', 'loose', 'hopeless']
    s.set_best_effort('hopeless', False)              # schedulable again: EDF with the others
    for app in ('loose', 'hopeless'):
        arrive(s, app, clock)
    assert s.next_batch(clock()).batch.requests[0].app_id == 'hopeless'
    s.set_best_effort('unknown', True)                # an app removed meanwhile: nothing to do


@pytest.mark.parametrize('demoted_last, first', [(True, 'kept'), (False, 'demoted')])
def test_a_late_frame_of_an_app_that_fits_goes_before_a_demoted_apps_frame(demoted_last, first):
    # marked late on expected times, it still makes its deadline about as often as not; a demoted app has
    # been told it is served after the others
    clock = FakeClock()
    s = make([('kept', 3.0), ('demoted', 50.0)], max_batch=1)
    s.demoted_last = demoted_last
    s.set_best_effort('demoted', True)
    kept = arrive(s, 'kept', clock)
    clock.advance(2.5)                                 # 0.5 ms left: the first step (1.1 ms) cannot make it
    arrive(s, 'demoted', clock)
    assert s.next_batch(clock()).batch.requests[0].app_id == first
    assert kept.late


def test_edf_older_frame_of_looser_app_first_when_its_deadline_is_earlier():
    clock = FakeClock()
    s = make([('loose', 30.0), ('tight', 10.0)], max_batch=1)
    arrive(s, 'loose', clock)            # deadline t + 30
    clock.advance(25)
    arrive(s, 'tight', clock)            # deadline t + 35
    assert s.next_batch(clock()).batch.requests[0].app_id == 'loose'


def test_unbounded_app_is_not_starved():
    clock = FakeClock()
    s = make([('free', None), ('busy', 10.0)], max_batch=1, default_deadline_ms=100.0)
    arrive(s, 'free', clock)
    served = []
    for _ in range(30):                  # a new bounded frame every 5 ms
        clock.advance(5)
        arrive(s, 'busy', clock)
        batch = s.next_batch(clock()).batch
        served.append(batch.requests[0].app_id)
        s.finished(1)
    assert 'free' in served               # once 'free' has the earliest deadline (t + 100) it runs


def test_hopeless_frames_are_dropped_not_run():
    clock = FakeClock()
    s = make([('a', 5.0), ('free', None)], late_policy='drop')
    late = arrive(s, 'a', clock)
    ok_free = arrive(s, 'free', clock)
    clock.advance(4.0)                   # 4 + 1.1 (first step) > 5
    out = s.next_batch(clock())
    assert out.dropped == (late,) and late.late
    assert out.batch.requests == (ok_free,)   # unbounded frames are never hopeless


def test_hopeless_frames_served_late_only_in_idle_time():
    clock = FakeClock()
    s = make([('a', 5.0), ('b', 50.0)], max_batch=1)        # serve_fastest
    late = arrive(s, 'a', clock)
    clock.advance(4.0)
    ok = arrive(s, 'b', clock)
    out = s.next_batch(clock())
    assert out.dropped == () and late.late and not ok.late
    assert out.batch.requests == (ok,)                      # on time first, although its deadline is later
    s.finished(1)
    assert s.next_batch(clock()).batch.requests == (late,)  # then the late one, in idle time


def test_a_late_frame_rides_behind_on_time_work_where_the_batch_has_room_for_it():
    clock = FakeClock()
    s = make([('a', 5.0), ('b', 50.0)])
    late = arrive(s, 'a', clock)
    clock.advance(4.0)
    ok = arrive(s, 'b', clock)
    out = s.next_batch(clock())
    assert late.late and out.batch.requests == (ok, late)   # led by the on-time frame, the late one behind


def test_without_late_riders_late_frames_wait_for_idle_time():   # the A/B switch, as before session 26
    clock = FakeClock()
    s = make([('a', 5.0), ('b', 50.0)])
    s.late_riders = False
    late = arrive(s, 'a', clock)
    clock.advance(4.0)
    ok = arrive(s, 'b', clock)
    assert s.next_batch(clock()).batch.requests == (ok,)
    s.finished(1)
    assert s.next_batch(clock()).batch.requests == (late,) and late.late


def test_a_late_frame_never_makes_the_batch_it_would_ride_in_late():
    clock = FakeClock()
    s = make([('a', 5.0), ('b', 1.2)])          # b's step 0: 1.1 ms alone fits 1.2 ms, 1.375 ms at batch 2 does not
    late = arrive(s, 'a', clock)
    clock.advance(4.0)
    ok = arrive(s, 'b', clock)
    out = s.next_batch(clock())
    assert late.late and out.batch.requests == (ok,)
    s.finished(1)
    assert s.next_batch(clock()).batch.requests == (late,)  # then in idle time


def _drain_random_queues(seed: int) -> int:
    """Random queues of on-time and late frames, drained batch by batch, checking that a late frame never
    leads a batch while on-time work waits and that no batch is predicted to end after an on-time
    member's deadline; returns how many late frames rode behind on-time work."""
    import random
    rng = random.Random(seed)
    clock = FakeClock()
    apps = [(f'app{i}', rng.choice([3.0, 5.0, 10.0, 33.0])) for i in range(6)]
    s = make(apps, queue_depth=4, max_batch=4)
    for _ in range(40):
        arrive(s, rng.choice(apps)[0], clock)
        clock.advance(rng.uniform(0.0, 1.5))
    riders = 0
    while s.pending():
        now = clock()
        waiting = [r for q in s._apps.values() for r in q.frames] + list(s._in_flight)
        batch = s.next_batch(now).batch
        if batch is None:
            break
        members = batch.requests
        assert not members[0].late or all(r.late for r in waiting), 'a late frame led while on-time work waited'
        riders += 0 if members[0].late else sum(r.late for r in members)
        due = [r.deadline_ns for r in members if r.hard and not r.late]
        if due:
            assert now + batch.predicted_ms * 1_000_000 <= min(due)
        clock.advance(batch.predicted_ms)
        s.finished(len(members))
    return riders


@pytest.mark.parametrize('seed', range(20))
def test_riders_never_lead_and_never_make_an_on_time_member_late(seed):
    _drain_random_queues(seed)


def test_random_queues_have_riders():   # the property above is not checked on batches without one
    assert sum(_drain_random_queues(seed) for seed in range(20)) > 0


def test_tail_counts_in_the_late_test():
    clock = FakeClock()
    s = make([('a', 5.0)], late_policy='drop', tail_ms=lambda: 1.0)
    r = arrive(s, 'a', clock)
    clock.advance(3.5)                   # 3.5 + 1.1 fits, 3.5 + 1.1 + 1.0 (tail) does not
    assert s.next_batch(clock()).dropped == (r,)


@pytest.mark.parametrize('policy', ['always_final', 'static_exit', 'check_after_stage', 'fixed_confidence'])
def test_late_frames_never_delay_feasible_ones_without_enforcement(policy):
    """The baselines' case: a stream of hopeless 5 ms frames must not starve a feasible 33 ms app."""
    clock = FakeClock()
    s = make([('tight', 5.0), ('ok', 33.0)], max_batch=1, enforce_deadlines=False, queue_depth=4)
    served_ok = 0
    for _ in range(20):
        arrive(s, 'tight', clock)
        clock.advance(6.0)               # every tight frame is hopeless by the time the device is free
        ok = arrive(s, 'ok', clock)
        batch = s.next_batch(clock()).batch
        assert batch.requests[0] is ok or batch.requests[0].late is False
        served_ok += batch.requests[0] is ok
        s.finished(1)
    assert served_ok == 20



@pytest.mark.parametrize('enforce, first_stop, late', [
    (False, 0, False), (False, 3, True),   # the last exit is 10.4 ms away: out of a 6 ms bound
    (True, 3, False)])                     # with enforcement a late frame is served at its fastest exit
def test_lateness_is_judged_on_the_way_to_the_first_exit_the_policy_may_stop_at(enforce, first_stop, late):
    clock = FakeClock()
    s = make(enforce_deadlines=enforce)
    s.set_app('a', latency_bound_ms=6.0, first_stop=first_stop)
    r = arrive(s, 'a', clock)
    s.next_batch(clock())
    assert r.late is late and r.first_stop == first_stop


def test_first_stop_must_be_an_exit():
    with pytest.raises(ValueError, match='first_stop'):
        make().set_app('a', latency_bound_ms=6.0, first_stop=PROFILE.num_exits)


@pytest.mark.parametrize('finish_started', [True, False])
def test_without_enforcement_started_work_is_finished_in_edf_order_even_late(finish_started):
    """Left waiting for idle time, late requests part-way through the network starved under overload
    and held their in-flight slots (benchmarks/overload_collapse.py); begun, they are finished first."""
    clock = FakeClock()
    s = make([('a', 20.0), ('b', 20.0)], max_batch=1, enforce_deadlines=False)
    s.finish_started = finish_started
    started = arrive(s, 'a', clock)
    assert s.next_batch(clock()).batch.requests == (started,)
    started.next_step = 1
    s.requeue(started)
    clock.advance(19.0)                  # step 1 (2.1 ms) cannot end by its deadline any more
    fresh = arrive(s, 'b', clock)
    batch = s.next_batch(clock()).batch
    assert started.late and not fresh.late
    assert batch.requests == ((started,) if finish_started else (fresh,))

def test_drop_policy_probes_one_late_frame_in_a_row():
    clock = FakeClock()
    s = make([('a', 1.0)], late_policy='drop', probe_every=3)   # 1 ms < the 1.1 ms first step: always late
    outcomes = []
    for _ in range(6):
        r = arrive(s, 'a', clock)
        out = s.next_batch(clock())
        outcomes.append('probe' if out.batch is not None and out.batch.requests == (r,) else
                        'drop' if out.dropped == (r,) else '?')
        if out.batch is not None:
            s.finished(1)
    assert outcomes == ['drop', 'drop', 'probe', 'drop', 'drop', 'probe']


def test_frame_that_still_fits_is_kept():
    clock = FakeClock()
    s = make([('a', 5.0)])
    r = arrive(s, 'a', clock)
    clock.advance(3.9)                   # 3.9 + 1.1 = 5.0: just fits
    out = s.next_batch(clock())
    assert out.dropped == () and out.batch.requests == (r,)


@pytest.mark.parametrize('depth, pushed', [(1, 5), (2, 5), (3, 2)])
def test_bounded_queue_keeps_newest(depth, pushed):
    clock = FakeClock()
    s = make([('a', None)], queue_depth=depth)
    requests, evicted = [], []
    for _ in range(pushed):
        r = s.make_request('a', object(), clock())
        requests.append(r)
        gone = s.push(r)
        if gone is not None:
            evicted.append(gone)
        clock.advance(1)
    assert evicted == requests[:max(0, pushed - depth)]           # the oldest go
    assert s.queued == min(depth, pushed)
    taken = s.next_batch(clock()).batch.requests
    assert set(map(id, taken)) == set(map(id, requests[-depth:]))  # the newest stay


def test_memory_bounded_under_overload():
    clock = FakeClock()
    apps = [(f'app{i}', 30.0 if i % 2 else None) for i in range(5)]
    s = make(apps, queue_depth=2, max_batch=4, max_in_flight=8)
    for n in range(5000):
        arrive(s, apps[n % 5][0], clock)
        clock.advance(0.1)
        if n % 10 == 0:
            out = s.next_batch(clock())
            if out.batch is not None:
                for r in out.batch.requests:     # half go on, half finish
                    r.next_step += 1
                    if r.next_step < PROFILE.num_exits and id(r) % 2:
                        s.requeue(r)
                    else:
                        s.finished(1)
        assert s.queued <= 5 * 2 and s.in_flight <= 8 + 4


def test_batches_across_apps_at_the_same_step():
    clock = FakeClock()
    s = make([(f'app{i}', 50.0) for i in range(3)] + [('free', None)], max_batch=8)
    requests = [arrive(s, a, clock) for a in ('app0', 'app1', 'app2', 'free')]
    batch = s.next_batch(clock()).batch
    assert batch.step == 0 and set(map(id, batch.requests)) == set(map(id, requests))
    assert batch.predicted_ms == pytest.approx(predict(0, 4))
    assert batch.requests[-1].app_id == 'free'   # deadline order: the unbounded one (t + 250) last


def test_per_frame_execution_with_max_batch_one():
    clock = FakeClock()
    s = make([(f'app{i}', 50.0) for i in range(3)], max_batch=1)
    for i in range(3):
        arrive(s, f'app{i}', clock)
    sizes = []
    while s.pending():
        sizes.append(len(s.next_batch(clock()).batch.requests))
        s.finished(1)
    assert sizes == [1, 1, 1]


def test_batch_stops_growing_before_a_member_would_miss_its_deadline():
    clock = FakeClock()
    # tight: 1.1 ms alone fits, 1.375 with 2, 1.65 with 3 does not
    s = make([('tight', 1.5), ('b', 50.0), ('c', 50.0)], max_batch=8)
    tight = arrive(s, 'tight', clock)
    others = [arrive(s, a, clock) for a in ('b', 'c')]
    batch = s.next_batch(clock()).batch
    assert batch.requests[0] is tight and len(batch.requests) == 2
    assert batch.requests[1] is others[0]
    assert s.queued == 1


def test_waiting_work_must_start_in_time_for_all_of_it_batched():
    """Four frames come together with one bound: alone, each could start 1.0 ms before its deadline; together
    they need one batch of four (1.6 ms), so all four must start by then. Past ``max_batch`` the rest run as a
    second batch; work due before ``due_from_ns`` and late work do not count."""
    costs = {1: 1.0, 2: 1.2, 3: 1.4, 4: 1.6}
    s = Scheduler(lambda step, b: costs[b], num_steps=1, max_batch=3, tail_ms=lambda: 0.5)
    for app in ('a', 'b', 'c', 'd'):
        s.set_app(app, latency_bound_ms=10.0)
    clock = FakeClock()
    assert s.demand_start_ns() == math.inf
    first = arrive(s, 'a', clock)
    assert s.demand_start_ns() == s.latest_start_ns() == first.deadline_ns - 1.5e6
    clock.advance(0.1)
    others = [arrive(s, app, clock) for app in ('b', 'c', 'd')]
    due = others[0].deadline_ns
    assert s.latest_start_ns() == first.deadline_ns - 1.5e6
    # a, b, c in one batch of three (1.4 ms), d in a second (1.0 ms): d's deadline less 2.4 + 0.5 ms
    assert s.demand_start_ns() == pytest.approx(due - 2.9e6)
    assert s.demand_start_ns(due_from_ns=due) == pytest.approx(due - 1.9e6)   # b, c, d: one batch of three
    for r in others:
        r.late = True
    assert s.demand_start_ns() == first.deadline_ns - 1.5e6


def test_a_batch_is_the_prefix_that_costs_least_per_frame():
    """A device where a batch costs more than its frames one after another (seen on a 2-core CPU: a
    batch of 2 took 3.7x one frame) runs them one at a time; where a larger batch is cheaper per
    frame (padded CUDA graphs), it runs that."""
    costs = {1: 1.0, 2: 2.5, 3: 3.9}
    s = Scheduler(lambda step, b: costs[b], num_steps=1, max_batch=8)
    for app in ('a', 'b', 'c'):
        s.set_app(app, latency_bound_ms=50.0)
    clock = FakeClock()
    for app in ('a', 'b', 'c'):
        arrive(s, app, clock)
    batch = s.next_batch(clock()).batch
    assert [r.app_id for r in batch.requests] == ['a'] and batch.predicted_ms == 1.0
    s.finished(1)
    costs[2] = 1.9                                    # 0.95 a frame at 2, 1.3 at 3: a pair
    batch = s.next_batch(clock()).batch
    assert [r.app_id for r in batch.requests] == ['b', 'c'] and batch.predicted_ms == 1.9
    s.finished(2)
    costs.update({2: 2.0, 3: 2.0})                    # padded to one graph size: all of them
    for app in ('a', 'b', 'c'):
        arrive(s, app, clock)
    assert len(s.next_batch(clock()).batch.requests) == 3


def test_only_requests_at_the_same_step_join():
    clock = FakeClock()
    s = make([('a', 50.0), ('b', 60.0)], max_batch=8)
    first = arrive(s, 'a', clock)
    s.next_batch(clock())
    first.next_step = 1
    s.requeue(first)                              # at step 1 now
    arrive(s, 'b', clock)                         # at step 0, later deadline
    batch = s.next_batch(clock()).batch
    assert batch.step == 1 and batch.requests == (first,)


def test_in_flight_bound_limits_new_starts():
    clock = FakeClock()
    s = make([(f'app{i}', 100.0) for i in range(6)], max_batch=8, max_in_flight=2)
    for i in range(6):
        arrive(s, f'app{i}', clock)
    batch = s.next_batch(clock()).batch
    assert len(batch.requests) == 2 and s.in_flight == 2
    for r in batch.requests:
        r.next_step = 1
        s.requeue(r)
    batch = s.next_batch(clock()).batch               # full: only requests in flight may run
    assert batch.step == 1 and len(batch.requests) == 2
    s.finished(2)
    assert s.in_flight == 0
    assert s.next_batch(clock()).batch.step == 0      # room again


def test_in_flight_request_expires_instead_of_running_late():
    clock = FakeClock()
    s = make([('a', 5.0), ('b', 100.0)], max_batch=1)
    r = arrive(s, 'a', clock)
    s.next_batch(clock())
    clock.advance(1.1)
    r.next_step = 1
    s.requeue(r)
    clock.advance(2.0)                  # waited: 3.1 + 2.1 (step 1) > 5
    out = s.next_batch(clock())
    assert out.expired == (r,) and out.batch is None
    assert s.in_flight == 0


def test_delivery_allowance_moves_the_deadline_forward():
    """The one definition of a deadline: when the result must be published, the bound less the time
    kept for the hop to the subscriber; unbounded apps keep their horizon."""
    clock = FakeClock()
    s = make([('bounded', 20.0), ('free', None)], default_deadline_ms=300.0, delivery_allowance_ms=lambda: 1.5)
    a, b = arrive(s, 'bounded', clock), arrive(s, 'free', clock)
    assert a.deadline_ns - a.arrival_ns == 18_500_000 and a.latency_bound_ms == 20.0
    assert b.deadline_ns - b.arrival_ns == 300_000_000


@pytest.mark.parametrize('allowance_ms, late', [(0.0, False), (1.0, True)])
def test_delivery_allowance_makes_a_frame_late_that_would_fit_the_bound(allowance_ms, late):
    clock = FakeClock()
    s = make([('a', 5.0)], delivery_allowance_ms=lambda: allowance_ms)
    r = arrive(s, 'a', clock)
    clock.advance(3.5)                   # 3.5 + 1.1 fits 5 ms, not 5 - 1 ms
    s.next_batch(clock())
    assert r.late is late


def test_in_flight_request_expires_when_the_tail_to_publication_would_overrun():
    clock = FakeClock()
    s = make([('a', 10.0), ('b', 100.0)], max_batch=1, tail_ms=lambda: 1.0)
    r = arrive(s, 'a', clock)
    s.next_batch(clock())
    clock.advance(1.1)
    r.next_step = 1
    s.requeue(r)
    clock.advance(6.0)                  # 7.1 + 2.1 (step 1) fits 10 ms, not with the 1 ms tail
    out = s.next_batch(clock())
    assert out.expired == (r,) and out.batch is None


def test_remove_app_returns_its_requests():
    clock = FakeClock()
    s = make([('a', 50.0), ('b', 50.0)], queue_depth=2)
    queued = arrive(s, 'a', clock)
    running = arrive(s, 'a', clock)
    other = arrive(s, 'b', clock)
    s.next_batch(clock())                # all three start (step 0 batch)
    running.next_step = 1
    s.requeue(running)
    s.finished(2)
    again = arrive(s, 'a', clock)
    gone = s.remove_app('a')
    assert set(map(id, gone)) == {id(running), id(again)}
    assert not s.has_app('a') and s.remove_app('a') == []
    with pytest.raises(KeyError, match="'b'"):
        s.push(Request('a', None, clock(), clock()))
    del queued, other


def test_updated_bound_applies_to_new_frames():
    clock = FakeClock()
    s = make([('a', 50.0)], queue_depth=2)
    old = arrive(s, 'a', clock)
    s.set_app('a', latency_bound_ms=None)
    new = arrive(s, 'a', clock)
    assert old.hard and not new.hard


def test_without_enforcement_late_work_still_runs():
    clock = FakeClock()
    s = make([('a', 5.0)], enforce_deadlines=False)
    r = arrive(s, 'a', clock)
    clock.advance(10.0)                  # hopeless, but a baseline runs it anyway (in idle time)
    out = s.next_batch(clock())
    assert out.dropped == () and out.batch.requests == (r,) and r.late
    r.next_step = 1
    s.requeue(r)
    out = s.next_batch(clock())
    assert out.expired == () and out.batch.step == 1


def test_drops_use_the_expected_time_and_expiry_the_safe_one():
    clock = FakeClock()
    s = Scheduler(lambda step, n: 2 * predict(step, n), expected_ms=predict, num_steps=4, max_batch=1)
    s.set_app('a', latency_bound_ms=5.0, late_policy='drop')
    r = arrive(s, 'a', clock)
    clock.advance(3.5)                   # 3.5 + 1.1 expected fits, 3.5 + 2.2 safe would not: run it
    assert s.next_batch(clock()).batch.requests == (r,)
    clock.advance(0.5)
    r.next_step = 1
    s.requeue(r)                         # 4.0 + 2 x 2.1 > 5: finish with exit 0 rather than run late
    assert s.next_batch(clock()).expired == (r,)


# --- arrival lookahead: a step held back for a frame due sooner that is about to come ----------------------
def _expected(s: Scheduler, app_id: str, clock: FakeClock, in_ms: float, jitter_ns: int = 0) -> Expected:
    submit = clock() + int(in_ms * 1_000_000)
    return Expected(app_id, submit, s.deadline_ns(app_id, submit), jitter_ns)


def test_a_step_waits_for_a_frame_due_sooner_that_is_about_to_come():
    clock = FakeClock()
    s = make([('slow', 40.0), ('fast', 1.5)], max_batch=1)
    arrive(s, 'slow', clock)
    # fast's frame comes in 0.5 ms and must start 0.4 ms later; slow's 1.1 ms step would still run then
    soon = _expected(s, 'fast', clock, 0.5)
    held = s.next_batch(clock(), [soon])
    assert held.batch is None and held.wait_until_ns == soon.submit_ns + WAIT_SLACK_NS
    assert s.pending()                                             # slow's frame is still queued
    clock.advance(0.5)
    arrive(s, 'fast', clock)
    assert [r.app_id for r in s.next_batch(clock()).batch.requests] == ['fast']
    assert [r.app_id for r in s.next_batch(clock()).batch.requests] == ['slow']


@pytest.mark.parametrize('case', ['due later', 'no room to wait', 'overdue', 'arrives after the step', 'has room'])
def test_a_step_runs_when_waiting_would_not_help(case):
    clock = FakeClock()
    slow_bound = {'due later': 1.2, 'no room to wait': 3.0}.get(case, 40.0)
    fast_bound = {'has room': 10.0}.get(case, 1.5)
    s = make([('slow', slow_bound), ('fast', fast_bound)], max_batch=1)
    arrive(s, 'slow', clock)
    in_ms = {'overdue': -2.0, 'arrives after the step': 1.5}.get(case, 0.5)
    schedule = s.next_batch(clock(), [_expected(s, 'fast', clock, in_ms)])
    assert schedule.batch is not None and schedule.wait_until_ns is None


def test_an_expected_frames_first_step_is_priced_at_its_expected_time():
    """One rule for holding work back for an expected frame and for ending fused runs before it (the
    engine's arrival lookahead): its own first step at the expected time, not the predicted one with
    the margin, plus the tail."""
    s = Scheduler(lambda step, b: 5.0, num_steps=2, expected_ms=lambda step, b: 2.0)
    assert s.first_step_ns(1.0) == 3_000_000
