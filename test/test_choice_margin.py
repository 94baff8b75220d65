"""ChoiceMargin: a per-app quantile tracker of how much more a step taken by choice keeps free."""
import random

import pytest

from delen_ros.core.bounds import Bounds
from delen_ros.core.choice_margin import TARGET_LATE_SHARE, ChoiceMargin
from delen_ros.core.engine import Engine
from delen_ros.core.results import Result
from fakes import FakeClock, FakeRunner, fake_image, fake_model, synthetic_profile


def test_a_late_result_moves_it_up_a_step_and_on_time_ones_bring_it_back_slowly():
    margin = ChoiceMargin(10.0)
    margin.note(late=False)
    assert margin.ms == 0.0                              # never below the policy's headroom alone
    margin.note(late=True)
    assert margin.ms == pytest.approx(0.5)               # 5 % of the bound
    on_time_to_undo = round(0.5 / (0.5 * TARGET_LATE_SHARE / (1 - TARGET_LATE_SHARE)))
    for _ in range(on_time_to_undo - 1):
        margin.note(late=False)
    assert 0.0 < margin.ms < 0.01
    for _ in range(100):
        margin.note(late=True)
    assert margin.ms == pytest.approx(5.0)               # at most half the bound


@pytest.mark.parametrize('bad', [{'bound_ms': 0.0}, {'bound_ms': float('nan')}, {'bound_ms': 10.0, 'target': 1.0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        ChoiceMargin(**bad)


def test_it_settles_where_about_the_target_share_of_results_is_late():
    # a step that overruns its prediction by an exponential amount (mean 0.5 ms); late when the overrun
    # exceeds the margin: the 99.5th percentile is 0.5 ln(200) = 2.65 ms
    rng = random.Random(1)
    margin = ChoiceMargin(10.0, step_share=0.02)
    late, held = 0, []
    for i in range(400_000):
        is_late = rng.expovariate(2.0) > margin.ms
        margin.note(late=is_late)
        if i >= 100_000:
            late += is_late
            held.append(margin.ms)
    assert late / 300_000 == pytest.approx(TARGET_LATE_SHARE, rel=0.2)
    assert sum(held) / len(held) == pytest.approx(2.65, abs=0.5)


def _result(app: str, bounds: Bounds, *, exit_index: int, arrival_ns: int, late: bool = False) -> Result:
    return Result(app_id=app, tag=None, class_id=0, label='c', confidence=0.9, exit_index=exit_index, num_exits=4,
                  expected_accuracy=0.9, latency_ms=0.0, queue_ms=0.0, compute_ms=0.0, energy_mj=0.0,
                  energy_measured=False, energy_source='estimate', bounds_met=True, arrival_ns=arrival_ns,
                  finish_ns=arrival_ns, late=late, bounds=bounds)


@pytest.mark.parametrize('learn', [True, False])
def test_the_engine_learns_an_apps_margin_from_results_published_past_the_deadline(learn):
    clock = FakeClock()
    model = fake_model()
    engine = Engine(model, synthetic_profile(), on_result=lambda r: None, runner=FakeRunner(model), clock=clock,
                    delivery_allowance_ms=1.0, admission_control=False)
    engine.learn_choice_margin = learn
    accurate, frugal = Bounds(max_latency_ms=10.0), Bounds(max_latency_ms=10.0, min_accuracy=0.7,
                                                           objective='min_energy')
    engine.set_app('accurate', accurate)
    engine.set_app('frugal', frugal)
    assert engine._apps['frugal'].choice_margin is None   # it stops once its bounds are met: no choice
    margin = engine._apps['accurate'].choice_margin
    start = clock() - 9_500_000                              # published 9.5 ms after arrival: past 10 - 1
    engine.deliver(_result('accurate', accurate, exit_index=0, arrival_ns=start))             # first exit
    engine.deliver(_result('accurate', accurate, exit_index=2, arrival_ns=start, late=True))  # served late
    assert margin.ms == 0.0
    engine.deliver(_result('accurate', accurate, exit_index=2, arrival_ns=start))
    assert margin.ms == (0.5 if learn else 0.0)
    engine.deliver(_result('accurate', accurate, exit_index=2, arrival_ns=clock() - 8_000_000))   # in time
    assert margin.ms == (pytest.approx(0.5 - 0.5 * TARGET_LATE_SHARE / (1 - TARGET_LATE_SHARE)) if learn else 0.0)
    assert engine.stats('accurate', recheck_s=float('inf')).choice_margin_ms == margin.ms   # as ~/diagnostics shows it
    assert engine.stats('frugal', recheck_s=float('inf')).choice_margin_ms == 0.0
    engine.set_app('accurate', Bounds(max_latency_ms=20.0))  # new bounds: learnt anew
    assert engine._apps['accurate'].choice_margin.ms == 0.0


def test_margin_ms_is_zero_for_an_app_without_a_margin():
    from delen_ros.core.choice_margin import margin_ms
    margin = ChoiceMargin(10.0)
    margin.note(late=True)
    assert margin_ms(None) == 0.0 and margin_ms(margin) == margin.ms > 0


@pytest.mark.parametrize('when_behind', [False, True])
def test_results_late_behind_a_backlog_do_not_raise_the_margin(when_behind):
    """While newer frames push an app's out of its queue (the node behind it), its late results are the
    backlog's, not its steps' by choice: they leave the margin where it is, and on-time ones still lower
    it. ``margin_learns_when_behind`` (before session 36) counts them all."""
    clock = FakeClock()
    model = fake_model()
    engine = Engine(model, synthetic_profile(), on_result=lambda r: None, runner=FakeRunner(model), clock=clock,
                    delivery_allowance_ms=1.0, admission_control=False, queue_depth=1)
    engine.margin_learns_when_behind = when_behind
    accurate = Bounds(max_latency_ms=10.0)
    engine.set_app('accurate', accurate)
    margin = engine._apps['accurate'].choice_margin
    image = fake_image(1, 200)
    engine.submit(['accurate'], image)
    engine.submit(['accurate'], image)            # pushes the first out: the node is behind the app
    late_start = clock() - 9_500_000
    engine.deliver(_result('accurate', accurate, exit_index=2, arrival_ns=late_start))
    assert margin.ms == (0.5 if when_behind else 0.0)
    margin.note(late=True)                         # 0.5 (or 1.0) learnt before
    held = margin.ms
    engine.deliver(_result('accurate', accurate, exit_index=2, arrival_ns=clock() - 8_000_000))   # in time
    assert margin.ms < held                        # on time: lowered, behind or not
    clock.advance(600)                             # no frame pushed out for 0.6 s: caught up
    held = margin.ms
    engine.deliver(_result('accurate', accurate, exit_index=2, arrival_ns=clock() - 9_500_000))
    assert margin.ms == pytest.approx(held + 0.5)
