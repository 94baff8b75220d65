"""Bounds: validation, Dělen's condition vocabulary, feasibility and the static plan."""
import json
import math

import pytest

from delen_ros.core.bounds import (Bounds, Condition, FeasibleRange, InfeasibleBounds, Metric, Objective, Op,
                                   feasible_range, plan)
from fakes import synthetic_profile

# Exits of the default synthetic profile at batch 1 (step k = k+1 ms stage + 0.1 ms head, 1 W):
# latency = energy = 1.1, 3.2, 6.3, 10.4 ; accuracy 0.6, 0.7, 0.8, 0.9.
PROFILE = synthetic_profile()
LATENCY = (1.1, 3.2, 6.3, 10.4)


@pytest.mark.parametrize('kwargs, field', [
    ({'max_latency_ms': math.nan}, 'max_latency_ms'),
    ({'max_latency_ms': math.inf}, 'max_latency_ms'),
    ({'max_latency_ms': -1.0}, 'max_latency_ms'),
    ({'min_accuracy': -0.1}, 'min_accuracy'),
    ({'min_accuracy': 1.5}, 'min_accuracy'),
    ({'min_accuracy': math.nan}, 'min_accuracy'),
    ({'max_energy_mj': -0.001}, 'max_energy_mj'),
    ({'max_energy_mj': -math.inf}, 'max_energy_mj'),
    ({'max_latency_ms': '10'}, 'max_latency_ms'),
    ({'max_latency_ms': True}, 'max_latency_ms'),
])
def test_bad_bounds_raise_naming_field_and_value(kwargs, field):
    with pytest.raises(ValueError) as err:
        Bounds(**kwargs)
    assert field in str(err.value)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_unknown_objective_lists_known():
    with pytest.raises(ValueError, match='max_accuracy'):
        Bounds(objective='fastest')


@pytest.mark.parametrize('value, expected', [
    ('max_accuracy', Objective.MAX_ACCURACY), ('MIN_LATENCY', Objective.MIN_LATENCY),
    ('min_energy', Objective.MIN_ENERGY), (0, Objective.DEFAULT), (1, Objective.MAX_ACCURACY),
    (2, Objective.MIN_LATENCY), (3, Objective.MIN_ENERGY), (Objective.MIN_ENERGY, Objective.MIN_ENERGY),
    ('default', Objective.DEFAULT), ('auto', Objective.DEFAULT),
])
def test_objective_parse(value, expected):
    assert Objective.parse(value) is expected


@pytest.mark.parametrize('value', [4, -1, 'max', True, None])
def test_objective_parse_rejects(value):
    with pytest.raises(ValueError):
        Objective.parse(value)


@pytest.mark.parametrize('args, expected', [
    ((0, 0, 0, 0), Bounds()),
    ((40.0, 0, 0, 2), Bounds(max_latency_ms=40.0, objective=Objective.MIN_LATENCY)),
    ((40.0, 0, 0, 0), Bounds(max_latency_ms=40.0, objective=Objective.DEFAULT)),
    ((0, 0.8, 5.0, 'min_energy'), Bounds(min_accuracy=0.8, max_energy_mj=5.0, objective=Objective.MIN_ENERGY)),
])
def test_from_request_zero_means_unbounded(args, expected):
    assert Bounds.from_request(*args) == expected


@pytest.mark.parametrize('args', [(math.nan, 0, 0, 0), (-5.0, 0, 0, 0), (0, 2.0, 0, 0), (0, 0, 0, 7)])
def test_from_request_still_validates(args):
    with pytest.raises(ValueError):
        Bounds.from_request(*args)


def test_bounds_frozen_and_hashable():
    b = Bounds(max_latency_ms=10)
    with pytest.raises(AttributeError):
        b.max_latency_ms = 5  # type: ignore[misc]
    assert {b: 1}[Bounds(max_latency_ms=10.0)] == 1
    assert Bounds().unbounded and not b.unbounded


def test_conditions_round_trip_through_json():
    b = Bounds(max_latency_ms=40, min_accuracy=0.85, max_energy_mj=12.5, objective='min_energy')
    conditions = b.conditions()
    assert [c.to_dict() for c in conditions] == [
        {'metric': 'latency_ms', 'op': 'less_eq', 'threshold': 40.0},
        {'metric': 'accuracy', 'op': 'greater_eq', 'threshold': 0.85},
        {'metric': 'energy_mj', 'op': 'less_eq', 'threshold': 12.5}]
    text = Condition.list_to_json(conditions)
    assert json.loads(text)[1]['metric'] == 'accuracy'
    assert Bounds.from_conditions(Condition.list_from_json(text), 'min_energy') == b
    assert Bounds().conditions() == []


@pytest.mark.parametrize('op, value, holds', [
    ('less', 1.0, True), ('less', 2.0, False), ('less_eq', 2.0, True), ('equal', 2.0, True),
    ('equal', 2.5, False), ('greater', 2.5, True), ('greater_eq', 2.0, True), ('greater_eq', 1.9, False),
    ('LESS_EQ', 2.0, True),   # Dělen's condition files spell ops in upper case
])
def test_condition_holds(op, value, holds):
    assert Condition.from_dict({'metric': 'latency_ms', 'op': op, 'threshold': 2.0}).holds(value) is holds


def test_condition_ops_are_not_functions():
    # comparison functions live in a dict: enum values stay plain strings
    assert all(isinstance(op.value, str) for op in Op)
    assert all(isinstance(m.value, str) for m in Metric)


@pytest.mark.parametrize('d, match', [
    ({'metric': 'flops', 'op': 'less', 'threshold': 1}, 'latency_ms'),
    ({'metric': 'latency_ms', 'op': 'about', 'threshold': 1}, 'less_eq'),
    ({'metric': 'latency_ms', 'op': 'less'}, 'threshold'),
    ({'metric': 'latency_ms', 'op': 'less', 'threshold': math.nan}, 'finite'),
])
def test_bad_condition_raises(d, match):
    with pytest.raises(ValueError, match=match):
        Condition.from_dict(d)


@pytest.mark.parametrize('conditions', [
    [Condition('latency_ms', 'greater_eq', 5)],                                       # not an upper bound
    [Condition('confidence', 'greater_eq', 0.5)],                                     # not a bound at all
    [Condition('latency_ms', 'less_eq', 5), Condition('latency_ms', 'less_eq', 6)],   # twice
])
def test_from_conditions_rejects_non_bounds(conditions):
    with pytest.raises(ValueError):
        Bounds.from_conditions(conditions)


@pytest.mark.parametrize('latency, accuracy, energy, met', [
    (10.0, 0.9, 5.0, True), (10.1, 0.9, 5.0, False), (10.0, 0.79, 5.0, False), (10.0, 0.9, 5.01, False),
])
def test_met(latency, accuracy, energy, met):
    b = Bounds(max_latency_ms=10, min_accuracy=0.8, max_energy_mj=5)
    assert b.met(latency_ms=latency, accuracy=accuracy, energy_mj=energy) is met


def test_met_is_every_condition_holding():
    """``met`` writes the conditions' comparisons out: the two agree, NaN and unset bounds included."""
    import itertools
    values = (0.0, 0.8, 5.0, 10.0, 10.5, float('nan'))
    for bounds in (Bounds(), Bounds(max_latency_ms=10), Bounds(min_accuracy=0.8, max_energy_mj=5),
                   Bounds(max_latency_ms=10, min_accuracy=0.8, max_energy_mj=5)):
        for latency, accuracy, energy in itertools.product(values, repeat=3):
            figures = {'latency_ms': latency, 'accuracy': accuracy, 'energy_mj': energy}
            expected = all(c.holds(figures[c.metric.value]) for c in bounds.conditions())
            assert bounds.met(latency_ms=latency, accuracy=accuracy, energy_mj=energy) is expected


def test_feasible_range():
    r = feasible_range(PROFILE)
    assert r.latency_ms == pytest.approx((1.1, 10.4))
    assert r.accuracy == pytest.approx((0.6, 0.9))
    assert r.energy_mj == pytest.approx((1.1, 10.4))
    assert isinstance(r, FeasibleRange) and r.to_dict()['latency_ms'] == list(r.latency_ms)


@pytest.mark.parametrize('bounds, exit_index', [
    (Bounds(), 3),
    (Bounds(max_latency_ms=LATENCY[0]), 0),                      # exactly the fastest exit: feasible
    (Bounds(max_latency_ms=5.0), 1),
    (Bounds(max_latency_ms=7.0), 2),
    (Bounds(max_latency_ms=7.0, objective='min_latency'), 0),
    (Bounds(min_accuracy=0.7, objective='min_latency'), 1),
    (Bounds(min_accuracy=0.7, objective='min_energy'), 1),
    (Bounds(min_accuracy=0.7, objective='max_accuracy'), 3),
    (Bounds(min_accuracy=0.9, objective='min_energy'), 3),
    (Bounds(max_energy_mj=6.3), 2),
    (Bounds(max_energy_mj=6.3, min_accuracy=0.65, objective='min_energy'), 1),
    (Bounds(max_latency_ms=100.0, max_energy_mj=4.0, min_accuracy=0.6), 1),
])
def test_plan(bounds, exit_index):
    p = plan(bounds, PROFILE)
    assert p.exit_index == exit_index
    assert p.latency_ms == pytest.approx(PROFILE.exit_latency_ms(exit_index))
    assert p.accuracy == PROFILE.accuracy(exit_index)
    assert p.energy_mj == pytest.approx(PROFILE.exit_energy_mj(exit_index))


@pytest.mark.parametrize('bounds, match', [
    (Bounds(max_latency_ms=1.0), 'below the fastest exit'),
    (Bounds(min_accuracy=0.95), 'above the best exit'),
    (Bounds(max_energy_mj=0.5), 'below the cheapest exit'),
    (Bounds(max_latency_ms=4.0, min_accuracy=0.8), 'no single exit'),     # exit 1 fast enough, exit 2 accurate enough
    (Bounds(max_energy_mj=2.0, min_accuracy=0.7), 'no single exit'),
])
def test_infeasible_bounds_carry_the_range(bounds, match):
    with pytest.raises(InfeasibleBounds, match=match) as err:
        plan(bounds, PROFILE)
    assert err.value.feasible == feasible_range(PROFILE)
    assert isinstance(err.value, ValueError)
    assert '1.1' in str(err.value) and '10.4' in str(err.value)   # the range is in the message


@pytest.mark.parametrize('bounds, objective', [
    (Bounds(), Objective.MAX_ACCURACY),
    (Bounds(min_accuracy=0.7), Objective.MIN_LATENCY),                      # Dělen: first exit that meets it
    (Bounds(min_accuracy=0.7, max_latency_ms=9.0), Objective.MAX_ACCURACY),
    (Bounds(min_accuracy=0.7, max_energy_mj=9.0), Objective.MAX_ACCURACY),
    (Bounds(max_latency_ms=9.0), Objective.MAX_ACCURACY),
    (Bounds(min_accuracy=0.7, objective='max_accuracy'), Objective.MAX_ACCURACY),   # explicit: deeper
    (Bounds(min_accuracy=0.7, objective='min_energy'), Objective.MIN_ENERGY),
])
def test_effective_objective(bounds, objective):
    assert bounds.effective_objective is objective


def test_accuracy_only_default_plan_stops_at_the_first_exit_that_meets_it():
    uncalibrated = synthetic_profile(calibration=False)
    assert plan(Bounds(min_accuracy=0.7), uncalibrated).exit_index == 1
    assert plan(Bounds(min_accuracy=0.7, objective='max_accuracy'), uncalibrated).exit_index == 3


def test_end_to_end_latencies_shift_range_and_plan():
    e2e = [PROFILE.exit_latency_ms(k) + 2.0 for k in range(PROFILE.num_exits)]
    r = feasible_range(PROFILE, exit_latency_ms=e2e, overhead_ms=2.0)
    assert r.latency_ms == pytest.approx((3.1, 12.4)) and r.overhead_ms == 2.0
    assert r.accuracy == feasible_range(PROFILE).accuracy
    assert plan(Bounds(max_latency_ms=5.0), PROFILE).exit_index == 1
    assert plan(Bounds(max_latency_ms=5.0), PROFILE, exit_latency_ms=e2e).exit_index == 0
    with pytest.raises(InfeasibleBounds, match='serving overhead') as err:
        plan(Bounds(max_latency_ms=2.5), PROFILE, exit_latency_ms=e2e, overhead_ms=2.0)
    assert err.value.feasible == r
    with pytest.raises(ValueError, match='needs 4'):
        feasible_range(PROFILE, exit_latency_ms=[1.0])
