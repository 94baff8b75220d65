"""Admission control: EDF demand test with batching, sources, overhead; suggestions; engine integration."""
import dataclasses
import math

import pytest

from delen_ros.core import admission
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
    # 8.5 % busy, and each fits alone, even after a 3.1 ms step of the later-due 'slow' (4.2 <= 4.5,
    # 4.2 <= 5); but a 'tight' and a 'wide' frame (1.1 ms each) may be due within 5 ms, after that
    # step already running: 5.3 ms of work. Without 'slow' the two fit (2.2 <= 5)
    tight = Task('tight', 10.0, 4.5, 0)
    wide = Task('wide', 10.0, 5.0, 0, source='cam2')
    slow = Task('slow', 10.0, 20.0, 2, source='cam3')     # 6.3 ms frame, its longest step 3.1 ms
    v = check([tight, wide, slow], cost())
    assert v.utilisation < 0.1 and not v.ok and set(v.at_risk) == {'tight', 'wide'}
    assert 'frames due within 5 ms need 5.3 ms' in v.at_risk['wide'] and 'EDF demand' in v.at_risk['tight']
    assert check([tight, wide], cost()).ok
    assert all(check([t], cost()).ok for t in (tight, wide, slow))


def test_overhead_shortens_deadlines():
    t = [Task('a', 30.0, 2.0, 0)]                # 1.1 ms frame, nothing to block it alone: <= 2 ms, > 2 - 1
    assert check(t, cost()).ok
    v = check(t, cost(overhead_ms=1.0))
    assert not v.ok and 'serving overhead' in v.at_risk['a']


@pytest.mark.parametrize('part, name', [('transport_ms', 'frame age on arrival'),
                                        ('delivery_ms', 'delivery allowance')])
def test_age_on_arrival_and_delivery_allowance_shorten_deadlines_too(part, name):
    t = [Task('a', 30.0, 2.0, 0)]                # 1.1 ms frame alone: > 2 - 1 ms, <= 2 - 0.8 ms
    v = check(t, cost(**{part: 1.0}))
    assert not v.ok and f'1 ms {name}' in v.at_risk['a'] and 'serving overhead' not in v.at_risk['a']
    assert check(t, cost(**{part: 0.8})).ok


def test_the_reason_names_every_part_outside_the_device():
    v = check([Task('a', 30.0, 5.0, 0)], cost(transport_ms=2.1, overhead_ms=1.3, delivery_ms=1.0))
    assert not v.ok
    assert ('after 2.1 ms frame age on arrival, 1.3 ms serving overhead, 1 ms delivery allowance'
            in v.at_risk['a']), v.at_risk['a']
    _, min_latency = suggest([], Task('a', 30.0, 5.0, 0), cost(transport_ms=2.1, overhead_ms=1.3, delivery_ms=1.0))
    assert min_latency == pytest.approx(2.1 + 1.3 + 1.0 + 1.1, abs=1e-3)   # + a 1.1 ms frame, no blocking alone


def test_a_running_first_step_blocks_with_its_preprocessing():
    # a frame may arrive just as another camera's frame starts step 0: its preprocessing runs in it
    t = [Task('a', 10.0, 6.0, 0), Task('b', 10.0, 100.0, 0, source='cam2')]
    assert check(t, cost()).ok                                   # 1.1 + 1.1 <= 6
    v = check(t, cost(preprocess_ms=2.0))                        # 3.1 + 3.1 > 6
    assert not v.ok and 'waiting up to 3.1 ms for a running step' in v.at_risk['a'], v.at_risk


def test_a_lone_app_is_not_blocked_by_its_own_steps():
    # exit 1: a 3.2 ms frame whose longest step is 2.1 ms; alone, nothing runs when its frame comes,
    # so 3.3 ms is enough (counting its own step as blocking would ask 3.2 + 2.1 = 5.3 ms)
    a = Task('a', 10.0, 3.3, 1)
    assert check([a], cost()).ok
    rate, latency = suggest([], dataclasses.replace(a, deadline_ms=3.0), cost())
    assert rate == 0.0 and latency == pytest.approx(3.2, abs=1e-3)          # the frame, nothing more
    twin = dataclasses.replace(a, app_id='twin')             # demoted: its 2.1 ms step may be running
    v = check([a], cost(), blocking=[twin])
    assert not v.ok and 'needs 3.2 ms after waiting up to 2.1 ms' in v.at_risk['a'], v.at_risk


def test_only_a_later_due_or_demoted_app_holds_a_frame_up():
    # 'short' (exit 1: 3.2 ms frame, 2.1 ms step) is due before 'late' (exit 2: 6.3 ms frame, 3.1 ms
    # step), so 'late''s step may be running: 3.2 + 3.1 > 6 ms. 'late' is not held up by 'short''s
    # step (6.3 + 2.1 would exceed 7 ms): its frame fits, 6.3 <= 7
    short = Task('short', 10.0, 6.0, 1)
    late = Task('late', 10.0, 7.0, 2, source='cam2')
    v = check([short, late], cost())
    assert set(v.at_risk) == {'short'}
    assert 'leaves 6 ms of device time' in v.at_risk['short']
    assert 'needs 3.2 ms after waiting up to 3.1 ms' in v.at_risk['short'], v.at_risk
    # a demoted app's step (exit 0, 1.1 ms) holds up both; 'late' waits for it alone: 6.3 + 1.1 > 7
    v = check([short, late], cost(), blocking=[Task('bg', 10.0, None, 0, source='cam3')])
    assert set(v.at_risk) == {'short', 'late'}
    assert 'needs 3.2 ms after waiting up to 3.1 ms' in v.at_risk['short'], v.at_risk
    assert 'needs 6.3 ms after waiting up to 1.1 ms' in v.at_risk['late'], v.at_risk


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
    tight = Task('t', 10.0, 1.0, 0)
    rate, latency = suggest([], tight, cost())
    assert rate == 0.0 and latency == pytest.approx(1.1, abs=1e-3)   # 1.1 ms frame, nothing to block it alone


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


def test_engine_rate_prior_is_a_setting_and_decides_a_new_apps_admission():
    # unbounded apps run to the final exit (10.4 ms a frame): 'a' at 50 Hz is 52 % busy; 'b' at the
    # 30 Hz default would make it 83 % (over a 0.8 limit), at a 10 Hz prior 62 %
    for prior, admitted in ((DEFAULT_RATE_HZ, False), (10.0, True)):
        engine = make_engine(utilisation_limit=0.8, rate_prior_hz=prior)
        engine.set_app('a', Bounds(), rate_hz=50.0)
        if admitted:
            engine.set_app('b', Bounds())
            assert engine.stats('b').rate_measured_hz == 10.0
        else:
            with pytest.raises(Unschedulable, match=r"'b' at 30 Hz"):
                engine.set_app('b', Bounds())
    with pytest.raises(ValueError, match='rate_prior_hz'):
        make_engine(rate_prior_hz=0.0)


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


def test_the_module_examples_hold():
    import doctest
    from delen_ros.core import admission
    assert doctest.testmod(admission).failed == 0


def test_suggest_pauses_between_its_tests_and_stops_at_its_precision():
    # a refusal's search runs on the node's executor thread: it must yield between tests, and not
    # search past the three digits its message prints (before: 72 tests, ~20 ms of GIL on an H200 host)
    others = [Task('a', 50.0, 100.0, 3)]
    new = Task('b', 60.0, 100.0, 3)
    calls = []
    max_rate, _ = suggest(others, new, cost(), pause=lambda: calls.append(1))
    assert 0 < len(calls) <= 40
    assert check(others + [Task('b', max_rate, 100.0, 3)], cost()).ok                      # the fitting side
    assert not check(others + [Task('b', max_rate * (1 + 2 * admission.SUGGEST_PRECISION), 100.0, 3)], cost()).ok


def test_misfits_pauses_before_each_check():
    tasks = [Task(a, 10.0, 3.0, 0) for a in ('a', 'b', 'c')]
    calls = []
    assert admission.misfits(tasks, cost(overhead_ms=1.0), pause=lambda: calls.append(1)) \
        == admission.misfits(tasks, cost(overhead_ms=1.0))
    assert 3 <= len(calls) <= 2 * len(tasks)          # alone-checks, then one per task after the first


# --- where fused runs end: the exits an app's policy must look at -----------------------------------------

def test_a_fused_run_blocks_for_its_longest_stretch_between_stops():
    c = CostModel(step_ms=lambda k, b: 1.0 + k, num_exits=4, fused_runs=True)   # steps 1, 2, 3, 4 ms
    assert c.blocking_ms(3, 1) == 10.0                      # all four back to back
    assert c.blocking_ms(3, 1, stops=(0, 1, 2)) == 4.0      # a step at a time: the longest step
    assert c.blocking_ms(3, 1, stops=(1,)) == 7.0           # 1 + 2, then 3 + 4
    assert dataclasses.replace(c, fused_runs=False).blocking_ms(3, 1) == 4.0


def test_a_frame_of_a_source_runs_on_unless_every_app_on_it_looks():
    c = cost(fused_runs=True, max_batch=4)
    looks = Task('arm', 10.0, None, 3, source='cam', stops=(0, 1, 2))
    tight = Task('nav', 10.0, 8.0, 0, source='front')   # 1.1 ms of work, 8 ms: room for a 4.1 ms step, not 10.4
    assert check([tight, looks], c).ok
    assert not check([tight, dataclasses.replace(looks, stops=())], c).ok
    # another app on the arm's camera that runs straight through keeps its frames' runs long
    through = Task('log', 10.0, None, 3, source='cam')
    assert not check([tight, looks, through], c).ok


def test_a_cascade_is_charged_its_average_frame_while_its_deadline_holds_the_deepest():
    cost = CostModel(step_ms=lambda k, b: 1.0, num_exits=4)
    # 90 % of its frames stop at exit 0 (1 ms), 10 % go on to exit 3 (4 ms): 1.3 ms on average
    shares = (0.9, 0.0, 0.0, 0.1)
    assert Task('c', 500.0, 10.0, 3, exit_shares=shares).reached(4) == pytest.approx([1.0, 0.1, 0.1, 0.1])
    verdict = check([Task('c', 500.0, 10.0, 3, exit_shares=shares)], cost)
    assert verdict.ok and verdict.utilisation == pytest.approx(1.3 / 2.0)
    assert not check([Task('c', 500.0, 10.0, 3)], cost).ok            # every frame at 4 ms: twice the device
    tight = check([Task('c', 10.0, 3.5, 3, exit_shares=shares)], cost)  # the deepest frame needs 4 ms
    assert not tight.ok and 'a frame to exit 3 needs 4 ms' in tight.at_risk['c']


def test_apps_on_one_camera_go_on_while_any_of_them_does():
    cost = CostModel(step_ms=lambda k, b: 1.0, num_exits=3)
    shallow = Task('a', 100.0, 50.0, 2, source='cam', exit_shares=(0.8, 0.1, 0.1))
    deep = Task('b', 100.0, 50.0, 2, source='cam', exit_shares=(0.2, 0.0, 0.8))
    # one frame, the larger share going on at each step: 0.2 x 1 + 0.8 x 3 ms
    assert check([shallow, deep], cost).utilisation == pytest.approx(2.6 / 10.0)


def test_a_request_is_judged_beside_the_apps_it_could_make_miss_not_one_that_misses_alone():
    engine = make_engine()
    engine.set_app('hard', Bounds(max_latency_ms=8.0), rate_hz=10.0)     # fits on the profile's 1.1 ms
    for k in range(PROFILE.num_exits):   # then the device turns out 10x slower than its profile
        engine.corrector.update(k, 1, measured_ms=10 * PROFILE.step_ms(k), predicted_ms=PROFILE.step_ms(k))
    assert 'deadline' in engine.stats('hard', recheck_s=0).unschedulable_reason
    engine.set_app('easy', Bounds(max_latency_ms=500.0), rate_hz=10.0)  # was refused: 'hard' at risk
    assert set(engine.apps()) == {'hard', 'easy'}
    # its running steps still hold a frame up: a bound shorter than one of them is refused
    with pytest.raises(Unschedulable, match='waiting up to'):
        engine.set_app('tight', Bounds(max_latency_ms=20.0), rate_hz=10.0)



@pytest.mark.parametrize('judged_at_measured_costs', [True, False])
def test_an_app_short_of_headroom_alone_holds_a_request_to_its_bound_at_measured_costs(judged_at_measured_costs,
                                                                                       monkeypatch):
    engine = make_engine(admission_headroom=0.3)
    engine.set_app('hard', Bounds(max_latency_ms=18.0, min_accuracy=0.9), rate_hz=10.0)   # exit 3, 12.5 ms of 12.6
    for k in range(PROFILE.num_exits):   # then the device turns out 1.3x slower: short of the headroom alone
        engine.corrector.update(k, 1, measured_ms=1.3 * PROFILE.step_ms(k), predicted_ms=PROFILE.step_ms(k))
    if not judged_at_measured_costs:   # as before session 34: every later request refused for 'hard'
        monkeypatch.setattr(Engine, '_short_of_headroom_alone', staticmethod(lambda *args: False))
        with pytest.raises(Unschedulable, match='kept as admission headroom.*hard'):
            engine.set_app('easy', Bounds(min_accuracy=0.6, objective='min_energy'), rate_hz=10.0)
        return
    engine.set_app('easy', Bounds(min_accuracy=0.6, objective='min_energy'), rate_hz=10.0)   # a 1.4 ms step
    assert set(engine.apps()) == {'hard', 'easy'}
    # one that would make it miss at those costs is still refused (its full-depth runs hold a frame up)
    with pytest.raises(Unschedulable, match=r'hard: its end-to-end deadline leaves 18 ms of device time \(after 0 ms '
                                            r'serving overhead\)'):
        engine.set_app('heavy', Bounds(), rate_hz=10.0)

def test_a_demoted_app_still_counts_against_a_new_request():
    # the re-check restores an app admitted earlier before a newer one: a request must not take its place
    engine = make_engine()
    engine.set_app('old', Bounds(), rate_hz=50.0)                   # unbounded: final exit, 52 % busy
    engine._apps['old'].demoted = True                             # as a re-check leaves it
    with pytest.raises(Unschedulable, match=r"'new' at 60 Hz does not fit beside 1 admitted app"):
        engine.set_app('new', Bounds(min_accuracy=0.85), rate_hz=60.0)


def test_a_cost_model_prices_each_step_once_and_a_re_check_gives_the_same_verdicts():
    # the node's re-check runs ~2n tests over the same apps: each price is taken once per cost model
    calls = []

    def step_ms(k: int, b: int) -> float:
        calls.append((k, b))
        return 1.0 + k

    tasks = [Task(f'a{i}', 30.0, 12.0, i % 3, exit_shares=(0.5, 0.3, 0.2) if i % 2 else ()) for i in range(6)]
    memo = CostModel(step_ms=step_ms, num_exits=3, max_batch=4)
    first = check(tasks, memo)
    again = [check(tasks[:n], memo) for n in range(1, 7)]
    assert len(calls) == len(set(calls))
    fresh = [check(tasks[:n], CostModel(step_ms=step_ms, num_exits=3, max_batch=4)) for n in range(1, 7)]
    assert [v.at_risk for v in again] == [v.at_risk for v in fresh] and again[-1] == first
    assert dataclasses.replace(memo, headroom=0.1)._memo == {}   # another cost model: priced anew
