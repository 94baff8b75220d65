"""Fused steps: where the policy decides without a confidence, the engine runs several steps back to
back with one head and one device sync, and must reach the exits, costs and accounting of one step
per worker turn."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from delen_ros.core.bounds import Bounds, Objective
from delen_ros.core.engine import Engine
from delen_ros.core.policies import Decision, DelenPolicy, ExitContext, LatencyCorrector, get_policy
from delen_ros.core.profile import Profile
from delen_ros.core.runner import StageRunner
from delen_ros.core.zoo import load_model, models_dir
from fakes import Collector, FakeClock, FakeRunner, fake_image, fake_model, synthetic_profile

torch.set_num_threads(1)
# Steps at batch 1 (stage + head): 1.1, 2.1, 3.1, 4.1 ms; energy per step = its ms at 1 W (per frame
# of a batch of b: x (1 + 0.25 (b - 1)) / b); accuracy 0.6 .. 0.9.
PROFILE = synthetic_profile()
LOOSE_MS = 5000.0   # must not depend on this machine's speed
CONFIDENCES = (0.0, 0.05, 0.3, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 0.95, 0.999, 1.0)


# --- the policies: deciding ahead ---------------------------------------------------------------------

def _cascade_profile() -> Profile:
    """Three exits with per-input samples: exit 0 is never right (no threshold), exit 1 is right when
    confident, exit 2 always."""
    rng = np.random.default_rng(0)
    n = 2000
    conf1 = rng.uniform(0.3, 1.0, n)
    samples = {'confidence': [rng.uniform(0.2, 1.0, n).tolist(), conf1.tolist(), rng.uniform(0.5, 1.0, n).tolist()],
               'correct': [[0] * n, (conf1 > 0.6).astype(int).tolist(), [1] * n]}
    base = synthetic_profile(3)
    exits = tuple(dataclasses.replace(e, accuracy=float(np.mean(c)), calibration=())
                  for e, c in zip(base.exits, samples['correct']))
    return dataclasses.replace(base, exits=exits, samples=samples)


CASCADE = _cascade_profile()


def _ctx(profile, bounds, k, *, confidence=math.nan, elapsed=0.0, energy=0.0):
    return ExitContext(bounds=bounds, profile=profile, exit_index=k, confidence=confidence, elapsed_ms=elapsed,
                       energy_mj=energy, next_batch=1, corrector=LatencyCorrector(safety=0.0))


POLICIES = [('delen', {}), ('delen', {'calibrated': False}), ('delen', {'min_support': 0.0}), ('always_final', {}),
            ('static_exit', {}), ('check_after_stage', {}), ('fixed_confidence', {})]
BOUNDS = [Bounds(), Bounds(max_latency_ms=5.0), Bounds(max_latency_ms=6.35), Bounds(max_energy_mj=3.2),
          Bounds(max_energy_mj=3.0), Bounds(min_accuracy=0.8), Bounds(min_accuracy=0.8, objective='min_energy'),
          Bounds(min_accuracy=0.8, objective='max_accuracy'), Bounds(min_accuracy=0.85, max_latency_ms=6.35),
          Bounds(objective='min_latency'), Bounds(max_latency_ms=6.35, max_energy_mj=3.2)]


@pytest.mark.parametrize('profile', [PROFILE, CASCADE], ids=['calibration-rows', 'cascade'])
@pytest.mark.parametrize('name, options', POLICIES)
def test_deciding_ahead_is_deciding_for_every_confidence(profile, name, options):
    policy = get_policy(name, **options)
    for bounds in BOUNDS:
        for k in range(profile.num_exits):
            for elapsed, energy in ((0.0, 0.0), (1.1, 1.1), (3.2, 3.2), (6.0, 2.0)):
                ahead = policy.decide_ahead(_ctx(profile, bounds, k, elapsed=elapsed, energy=energy))
                if ahead is None:
                    continue
                for c in CONFIDENCES:
                    decided = policy.decide(_ctx(profile, bounds, k, confidence=c, elapsed=elapsed, energy=energy))
                    assert decided is ahead, (bounds, k, elapsed, energy, c)


S, C, N = Decision.STOP, Decision.CONTINUE, None


@pytest.mark.parametrize('name, bounds, k, elapsed, energy, expected', [
    # delen: latency and energy are predictions anyway (next step at p50 here)
    ('delen', Bounds(max_latency_ms=5.0), 0, 1.1, 1.1, C),         # 1.1 + 2.1 <= 5
    ('delen', Bounds(max_latency_ms=5.0), 1, 3.2, 3.2, S),         # 3.2 + 3.1 > 5
    ('delen', Bounds(max_energy_mj=3.0), 0, 1.1, 1.1, S),          # 1.1 + 2.1 > 3
    ('delen', Bounds(max_energy_mj=3.2), 0, 1.1, 1.1, C),
    ('delen', Bounds(objective='min_latency'), 0, 0.0, 0.0, S),    # no accuracy bound: met at once
    # an accuracy bound: the calibrated threshold needs the confidence; the fallback exit (2) does not
    ('delen', Bounds(min_accuracy=0.8, objective='min_energy'), 0, 0.0, 0.0, N),
    ('delen', Bounds(min_accuracy=0.8, objective='min_energy'), 2, 0.0, 0.0, S),
    ('delen', Bounds(min_accuracy=0.8, objective='max_accuracy'), 0, 0.0, 0.0, C),
    ('delen', Bounds(min_accuracy=0.85, max_latency_ms=3.0), 0, 1.1, 0.0, S),   # the latency bound first
    ('always_final', Bounds(min_accuracy=0.8), 0, 0.0, 0.0, C),
    ('static_exit', Bounds(min_accuracy=0.8), 1, 0.0, 0.0, C),     # plan: exit 2
    ('static_exit', Bounds(min_accuracy=0.8), 2, 0.0, 0.0, S),
    # check_after_stage checks a measured time: never on a prediction; energy is known ahead
    ('check_after_stage', Bounds(max_latency_ms=5.0), 0, 0.0, 0.0, N),
    ('check_after_stage', Bounds(max_energy_mj=3.0), 1, 0.0, 3.2, S),
    ('check_after_stage', Bounds(), 0, 0.0, 0.0, C),
    ('fixed_confidence', Bounds(), 0, 0.0, 0.0, N),
])
def test_which_decisions_are_known_ahead(name, bounds, k, elapsed, energy, expected):
    assert get_policy(name).decide_ahead(_ctx(PROFILE, bounds, k, elapsed=elapsed, energy=energy)) is expected


@pytest.mark.parametrize('name', ['delen', 'always_final', 'static_exit', 'check_after_stage', 'fixed_confidence'])
def test_the_last_exit_stops_ahead(name):
    assert get_policy(name).decide_ahead(_ctx(PROFILE, Bounds(min_accuracy=0.8), PROFILE.final_exit)) is S


def test_a_cascade_without_a_threshold_at_an_exit_goes_on_ahead():
    bounds = Bounds(min_accuracy=0.85, objective='min_energy')
    assert CASCADE.cascade(0.85).thresholds[0] is None and CASCADE.cascade(0.85).thresholds[1] is not None
    assert DelenPolicy().decide_ahead(_ctx(CASCADE, bounds, 0)) is C
    assert DelenPolicy().decide_ahead(_ctx(CASCADE, bounds, 1)) is N


# --- the engine ---------------------------------------------------------------------------------------

class CountingRunner(FakeRunner):
    """A FakeRunner that also records head calls and device syncs."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.heads: list[int] = []
        self.syncs = 0

    def head(self, k, features):
        self.heads.append(k)
        return super().head(k, features)

    def synchronize(self):
        self.syncs += 1


def serve(fuse: bool, apps: dict[str, Bounds], frames, *, sleep_ms=(0.2, 0.2, 0.2, 0.2), before_frame=None, **kwargs):
    """Serve ``frames`` (``(app_ids, image)``, one at a time) on a fresh engine; returns the results
    (in order), the runner and the engine (stopped). ``before_frame(engine)``: called before each submit."""
    model = fake_model()
    runner = CountingRunner(model, sleep_ms=sleep_ms)
    collector = Collector()
    engine = Engine(model, PROFILE, on_result=collector, runner=runner, fuse_steps=fuse, **kwargs)
    for app_id, bounds in apps.items():
        engine.set_app(app_id, bounds)
    requeues = []
    requeue = engine._scheduler.requeue
    engine._scheduler.requeue = lambda r: (requeues.append(r.next_step), requeue(r))
    engine.start(warm_up=False)
    try:
        expected = 0
        for app_ids, image in frames:
            if before_frame is not None:
                before_frame(engine)
            engine.submit(app_ids, image)
            expected += len(app_ids)
            collector.wait(expected)   # one frame at a time: the same batches with and without fusion
    finally:
        engine.stop()
    runner.requeues = requeues
    return collector.results, runner, engine


def _answers(results):
    return [(r.app_id, r.exit_index, r.class_id, round(r.confidence, 6)) for r in results]


def test_a_latency_only_app_reaches_the_same_exits_with_one_head_and_one_sync_per_frame():
    frames = [(['nav'], fake_image(i % 4, 200)) for i in range(3)]
    fused, fused_runner, _ = serve(True, {'nav': Bounds(max_latency_ms=LOOSE_MS)}, frames)
    stepped, stepped_runner, _ = serve(False, {'nav': Bounds(max_latency_ms=LOOSE_MS)}, frames)
    assert _answers(fused) == _answers(stepped)
    assert [r.exit_index for r in fused] == [3, 3, 3]
    assert fused_runner.calls == stepped_runner.calls == [(k, 1) for k in range(4)] * 3
    assert fused_runner.heads == [3, 3, 3] and fused_runner.syncs == 3
    assert stepped_runner.heads == [0, 1, 2, 3] * 3 and stepped_runner.syncs == 12


def test_an_accuracy_bound_app_never_fuses():
    # sharpness 250: confident at exit 0; 80: at exit 1; 10: never, so it stops at the fallback exit 2
    frames = [(['arm'], fake_image(1, s)) for s in (250, 80, 10)]
    apps = {'arm': Bounds(min_accuracy=0.8, objective='min_energy')}
    fused, fused_runner, _ = serve(True, apps, frames)
    stepped, stepped_runner, _ = serve(False, apps, frames)
    assert [r.exit_index for r in fused] == [0, 1, 2]
    assert _answers(fused) == _answers(stepped)
    assert [r.energy_mj for r in fused] == pytest.approx([r.energy_mj for r in stepped])
    assert fused_runner.heads == stepped_runner.heads == [0, 0, 1, 0, 1, 2]
    assert fused_runner.syncs == stepped_runner.syncs == 6


def test_a_mixed_batch_fuses_to_the_earliest_stop_and_the_rest_goes_on():
    # One camera, two apps, one batch: 'inspect' stops at exit 1 on its energy budget (its half of
    # the shared steps: 0.55 + 1.05 mJ, and exit 2 would add 1.94 > 3 - 1.6), 'nav' runs to exit 3.
    apps = {'nav': Bounds(max_latency_ms=LOOSE_MS), 'inspect': Bounds(max_energy_mj=3.0)}
    frames = [(['nav', 'inspect'], fake_image(2, 200))]
    fused, runner, _ = serve(True, apps, frames)
    stepped, _, _ = serve(False, apps, frames)
    assert sorted(_answers(fused)) == sorted(_answers(stepped))
    assert {r.app_id: r.exit_index for r in fused} == {'nav': 3, 'inspect': 1}
    assert runner.calls == [(0, 1), (1, 1), (2, 1), (3, 1)]     # the frame's features computed once
    assert runner.heads == [1, 3] and runner.syncs == 2
    assert runner.requeues == [2]                                 # 'nav' went on from exit 1, once


@pytest.mark.parametrize('choice_when_behind', [False, True])
def test_an_app_behind_takes_no_step_by_choice_past_a_cut_run(choice_when_behind):
    """The batch above, with 'nav' behind (a frame of its pushed out of its queue just now): it stops at
    exit 1 with 'inspect', its bound met, in the same turn. ``choice_steps_when_behind`` (before session
    39) sends it on in a turn of its own, as when it keeps up."""
    apps = {'nav': Bounds(max_latency_ms=LOOSE_MS), 'inspect': Bounds(max_energy_mj=3.0)}

    def nav_behind(engine):
        engine.choice_steps_when_behind = choice_when_behind
        engine._apps['nav'].evicted_ns = engine._last_evicted_ns = engine.clock()   # as submit's push-out

    results, runner, engine = serve(True, apps, [(['nav', 'inspect'], fake_image(2, 200))], before_frame=nav_behind)
    exits = {r.app_id: r.exit_index for r in results}
    if choice_when_behind:
        assert exits == {'nav': 3, 'inspect': 1} and runner.syncs == 2 and engine.stops_behind == 0
    else:
        assert exits == {'nav': 1, 'inspect': 1} and runner.syncs == 1 and engine.stops_behind == 1
        assert all(r.bounds_met for r in results)
        assert engine.worker_counters()['stops_behind'] == 1


def test_energy_and_compute_are_accounted_as_step_by_step():
    apps = {'nav': Bounds(max_latency_ms=LOOSE_MS), 'inspect': Bounds(max_energy_mj=3.0)}
    frames = [(['nav', 'inspect'], fake_image(i, 200)) for i in range(3)]
    sleep_ms = (2.0, 2.0, 2.0, 2.0)
    fused, _, engine = serve(True, apps, frames, sleep_ms=sleep_ms)
    stepped, _, _ = serve(False, apps, frames, sleep_ms=sleep_ms)
    by_key = {(r.app_id, r.class_id): r for r in stepped}
    assert len(fused) == len(by_key) == 6
    for r in fused:
        s = by_key[r.app_id, r.class_id]
        assert r.exit_index == s.exit_index
        assert r.energy_mj == pytest.approx(s.energy_mj, rel=1e-9)
        # every stage it ran in is in its compute time, and nothing else of the worker's
        assert sum(sleep_ms[:r.exit_index + 1]) <= r.compute_ms <= r.latency_ms - r.queue_ms
    # 'inspect' shares its steps with 'nav': half of each batch-of-one step's energy
    assert [r.energy_mj for r in fused if r.app_id == 'inspect'] == pytest.approx([(1.1 + 2.1) / 2] * 3)
    stats = engine.worker_stats()
    assert stats.steps == 3 * 4 and stats.mean_batch == pytest.approx((2 * 2 + 2) / 4)
    assert stats.busy_s >= 3 * sum(sleep_ms) / 1e3
    assert stats.energy_mj == pytest.approx(sum(r.energy_mj for r in fused))


def test_a_fused_run_teaches_every_step_its_measured_ratio():
    frames = [(['nav'], fake_image(0, 200))]
    _, _, engine = serve(True, {'nav': Bounds(max_latency_ms=LOOSE_MS)}, frames, sleep_ms=(5.0, 5.0, 5.0, 5.0))
    factors = [engine.corrector.factor(k, 1) for k in range(4)]
    assert sorted(engine.corrector.snapshot()) == ['0/0', '1/0', '2/0', '3/0']   # pooled over batch sizes
    # one run of 20+ ms against a profile of 1 + 2 + 3 + 4 + 0.1 ms (the last head only)
    assert factors == pytest.approx([factors[0]] * 4, rel=1e-9)
    assert 20.0 / 10.1 <= factors[0] < 16.0
    assert len(engine._device_ms) == 4 and sum(engine._device_ms) >= 20.0


def test_always_final_runs_the_whole_network_in_one_worker_turn():
    frames = [(['any'], fake_image(3, 100))]
    fused, runner, engine = serve(True, {'any': Bounds()}, frames, policy='always_final')
    assert [r.exit_index for r in fused] == [3]
    assert runner.calls == [(0, 1), (1, 1), (2, 1), (3, 1)] and runner.heads == [3] and runner.syncs == 1
    assert runner.requeues == [] and len(engine._decision_us) == 1
    stepped, stepped_runner, _ = serve(False, {'any': Bounds()}, frames, policy='always_final')
    assert _answers(stepped) == _answers(fused) and stepped_runner.requeues == [1, 2, 3]


def _late_frame(*on_time_apps: str):
    """An always_final engine with enforcement, a frame of app 'late' already past its 50 ms bound, and
    one on-time frame of each of ``on_time_apps`` (bound 1 s); (engine, runner, results, first batch)."""
    clock = FakeClock()
    model = fake_model()
    runner = CountingRunner(model)
    results = []
    engine = Engine(model, PROFILE, on_result=results.append, runner=runner, clock=clock, policy='always_final',
                    enforce_deadlines=True)
    engine.set_app('late', Bounds(max_latency_ms=50.0))
    engine.submit(['late'], fake_image(1, 200), arrival_ns=clock() - 100 * 1_000_000)
    for i, app in enumerate(on_time_apps):
        engine.set_app(app, Bounds(max_latency_ms=1000.0))
        engine.submit([app], fake_image(1, 100 + i))
    return engine, runner, results, engine._scheduler.next_batch(clock()).batch


def test_a_late_frame_is_served_at_the_fastest_exit_unfused():
    engine, runner, results, batch = _late_frame()
    assert batch.requests[0].late
    engine._complete(engine._launch(batch, 0))   # launch and look, as _serve_once unpipelined
    assert [r.exit_index for r in results] == [0] and results[0].late
    assert runner.calls == [(0, 1)] and runner.heads == [0]


def test_a_late_frame_riding_with_on_time_work_leaves_the_run_to_them_and_ends_with_it():
    engine, runner, results, batch = _late_frame('cam')
    assert [r.app_id for r in batch.requests] == ['cam', 'late'] and batch.requests[1].late
    engine._complete(engine._launch(batch, 0))
    assert runner.calls == [(0, 2), (1, 2), (2, 2), (3, 2)] and runner.heads == [3]   # one fused run, unbroken
    assert sorted((r.app_id, r.exit_index, r.late) for r in results) == [('cam', 3, False), ('late', 3, True)]


@pytest.mark.parametrize('enforce, last', [(True, 2), (False, 3)])
def test_fusing_stops_where_the_scheduler_would_expire_the_request(enforce, last):
    # always_final goes on, but with enforcement the scheduler expires a request whose next step would
    # overrun: safe step times here (prior = p50 x 1.2) are 1.32, 2.52, 3.72, 4.92 ms, so a frame
    # bound to 8 ms reaches exit 2 at 7.56 ms, and exit 3 would end at 12.48 ms.
    clock = FakeClock()
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model), clock=clock,
                    policy='always_final', enforce_deadlines=enforce, overhead_prior_ms=0.0)
    engine.set_app('cam', Bounds(max_latency_ms=8.0))
    engine.submit(['cam'], fake_image(1, 200))
    batch = engine._scheduler.next_batch(clock()).batch
    assert engine._fuse_to(0, batch.requests, 1, clock(), enforce=enforce) == last
    engine.fuse_steps = False
    assert engine._fuse_to(0, batch.requests, 1, clock(), enforce=enforce) == 0


def test_fusing_walks_the_predicted_latency_like_the_policy():
    # delen with a latency bound alone: continue while elapsed + next step (safe prediction) fits.
    # Cumulative safe times 1.32, 3.84, 7.56, 12.48 ms: a bound of 10 ms stops at exit 2.
    clock = FakeClock()
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model), clock=clock,
                    overhead_prior_ms=0.0)
    engine.set_app('cam', Bounds(max_latency_ms=10.0))
    engine.submit(['cam'], fake_image(1, 200))
    batch = engine._scheduler.next_batch(clock()).batch
    assert engine._fuse_to(0, batch.requests, 1, clock(), enforce=True) == 2
    assert engine._fuse_to(0, batch.requests, 1, clock() + 3 * 1_000_000, enforce=True) == 1   # 3 ms later


def test_a_run_ends_before_waiting_work_must_start():
    # 'deep' (always_final, loose bound) would run all four steps; a frame of 'tight' waits with a
    # 9 ms bound: its first step (1.32 ms safe) must start by 7.68 ms. The run's steps end at 1.32,
    # 3.84, 7.56 ms (fits), 12.48 ms (past it): the run stops at exit 2, then 'tight' goes first.
    clock = FakeClock()
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model), clock=clock,
                    policy='always_final', overhead_prior_ms=0.0, max_batch=1)
    engine.set_app('deep', Bounds(max_latency_ms=LOOSE_MS))
    engine.set_app('tight', Bounds(max_latency_ms=9.0))
    engine.submit(['deep'], fake_image(1, 200))
    batch = engine._scheduler.next_batch(clock()).batch
    assert engine._fuse_to(0, batch.requests, 1, clock(), enforce=True) == 3   # nothing waits
    engine.submit(['tight'], fake_image(2, 200))
    assert engine._scheduler.latest_start_ns() == pytest.approx(clock() + (9.0 - 1.32) * 1e6)
    assert engine._fuse_to(0, batch.requests, 1, clock(), enforce=True) == 2


def test_a_step_by_choice_would_delay_waiting_work_due_after_its_frame_that_must_start_before_it_ends():
    # 'deep' (12 ms, no accuracy bound: it goes past its first exit by choice) took its first step; 'tight'
    # (9 ms) came 3.5 ms later, due 0.5 ms after it: its first step (1.32 ms safe) must start by 11.18 ms.
    # deep's step 1 (~2.5 ms safe) from 9 ms would end after that; from 3.5 ms it would not.
    clock = FakeClock()
    t0 = clock()
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model), clock=clock,
                    overhead_prior_ms=0.0, max_batch=1)
    engine.set_app('deep', Bounds(max_latency_ms=12.0))
    engine.set_app('tight', Bounds(max_latency_ms=9.0))
    engine.choice_yields = 'pressed'   # first: the rule 'demand' and 'waiting' (the default) ease or tighten
    engine.submit(['deep'], fake_image(1, 200))
    deep = engine._scheduler.next_batch(clock()).batch.requests[0]
    assert not engine._choice_would_delay(clock(), 1, 1, deep.deadline_ns)   # nothing waits
    clock.advance(3.5)
    engine.submit(['tight'], fake_image(2, 200))
    step_ms = engine.corrector.predict_ms(PROFILE, 1, 1)
    assert engine._scheduler.latest_start_ns(due_from_ns=deep.deadline_ns) == pytest.approx(t0 + (12.5 - 1.32) * 1e6)
    assert not engine._choice_would_delay(clock(), 1, 1, deep.deadline_ns)
    # with a margin, where the step would end less than that before tight must start
    slack_ms = 12.5 - 1.32 - 3.5 - step_ms - engine._turn_ms()
    engine.choice_yield_margin_ms = slack_ms + 0.1
    assert engine._choice_would_delay(clock(), 1, 1, deep.deadline_ns)
    engine.choice_yield_margin_ms = slack_ms - 0.1
    assert not engine._choice_would_delay(clock(), 1, 1, deep.deadline_ns)
    engine.choice_yield_margin_ms = 0.0
    pressed_ns = t0 + int((12.5 - 1.32 - step_ms + 0.05) * 1e6)
    assert engine._choice_would_delay(pressed_ns, 1, 1, deep.deadline_ns)
    # work due before the frame's goes first in EDF order: its step by choice delays none of it
    assert not engine._choice_would_delay(pressed_ns, 1, 1, deep.deadline_ns + 600_000)
    # 'waiting': any waiting work due no earlier is enough
    engine.choice_yields = 'waiting'
    assert engine._choice_would_delay(clock(), 1, 1, deep.deadline_ns)
    assert not engine._choice_would_delay(clock(), 1, 1, deep.deadline_ns + 600_000)
    # nor a frame that is late already (it is served at its fastest exit, behind on-time work)
    next(iter(engine._scheduler._apps['tight'].frames)).late = True
    assert not engine._choice_would_delay(clock(), 1, 1, deep.deadline_ns)
    engine.choice_yields = 'pressed'
    assert not engine._choice_would_delay(pressed_ns, 1, 1, deep.deadline_ns)
    engine.choice_yields = 'demand'   # the same, one frame waiting: nothing to batch
    assert not engine._choice_would_delay(pressed_ns, 1, 1, deep.deadline_ns)


@pytest.mark.parametrize('yields', [True, False])
def test_a_frame_takes_no_step_by_choice_where_it_would_delay_waiting_work(yields):
    """Where its next step would make waiting work start too late (stood in for here), a frame of an app
    without an accuracy bound stops at its first exit, its bounds met, counted for /diagnostics;
    ``choice_yields='never'`` (before session 40), it goes on to its last."""
    asked = []

    def setup(engine):
        engine.choice_yields = 'pressed' if yields else 'never'
        engine._choice_would_delay = lambda *args: asked.append(args) or True

    results, runner, engine = serve(False, {'nav': Bounds(max_latency_ms=LOOSE_MS)},
                                    [(['nav'], fake_image(2, 200))], before_frame=setup)
    assert [r.exit_index for r in results] == ([0] if yields else [3]) and all(r.bounds_met for r in results)
    assert engine.worker_counters()['stops_yielded'] == (1 if yields else 0) == len(asked)
    if yields:
        assert asked[0][1:3] == (1, 1)   # its next step, at its batch size


@pytest.mark.parametrize('objective, rule', [(Objective.DEFAULT, 'waiting'), (Objective.MAX_ACCURACY, 'pressed')])
def test_an_app_that_asked_for_max_accuracy_yields_only_where_pressed(objective, rule):
    """With ``choice_yields='waiting'`` (the default) a frame yields to any waiting work, unless its app
    asked for ``MAX_ACCURACY`` itself: then only where its step would make that work start too late."""
    asked = []

    def setup(engine):
        assert engine.choice_yields == 'waiting'
        engine._choice_would_delay = lambda *args: asked.append(args) or False

    serve(False, {'nav': Bounds(max_latency_ms=LOOSE_MS, objective=objective)}, [(['nav'], fake_image(2, 200))],
          before_frame=setup)
    assert asked and {a[4] for a in asked} == {rule}


def test_split_runs_for_earlier_ignores_waiting_work_due_after_the_run():
    # Two apps with one bound (as 32 cameras at 33 ms): a frame that arrives while the batch runs is
    # due after every member, so EDF would run it after them anyway. 'any' (shipped) still ends the
    # run before that frame must start; 'earlier' (an A/B, benchmarks/fused_runs.py) does not.
    clock = FakeClock()
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model), clock=clock,
                    policy='always_final', overhead_prior_ms=0.0, max_batch=1)
    # 13 ms: always_final's way to its last exit is expected to take 12.5 (with less the frame is late
    # before it starts), and b, 0.5 ms later, must start its first step before the run would end
    engine.set_app('a', Bounds(max_latency_ms=13.0))
    engine.set_app('b', Bounds(max_latency_ms=13.0))
    engine.submit(['a'], fake_image(1, 200))
    batch = engine._scheduler.next_batch(clock()).batch
    assert not batch.requests[0].late
    assert engine._fuse_to(0, batch.requests, 1, clock(), enforce=False) == 3   # nothing waits
    clock.advance(0.5)
    engine.submit(['b'], fake_image(2, 200))   # due 0.5 ms after the running frame
    assert engine.split_runs_for == 'any'      # the shipped rule: any waiting frame ends the run in time
    assert engine._fuse_to(0, batch.requests, 1, clock(), enforce=False) == 2
    engine.split_runs_for = 'earlier'          # the A/B: only work due before the run's own members
    assert engine._fuse_to(0, batch.requests, 1, clock(), enforce=False) == 3
    # the same frame due before the running one (a tighter bound) still ends the run in time
    assert engine._scheduler.latest_start_ns(due_before_ns=batch.requests[0].deadline_ns + 1e6) < math.inf
    assert engine._scheduler.latest_start_ns(due_before_ns=batch.requests[0].deadline_ns) == math.inf


def test_admission_counts_a_fused_run_as_blocking():
    from delen_ros.core.admission import CostModel
    steps = {0: 1.0, 1: 2.0, 2: 3.0}
    cost = CostModel(step_ms=lambda k, b: steps[k] * b, num_exits=3, preprocess_ms=0.5)
    assert cost.blocking_ms(2, 2) == pytest.approx(6.0)             # the longest step, 3 ms x 2
    fused = dataclasses.replace(cost, fused_runs=True)
    assert fused.blocking_ms(2, 2) == pytest.approx(2 * 1.5 + 4 + 6)   # every step, preprocessing in the first
    assert fused.blocking_ms(0, 1) == pytest.approx(1.5)


def test_a_real_model_gives_the_same_answers_fused():
    """fashion_mnist on its CPU profile, through the real StageRunner."""
    profile = Profile.load(sorted((models_dir() / 'profiles').glob('fashion_mnist__cpu-*.json'))[0])
    images = [np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8) for i in range(4)]
    answers = {}
    for fuse in (True, False):
        model = load_model('fashion_mnist')
        runner = StageRunner(model, device='cpu', max_batch=4)
        heads = []
        head = runner.head
        runner.head = lambda k, f: (heads.append(k), head(k, f))[1]
        collector = Collector()
        engine = Engine(model, profile, on_result=collector, runner=runner, max_batch=4, fuse_steps=fuse)
        engine.set_app('nav', Bounds(max_latency_ms=LOOSE_MS))
        engine.start(warm_up=False)
        try:
            for i, image in enumerate(images):
                engine.submit(['nav'], image)
                collector.wait(i + 1)
        finally:
            engine.stop()
        answers[fuse] = ([(r.exit_index, r.class_id, round(r.confidence, 5)) for r in collector.results], heads)
    final = profile.final_exit
    assert answers[True][0] == answers[False][0]
    assert all(exit_index == final for exit_index, _, _ in answers[True][0])
    assert answers[True][1] == [final] * 4 and answers[False][1] == list(range(final + 1)) * 4


def test_admission_takes_an_accuracy_bound_apps_runs_as_ending_where_its_cascade_looks():
    model = fake_model(3)
    engine = Engine(model, CASCADE, on_result=lambda r: None, runner=FakeRunner(model), fuse_steps=True)
    cascade = Bounds(min_accuracy=0.85, objective='min_energy')   # a threshold at exit 1, none at exit 0
    assert engine._run_stops(cascade, 2) == (1,)
    assert engine._run_stops(Bounds(max_latency_ms=LOOSE_MS), 2) == ()    # decided ahead: one run
    off = Engine(model, CASCADE, on_result=lambda r: None, runner=FakeRunner(model), fuse_steps=False)
    assert off._run_stops(cascade, 2) == ()   # a step at a time anyway: blocking is per step


# --- asking once per app: monotone policies ----------------------------------------------------------

PRESSURES = [(0.0, 0.0), (1.0, 0.5), (1.1, 1.1), (2.5, 3.0), (3.2, 3.2), (4.0, 2.0), (6.0, 2.0), (6.0, 4.0)]


@pytest.mark.parametrize('profile', [PROFILE, CASCADE], ids=['calibration-rows', 'cascade'])
@pytest.mark.parametrize('name, options', POLICIES)
def test_a_policy_that_says_it_is_monotone_is(profile, name, options):
    # Engine._fuse_to asks a monotone policy once per app, for its most pressed frame: a frame that
    # arrived later and spent less must then never stop where that one goes on.
    policy = get_policy(name, **options)
    if not policy.monotone_ahead:
        pytest.skip(f'{name} is asked per frame')
    for bounds in BOUNDS:
        for k in range(profile.num_exits):
            for pressed in PRESSURES:
                if policy.decide_ahead(_ctx(profile, bounds, k, elapsed=pressed[0], energy=pressed[1])) is not C:
                    continue
                for eased in PRESSURES:
                    if eased[0] <= pressed[0] and eased[1] <= pressed[1]:
                        decided = policy.decide_ahead(_ctx(profile, bounds, k, elapsed=eased[0], energy=eased[1]))
                        assert decided is C, (bounds, k, pressed, eased)


def test_the_fused_run_asks_each_app_once_for_its_most_pressed_frame():
    from delen_ros.core.engine import _State
    from delen_ros.core.engine_depth import _ahead_deciders
    from delen_ros.core.scheduler import Request
    nav, arm = Bounds(max_latency_ms=10.0), Bounds(max_latency_ms=33.0, min_accuracy=0.9)

    def request(app, bounds, arrival, energy):
        return Request(app_id=app, frame=None, arrival_ns=arrival, deadline_ns=arrival + 1000,
                       latency_bound_ms=bounds.max_latency_ms, state=_State(bounds=bounds, energy_est_mj=energy))
    batch = [request('nav', nav, 300, 1.0), request('arm', arm, 100, 0.5), request('nav', nav, 200, 0.2),
             request('nav', nav, 250, 2.0)]
    grouped = _ahead_deciders(batch, True, grouped=True)
    assert sorted(grouped, key=lambda d: d[2]) == [(arm, 0.0, 100, 0.5, 1100), (nav, 0.0, 200, 2.0, 1200)]
    # not enforcing deadlines: nobody is expired ahead
    assert {d[4] for d in _ahead_deciders(batch, False, grouped=True)} == {math.inf}
    # a policy that does not say it is monotone: every frame asked, as it is
    assert [d[2:] for d in _ahead_deciders(batch, True, grouped=False)] == \
        [(300, 1.0, 1300), (100, 0.5, 1100), (200, 0.2, 1200), (250, 2.0, 1250)]
