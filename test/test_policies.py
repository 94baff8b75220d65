"""Exit policies on a synthetic profile: decision tables, the registry, the latency corrector."""
import dataclasses
import math

import pytest

from delen_ros.core.bounds import Bounds
from delen_ros.core.policies import (Decision, DelenPolicy, ExitContext, LatencyCorrector, Policy,
                                     available_policies, get_policy, register_policy, static_fallback_exit)
from fakes import FakeClock, synthetic_profile

# Steps at batch 1 (stage + head): 1.1, 2.1, 3.1, 4.1 ms (p99 x1.2); exits at 1.1, 3.2, 6.3, 10.4 ms;
# energy per step = its ms at 1 W; accuracy 0.6, 0.7, 0.8, 0.9; calibration threshold for accuracy a
# at exit k = lowest t in (0, .5, .7, .8, .9, .95) with acc_k + (0.99 - acc_k) t >= a.
PROFILE = synthetic_profile()
S, C = 'stop', 'continue'
P50 = LatencyCorrector(safety=0.0)


def ctx(bounds=Bounds(), k=0, confidence=0.5, elapsed=0.0, energy=0.0, batch=1, corrector=P50):
    return ExitContext(bounds=bounds, profile=PROFILE, exit_index=k, confidence=confidence, elapsed_ms=elapsed,
                       energy_mj=energy, next_batch=batch, corrector=corrector)


def test_registry_lists_every_policy():
    assert available_policies() == ['always_final', 'check_after_stage', 'delen', 'fixed_confidence', 'static_exit']
    assert isinstance(get_policy('delen'), DelenPolicy)
    assert get_policy('fixed_confidence', threshold=0.5).threshold == 0.5


def test_unknown_policy_lists_known():
    with pytest.raises(KeyError, match='always_final'):
        get_policy('greedy')


def test_duplicate_policy_name_raises():
    with pytest.raises(ValueError, match='already registered'):
        @register_policy('delen')
        class Again(Policy):
            def _decide(self, ctx):
                return Decision.STOP


@pytest.mark.parametrize('name', ['delen', 'always_final', 'static_exit', 'check_after_stage', 'fixed_confidence'])
@pytest.mark.parametrize('bounds', [Bounds(), Bounds(max_latency_ms=100.0), Bounds(min_accuracy=0.9)])
def test_last_exit_always_stops(name, bounds):
    assert get_policy(name).decide(ctx(bounds, k=PROFILE.final_exit, confidence=0.0)) is Decision.STOP


@pytest.mark.parametrize('bounds, k, confidence, elapsed, energy, expected', [
    # latency: stop when elapsed + predicted next step (p50 here) would pass the bound
    (Bounds(max_latency_ms=5.0), 0, 0.5, 1.1, 1.1, C),      # 1.1 + 2.1 = 3.2 <= 5
    (Bounds(max_latency_ms=5.0), 1, 0.5, 3.2, 3.2, S),      # 3.2 + 3.1 = 6.3 > 5
    (Bounds(max_latency_ms=7.1), 1, 0.5, 3.2, 3.2, C),      # 6.3 <= 7.1 - 0.71: a step by choice keeps 10 %
    (Bounds(max_latency_ms=20.0), 0, 0.5, 18.0, 1.1, S),    # queueing ate the budget
    # energy: stop before a step whose energy would pass the budget
    (Bounds(max_energy_mj=3.0), 0, 0.5, 1.1, 1.1, S),       # 1.1 + 2.1 > 3
    (Bounds(max_energy_mj=3.2), 0, 0.5, 1.1, 1.1, C),
    # accuracy with MIN_ENERGY: calibrated threshold (exit 0, acc 0.8 -> t = 0.7), else fallback exit 2
    (Bounds(min_accuracy=0.8, objective='min_energy'), 0, 0.75, 1.1, 1.1, S),
    (Bounds(min_accuracy=0.8, objective='min_energy'), 0, 0.65, 1.1, 1.1, C),
    (Bounds(min_accuracy=0.8, objective='min_energy'), 1, 0.65, 3.2, 3.2, S),   # exit 1: t = 0.5
    (Bounds(min_accuracy=0.8, objective='min_energy'), 1, 0.45, 3.2, 3.2, C),
    (Bounds(min_accuracy=0.8, objective='min_energy'), 2, 0.10, 6.3, 6.3, S),   # fallback exit reached
    (Bounds(min_accuracy=0.95, objective='min_latency'), 0, 0.89, 1.1, 1.1, C),  # t = 0.9 at exit 0
    (Bounds(min_accuracy=0.95, objective='min_latency'), 0, 0.91, 1.1, 1.1, S),
    # no accuracy bound, MIN_LATENCY: the first exit will do
    (Bounds(objective='min_latency'), 0, 0.1, 1.1, 1.1, S),
    # MAX_ACCURACY (explicit, or the default objective with a latency / energy bound or none):
    # as deep as the bounds allow, confidence or not
    (Bounds(min_accuracy=0.8, objective='max_accuracy'), 0, 0.99, 1.1, 1.1, C),
    (Bounds(min_accuracy=0.8, max_energy_mj=50.0), 0, 0.99, 1.1, 1.1, C),
    (Bounds(), 2, 0.99, 6.3, 6.3, C),
    # the default objective with an accuracy bound alone: Dělen's first exit that meets it
    (Bounds(min_accuracy=0.8), 0, 0.99, 1.1, 1.1, S),
    (Bounds(min_accuracy=0.8), 0, 0.65, 1.1, 1.1, C),
    # latency beats accuracy: an unmet accuracy bound does not justify overrunning
    (Bounds(max_latency_ms=5.0, min_accuracy=0.9, objective='min_latency'), 1, 0.1, 3.2, 3.2, S),
])
def test_delen_decisions(bounds, k, confidence, elapsed, energy, expected):
    assert get_policy('delen').decide(ctx(bounds, k, confidence, elapsed, energy)).value == expected


@pytest.mark.parametrize('batch, expected', [(1, C), (8, S)])   # a batch of 8 takes 2.75x longer
def test_delen_predicts_at_the_next_batch_size(batch, expected):
    c = ctx(Bounds(max_latency_ms=6.0), k=0, elapsed=1.1, batch=batch)   # 1.1 + 2.1 vs 1.1 + 5.775
    assert get_policy('delen').decide(c).value == expected


def test_delen_uses_online_correction_and_safety_margin():
    b = Bounds(max_latency_ms=3.5)      # 1.1 elapsed + 2.1 p50 = 3.2 fits; p99 2.52 -> 3.62 does not
    delen = get_policy('delen', choice_headroom=0.0)   # the limit's arithmetic alone
    assert delen.decide(ctx(b, 0, elapsed=1.1, corrector=LatencyCorrector(safety=0.0))) is Decision.CONTINUE
    assert delen.decide(ctx(b, 0, elapsed=1.1, corrector=LatencyCorrector(safety=1.0))) is Decision.STOP
    slow = LatencyCorrector(margin=0.0)
    slow.update(1, 1, measured_ms=4.2, predicted_ms=2.1)   # the device runs 2x slower than profiled
    assert get_policy('delen').decide(ctx(b, 0, elapsed=1.1, corrector=slow)) is Decision.STOP
    fast = LatencyCorrector(margin=0.0, safety=1.0)
    fast.update(1, 1, measured_ms=1.05, predicted_ms=2.1)  # 2x faster: measured beats the p99 prior
    assert get_policy('delen').decide(ctx(b, 0, elapsed=1.1, corrector=fast)) is Decision.CONTINUE


def test_delen_ignores_calibration_rows_without_support():
    import dataclasses
    # exit 0: one lucky input at confidence >= 0.35 was right (0.5 % of the held-out set)
    rows = ((0.0, 0.6, 1.0), (0.35, 1.0, 0.005))
    profile = dataclasses.replace(PROFILE, exits=(dataclasses.replace(PROFILE.exits[0], calibration=rows),)
                                  + PROFILE.exits[1:])
    c = ExitContext(bounds=Bounds(min_accuracy=0.85, objective='min_energy'), profile=profile, exit_index=0,
                    confidence=0.4, elapsed_ms=1.1, corrector=P50)
    assert DelenPolicy(min_support=0.0).decide(c) is Decision.STOP        # trusts the lucky row
    assert DelenPolicy().decide(c) is Decision.CONTINUE                   # needs 2 % support
    with pytest.raises(ValueError, match='min_support'):
        DelenPolicy(min_support=2.0)


def test_delen_uncalibrated_uses_fallback_exit_only():
    b = Bounds(min_accuracy=0.8, objective='min_energy')
    assert DelenPolicy(calibrated=False).decide(ctx(b, 0, confidence=0.99)) is Decision.CONTINUE
    assert DelenPolicy(calibrated=False).decide(ctx(b, 2, confidence=0.01)) is Decision.STOP


@pytest.mark.parametrize('name, bounds, k, confidence, elapsed, energy, expected', [
    ('always_final', Bounds(max_latency_ms=1.0), 0, 0.99, 5.0, 1.0, C),
    ('always_final', Bounds(), 2, 0.99, 5.0, 1.0, C),
    # static plan: latency 5 -> exit 1 ; min_accuracy 0.8 MIN_ENERGY -> exit 2 ; infeasible -> final
    ('static_exit', Bounds(max_latency_ms=5.0), 0, 0.99, 1.1, 1.1, C),
    ('static_exit', Bounds(max_latency_ms=5.0), 1, 0.10, 50.0, 3.2, S),
    ('static_exit', Bounds(min_accuracy=0.8, objective='min_energy'), 1, 0.99, 3.2, 3.2, C),
    ('static_exit', Bounds(min_accuracy=0.8, objective='min_energy'), 2, 0.10, 6.3, 6.3, S),
    ('static_exit', Bounds(max_latency_ms=0.5), 2, 0.10, 6.3, 6.3, C),
    # check after stage: only an overrun already happened stops it (it goes past 5 ms here)
    ('check_after_stage', Bounds(max_latency_ms=5.0), 1, 0.5, 3.2, 3.2, C),
    ('check_after_stage', Bounds(max_latency_ms=5.0), 2, 0.5, 6.3, 6.3, S),
    ('check_after_stage', Bounds(max_energy_mj=3.0), 1, 0.5, 3.2, 3.2, S),
    ('check_after_stage', Bounds(min_accuracy=0.7, objective='min_energy'), 1, 0.1, 3.2, 3.2, S),
    ('check_after_stage', Bounds(min_accuracy=0.7, objective='max_accuracy'), 1, 0.1, 3.2, 3.2, C),
    ('check_after_stage', Bounds(min_accuracy=0.7), 1, 0.1, 3.2, 3.2, S),     # default: Dělen's first exit
    # fixed confidence 0.9, bounds ignored
    ('fixed_confidence', Bounds(max_latency_ms=1.0), 0, 0.90, 5.0, 1.0, S),
    ('fixed_confidence', Bounds(), 1, 0.89, 3.2, 3.2, C),
])
def test_baseline_decisions(name, bounds, k, confidence, elapsed, energy, expected):
    assert get_policy(name).decide(ctx(bounds, k, confidence, elapsed, energy)).value == expected


def test_delen_stops_before_the_overrun_check_after_stage_makes():
    # 3.2 ms spent, bound 5 ms, next step 3.1 ms: predicting stops now, checking after overshoots to 6.3
    c = ctx(Bounds(max_latency_ms=5.0), k=1, elapsed=3.2)
    assert get_policy('delen').decide(c) is Decision.STOP
    assert get_policy('check_after_stage').decide(c) is Decision.CONTINUE


@pytest.mark.parametrize('name, confidence, expected', [
    ('delen', 0.75, 0.6 + 0.39 * 0.7),          # calibration row t = 0.7 at exit 0
    ('delen', 0.10, 0.6),                       # row t = 0: the exit's overall accuracy
    ('fixed_confidence', 0.96, 0.6 + 0.39 * 0.95),
    ('always_final', 0.96, 0.6),                # not confidence-based: the exit's accuracy
    ('static_exit', 0.96, 0.6),
    ('check_after_stage', 0.96, 0.6),
])
def test_expected_accuracy(name, confidence, expected):
    assert get_policy(name).expected_accuracy(PROFILE, 0, confidence) == pytest.approx(expected)


@pytest.mark.parametrize('min_accuracy, expected', [(None, 0), (0.6, 0), (0.65, 1), (0.8, 2), (0.9, 3), (0.99, 3)])
def test_static_fallback_exit(min_accuracy, expected):
    assert static_fallback_exit(PROFILE, min_accuracy) == expected



@pytest.mark.parametrize('name, bounds, expected', [
    ('delen', Bounds(min_accuracy=0.9), 0), ('check_after_stage', Bounds(max_latency_ms=5.0), 0),
    ('fixed_confidence', Bounds(), 0), ('always_final', Bounds(max_latency_ms=5.0), 3),
    ('static_exit', Bounds(min_accuracy=0.8), 2), ('static_exit', Bounds(max_latency_ms=0.01), 3)])   # infeasible
def test_first_stop_is_the_first_exit_a_frame_may_end_at(name, bounds, expected):
    assert get_policy(name).first_stop(PROFILE, bounds) == expected

def test_fixed_confidence_validates_threshold():
    with pytest.raises(ValueError, match='1.5'):
        get_policy('fixed_confidence', threshold=1.5)


class TestLatencyCorrector:
    def test_prior_is_the_profile(self):
        assert LatencyCorrector(safety=0.0).predict_ms(PROFILE, 1) == pytest.approx(2.1)
        assert LatencyCorrector(safety=1.0).predict_ms(PROFILE, 1) == pytest.approx(2.1 * 1.2)
        assert LatencyCorrector(safety=0.5).predict_ms(PROFILE, 1) == pytest.approx(2.1 * 1.1)

    def test_mean_and_deviation_follow_measurements(self):
        c = LatencyCorrector(alpha=0.5, beta=0.5, margin=0.0)
        assert c.factor(0, 1) == 1.0 and c.deviation(0, 1) == 0.0
        c.update(0, 1, measured_ms=2.2, predicted_ms=1.1)     # first ratio 2 taken as is, deviation 2/4
        assert (c.factor(0, 1), c.deviation(0, 1)) == pytest.approx((2.0, 0.5))
        c.update(0, 1, measured_ms=1.1, predicted_ms=1.1)     # ratio 1: dev 0.5 + 0.5 (|1 - 2| - 0.5), mean 1.5
        assert (c.factor(0, 1), c.deviation(0, 1)) == pytest.approx((1.5, 0.75))
        assert c.predict_ms(PROFILE, 0, 1) == pytest.approx(1.1 * 1.5)
        c.margin = 2.0
        assert c.predict_ms(PROFILE, 0, 1) == pytest.approx(1.1 * (1.5 + 2 * 0.75))

    def test_jitter_widens_the_margin(self):
        steady, jittery = LatencyCorrector(), LatencyCorrector()
        for i in range(40):
            steady.update(0, 1, measured_ms=2.0, predicted_ms=1.0)
            jittery.update(0, 1, measured_ms=1.0 if i % 2 else 3.0, predicted_ms=1.0)
        assert steady.factor(0, 1) == pytest.approx(2.0) and steady.deviation(0, 1) < 0.01
        assert jittery.predict_ms(PROFILE, 0) > 1.5 * steady.predict_ms(PROFILE, 0)

    def test_a_lone_stall_is_bounded(self):
        c = LatencyCorrector(alpha=0.5, beta=0.5, margin=0.0)
        c.update(0, 1, measured_ms=1.0, predicted_ms=1.0)
        c.update(0, 1, measured_ms=300.0, predicted_ms=1.0)   # counts as 4x the mean, not 16x
        assert c.factor(0, 1) == pytest.approx(2.5)

    def test_unmeasured_batch_borrows_nearest(self):
        c = LatencyCorrector(alpha=1.0)
        c.update(1, 4, measured_ms=3.0, predicted_ms=2.0)
        c.update(1, 16, measured_ms=1.0, predicted_ms=2.0)
        assert c.factor(1, 5) == pytest.approx(1.5)
        assert c.factor(1, 14) == pytest.approx(0.5)
        assert c.factor(2, 4) == 1.5     # another step, nothing measured: the others' level (upper median)

    def test_an_unmeasured_step_is_priced_at_the_level_of_the_measured_ones(self):
        clock = FakeClock()
        c = LatencyCorrector(alpha=1.0, margin=0.0, safety=0.0, stale_s=1.0, clock=lambda: clock() / 1e9)
        for step in (0, 1):
            c.update(step, 1, measured_ms=2.0 * PROFILE.step_ms(step), predicted_ms=PROFILE.step_ms(step))
        # the device runs the steps measured at twice the profile: so the step not reached yet
        assert c.predict_ms(PROFILE, 2) == pytest.approx(2.0 * PROFILE.step_ms(2))
        assert c.factor(2, 1) == pytest.approx(2.0)
        clock.advance(5000)   # nothing measured lately: the profile again
        assert c.predict_ms(PROFILE, 2) == pytest.approx(PROFILE.step_ms(2))

    def test_a_device_faster_than_the_profile_keeps_the_prior_of_unmeasured_steps(self):
        c = LatencyCorrector(alpha=1.0, margin=0.0, safety=0.0)
        c.update(0, 1, measured_ms=0.5 * PROFILE.step_ms(0), predicted_ms=PROFILE.step_ms(0))
        assert c.predict_ms(PROFILE, 2) == pytest.approx(PROFILE.step_ms(2))
        assert c.factor(2, 1) == 1.0

    def test_fresh_batch_sizes_are_preferred_to_stale_ones(self):
        clock = FakeClock()
        c = LatencyCorrector(alpha=1.0, stale_s=1.0, clock=lambda: clock() / 1e9)
        c.update(1, 4, measured_ms=6.0, predicted_ms=2.0)     # ratio 3, then left alone
        clock.advance(1500)
        c.update(1, 8, measured_ms=2.0, predicted_ms=2.0)     # ratio 1, fresh
        assert c.factor(1, 4) == pytest.approx(1.0)

    def test_stale_estimates_fade_into_the_prior(self):
        clock = FakeClock()
        c = LatencyCorrector(margin=0.0, safety=0.0, stale_s=1.0, clock=lambda: clock() / 1e9)
        c.update(0, 1, measured_ms=1.1 * 16, predicted_ms=1.1)   # an outlier: 16x the profile
        assert c.predict_ms(PROFILE, 0) == pytest.approx(1.1 * 16)
        clock.advance(1000)                                       # still fresh
        assert c.predict_ms(PROFILE, 0) == pytest.approx(1.1 * 16)
        clock.advance(250)                                        # one time constant past stale
        assert c.predict_ms(PROFILE, 0) == pytest.approx(1.1 + (1.1 * 15) * math.exp(-1))
        clock.advance(5000)                                       # nothing measured for long: the profile
        assert c.predict_ms(PROFILE, 0) == pytest.approx(1.1, rel=1e-3)

    @pytest.mark.parametrize('measured, expected', [(100.0, 16.0), (0.001, 0.1)])
    def test_clamped(self, measured, expected):
        c = LatencyCorrector(alpha=1.0)
        c.update(0, 1, measured_ms=measured, predicted_ms=1.0)
        assert c.factor(0, 1) == expected

    @pytest.mark.parametrize('kwargs', [{'alpha': 0.0}, {'alpha': 1.5}, {'beta': 0.0}, {'safety': -1.0},
                                        {'margin': float('nan')}, {'min_factor': 2.0}, {'stale_s': 0.0}])
    def test_validates(self, kwargs):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            LatencyCorrector(**kwargs)

    def test_pooled_batch_sizes_learn_one_level_per_step(self):
        c = LatencyCorrector(alpha=1.0, margin=0.0, safety=0.0, pool_batch_sizes=True)
        c.update(1, 4, measured_ms=3.0, predicted_ms=2.0)    # ratio 1.5, measured at batch 4
        assert c.factor(1, 4) == c.factor(1, 1) == c.factor(1, 32) == pytest.approx(1.5)
        c.update(1, 16, measured_ms=1.0, predicted_ms=2.0)   # ratio 0.5 replaces it for every size
        assert c.factor(1, 5) == c.factor(1, 14) == pytest.approx(0.5)
        assert c.factor(2, 4) == 1.0                          # another step: nothing measured
        # the profile keeps the shape across sizes: batch 2 costs what the profile says at 2, x the level
        assert c.predict_ms(PROFILE, 1, 2) == pytest.approx(0.5 * PROFILE.step_ms(1, 2))

    def test_the_engine_pools_batch_sizes(self):
        from delen_ros.core.engine import Engine
        from fakes import FakeRunner, fake_model, synthetic_profile
        model = fake_model()
        engine = Engine(model, synthetic_profile(), runner=FakeRunner(model), on_result=lambda r: None)
        assert engine.corrector.pool_batch_sizes

    def test_ignores_bad_measurements(self):
        c = LatencyCorrector()
        c.update(0, 1, measured_ms=float('nan'), predicted_ms=1.0)
        c.update(0, 1, measured_ms=1.0, predicted_ms=0.0)
        assert c.factor(0, 1) == 1.0 and c.snapshot() == {}


def test_delen_counts_the_measured_decision_to_delivery_tail():
    b = Bounds(max_latency_ms=3.5)      # 1.1 elapsed + 2.1 p50 = 3.2 fits, without the tail
    corrector = LatencyCorrector(safety=0.0, margin=0.0)
    delen = get_policy('delen', choice_headroom=0.0)   # the limit's arithmetic alone
    assert corrector.tail_ms() == 0.0
    assert delen.decide(ctx(b, 0, elapsed=1.1, corrector=corrector)) is Decision.CONTINUE
    corrector.update_tail(0.5)          # results take 0.5 ms from decision to delivery: 3.7 > 3.5
    assert corrector.tail_ms() == pytest.approx(0.5)
    assert delen.decide(ctx(b, 0, elapsed=1.1, corrector=corrector)) is Decision.STOP


def test_delen_keeps_the_delivery_allowance_in_its_latency_limit():
    """The result must be published an allowance before the bound (the scheduler's deadline), not at it."""
    b = Bounds(max_latency_ms=3.5)      # 1.1 elapsed + 2.1 = 3.2: fits 3.5, not 3.5 - 0.5
    delen = get_policy('delen', choice_headroom=0.0)   # the limit's arithmetic alone
    fits = ctx(b, 0, elapsed=1.1)
    assert fits.latency_limit_ms == 3.5 and delen.decide(fits) is Decision.CONTINUE
    kept = ExitContext(bounds=b, profile=PROFILE, exit_index=0, confidence=0.5, elapsed_ms=1.1, corrector=P50,
                       delivery_allowance_ms=0.5)
    assert kept.latency_limit_ms == 3.0
    assert delen.decide(kept) is Decision.STOP and delen.decide_ahead(kept) is Decision.STOP
    assert ExitContext(bounds=Bounds(), profile=PROFILE, exit_index=0, confidence=0.5, elapsed_ms=1.1,
                       delivery_allowance_ms=0.5).latency_limit_ms is None


@pytest.mark.parametrize('bad', [-1.0, math.nan, math.inf])
def test_tail_ignores_impossible_measurements(bad):
    corrector = LatencyCorrector(margin=0.0)
    corrector.update_tail(0.2)
    corrector.update_tail(bad)
    assert corrector.tail_ms() == pytest.approx(0.2)


def test_one_slow_delivery_is_folded_in_as_an_outlier():
    corrector = LatencyCorrector(margin=0.0, alpha=1.0)
    corrector.update_tail(0.1)
    corrector.update_tail(50.0)         # a stall: counted as OUTLIER x the mean at most
    assert corrector.tail_ms() == pytest.approx(LatencyCorrector.OUTLIER * 0.1)


def test_delen_keeps_a_headroom_for_steps_taken_by_choice():
    """As accurate as allowed: a step the bounds do not ask for must end 10 % of the bound early."""
    delen, to_the_deadline = get_policy('delen'), get_policy('delen', choice_headroom=0.0)
    latency_only = Bounds(max_latency_ms=10.0)
    assert delen.decide(ctx(latency_only, 0, elapsed=6.8)) is Decision.CONTINUE     # 6.8 + 2.1 <= 10 - 1
    near = ctx(latency_only, 0, elapsed=7.5)                                          # 9.6: in the headroom
    assert delen.decide(near) is Decision.STOP and delen.decide_ahead(near) is Decision.STOP
    assert to_the_deadline.decide(near) is Decision.CONTINUE                          # as before session 28
    needs = Bounds(max_latency_ms=10.0, min_accuracy=0.85, objective='max_accuracy')  # exit 0: 0.6
    assert delen.decide(ctx(needs, 0, confidence=0.1, elapsed=7.5)) is Decision.CONTINUE   # a step it needs
    assert delen.decide(ctx(needs, 0, confidence=0.99, elapsed=7.5)) is Decision.STOP      # met: by choice
    assert delen.decide_ahead(ctx(needs, 0, elapsed=7.5)) is None                      # depends on the input
    assert delen.decide(ctx(latency_only, 0, elapsed=8.0)) is Decision.STOP            # past the bound anyway
    with pytest.raises(ValueError, match='choice_headroom'):
        DelenPolicy(choice_headroom=1.5)


def test_delen_keeps_the_apps_learnt_choice_margin_too():
    delen = get_policy('delen')
    latency_only = Bounds(max_latency_ms=10.0)
    at = ctx(latency_only, 0, elapsed=6.8)                                 # 6.8 + 2.1 <= 10 - 1
    assert delen.decide(at) is Decision.CONTINUE
    learnt = dataclasses.replace(at, choice_margin_ms=0.5)                 # 8.9 > 10 - 1 - 0.5
    assert delen.decide(learnt) is Decision.STOP and delen.decide_ahead(learnt) is Decision.STOP
    needs = Bounds(max_latency_ms=10.0, min_accuracy=0.85, objective='max_accuracy')
    assert delen.decide(dataclasses.replace(ctx(needs, 0, confidence=0.1, elapsed=6.8), choice_margin_ms=0.5)) \
        is Decision.CONTINUE                                               # a step it needs: no margin
