"""The admission re-check's demotions: the fewest apps, the latest admitted first, only after
several re-checks in a row, restored after clean ones (issue 10).

The knob that makes two admitted apps stop fitting is the device: its steps measured slower than
the profile (``slow_device``, as on a throttled or shared GPU). Demotion follows what the apps ask of
the device; the parts of latency outside it (frame age, serving overhead) count for who is *at risk*,
but only up to what the last admission passed with for who is *demoted* (the node's own transients
inflate those tails, and demoting on them fed back; see ``Engine.check_schedulable``).
The synthetic profile's steps take 1.1 and 2.1 ms to exit 1 at batch 1, so at ``CONFLICT`` (1.5x)
a frame to exit 1 costs 4.8 ms and blocks for 3.15 ms (its longer step). Two such apps with equal
deadlines (9 ms) do not block each other (non-preemptive EDF: only a run of an app due later, or of
a demoted one, holds a frame up), so they need 9.6 ms by their deadline; one alone 4.8 ms; one
beside the other demoted 4.8 + 3.15 = 7.95 ms.
"""
import numpy as np
import torch
import pytest

from delen_ros.core.admission import CostModel, Task, Unschedulable, asks_more, check, misfits
from delen_ros.core.app_ledger import DEMOTED_NOTE, HOST_TAILS_NOTE
from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine
from fakes import FakeClock, FakeRunner, fake_model, synthetic_profile

PROFILE = synthetic_profile()   # steps 1.1, 2.1, 3.1, 4.1 ms at batch 1 (p50); accuracy 0.6 .. 0.9
# exit 1 within 9 ms; at CONFLICT: 4.8 ms alone, 7.95 beside a demoted other, 9.6 for two
TIGHT = Bounds(max_latency_ms=9.0, min_accuracy=0.7)
CONFLICT = 1.5


def cost(**kwargs) -> CostModel:
    return CostModel.from_profile(PROFILE, **{'utilisation_limit': 1.0, 'max_batch': 1, **kwargs})


def make_engine(*, misses_gate: bool = False, **kwargs) -> Engine:
    model = fake_model()
    # step by step: the conflicts below are tuned to one step's blocking (fused runs block longer)
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model, sleep_ms=(0, 0, 0, 0)),
                    **{'overhead_prior_ms': 0.0, 'utilisation_limit': 1.0, 'max_batch': 1, 'clock': FakeClock(),
                       'fuse_steps': False, 'admission_headroom': 0.0, **kwargs})
    engine.corrector.clock = lambda: 0.0   # what slow_device teaches never goes stale here
    # the re-check's verdicts alone, as if the apps served were missing their bounds at every re-check:
    # the gate on measured misses has tests of its own (below)
    engine.demote_on_misses = misses_gate
    return engine


def slow_device(engine: Engine, factor: float) -> None:
    """The device's steps measured at ``factor`` x the profile from now on."""
    for _ in range(80):
        for k in range(PROFILE.num_exits):
            engine.corrector.update(k, 1, factor * PROFILE.step_ms(k, 1), PROFILE.step_ms(k, 1))


def admitted(*apps: str, bounds: Bounds = TIGHT, **kwargs) -> Engine:
    """An engine with ``apps`` admitted in this order (10 Hz each, own cameras), all fitting."""
    engine = make_engine(**kwargs)
    for app_id in apps:
        engine.set_app(app_id, bounds, rate_hz=10.0)
    assert engine.schedulability().ok
    return engine


def recheck(engine: Engine, *, slowdown: float, times: int = 1) -> dict[str, str]:
    slow_device(engine, slowdown)
    for _ in range(times):
        reasons = engine.check_schedulable()
    return reasons


def demoted(engine: Engine) -> frozenset[str]:
    return engine._scheduler.best_effort_apps()


def reason(engine: Engine, app_id: str) -> str:
    return engine.stats(app_id, recheck_s=float('inf')).unschedulable_reason


# --- admission.misfits: who does not fit beside the apps admitted before it ----------------------------
@pytest.mark.parametrize('order, named', [(['a', 'b'], {'b'}), (['b', 'a'], {'a'})])
def test_misfits_names_the_latest_admitted_of_two_equal_apps(order, named):
    tasks = [Task(a, 10.0, 3.0, 0) for a in order]          # 1.1 alone, 2.2 together by 2 ms (equal: no blocking)
    c = cost(overhead_ms=1.0)
    assert set(check(tasks, c).at_risk) == {'a', 'b'}      # the demand test flags both
    assert set(misfits(tasks, c)) == named
    assert 'does not fit beside the 1 app(s) admitted before it' in misfits(tasks, c)[order[1]]


def test_misfits_names_the_newcomer_even_when_only_the_old_app_is_flagged():
    # 'old' (exit 0, 3 ms left) misses only because 'new''s 2.1 ms step may be running: the check flags
    # 'old' alone, yet 'old' fits by itself and 'new' is the one that does not fit beside it
    old, new = Task('old', 10.0, 4.0, 0), Task('new', 10.0, 7.0, 1)
    c = cost(overhead_ms=1.0)
    assert set(check([old, new], c).at_risk) == {'old'}
    assert set(misfits([old, new], c)) == {'new'}
    assert 'old would miss' in misfits([old, new], c)['new']


def test_misfits_always_names_an_app_infeasible_alone_even_the_oldest():
    # 1 ms left for a 1.1 ms frame: infeasible alone, with nothing to block it
    hopeless, a, b = Task('hopeless', 10.0, 1.0, 0), Task('a', 10.0, 50.0, 0), Task('b', 10.0, 50.0, 0)
    out = misfits([hopeless, a, b], cost())
    assert set(out) == {'hopeless'} and 'leaves 1 ms of device time' in out['hopeless']


def test_misfits_keeps_everyone_when_all_fit_and_is_empty_for_nothing():
    assert misfits([Task('a', 10.0, 50.0, 0), Task('b', 10.0, 50.0, 3)], cost()) == {}
    assert misfits([], cost()) == {}


def test_blocking_tasks_add_only_their_longest_step():
    a = Task('a', 10.0, 4.0, 0)                            # 1.1 ms frame, nothing to block it: fits in 4 ms
    deep = Task('deep', 1000.0, None, 3)                   # far over the device, but served after 'a'
    assert check([a], cost()).ok
    v = check([a], cost(), blocking=[deep])                # its 4.1 ms step may be running: 5.2 > 4
    assert not v.ok and set(v.at_risk) == {'a'} and 'up to 4.1 ms for a running step' in v.at_risk['a']
    assert v.utilisation == pytest.approx(check([a], cost()).utilisation)   # no share of the device


@pytest.mark.parametrize('new, more', [
    (Task('a', 30.0, 10.0, 1, 'cam'), True),               # tighter deadline
    (Task('a', 30.0, 50.0, 2, 'cam'), True),               # deeper exit
    (Task('a', 40.0, 50.0, 1, 'cam'), True),               # higher rate
    (Task('a', 30.0, 50.0, 1, 'cam2'), True),              # another camera
    (Task('a', 30.0, 50.0, 1, 'cam'), False),              # the same
    (Task('a', 20.0, 80.0, 0, 'cam'), False),              # looser everywhere
])
def test_asks_more(new, more):
    assert asks_more(new, Task('a', 30.0, 50.0, 1, 'cam')) is more
    assert asks_more(Task('a', 30.0, 10.0, 0, 'cam'), Task('a', 30.0, None, 0, 'cam'))   # a bound where none was


# --- the engine's re-check: hysteresis and order of admission ------------------------------------------------
@pytest.mark.parametrize('kwargs', [{'demote_after': 0}, {'restore_after': 0}, {'demote_after': 1.5}])
def test_counts_are_validated(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_engine(**kwargs)


def test_one_marginal_recheck_is_reported_at_once_but_demotes_nobody():
    engine = admitted('old', 'new')
    reasons = recheck(engine, slowdown=CONFLICT)
    assert set(reasons) == {'old', 'new'}                  # both told at once ...
    assert 'at risk: served after the others if this holds for 2 more re-check(s)' in reasons['new']
    assert 'at risk, not demoted' in reasons['old'] and 'new, admitted after it' in reasons['old']
    assert reason(engine, 'new') == reasons['new']
    assert demoted(engine) == set()                        # ... nobody demoted
    assert recheck(engine, slowdown=1.0) == {} and reason(engine, 'new') == ''
    for slowdown in [CONFLICT, CONFLICT, 1.0, CONFLICT, CONFLICT, 1.0, CONFLICT]:   # flicker
        recheck(engine, slowdown=slowdown)
        assert demoted(engine) == set()


@pytest.mark.parametrize('order', [('old', 'new'), ('new', 'old')])
def test_consecutive_misfits_demote_only_the_latest_admitted(order):
    first, latest = order
    engine = admitted(*order)
    recheck(engine, slowdown=CONFLICT, times=2)
    assert demoted(engine) == set()
    reasons = recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == {latest}
    assert set(reasons) == {latest} and 'demoted: served after the others' in reasons[latest]
    assert reason(engine, first) == ''                     # as served now it fits (blocking counted)
    recheck(engine, slowdown=CONFLICT, times=5)
    assert demoted(engine) == {latest}                     # and stays so; the first is never demoted


def test_demote_after_is_a_constructor_keyword():
    engine = admitted('old', 'new', demote_after=1)
    recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == {'new'}


def test_an_app_admitted_first_keeps_its_place_even_when_only_it_is_flagged():
    """The old behaviour demoted whoever was at risk: here the old app, in favour of the newcomer
    that puts it at risk."""
    engine = make_engine()
    engine.set_app('nav', Bounds(max_latency_ms=5.0), rate_hz=10.0)                      # exit 0
    engine.set_app('map', Bounds(max_latency_ms=10.0, min_accuracy=0.7), rate_hz=10.0)   # exit 1 (2.52 ms step)
    slow_device(engine, 1.6)   # nav: 1.76 ms + a running 3.36 ms step of map > 5 ms
    assert set(engine.schedulability().at_risk) == {'nav'}
    for _ in range(5):
        reasons = engine.check_schedulable()
        assert 'nav' not in demoted(engine)
    assert demoted(engine) == {'map'}
    assert 'demoted: served after the others' in reasons['map']
    # still honest about 'nav': a running step of 'map' (not preempted) may hold it up
    assert 'at risk, not demoted' in reasons['nav'] and 'for a running step' in reasons['nav']


def test_restored_after_clean_rechecks_and_a_flicker_restarts_the_count():
    engine = admitted('old', 'new')
    recheck(engine, slowdown=CONFLICT, times=3)
    assert demoted(engine) == {'new'}
    assert recheck(engine, slowdown=1.0) == {}          # fits again: nothing at risk, said at once ...
    assert demoted(engine) == {'new'}                      # ... but one clean check restores nobody
    recheck(engine, slowdown=CONFLICT)               # a misfit in between: the count starts over
    recheck(engine, slowdown=1.0)
    assert demoted(engine) == {'new'}
    recheck(engine, slowdown=1.0)
    assert demoted(engine) == set() and reason(engine, 'new') == ''


def test_next_batch_serves_the_demoted_app_last():
    engine = admitted('old', 'new')
    clock = engine.clock

    def first_served() -> str:
        engine.submit(['new'], np.zeros((8, 8), np.uint8))   # the earlier deadline
        clock.advance(0.1)
        engine.submit(['old'], np.zeros((8, 8), np.uint8))
        order = []
        while engine._scheduler.pending():
            order.append(engine._scheduler.next_batch(clock()).batch.requests[0].app_id)
            engine._scheduler.finished(1)
        clock.advance(200.0)
        return order

    assert first_served() == ['new', 'old']                # EDF
    recheck(engine, slowdown=CONFLICT, times=3)
    assert first_served() == ['old', 'new']                # 'new' demoted: after 'old' whatever its deadline


def test_no_app_fits_even_alone_nobody_is_demoted():
    engine = admitted('old', 'new')
    reasons = recheck(engine, slowdown=3.0, times=4)      # 9.6 ms needed by each alone, 9 ms left
    assert demoted(engine) == set()
    assert set(reasons) == {'old', 'new'} and all('no app fits even alone' in r for r in reasons.values())


def test_overload_demotes_the_latest_admitted_not_everyone_at_risk():
    engine = make_engine()
    clock = engine.clock
    for app_id in ('a', 'b', 'c'):                         # unbounded, final exit: 12.5 ms a frame
        engine.set_app(app_id, Bounds(), rate_hz=20.0)      # 75 % of the device together
    for _ in range(3):                                     # they send 30 Hz: 112 %
        engine.submit(['a', 'b', 'c'], np.zeros((8, 8), np.uint8))
        clock.advance(1000.0 / 30.0)
    assert set(engine.schedulability().at_risk) == {'a', 'b', 'c'}
    for _ in range(3):
        reasons = engine.check_schedulable()
    assert demoted(engine) == {'c'}
    assert 'busy' in reasons['c'] and 'demoted' in reasons['c']


# 8.9: 'old' ranks newest, and 'new' (9 ms) fits beside it demoted (7.95 <= 9);
# 9.5: 'old' keeps its place, and the two need 9.6 ms by 9.5 ms
@pytest.mark.parametrize('latency_ms, loser', [(8.9, 'old'), (9.5, 'new')])
def test_a_tighter_bound_ranks_as_a_new_admission_a_looser_one_keeps_its_place(latency_ms, loser):
    engine = admitted('old', 'new')
    engine.set_app('old', Bounds(max_latency_ms=latency_ms, min_accuracy=TIGHT.min_accuracy), rate_hz=10.0)
    recheck(engine, slowdown=CONFLICT, times=3)
    assert demoted(engine) == {loser}


def test_set_app_restarts_the_count_and_an_admitted_change_restores_at_once():
    engine = admitted('old', 'new')
    recheck(engine, slowdown=CONFLICT, times=2)
    slow_device(engine, 1.0)
    engine.set_app('new', TIGHT, rate_hz=10.0)             # admitted again (it fits now): count from zero
    recheck(engine, slowdown=CONFLICT, times=2)
    assert demoted(engine) == set()
    recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == {'new'}
    slow_device(engine, 1.0)
    engine.set_app('new', TIGHT, rate_hz=10.0)             # admission found it fitting beside everyone
    assert demoted(engine) == set() and reason(engine, 'new') == ''


def test_a_removed_app_registered_again_ranks_as_the_newest():
    engine = admitted('old', 'new')
    recheck(engine, slowdown=CONFLICT, times=3)
    assert demoted(engine) == {'new'}
    assert engine.remove_app('old')
    slow_device(engine, 1.0)
    engine.set_app('old', TIGHT, rate_hz=10.0)
    recheck(engine, slowdown=CONFLICT, times=3)      # 'new' fits first now: restored; 'old' demoted
    assert demoted(engine) == {'old'}


def test_the_warning_is_logged_on_changes_not_every_recheck(caplog):
    engine = admitted('old', 'new')
    with caplog.at_level('INFO', logger='delen_ros.core.engine'):
        recheck(engine, slowdown=CONFLICT, times=2)   # at risk (logged), the same (not)
        recheck(engine, slowdown=CONFLICT)            # demoted: a change
        engine.clock.advance(61_000.0)
        recheck(engine, slowdown=CONFLICT)            # the same, a minute later: repeated
        recheck(engine, slowdown=1.0, times=3)           # at risk no more (info), restored (info)
    warnings = [r for r in caplog.records if r.levelname == 'WARNING']
    infos = [r for r in caplog.records if r.levelname == 'INFO']
    assert len(warnings) == 3 and 'demoted' in warnings[1].getMessage()
    assert len(infos) == 2 and 'every app fits' in infos[-1].getMessage()



def test_the_recheck_warning_spells_out_three_apps_and_names_the_rest():
    from delen_ros.core.engine_admission import risk_summary
    reasons = {f'cam{i:02d}': f'frames due within 18 ms need {20 + i} ms' for i in range(32)}
    line = risk_summary(reasons)
    assert line.startswith('32 app(s) at risk or demoted: cam00: frames due within 18 ms need 20 ms; ')
    assert 'need 22 ms' in line and 'need 23 ms' not in line   # three spelled out
    assert line.endswith('and ' + ', '.join(f'cam{i:02d}' for i in range(3, 32)) + ' (reasons in ~/status)')
    assert risk_summary({'a': 'x'}) == '1 app(s) at risk or demoted: a: x'


def test_tails_outside_the_device_grown_since_admission_put_apps_at_risk_but_demote_nobody():
    """The frame-age and overhead tails of a GIL-bound spell in the node: told, not demoted (demoting
    frees device time, which is not what they lack)."""
    engine = admitted('old', 'new')
    engine.overhead_prior_ms = 3.0   # 6 ms of device time left: the two need 6.4 ms
    for _ in range(5):
        reasons = engine.check_schedulable()
    assert set(reasons) == {'old', 'new'} and all('at risk, not demoted' in r for r in reasons.values())
    assert demoted(engine) == set()
    recheck(engine, slowdown=CONFLICT, times=3)   # ... while the device's own slowdown still demotes
    assert demoted(engine) == {'new'}


def test_tails_as_high_as_at_admission_still_count_for_demotion():
    engine = make_engine(overhead_prior_ms=1.0)
    for app_id in ('old', 'new'):
        engine.set_app(app_id, TIGHT, rate_hz=10.0)   # 8 ms left: 6.4 needed
    recheck(engine, slowdown=1.3, times=3)            # 8.32 ms needed by 8 ms
    assert demoted(engine) == {'new'}


# --- admission headroom: admit with slack, re-check without -------------------------------------------------
ROOMY = Bounds(max_latency_ms=10.0, min_accuracy=0.7)   # two apps: 7.68 ms by 9 (10 less 1 ms overhead)


def test_admission_headroom_refuses_a_request_that_fits_without_slack():
    engine = admitted('old', bounds=ROOMY, overhead_prior_ms=1.0, admission_headroom=0.25)
    with pytest.raises(Unschedulable, match=r'max\(25% of the bound, 1 ms\) kept as admission headroom.*within 6.5 ms'):
        engine.set_app('new', ROOMY, rate_hz=10.0)                               # 7.68 ms by 10 x 0.75 - 1
    assert set(engine.apps()) == {'old'}
    admitted('old', 'new', bounds=ROOMY, overhead_prior_ms=1.0, admission_headroom=0.0)


def test_admission_keeps_at_least_headroom_min_ms_of_a_tight_bound():
    # 5 % of 10 ms is 0.5 ms: two apps fit (7.68 ms by 8.5); kept at least 1.5 ms they do not (by 7.5)
    admitted('old', 'new', bounds=ROOMY, overhead_prior_ms=1.0, admission_headroom=0.05, admission_headroom_min_ms=0.0)
    engine = admitted('old', bounds=ROOMY, overhead_prior_ms=1.0, admission_headroom=0.05, admission_headroom_min_ms=1.5)
    with pytest.raises(Unschedulable, match=r'max\(5% of the bound, 1.5 ms\) kept as admission headroom'):
        engine.set_app('new', ROOMY, rate_hz=10.0)
    assert set(engine.apps()) == {'old'}
    assert recheck(engine, slowdown=1.0) == {}        # the re-check keeps none: 'old' is not at risk
    with pytest.raises(ValueError, match='admission_headroom_min_ms'):
        make_engine(admission_headroom_min_ms=-1.0)


def test_tails_may_grow_by_the_headroom_before_an_admitted_app_is_at_risk():
    engine = admitted('old', 'new', bounds=ROOMY, overhead_prior_ms=1.0, admission_headroom=0.1)   # 7.68 by 8
    assert recheck(engine, slowdown=1.3, times=3) == {}                            # 8.32 by 9: no one at risk
    assert demoted(engine) == frozenset()
    with pytest.raises(Unschedulable):                                              # 8.32 > 8: no third app now
        engine.set_app('third', Bounds(max_latency_ms=50.0), rate_hz=10.0)


# --- admissions made on priors are confirmed once measured -----------------------------------------------------
def measured(engine: Engine, *, age_ms: float, seconds: float = 5.0) -> None:
    """Frames of every app arriving ``age_ms`` old at 10 Hz for ``seconds``, a serving overhead of 0
    measured, and a re-check every 100 ms (the first one starts the clock of :func:`confirm`'s wait)."""
    clock = engine.clock
    engine.corrector.update_tail(0.0)
    for _ in range(int(seconds * 10)):
        engine.submit(list(engine.apps()), np.zeros((8, 8), np.uint8), arrival_ns=clock() - int(age_ms * 1e6))
        clock.advance(100.0)
        engine.check_schedulable()


def test_apps_admitted_on_priors_are_judged_again_at_measured_costs_and_told_not_demoted_for_the_tails():
    """Admitted on the profile with no frame age (two apps need 7.68 ms by 8: 9 less 1 ms headroom).
    Frames then arrive 2 ms old: 7.68 by 6 with the headroom. These two were admitted blind, so the
    latest is not confirmed, and told so; but what it lacks is time outside the device, which serving it
    last would not give back (H200, sessions 43-44: demoted 10 ms apps met 17.7-80 % of their frames,
    served with the others 92.3-98.7 %), so it is not demoted."""
    engine = make_engine(admission_headroom=0.1)
    engine.set_app('old', TIGHT, rate_hz=10.0)
    engine.set_app('new', TIGHT, rate_hz=10.0)
    measured(engine, age_ms=2.0)
    reasons = engine.check_schedulable()
    assert demoted(engine) == frozenset()
    assert 'admitted on priors, before anything was measured' in reasons['new']
    assert 'max(10% of the bound, 1 ms) headroom' in reasons['new'] and reasons['new'].endswith(HOST_TAILS_NOTE)
    assert 'at risk, not demoted: it fits beside the apps admitted before it' in reasons['old']   # beside 'new'
    slow_device(engine, CONFLICT)                     # short of device time as well: now the latest is demoted
    measured(engine, age_ms=2.0, seconds=1.0)
    assert demoted(engine) == {'new'} and reason(engine, 'new').endswith(DEMOTED_NOTE)
    late = make_engine(admission_headroom=0.1)   # the same apps, the second admitted on measurements
    late.set_app('old', TIGHT, rate_hz=10.0)
    measured(late, age_ms=2.0)
    with pytest.raises(Unschedulable):
        late.set_app('new', TIGHT, rate_hz=10.0)


def test_apps_that_fit_at_measured_costs_are_confirmed_and_judged_as_usual_from_then_on():
    engine = make_engine(admission_headroom=0.1)
    engine.set_app('old', TIGHT, rate_hz=10.0)
    engine.set_app('new', TIGHT, rate_hz=10.0)
    measured(engine, age_ms=0.2)                      # 7.68 ms by 7.8: both confirmed
    assert engine.check_schedulable() == {} and demoted(engine) == frozenset()
    measured(engine, age_ms=2.0)                      # tails grown since: at most at risk, as before
    assert demoted(engine) == frozenset()


def test_nothing_is_confirmed_before_the_costs_have_been_measured_a_while():
    engine = make_engine(admission_headroom=0.1)
    engine.set_app('old', TIGHT, rate_hz=10.0)
    engine.set_app('new', TIGHT, rate_hz=10.0)
    for _ in range(20):                               # no frame arrives: nothing measured, nothing judged
        engine.clock.advance(100.0)
        assert engine.check_schedulable() == {}
    measured(engine, age_ms=2.0, seconds=3.0)         # 2 s settle (no samples), 1 s measured: too soon
    assert not any('on priors' in why for why in engine.check_schedulable().values())
    measured(engine, age_ms=2.0, seconds=1.5)
    assert 'on priors' in reason(engine, 'new') and demoted(engine) == frozenset()


def test_without_admission_control_nothing_is_on_priors():
    engine = make_engine(admission_headroom=0.1, admission_control=False)
    engine.set_app('old', TIGHT, rate_hz=10.0)
    engine.set_app('new', TIGHT, rate_hz=10.0)
    measured(engine, age_ms=2.0)
    # judged as without admission: at the tails now, at risk (nothing admitted anything to confirm), and
    # demoted on the device's demand alone, as any app
    assert 'at risk' in reason(engine, 'new') and 'on priors' not in reason(engine, 'new')
    assert demoted(engine) == frozenset()
    slow_device(engine, CONFLICT)
    measured(engine, age_ms=2.0, seconds=1.0)
    assert demoted(engine) == {'new'}


def test_an_app_demoted_at_confirmation_is_restored_once_it_fits_and_then_judged_as_usual():
    engine = make_engine(admission_headroom=0.1)
    engine.set_app('old', TIGHT, rate_hz=10.0)
    engine.set_app('new', TIGHT, rate_hz=10.0)
    slow_device(engine, CONFLICT)                     # short of device time: demoted at confirmation
    measured(engine, age_ms=2.0)
    assert demoted(engine) == {'new'}
    slow_device(engine, 1.0)
    measured(engine, age_ms=0.2, seconds=6.0)         # the 2 ms tail forgotten: fits with the headroom
    assert demoted(engine) == frozenset() and reason(engine, 'new') == ''
    measured(engine, age_ms=2.0)                      # confirmed: from now on judged as usual
    assert demoted(engine) == frozenset() and 'on priors' not in reason(engine, 'new')


def test_an_app_admitted_once_something_was_measured_is_not_on_priors_even_if_the_tail_aged_out():
    engine = make_engine(admission_headroom=0.1)
    engine.set_app('old', TIGHT, rate_hz=10.0)
    measured(engine, age_ms=0.2)
    engine.clock.advance(6000.0)                      # no frame for 6 s: the frame-age tail is empty again
    engine.set_app('new', TIGHT, rate_hz=10.0)
    measured(engine, age_ms=2.0)                      # would not be confirmed now, but it was admitted on
    assert demoted(engine) == frozenset()             # measurements: at risk at most, as usual
    assert 'on priors' not in reason(engine, 'new')


def test_a_request_waits_for_the_first_frames_of_the_apps_admitted_just_before_it():
    """Engine.unmeasured_apps: the node holds a request while it names an app (not the asker itself)
    admitted in the last 2 s whose first 3 frames are not done; an app whose camera never sends is not
    waited for past those 2 s, and without admission control nothing is waited for."""
    from fakes import Collector
    collector = Collector()
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=collector, runner=FakeRunner(model, sleep_ms=(0, 0, 0, 0)),
                    clock=FakeClock())
    engine.set_app('old', TIGHT, rate_hz=10.0)
    engine.set_app('quiet', Bounds(max_latency_ms=100.0), rate_hz=10.0)
    assert engine.unmeasured_apps('new') == ['old', 'quiet']
    assert engine.unmeasured_apps('old') == ['quiet']          # not itself (a change of its own bounds)
    with engine:
        for i in range(3):
            engine.submit(['old'], np.zeros((8, 8), np.uint8))
            collector.wait(i + 1)
    assert engine.unmeasured_apps('new') == ['quiet']
    engine.clock.advance(2000.0)
    assert engine.unmeasured_apps('new') == []
    blind = make_engine(admission_control=False)
    blind.set_app('old', TIGHT, rate_hz=10.0)
    assert blind.unmeasured_apps('new') == []


# --- where the re-check runs ---------------------------------------------------------------------------
@pytest.mark.parametrize('on_worker', [True, False])
def test_the_status_ticks_re_check_runs_on_the_idle_worker(on_worker):
    # run beside the worker, its pure Python takes the GIL in the middle of runs already planned
    import threading
    import time
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model), recheck_on_worker=on_worker)
    engine.set_app('a', TIGHT, rate_hz=10.0)
    ran_on = []
    check = engine.check_schedulable
    engine.check_schedulable = lambda: (ran_on.append(threading.current_thread().name), check())[1]
    with engine:
        engine._last_check_ns -= 2_000_000_000   # the last re-check 2 s ago
        engine.stats('a', recheck_s=1.0)
        deadline = time.monotonic() + 5.0
        while not ran_on and time.monotonic() < deadline:
            time.sleep(0.01)
        engine.stats('a', recheck_s=1.0)   # just re-checked: not again
    assert ran_on == ['delen-engine' if on_worker else threading.current_thread().name]
    # recheck_s=0 asks for a verdict now: on the caller's thread whatever the setting
    engine.stats('a', recheck_s=0)
    assert ran_on[-1] == threading.current_thread().name


def test_by_default_the_re_check_runs_on_the_worker_on_cuda_only():
    # on a CPU the worker computes the steps itself: the caller's thread runs it on another core
    model = fake_model()
    assert not Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model)).recheck_on_worker
    runner = FakeRunner(model)
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=runner)
    runner.device = torch.device('cuda')   # read when asked: no CUDA needed here
    assert engine.recheck_on_worker


def test_work_asked_of_the_worker_runs_there_once_per_key_and_a_failure_does_not_stop_it():
    import threading
    import time
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model))
    assert not engine.call_when_idle('x', lambda: None)   # no worker: the caller runs it
    calls, release = [], threading.Event()

    def wait_for(count):
        deadline = time.monotonic() + 5.0
        while len(calls) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    with engine:
        assert engine.call_when_idle('block', lambda: (calls.append('block'), release.wait(5.0)))
        wait_for(1)
        for _ in range(3):   # asked again and again while the worker is busy: one call
            engine.call_when_idle('b', lambda: calls.append(threading.current_thread().name))
        engine.call_when_idle('boom', lambda: 1 / 0)
        release.set()
        wait_for(2)
        engine.call_when_idle('after', lambda: calls.append('after'))   # the failure did not stop it
        wait_for(3)
    assert calls == ['block', 'delen-engine', 'after']


@pytest.mark.parametrize('on_worker, yields_there', [(False, False), (True, False), (True, True)])
def test_the_re_check_yields_the_gil_between_its_tests_except_on_the_worker(monkeypatch, on_worker, yields_there):
    # on the worker its frames wait for it anyway, and a yield let another thread keep the GIL up to a
    # switch interval (H200: ~3 ms of Python took 15-24 ms); elsewhere the worker's frames must not wait
    import threading
    from delen_ros.core import engine_admission
    engine = admitted('a', 'b')
    engine.recheck_yields_on_worker = yields_there
    if on_worker:
        engine._thread = threading.current_thread()
    yields = []
    monkeypatch.setattr(engine_admission, '_yield_gil', lambda: yields.append(1))
    reasons = recheck(engine, slowdown=CONFLICT)
    assert reasons   # the misfit tests ran
    assert bool(yields) == (not on_worker or yields_there)


# --- demotion waits for the apps served to miss their bounds (session 32) ---------------------------------
def missed(engine: Engine, app_id: str, frames: int, late: int) -> None:
    """``frames`` results of ``app_id`` published since the last re-check, ``late`` of them after its bound."""
    app = engine._apps[app_id]
    app.results_out += frames
    app.served_late += late


def test_misfits_with_every_app_on_time_are_reported_but_demote_nobody():
    engine = admitted('old', 'new', misses_gate=True)
    for _ in range(6):
        missed(engine, 'old', 30, 0)
        missed(engine, 'new', 30, 1)                      # one late frame a re-check: within 99 % ... nearly
        reasons = recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == set()
    assert 'not demoted: the apps served met their bounds since the last re-check' in reasons['new']


@pytest.mark.parametrize('frames, late_old, late_new, demotes', [
    (300, 3, 0, True),                                     # one app 3 frames late ...
    (300, 0, 3, False),                                    # ... but not the misfit alone: demoting it spares nobody
    (100, 2, 2, False),                                    # 4 of 200, 2 % together, but 2 the misfit's own
    (300, 2, 2, False),                                    # 4 of 600: under 1 %
    (2, 2, 0, True),                                       # a slow camera: every frame it sent late
    (2, 1, 0, False),                                      # ... one of two
])
def test_misfits_while_apps_miss_demote_the_latest_admitted(frames, late_old, late_new, demotes):
    engine = admitted('old', 'new', misses_gate=True)
    for _ in range(3):
        missed(engine, 'old', frames, late_old)
        missed(engine, 'new', frames, late_new)
        recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == ({'new'} if demotes else set())


def test_a_quiet_recheck_between_missing_ones_restarts_the_count_and_a_demoted_app_stays_demoted():
    engine = admitted('old', 'new', misses_gate=True)
    for late in (3, 3, 0, 3, 3):                           # the quiet one in the middle: no third in a row
        missed(engine, 'old', 30, late)
        recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == set()
    missed(engine, 'old', 30, 3)
    recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == {'new'}
    recheck(engine, slowdown=CONFLICT, times=3)            # on time now that it is demoted: it stays so ...
    assert demoted(engine) == {'new'}
    recheck(engine, slowdown=1.0, times=2)                 # ... until it fits again
    assert demoted(engine) == set()


def test_a_demoted_apps_own_misses_and_dropped_frames_count_as_they_should():
    engine = admitted('old', 'new', misses_gate=True)
    app = engine._apps['old']
    app.results_out, app.dropped_overflow, app.dropped_late, app.dropped_malformed = 27, 1, 2, 5
    assert app.misses_since_check() == (30, 3)             # pushed out and hopeless count; malformed do not
    assert app.misses_since_check() == (0, 0)              # since the last call
    engine._apps['new'].demoted = True
    missed(engine, 'new', 30, 30)                          # a demoted app missing: no reason to demote more
    states = sorted(engine._apps.items())
    assert not engine._served_apps_missing(states, {app_id: app.misses_since_check() for app_id, app in states})


def test_misfits_missing_alone_are_told_so_and_not_demoted_until_others_miss():
    """An H200 host that stole CPU (session 43): only the 10 ms apps, the misfits, missed; demoted they
    missed more (17.7-62 % within against 92.3-98.7 %) and no other app had missed."""
    engine = admitted('old', 'new', misses_gate=True)
    for _ in range(4):
        missed(engine, 'old', 30, 0)
        missed(engine, 'new', 30, 10)
        reasons = recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == set()
    assert reasons['new'].endswith('at risk, not demoted: only the apps at risk missed their bounds, so serving '
                                   'them last would spare no other')
    for _ in range(3):                                     # the app admitted before it misses now: demoted
        missed(engine, 'old', 30, 3)
        missed(engine, 'new', 30, 10)
        reasons = recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == {'new'}
    assert reasons['new'].endswith('demoted: served after the others until it fits again')


def test_the_ab_switch_lets_the_misfits_own_misses_demote_them_as_before_session_43():
    engine = admitted('old', 'new', misses_gate=True)
    engine.demote_for_own_misses = True
    for _ in range(3):
        missed(engine, 'old', 30, 0)
        missed(engine, 'new', 30, 10)
        recheck(engine, slowdown=CONFLICT)
    assert demoted(engine) == {'new'}


def test_a_quiet_recheck_reports_who_is_at_risk_without_searching_whom_to_demote(monkeypatch):
    engine = admitted('old', 'new', misses_gate=True)
    monkeypatch.setattr(engine, '_misfits', lambda *a: pytest.fail('searched whom to demote with no misses seen'))
    missed(engine, 'old', 30, 0)
    reasons = recheck(engine, slowdown=CONFLICT)
    assert set(reasons) == {'old', 'new'}                  # the demand test's verdict, told at once
    assert all(r.endswith('at risk, not demoted: the apps served met their bounds since the last re-check')
               for r in reasons.values())
    monkeypatch.undo()
    missed(engine, 'old', 30, 3)                           # misses: the search runs, the latest admitted named
    reasons = recheck(engine, slowdown=CONFLICT)
    assert 'it does not fit beside the 1 app(s) admitted before it' in reasons['new']


def _tight_app_beside_a_loose_one_then_old_frames(**kwargs) -> Engine:
    """'loose' (50 ms) and 'tight' (TIGHT, 9 ms) admitted at measured costs; then frames arrive 6.5 ms old:
    a 'tight' frame to exit 1 (3.84 ms with the learnt margin) no longer fits in the 2.5 ms left even
    alone, while on the device the two fit as well as ever."""
    engine = make_engine(**kwargs)
    engine.set_app('loose', Bounds(max_latency_ms=50.0, min_accuracy=0.7), rate_hz=10.0)
    measured(engine, age_ms=0.2)
    engine.set_app('tight', TIGHT, rate_hz=10.0)
    measured(engine, age_ms=6.5)
    return engine


def test_an_app_short_of_time_outside_the_device_even_alone_is_told_not_demoted():
    """Served last it would get no more of what it lacks (H200, sessions 43-44: 10 ms apps at a 6-7 ms p99
    frame age, demoted, met 17.7-80 % of their frames; served with the others 92.3-98.7 %)."""
    engine = _tight_app_beside_a_loose_one_then_old_frames()
    reasons = engine.check_schedulable()
    assert demoted(engine) == frozenset()
    assert 'its end-to-end deadline leaves' in reasons['tight'] and reasons['tight'].endswith(HOST_TAILS_NOTE)


def test_the_ab_switch_demotes_apps_short_of_time_outside_the_device_as_before_session_44():
    engine = _tight_app_beside_a_loose_one_then_old_frames()
    engine.demote_on_host_tails = True
    measured(engine, age_ms=6.5, seconds=0.5)
    assert demoted(engine) == {'tight'} and reason(engine, 'tight').endswith(DEMOTED_NOTE)
