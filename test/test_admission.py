"""Admission control: EDF demand test with batching, sources, overhead; suggestions; engine integration."""
import math

import pytest

from delen_ros.core.admission import DEFAULT_RATE_HZ, CostModel, Task, Unschedulable, check, suggest
from delen_ros.core.bounds import Bounds, InfeasibleBounds
from delen_ros.core.engine import Engine
from fakes import FakeClock, FakeRunner, fake_model, synthetic_profile

PROFILE = synthetic_profile()   # steps 1.1, 2.1, 3.1, 4.1 ms at batch 1; batch b costs (1 + 0.25 (b-1))x


def cost(**kwargs):
    return CostModel.from_profile(PROFILE, **{'utilisation_limit': 1.0, 'max_batch': 1, **kwargs})


def test_one_app_fits_and_its_utilisation_is_its_cost_times_rate():
    v = check([Task('a', 100.0, 20.0, 0)], cost())
    assert v.ok and v.batch == 1
    assert v.utilisation == pytest.approx(1.1 * 100 / 1000)


def test_overload_is_rejected_naming_the_apps():
    # final exit 10.4 ms per frame at 100 Hz: 104 % of the device
    v = check([Task('a', 100.0, 50.0, 3), Task('b', 10.0, 50.0, 0)], cost())
    assert not v.ok and set(v.at_risk) == {'a', 'b'} and 'busy' in v.at_risk['a']


def test_utilisation_limit_leaves_headroom():
    tasks = [Task('a', 80.0, 100.0, 3)]          # 83 % busy
    assert check(tasks, cost(utilisation_limit=1.0)).ok
    assert not check(tasks, cost(utilisation_limit=0.8)).ok


def test_demand_test_catches_what_utilisation_misses():
    # 4 % busy, and each fits alone; but a 'tight' frame (1.1 ms) and a 'wide' one (3.2 ms) may be
    # due within 6 ms of each other, after a 2.1 ms step already running: 6.4 ms of work
    tight = Task('tight', 10.0, 5.0, 0)
    wide = Task('wide', 10.0, 6.0, 1, source='cam2')
    v = check([tight, wide], cost())
    assert v.utilisation < 0.05 and not v.ok and 'EDF demand' in v.at_risk['tight']
    assert check([tight], cost()).ok and check([wide], cost()).ok


def test_overhead_shortens_deadlines():
    t = [Task('a', 30.0, 3.0, 0)]                # 1.1 ms frame + 1.1 ms blocking <= 3 ms
    assert check(t, cost()).ok
    v = check(t, cost(overhead_ms=1.0))
    assert not v.ok and 'serving overhead' in v.at_risk['a']


@pytest.mark.parametrize('part, name', [('transport_ms', 'frame age on arrival'),
                                        ('delivery_ms', 'delivery allowance')])
def test_age_on_arrival_and_delivery_allowance_shorten_deadlines_too(part, name):
    t = [Task('a', 30.0, 3.0, 0)]                # 1.1 ms frame + 1.1 ms blocking <= 3 ms
    v = check(t, cost(**{part: 1.0}))
    assert not v.ok and f'1 ms {name}' in v.at_risk['a'] and 'serving overhead' not in v.at_risk['a']
    assert check(t, cost(**{part: 0.8})).ok


def test_the_reason_names_every_part_outside_the_device():
    v = check([Task('a', 30.0, 5.0, 0)], cost(transport_ms=2.1, overhead_ms=1.3, delivery_ms=1.0))
    assert not v.ok
    assert ('after 2.1 ms frame age on arrival, 1.3 ms serving overhead, 1 ms delivery allowance'
            in v.at_risk['a']), v.at_risk['a']
    _, min_latency = suggest([], Task('a', 30.0, 5.0, 0), cost(transport_ms=2.1, overhead_ms=1.3, delivery_ms=1.0))
    assert min_latency == pytest.approx(2.1 + 1.3 + 1.0 + 2.2, abs=1e-3)


def test_a_running_first_step_blocks_with_its_preprocessing():
    # a frame may arrive just as another camera's frame starts step 0: its preprocessing runs in it
    t = [Task('a', 10.0, 6.0, 0), Task('b', 10.0, 100.0, 0, source='cam2')]
    assert check(t, cost()).ok                                   # 1.1 + 1.1 <= 6
    v = check(t, cost(preprocess_ms=2.0))                        # 3.1 + 3.1 > 6
    assert not v.ok and 'waiting up to 3.1 ms for a running step' in v.at_risk['a'], v.at_risk


def test_apps_on_one_source_share_the_frame_work():
    a = Task('a', 60.0, 100.0, 3, source='cam')
    b = Task('b', 60.0, 100.0, 3, source='cam')
    shared = check([a, b], cost())
    separate = check([a, Task('b', 60.0, 100.0, 3, source='other')], cost())
    assert shared.ok and shared.utilisation == pytest.approx(check([a], cost()).utilisation)
    assert separate.utilisation > shared.utilisation


def test_batching_lowers_the_per_frame_cost():
    tasks = [Task(f'a{i}', 30.0, 100.0, 3, source=f'cam{i}') for i in range(8)]   # 8 x 30 Hz x 10.4 ms
    one = check(tasks, cost(max_batch=1))
    eight = check(tasks, cost(max_batch=8))
    assert not one.ok and one.batch == 1
    assert eight.ok and eight.batch == 8 and eight.utilisation < one.utilisation / 2


def test_unbounded_apps_count_toward_utilisation_only():
    v = check([Task('free', 90.0, None, 3)], cost(utilisation_limit=0.9))
    assert v.ok is False and 'busy' in v.at_risk['free']      # 94 %: overloaded, said so
    assert check([Task('free', 50.0, None, 3)], cost()).ok


def test_suggest_what_would_fit():
    others = [Task('a', 50.0, 100.0, 3)]          # 52 % busy
    new = Task('b', 60.0, 100.0, 3)                # would add 62 %
    assert not check(others + [new], cost()).ok
    max_rate, min_latency = suggest(others, new, cost())
    assert 40.0 < max_rate < 46.2                  # (1 - 0.52) / 10.4 ms = 46.2 Hz
    assert check(others + [Task('b', max_rate, 100.0, 3)], cost()).ok
    assert min_latency is None                     # no bound makes an overloaded device fit
    tight = Task('t', 10.0, 2.0, 0)
    rate, latency = suggest([], tight, cost())
    assert rate == 0.0 and latency == pytest.approx(2.2, abs=1e-3)   # 1.1 ms frame + 1.1 ms blocking


# --- the engine ------------------------------------------------------------------------------------------
def make_engine(**kwargs):
    model = fake_model()
    return Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model, sleep_ms=(0, 0, 0, 0)),
                  **{'overhead_prior_ms': 0.0, 'utilisation_limit': 1.0, 'max_batch': 1, **kwargs})


def test_engine_rejects_an_app_that_would_not_fit_and_says_what_would():
    engine = make_engine()
    engine.set_app('a', Bounds(), rate_hz=50.0)                    # unbounded: final exit, 52 % busy
    with pytest.raises(Unschedulable, match=r"'b' at 60 Hz .* would fit: at most") as err:
        engine.set_app('b', Bounds(min_accuracy=0.85), rate_hz=60.0)
    assert isinstance(err.value, InfeasibleBounds) and 0 < err.value.max_rate_hz < 60.0
    assert set(engine.apps()) == {'a'}                              # no trace
    engine.set_app('b', Bounds(min_accuracy=0.85), rate_hz=err.value.max_rate_hz * 0.99)
    assert set(engine.apps()) == {'a', 'b'}


def test_engine_new_app_rate_prior_from_its_source_then_the_default():
    clock = FakeClock()
    engine = make_engine(clock=clock)
    engine.set_app('a', Bounds(max_latency_ms=50.0), source='cam')
    for _ in range(5):
        engine.submit(['a'], __import__('numpy').zeros((8, 8), 'uint8'))
        clock.advance(10.0)                                         # 100 Hz
    engine.set_app('b', Bounds(max_latency_ms=50.0), source='cam')
    engine.set_app('c', Bounds(max_latency_ms=50.0))
    assert engine.stats('b').rate_measured_hz == pytest.approx(100.0, rel=0.01)
    assert engine.stats('c').rate_measured_hz == DEFAULT_RATE_HZ


def test_engine_recheck_reports_an_app_that_became_unschedulable():
    clock = FakeClock()
    engine = make_engine(clock=clock)
    engine.set_app('a', Bounds(), rate_hz=10.0)
    engine.set_app('b', Bounds(max_latency_ms=40.0), rate_hz=10.0)
    assert engine.stats('b', recheck_s=0).unschedulable_reason == ''
    import numpy as np
    for _ in range(30):                                             # 'a' speeds up to 200 Hz: overload
        engine.submit(['a'], np.zeros((8, 8), 'uint8'))
        clock.advance(5.0)
    s = engine.stats('b', recheck_s=0)
    assert 'busy' in s.unschedulable_reason
    assert 'busy' in engine.stats('a', recheck_s=math.inf).unschedulable_reason


def test_admission_can_be_off():
    engine = make_engine(admission_control=False)
    engine.set_app('a', Bounds(), rate_hz=200.0)
    engine.set_app('b', Bounds(), rate_hz=200.0)
    assert set(engine.apps()) == {'a', 'b'}
