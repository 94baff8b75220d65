"""Forced stops: an app's frames stopped early by its latency or energy bound where its accuracy
cascade would have gone on are measured (ForcedStops), planned for by the cascade
(Profile.cascade(forced=...)), and then judged as following the plan."""
import dataclasses
import pathlib

import numpy as np
import pytest

from delen_ros.core.bounds import Bounds, Objective
from delen_ros.core.engine import Engine
from delen_ros.core.forced_stops import RATE_STEP, ForcedStops
from delen_ros.core.policies import get_policy
from delen_ros.core.profile import Profile, _expected_correct

from fakes import Collector, FakeRunner, fake_image, fake_model, synthetic_profile


# --- measuring ---------------------------------------------------------------------------------------

def test_nothing_is_planned_until_a_frame_is_forced():
    stops = ForcedStops(4, min_seen=1)
    for k in (0, 1, 2, 3, 3):
        stops.note(k, forced=False)
    assert stops.rates == ()


def test_a_rate_is_the_share_forced_of_the_frames_going_on_rounded_up():
    stops = ForcedStops(3, window=100, min_seen=5)
    for _ in range(9):
        stops.note(2, forced=False)    # went on from exits 0 and 1, ended at the final exit
    stops.note(1, forced=True)         # went on from exit 0, forced at exit 1
    # exit 0: 10 frames went on, none forced there; exit 1: 1 forced of 10 -> 0.1
    assert stops.rates == pytest.approx((0.0, 0.1))
    stops.note(1, forced=True)
    assert stops.rates[1] == pytest.approx(0.2)   # 2 of 11 = 0.18, rounded up to the step
    assert stops.rates[1] % RATE_STEP == pytest.approx(0.0, abs=1e-9)


def test_an_exit_seen_by_few_frames_counts_nothing_and_old_frames_leave_the_window():
    stops = ForcedStops(2, window=10, min_seen=5)
    for _ in range(4):
        stops.note(0, forced=True)
    assert stops.rates == ()           # 4 frames seen: not yet
    stops.note(0, forced=True)
    assert stops.rates == (1.0,)
    for _ in range(10):
        stops.note(1, forced=False)    # the final exit: never forced, went on from exit 0
    assert stops.rates == ()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        ForcedStops(0)
    with pytest.raises(ValueError):
        ForcedStops(3, window=0)


# --- planning ----------------------------------------------------------------------------------------

def test_expected_correctness_mixes_in_the_earlier_exits_where_frames_are_forced():
    correct = np.array([[0, 1, 0], [1, 1, 0], [1, 0, 1]], dtype=float)
    assert np.array_equal(_expected_correct(correct, ()), correct)
    out = _expected_correct(correct, (0.0, 0.25))
    # a plan ending at exit 2 is stopped at exit 1 a quarter of the time
    assert out[2] == pytest.approx(0.25 * correct[1] + 0.75 * correct[2])
    assert np.array_equal(out[:2], correct[:2])
    out = _expected_correct(correct, (0.5, 0.5))
    assert out[1] == pytest.approx(0.5 * correct[0] + 0.5 * correct[1])
    assert out[2] == pytest.approx(0.5 * correct[0] + 0.25 * correct[1] + 0.25 * correct[2])


def _two_level_profile(n: int = 4000, seed: int = 1) -> Profile:
    """Exit 0 right on its confident half, exit 1 better and sure when right, the final exit best: a
    cascade sends the inputs exit 1 is unsure of to the final exit, which a tight deadline may not
    reach."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.5
    correct = np.stack([easy | (rng.random(n) < p) for p in (0.3, 0.75, 0.9)]).astype(int)
    conf = np.stack([np.where(easy, rng.uniform(0.8, 1.0, n), rng.uniform(0.1, 0.7, n)),
                     np.where(correct[1] == 1, rng.uniform(0.5, 1.0, n), rng.uniform(0.2, 0.6, n)),
                     rng.uniform(0.5, 1.0, n)])
    base = synthetic_profile(3)
    exits = tuple(dataclasses.replace(e, accuracy=float(correct[k].mean()), calibration=())
                  for k, e in enumerate(base.exits))
    return dataclasses.replace(base, exits=exits, samples={'confidence': conf.tolist(), 'correct': correct.tolist()})


def _simulated_stream(profile: Profile, thresholds, forced, rng) -> float:
    """Run the held-out inputs through the cascade, each going on from exit k forced there with
    probability forced[k]; the accuracy of the answers."""
    conf, correct = np.asarray(profile.samples['confidence']), np.asarray(profile.samples['correct'])
    right = []
    for i in range(conf.shape[1]):
        for k in range(conf.shape[0]):
            last = k == conf.shape[0] - 1
            if last or (thresholds[k] is not None and conf[k, i] >= thresholds[k]):
                break
            if k < len(forced) and rng.random() < forced[k]:
                break
        right.append(correct[k, i])
    return float(np.mean(right))


COMMITTEE_CPU = pathlib.Path(__file__).resolve().parents[1] / 'models' / 'profiles' / \
    'cifar10_committee__cpu-intel-r-xeon-r-processor__bfloat16.json'


@pytest.mark.parametrize('rate', [0.25, 0.5, 1.0])
def test_a_plan_for_forced_stops_keeps_the_bound_in_the_stream_they_give(rate):
    # The committee's cascade at 0.9415 sends ~4 % of its held-out photos on to +lite2, which a 33 ms
    # bound on this CPU does not reach beside the cameras: a share of them is stopped at +lite0.
    profile, bound = Profile.load(COMMITTEE_CPU), 0.9415
    forced = (0.0,) * (profile.num_exits - 2) + (rate,)
    plain, planned = profile.cascade(bound), profile.cascade(bound, forced=forced)
    rng = np.random.default_rng(0)
    # unplanned, the forced stops cost the stream accuracy it counted on
    assert _simulated_stream(profile, plain.thresholds, forced, rng) < plain.accuracy - 0.001
    assert planned.forced == forced and planned.plans_forced_stop(4) and not planned.plans_forced_stop(3)
    assert planned.accuracy >= bound
    assert _simulated_stream(profile, planned.thresholds, forced, rng) == pytest.approx(planned.accuracy, abs=0.004)


def test_a_plan_is_absent_where_forced_stops_leave_no_way_to_the_bound():
    profile = _two_level_profile()
    assert profile.cascade(0.85, forced=(1.0, 0.0)) is None    # every frame answered at exit 0
    assert profile.cascade(0.85, forced=(0.0, 0.0)) == profile.cascade(0.85)


# --- judging -----------------------------------------------------------------------------------------

def test_a_forced_stop_is_judged_by_the_stream_only_where_the_plan_counts_it():
    profile = _two_level_profile()
    policy = get_policy('delen')
    bounds = Bounds(min_accuracy=0.85, objective=Objective.MIN_ENERGY, max_latency_ms=10.0)
    plain = profile.cascade(0.85)
    # unplanned: a stop at exit 1 below its threshold is judged by what such stops deliver
    reported, judged = policy.result_accuracy(profile, bounds, 1, 0.0)
    assert reported == judged == pytest.approx(plain.rest_accuracy[1]) and judged < 0.85
    assert policy.forced_stop(profile, bounds, 1, 0.0) is True
    assert policy.forced_stop(profile, bounds, 2, 0.0) is False     # the final exit: the plan's end
    # planned for: the same stop follows the plan
    planned = profile.cascade(0.85, forced=(0.0, 0.5))
    reported, judged = policy.result_accuracy(profile, bounds, 1, 0.0, (0.0, 0.5))
    assert reported == pytest.approx(planned.rest_accuracy[1])
    assert judged == pytest.approx(planned.accuracy) and judged >= 0.85
    # a stop forced at an exit the plan does not count (exit 0) still misses
    _, judged = policy.result_accuracy(profile, bounds, 0, 0.0, (0.0, 0.5))
    assert judged == pytest.approx(planned.rest_accuracy[0]) and judged < 0.85
    # an unplannable rate: the plain cascade, and its forced stops miss
    _, judged = policy.result_accuracy(profile, bounds, 1, 0.0, (1.0, 0.0))
    assert judged == pytest.approx(plain.rest_accuracy[1])


def test_policies_without_a_plan_measure_nothing():
    profile = _two_level_profile()
    assert get_policy('always_final').forced_stop(profile, Bounds(min_accuracy=0.85), 1, 0.0) is None
    # max_accuracy runs as deep as it may: no cascade
    delen = get_policy('delen')
    assert delen.forced_stop(profile, Bounds(min_accuracy=0.85, objective=Objective.MAX_ACCURACY), 1, 0.0) is None


# --- the engine --------------------------------------------------------------------------------------

def test_the_engine_learns_the_forced_stops_and_then_judges_them_as_planned():
    # Steps of 10, 10 and 200 ms on the fake device, a 100 ms bound: the final exit never fits, so
    # every frame the cascade sends on from exit 1 (none is confident on the fake model) is stopped
    # there by its deadline. The first ones miss the accuracy bound as judged; once the rate is
    # measured the plan counts such stops. (The final exit's energy is made cheap, so that the
    # cheapest plan does send frames there.)
    steps = (10.0, 10.0, 200.0)
    base = _two_level_profile()
    timing = synthetic_profile(3, step_ms=steps, head_ms=0.0, p99_factor=1.0)
    energy = synthetic_profile(3, step_ms=(10.0, 10.0, 1.0), head_ms=0.0)
    profile = dataclasses.replace(base, exits=tuple(dataclasses.replace(
        e, stage_ms=t.stage_ms, stage_p99_ms=t.stage_p99_ms, head_ms=t.head_ms, head_p99_ms=t.head_p99_ms,
        stage_energy_mj=w.stage_energy_mj) for e, t, w in zip(base.exits, timing.exits, energy.exits)))
    model = fake_model(num_exits=3)
    collector = Collector()
    engine = Engine(model, profile, on_result=collector, runner=FakeRunner(model, sleep_ms=steps),
                    admission_control=False, fuse_steps=False)
    engine.set_app('arm', Bounds(min_accuracy=0.85, objective=Objective.MIN_ENERGY, max_latency_ms=100.0))
    engine.start(warm_up=False)
    try:
        for i in range(12):
            engine.submit(['arm'], fake_image(i % 4, 10))
            collector.wait(i + 1)
    finally:
        engine.stop()
    results = collector.results
    assert [r.exit_index for r in results] == [1] * 12
    assert engine._apps['arm'].forced_stops.rates == (0.0, 1.0)
    planned = profile.cascade(0.85, forced=(0.0, 1.0))
    assert not any(r.bounds_met for r in results[:5])       # before the rate counts (min_seen)
    assert all(r.bounds_met for r in results[6:])
    assert all(r.judged_accuracy == pytest.approx(planned.accuracy) for r in results[6:])
