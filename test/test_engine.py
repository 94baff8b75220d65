"""The engine end to end with the fake model: results per app, bounds, energy flags, stats, robustness."""
import contextlib
import threading
import time

import numpy as np
import pytest
import torch

from delen_ros.core.bounds import Bounds, InfeasibleBounds
from delen_ros.core.engine import Engine, _memory_format, _pad
from fakes import Collector, FakeRunner, fake_confidence, fake_image, fake_model, synthetic_profile

torch.set_num_threads(1)
PROFILE = synthetic_profile()
LOOSE_MS = 5000.0   # bounds tests must not depend on this machine's speed


class FakeMeter:
    """A measured meter whose device draws ``power_w`` all the time."""

    source = 'fake'
    measured = True
    update_period_s = 0.03

    def __init__(self, power_w: float = 3.0):
        self.power_w = power_w
        self.t0 = time.perf_counter_ns()

    def energy_mj(self) -> float:
        return self.power_w * (time.perf_counter_ns() - self.t0) / 1e6   # W x ms = mJ

    def close(self) -> None:
        pass


@contextlib.contextmanager
def engine_stopped(engine):
    try:
        yield engine
    finally:
        engine.stop()


def make_engine(collector, *, sleep_ms=(0.2, 0.2, 0.2, 0.2), **kwargs):
    model = fake_model()
    runner = kwargs.pop('runner', None) or FakeRunner(model, sleep_ms=sleep_ms)
    engine = Engine(model, PROFILE, on_result=collector, runner=runner, **kwargs)
    return engine, runner


def run_frames(engine, frames, *, gap_s=0.003):
    for app_ids, image in frames:
        engine.submit(app_ids, image)
        time.sleep(gap_s)


def test_end_to_end_every_app_gets_results():
    c = Collector()
    # deep queues: a slow CI machine must not drop frames; batch 1: per-frame energy is fixed
    engine, _ = make_engine(c, max_batch=1, queue_depth=32)
    engine.set_app('nav', Bounds(max_latency_ms=LOOSE_MS))
    engine.set_app('arm', Bounds(min_accuracy=0.8, objective='min_energy'))
    engine.set_app('inspect', Bounds(max_energy_mj=4.0, objective='max_accuracy'))
    with engine:
        run_frames(engine, [(['nav', 'arm'], fake_image(i % 4, 250)) for i in range(10)] +
                   [(['inspect'], fake_image(1, 250)) for _ in range(10)])
        results = c.wait(30)
    assert {r.app_id for r in results} == {'nav', 'arm', 'inspect'}
    for app in ('nav', 'arm', 'inspect'):
        assert len(c.of(app)) == 10
    for r in results:
        assert r.bounds_met, r
        assert r.num_exits == 4 and 0 <= r.exit_index < 4
        assert r.latency_ms >= r.queue_ms >= 0 and r.compute_ms > 0
        assert r.finish_ns > r.arrival_ns
        assert r.label == f'class{r.class_id}'
        assert not r.energy_measured and r.energy_source == 'estimate'
    nav = c.of('nav')
    assert all(r.exit_index == 3 for r in nav)                          # MAX_ACCURACY, loose bound: final exit
    assert [r.class_id for r in nav] == [i % 4 for i in range(10)]     # right answers, in order
    assert nav[0].confidence == pytest.approx(fake_confidence(3, 250), abs=1e-5)
    # sharpness 250 gives confidence 0.73 at exit 0 >= the calibrated 0.7 for accuracy 0.8: stop there
    assert all(r.exit_index == 0 for r in c.of('arm'))
    assert all(r.expected_accuracy >= 0.8 for r in c.of('arm'))
    # energy 4 mJ: exits cost 1.1, 3.2, 6.3 mJ -> exit 1 (before exit 2 would overrun)
    assert all(r.exit_index == 1 and r.energy_mj <= 4.0 for r in c.of('inspect'))


def test_after_results_follows_each_turn_that_handed_out_results():
    """A sink that batches (the ROS layer's result outlet) writes out after each turn's results: every
    result is followed by an ``after_results`` call before the worker waits for frames again."""
    c = Collector()
    engine, _ = make_engine(c, max_batch=4, queue_depth=32)
    seen_at_calls = []
    engine.after_results = lambda: seen_at_calls.append(len(c.results))
    engine.set_app('nav', Bounds(max_latency_ms=LOOSE_MS))
    engine.set_app('arm', Bounds(max_latency_ms=LOOSE_MS))
    with engine:
        run_frames(engine, [(['nav', 'arm'], fake_image(1, 250)) for _ in range(6)], gap_s=0.02)
        c.wait(12)
        time.sleep(0.2)
    assert seen_at_calls and seen_at_calls[-1] == 12, seen_at_calls
    assert seen_at_calls == sorted(seen_at_calls) and len(set(seen_at_calls)) == len(seen_at_calls), \
        'one call per turn with results, none for a turn without'
    assert len(seen_at_calls) <= 6   # batched across the two apps: not one call per result


def test_uncertain_frames_go_deeper_for_accuracy():
    c = Collector()
    engine, _ = make_engine(c)
    engine.set_app('arm', Bounds(min_accuracy=0.8, objective='min_energy'))
    with engine:
        run_frames(engine, [(['arm'], fake_image(2, 80))])   # confidence 0.39, 0.54 at exits 0, 1
        result = c.wait(1)[0]
    assert result.exit_index == 1        # calibrated threshold at exit 1 is 0.5
    assert result.class_id == 2


def test_apps_on_one_camera_share_preprocessing_and_compute():
    c = Collector()
    engine, runner = make_engine(c, max_batch=8)
    for app in ('a', 'b', 'c'):
        engine.set_app(app, Bounds(max_latency_ms=LOOSE_MS))
    engine.start(warm_up=False)
    try:
        engine.submit(['a', 'b', 'c'], fake_image(3, 200))
        results = c.wait(3)
    finally:
        engine.stop()
    assert len(results) == 3 and {r.class_id for r in results} == {3}
    assert [b for _, b in runner.calls] == [1, 1, 1, 1]     # one frame's worth at each step
    # the step energy is shared: each gets a third of the final exit's estimated energy
    assert sum(r.energy_mj for r in results) == pytest.approx(PROFILE.exit_energy_mj(3))


@pytest.mark.parametrize('preprocess_workers', [1, 2])
def test_batches_across_apps_and_cameras(preprocess_workers):
    c = Collector()
    gate = threading.Event()

    class GatedRunner(FakeRunner):
        def stage(self, k, x):
            gate.wait(5)                  # hold the first step until all frames are queued
            return super().stage(k, x)

    model = fake_model()
    runner = GatedRunner(model)
    engine = Engine(model, PROFILE, on_result=c, runner=runner, max_batch=8, queue_depth=1,
                    preprocess_workers=preprocess_workers)
    for i in range(6):
        engine.set_app(f'app{i}', Bounds(max_latency_ms=LOOSE_MS))
    engine.start(warm_up=False)
    try:
        engine.submit(['app0'], fake_image(0))
        time.sleep(0.05)                  # app0's frame is now running (held at the gate)
        for i in range(1, 6):
            engine.submit([f'app{i}'], fake_image(i % 4))
        gate.set()
        results = c.wait(6)
    finally:
        gate.set()
        engine.stop()
    assert (0, 5) in runner.calls         # the five other cameras ran step 0 as one batch
    assert engine.worker_stats().mean_batch > 1
    assert {r.app_id: r.class_id for r in results} == {f'app{i}': i % 4 for i in range(6)}


def test_stats_counters_and_window():
    c = Collector()
    engine, _ = make_engine(c, max_batch=1, queue_depth=32)
    engine.set_app('a', Bounds(max_latency_ms=LOOSE_MS, min_accuracy=0.6))
    with engine:
        run_frames(engine, [(['a'], fake_image(0)) for _ in range(12)])
        c.wait(12)
        s = engine.stats('a', reset=True)
        empty = engine.stats('a')
    assert (s.frames_in, s.results_out, s.window_results, s.dropped) == (12, 12, 12, 0)
    assert s.attainment == 1.0 and s.frame_attainment == 1.0 and s.latency_attainment == 1.0
    assert s.latency_p50_ms <= s.latency_p99_ms <= s.latency_max_ms
    assert s.mean_energy_mj == pytest.approx(PROFILE.exit_energy_mj(3))
    assert s.exit_counts == (0, 0, 0, 12) and s.energy_measured_fraction == 0.0
    assert s.bounds == Bounds(max_latency_ms=LOOSE_MS, min_accuracy=0.6)
    assert empty.frames_in == 12 and empty.window_results == 0       # counters stay, the window restarts
    w = engine.worker_stats()
    assert w.steps >= 4 and w.decision_us_p50 > 0 and w.preprocess_ms_per_frame > 0
    with pytest.raises(KeyError, match="'a'"):
        engine.stats('nobody')


def test_queue_overflow_is_counted():
    c = Collector()
    engine, _ = make_engine(c, queue_depth=1)
    engine.set_app('a', Bounds())
    for i in range(5):                    # not started: the queue keeps only the newest frame
        engine.submit(['a'], fake_image(i % 4))
    with engine:
        results = c.wait(1)
        time.sleep(0.05)
    s = engine.stats('a')
    assert s.dropped_overflow == 4 and s.results_out == 1
    assert results[0].class_id == 4 % 4  # the newest frame survived


def test_hopeless_frames_are_dropped():
    c = Collector()
    engine, _ = make_engine(c, sleep_ms=(0, 0, 0, 0))
    engine.set_app('a', Bounds(max_latency_ms=5.0), late_policy='drop')
    old = time.perf_counter_ns() - 10_000_000          # arrived 10 ms ago: cannot meet 5 ms any more
    engine.submit(['a'], fake_image(0), arrival_ns=old)
    with engine:
        deadline = time.monotonic() + 5
        while engine.stats('a').dropped_late == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
    s = engine.stats('a')
    assert s.dropped_late == 1 and s.results_out == 0 and c.results == []
    assert s.frame_attainment == 0.0


def test_baselines_run_hopeless_frames_late():
    c = Collector()
    engine, _ = make_engine(c, sleep_ms=(0, 0, 0, 0), policy='always_final')
    engine.set_app('a', Bounds(max_latency_ms=5.0))
    engine.submit(['a'], fake_image(0), arrival_ns=time.perf_counter_ns() - 10_000_000)
    with engine:
        result = c.wait(1)[0]
    assert result.exit_index == 3 and result.latency_ms > 5.0 and not result.bounds_met
    assert engine.stats('a').dropped_late == 0


def test_the_meter_is_read_once_a_window_never_faster_than_it_updates():
    """The node reads NVML once a second (energy_window_s): each read holds the driver's lock for ms."""
    c = Collector()
    slow, _ = make_engine(c, meter=FakeMeter(), energy_window_s=1.0)
    default, _ = make_engine(c, meter=FakeMeter())
    too_fast, _ = make_engine(c, meter=FakeMeter(), energy_window_s=0.001)
    assert (slow._energy.window_s, default._energy.window_s, too_fast._energy.window_s) == (1.0, 0.03, 0.03)


def test_measured_energy_is_flagged_and_scaled():
    c = Collector()
    engine, _ = make_engine(c, meter=FakeMeter(power_w=3.0), sleep_ms=(1, 1, 1, 1), queue_depth=32)
    engine.set_app('a', Bounds())
    with engine:
        run_frames(engine, [(['a'], fake_image(0)) for _ in range(20)], gap_s=0.006)
        results = c.wait(20)
    measured = [r for r in results if r.energy_measured]
    assert measured, 'no result was scaled by the meter'
    assert all(r.energy_source == 'fake' for r in measured)
    assert all(r.energy_source == 'estimate' for r in results if not r.energy_measured)
    assert not results[0].energy_measured       # before the first full window: estimate only
    assert engine.worker_stats().energy_scale > 0
    # the fake profile assumes 1 W; the device draws 3 W (idle included), so the figures grow
    assert np.mean([r.energy_mj for r in measured]) > PROFILE.exit_energy_mj(3)


def test_energy_beyond_the_steps_is_shared_evenly_between_results():
    """A device drawing far more than the profile's steps (uploads, launches, a busy host): a result that
    stopped at the first exit is charged its steps plus the same share as a full-depth one, not the
    measured / estimated multiple of its estimate (which, across policies, charged early exits more)."""
    c = Collector()
    engine, _ = make_engine(c, meter=FakeMeter(power_w=30.0), sleep_ms=(1, 1, 1, 1), queue_depth=32, max_batch=1)
    first, final = PROFILE.exit_energy_mj(0), PROFILE.exit_energy_mj(3)
    engine.set_app('shallow', Bounds(max_energy_mj=first * 1.01, objective='max_accuracy'))
    engine.set_app('deep', Bounds())
    with engine:
        run_frames(engine, [([app], fake_image(0)) for _ in range(20) for app in ('shallow', 'deep')], gap_s=0.004)
        results = c.wait(40)
    measured = [r for r in results if r.energy_measured]
    shallow = [r.energy_mj for r in measured if r.app_id == 'shallow' and r.exit_index == 0]
    deep = [r.energy_mj for r in measured if r.app_id == 'deep' and r.exit_index == 3]
    assert shallow and deep, 'no measured results at both exits'
    share = np.mean(shallow) - first
    assert share > 5 * (final - first)   # the meter saw far more than the steps: most of it is the share
    # the two differ by their steps' estimates, not by a multiple of them
    assert np.mean(deep) - np.mean(shallow) == pytest.approx(final - first, abs=0.5 * share)


def test_attribution_keeps_the_steps_and_splits_the_rest():
    from delen_ros.core.energy_scaling import attribution
    assert attribution(300.0, 100.0, 4) == (1.0, 50.0)      # 200 mJ beyond the steps, 50 a result
    assert attribution(100.0, 100.0, 3) == (1.0, 0.0)
    assert attribution(50.0, 100.0, 4) == (0.5, 0.0)        # the meter saw less: the steps scaled down


def test_windows_read_below_idle_still_count():
    """A meter's counter moves in steps: one window above idle reads +12, the next -11, where the work
    drew 1 in all. Skipping the negative one would charge the results for 12."""
    from delen_ros.core.energy_scaling import RecentWindows
    recent = RecentWindows(10)
    assert recent.add(12.0, 1.0, 10) == (1.0, 1.1)
    assert recent.add(-11.0, 1.0, 10) == (0.5, 0.0)         # 1 mJ measured in all, 2 estimated
    assert RecentWindows(10).add(-5.0, 1.0, 10) == (0.0, 0.0)
    assert RecentWindows(10).add(3.0, 0.0, 0) is None        # no result yet: nothing to split
    old = RecentWindows(2)
    for window in ((100.0, 1.0, 1), (1.0, 1.0, 1), (1.0, 1.0, 1)):
        split = old.add(*window)
    assert split == (1.0, 0.0)                               # the first window has left the horizon


def test_estimate_meter_keeps_estimates():
    class EstimateMeter:
        source, measured = 'estimate', False

        def energy_mj(self):
            return None

    c = Collector()
    engine, _ = make_engine(c, meter=EstimateMeter())
    engine.set_app('a', Bounds())
    with engine:
        engine.submit(['a'], fake_image(0))
        r = c.wait(1)[0]
    assert not r.energy_measured and r.energy_mj == pytest.approx(PROFILE.exit_energy_mj(3))


def test_callback_exception_does_not_kill_the_worker(caplog):
    seen = []

    def flaky(result):
        seen.append(result)
        if len(seen) == 1:
            raise RuntimeError('subscriber bug')

    engine, _ = make_engine(flaky)
    engine.set_app('a', Bounds())
    with engine:
        engine.submit(['a'], fake_image(0))
        end = time.monotonic() + 5
        while not seen and time.monotonic() < end:
            time.sleep(0.002)
        engine.submit(['a'], fake_image(1))
        while len(seen) < 2 and time.monotonic() < end:
            time.sleep(0.002)
        assert engine.running
    assert [r.class_id for r in seen] == [0, 1]
    assert 'subscriber bug' in caplog.text


def test_step_failure_is_counted_and_serving_goes_on():
    c = Collector()
    model = fake_model()
    runner = FakeRunner(model, fail_at=2)
    engine = Engine(model, PROFILE, on_result=c, runner=runner)
    engine.set_app('deep', Bounds())                                    # reaches step 2: fails
    engine.set_app('shallow', Bounds(objective='min_latency'))          # stops at exit 0
    with pytest.raises(RuntimeError, match='fake failure'):
        engine.start()                    # the warm-up runs every step: a broken model fails early
    engine.start(warm_up=False)
    with engine_stopped(engine):
        engine.submit(['deep'], fake_image(0))
        end = time.monotonic() + 5
        while engine.stats('deep').failed == 0 and time.monotonic() < end:
            time.sleep(0.002)
        engine.submit(['shallow'], fake_image(1))
        result = c.wait(1)[0]
    assert engine.stats('deep').failed == 1
    assert result.app_id == 'shallow' and result.exit_index == 0


def test_set_app_rejects_infeasible_and_keeps_the_old_bounds():
    c = Collector()
    engine, _ = make_engine(c)
    plan = engine.set_app('a', Bounds(max_latency_ms=5.0))
    assert plan.exit_index == 1
    with pytest.raises(InfeasibleBounds) as err:
        engine.set_app('a', Bounds(max_latency_ms=0.1))
    assert err.value.feasible == engine.feasible_range()
    with pytest.raises(InfeasibleBounds):
        engine.set_app('b', Bounds(min_accuracy=0.99))
    assert engine.apps() == {'a': Bounds(max_latency_ms=5.0)}
    with pytest.raises(ValueError, match="''"):
        engine.set_app('', Bounds())


def test_submit_and_remove():
    c = Collector()
    engine, _ = make_engine(c)
    engine.set_app('a', Bounds())
    assert engine.submit(['a', 'unknown', 'a'], fake_image(0)) == 1      # unknown ids skipped, duplicates once
    assert engine.remove_app('a') and not engine.remove_app('a')
    assert engine.submit(['a'], fake_image(0)) == 0
    with pytest.raises(ValueError, match='uint8'):
        engine.submit(['a'], np.zeros((8, 8), np.float32))
    with engine:
        time.sleep(0.02)
    assert c.results == []                                               # its queued frame went with it


@pytest.mark.parametrize('kwargs, match', [
    ({'policy': 'nope'}, 'known'),
    ({'stats_window': 0}, 'stats_window'),
    ({'idle_power_w': -1.0}, 'idle_power_w'),
    ({'max_batch': 0}, 'max_batch'),
    ({'queue_depth': 0}, 'queue_depth'),
    ({'preprocess_workers': 0}, 'preprocess_workers'),
])
def test_constructor_validates(kwargs, match):
    with pytest.raises((ValueError, KeyError), match=match):
        make_engine(Collector(), **kwargs)


def test_profile_must_match_the_model():
    with pytest.raises(ValueError, match='exits'):
        Engine(fake_model(), synthetic_profile(3), on_result=Collector(), runner=object())


def test_with_the_real_stage_runner():
    c = Collector()
    engine = Engine(fake_model(), PROFILE, on_result=c, device='cpu')   # runner=None: a StageRunner
    engine.set_app('a', Bounds(objective='min_latency'))
    with engine:
        engine.submit(['a'], fake_image(2))
        result = c.wait(1)[0]
    assert (result.class_id, result.exit_index) == (2, 0)


def test_warm_up_seeds_the_latency_corrector():
    engine, runner = make_engine(Collector())
    assert engine.corrector.snapshot() == {}
    engine.warm_up()
    assert sorted(engine.corrector.snapshot()) == ['0/0', '1/0', '2/0', '3/0']   # one level per step, every size
    assert runner.calls[:12] == [(k, 1) for k in (0, 1, 2, 3)] * 3
    # then, on CPU, every larger batch size once: its kernels are built before the first busy second
    assert runner.calls[12:] == [(k, b) for b in range(2, engine.max_batch + 1) for k in (0, 1, 2, 3)]


def test_start_twice_raises_and_stop_is_clean():
    engine, _ = make_engine(Collector())
    engine.start()
    with pytest.raises(RuntimeError):
        engine.start()
    engine.stop()
    assert not engine.running


@pytest.mark.parametrize('channels_last', [False, True])
def test_padding_keeps_rows_and_memory_format(channels_last):
    x = torch.randn(3, 4, 5, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = _pad(x, 8)                     # kernels are chosen per shape and layout: both must hold
    assert y.shape == (8, 4, 5, 5) and torch.equal(y[:3], x) and not y[3:].any()
    assert _memory_format(y) == _memory_format(x) == (torch.channels_last if channels_last else torch.contiguous_format)


def test_requests_from_different_batches_continue_together():
    c = Collector()
    gate = threading.Event()

    class GatedRunner(FakeRunner):
        def stage(self, k, x):
            if not self.calls:
                gate.wait(5)               # hold a's first step until b has arrived
            return super().stage(k, x)

    model = fake_model()
    runner = GatedRunner(model)
    # one step per turn: fused, each batch would run to the final exit on its own (test_fused_steps.py)
    engine = Engine(model, PROFILE, on_result=c, runner=runner, max_batch=8, fuse_steps=False)
    engine.choice_yields = 'never'   # else b, its bounds met at exit 0, stops there for a, waiting
    engine.set_app('a', Bounds(max_latency_ms=LOOSE_MS))
    engine.set_app('b', Bounds(max_latency_ms=LOOSE_MS / 2))   # earlier deadline: its step 0 goes first
    engine.start(warm_up=False)
    try:
        engine.submit(['a'], fake_image(1))
        time.sleep(0.05)
        engine.submit(['b'], fake_image(2))
        gate.set()
        results = c.wait(2)
    finally:
        gate.set()
        engine.stop()
    assert {r.app_id: (r.class_id, r.exit_index) for r in results} == {'a': (1, 3), 'b': (2, 3)}
    assert runner.calls[:3] == [(0, 1), (0, 1), (1, 2)]   # two earlier batches' features gathered into one


# --- issue 10: end-to-end bounds, late frames, one ledger ---------------------------------------------------
def test_late_frames_are_served_at_the_fastest_exit_by_default():
    c = Collector()
    engine, _ = make_engine(c, sleep_ms=(0, 0, 0, 0))
    engine.set_app('a', Bounds(max_latency_ms=5.0))
    engine.submit(['a'], fake_image(0), arrival_ns=time.perf_counter_ns() - 10_000_000)
    with engine:
        result = c.wait(1)[0]
    s = engine.stats('a')
    assert result.exit_index == 0 and result.late and not result.bounds_met
    assert (s.results_out, s.served_late, s.dropped_late) == (1, 1, 0)
    assert s.frame_attainment == 0.0 and s.latency_attainment == 0.0


def test_external_delivery_defines_latency_at_publication():
    c = Collector()
    clock = FakeClockNs()
    engine, _ = make_engine(c, external_delivery=True, clock=clock, overhead_prior_ms=0.0)
    engine.set_app('a', Bounds(max_latency_ms=LOOSE_MS))
    with engine:
        engine.submit(['a'], fake_image(0))
        provisional = c.wait(1)[0]
        assert engine.stats('a').results_out == 0             # not delivered yet: not counted
        clock.offset_ns += int((LOOSE_MS + 1) * 1e6)           # published long after
        delivered = engine.deliver(provisional)
    s = engine.stats('a')
    assert delivered.latency_ms > LOOSE_MS and not delivered.bounds_met and provisional.bounds_met
    assert s.results_out == 1 and s.served_late == 1 and s.attainment == 0.0
    assert s.latency_max_ms == pytest.approx(delivered.latency_ms)
    # the decision -> publication tail is now part of the serving overhead and the feasible range
    assert engine.overhead_ms() > LOOSE_MS / 2
    assert engine.feasible_range().latency_ms[0] > LOOSE_MS / 2


def test_feasible_range_is_end_to_end():
    c = Collector()
    engine, _ = make_engine(c, overhead_prior_ms=3.0)
    r = engine.feasible_range()
    assert r.overhead_ms == 3.0
    assert r.latency_ms[0] == pytest.approx(3.0 + PROFILE.step_ms(0, 1))   # nothing measured yet
    with pytest.raises(InfeasibleBounds, match='serving overhead'):
        engine.set_app('a', Bounds(max_latency_ms=PROFILE.exit_latency_ms(0) + 1.0))   # compute alone would fit
    assert engine.plan(Bounds(max_latency_ms=6.0)).exit_index == 0


def test_malformed_frames_are_counted_as_misses():
    c = Collector()
    engine, _ = make_engine(c, queue_depth=8)
    engine.set_app('a', Bounds())
    engine.set_app('b', Bounds())
    engine.count_malformed(['a', 'unknown'], 2)
    engine.submit(['a'], fake_image(0))
    with engine:
        c.wait(1)
    s = engine.stats('a')
    assert (s.frames_in, s.dropped_malformed, s.dropped, s.results_out) == (3, 2, 2, 1)
    assert s.frame_attainment == pytest.approx(1 / 3)
    assert engine.stats('b').frames_in == 0


def test_an_app_with_only_late_frames_is_told_why():
    c = Collector()
    engine, _ = make_engine(c, sleep_ms=(0, 0, 0, 0), admission_control=False)
    engine.set_app('a', Bounds(max_latency_ms=5.0), late_policy='drop')
    for _ in range(3):
        engine.submit(['a'], fake_image(0), arrival_ns=time.perf_counter_ns() - 10_000_000)
    with engine:
        deadline = time.monotonic() + 5
        while engine.stats('a').dropped_late == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
    s = engine.stats('a')
    assert s.results_out == 0 and s.dropped_late >= 1
    assert 'late' in s.unschedulable_reason and 'bound 5 ms' in s.unschedulable_reason


def test_accuracy_only_default_objective_stops_early():
    c = Collector()
    engine, _ = make_engine(c, max_batch=1, queue_depth=32)
    engine.set_app('default', Bounds(min_accuracy=0.8))
    engine.set_app('deeper', Bounds(min_accuracy=0.8, objective='max_accuracy'))
    with engine:
        run_frames(engine, [(['default', 'deeper'], fake_image(i % 4, 250)) for i in range(5)])
        c.wait(10)
    assert all(r.exit_index == 0 for r in c.of('default'))     # confident at exit 0: Dělen stops there
    assert all(r.exit_index == 3 for r in c.of('deeper'))


def test_worker_stats_energy_totals():
    c = Collector()
    engine, _ = make_engine(c, max_batch=1, queue_depth=8, idle_power_w=2.0)
    engine.set_app('a', Bounds())
    with engine:
        run_frames(engine, [(['a'], fake_image(0)) for _ in range(4)])
        c.wait(4)
    w = engine.worker_stats()
    assert w.energy_mj == pytest.approx(4 * PROFILE.exit_energy_mj(3))
    assert w.idle_energy_mj > 0 and w.overhead_ms >= 0


class FakeClockNs:
    """``perf_counter_ns`` plus an offset the test moves (publication 'later')."""

    def __init__(self):
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.perf_counter_ns() + self.offset_ns


def test_a_scheduling_error_does_not_end_the_worker():
    c = Collector()
    engine, _ = make_engine(c, queue_depth=8)
    engine.set_app('a', Bounds(max_latency_ms=LOOSE_MS))
    next_batch, calls = engine._scheduler.next_batch, []

    def fails_once(now, expected=()):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError('a scheduler bug')
        return next_batch(now, expected)
    engine._scheduler.next_batch = fails_once
    with engine:
        engine.submit(['a'], fake_image(0))
        engine.submit(['a'], fake_image(1))
        results = c.wait(2, timeout=10)
    assert engine.worker_errors == 1
    assert len(results) == 2 and all(r.app_id == 'a' for r in results), 'serving went on after the error'


class UploadRecorder:
    """A device preprocessor stand-in: records the frames uploaded ahead and which came to the
    worker un-uploaded; preprocesses on the CPU."""

    def __init__(self, info):
        self.info = info
        self.ahead: list[int] = []    # class ids of the frames uploaded on arrival
        self.by_worker: list[int] = []
        self.bursts: list[int] = []   # upload_many's calls: how many frames each

    def upload(self, image):
        self.ahead.append(int(image[0, 0]))
        return torch.from_numpy(image.copy())

    def upload_many(self, images):
        self.bursts.append(len(images))
        return [self.upload(image) for image in images]

    def __call__(self, images):
        from delen_ros.core.preprocess import preprocess
        self.by_worker += [int(im[0, 0]) for im in images if isinstance(im, np.ndarray)]
        return preprocess([im.numpy() if isinstance(im, torch.Tensor) else im for im in images], self.info)


def test_frames_of_an_app_the_worker_is_behind_are_not_uploaded_ahead():
    """Receive livelock: beyond its capacity the node uploaded every frame on arrival, most of them
    to be pushed out unserved. An app whose queue pushes frames out gets its frames uploaded by the
    worker, only the ones it takes; an app keeping up keeps its frames uploaded on arrival."""
    c = Collector()
    clock = FakeClockNs()
    engine, _ = make_engine(c, queue_depth=1, clock=clock)
    engine._device_pre = recorder = UploadRecorder(engine.info)
    engine.set_app('behind', Bounds())
    engine.set_app('keeping_up', Bounds())
    engine.submit(['behind'], fake_image(0))       # uploaded: nothing pushed out yet
    engine.submit(['behind'], fake_image(1))       # uploaded, and pushes frame 0 out
    engine.submit(['behind'], fake_image(2))       # behind now: waits for the worker
    engine.submit(['keeping_up'], fake_image(3))   # its own queue is fine
    engine.submit(['behind', 'keeping_up'], fake_image(1))   # one of its apps keeps up: uploaded
    assert recorder.ahead == [0, 1, 3, 1]
    assert engine.uploads_left_to_worker == 1
    clock.offset_ns += 600_000_000                 # nothing pushed out for longer than 0.5 s
    engine.submit(['behind'], fake_image(2))
    assert recorder.ahead == [0, 1, 3, 1, 2]
    engine.submit(['behind'], fake_image(3))       # pushed frame 2 out: behind again
    with engine:
        results = c.wait(2)
    assert sorted((r.app_id, r.class_id) for r in results) == [('behind', 3), ('keeping_up', 1)]
    assert recorder.by_worker == [3]               # the worker uploaded the frame it took itself


def test_every_frame_is_uploaded_ahead_when_asked():
    c = Collector()
    engine, _ = make_engine(c, queue_depth=1, ahead_when_behind=True)
    engine._device_pre = recorder = UploadRecorder(engine.info)
    engine.set_app('a', Bounds())
    for i in range(4):
        engine.submit(['a'], fake_image(i))
    assert recorder.ahead == [0, 1, 2, 3]


def test_held_submits_queue_nothing_until_the_burst_ends_then_upload_it_together():
    """Engine.held_submits (the frame reader's read, DELEN_BATCH_UPLOADS=1): frames submitted within it are
    checked at once but queued when it ends, the ones to upload ahead in one upload_many, in order;
    an exception in the burst still queues what was held."""
    c = Collector()
    engine, _ = make_engine(c, queue_depth=4)
    engine._device_pre = recorder = UploadRecorder(engine.info)
    engine.set_app('a', Bounds())
    engine.set_app('b', Bounds())
    with engine.held_submits():
        assert engine.submit(['a', 'b', 'unknown'], fake_image(1)) == 2
        assert engine.submit(['a'], fake_image(2)) == 1
        with pytest.raises(ValueError):
            engine.submit(['a'], np.zeros((4, 4, 3), np.float32))   # a malformed frame is refused at once
        assert not engine._scheduler.pending() and recorder.ahead == []
    assert recorder.bursts == [2] and recorder.ahead == [1, 2]
    assert engine._scheduler.pending()
    with pytest.raises(RuntimeError), engine.held_submits():
        engine.submit(['b'], fake_image(3))
        raise RuntimeError('the reader failed mid-burst')
    assert recorder.bursts == [2, 1]
    engine.submit(['b'], fake_image(0))   # outside: uploaded and queued by itself
    assert recorder.bursts == [2, 1] and recorder.ahead == [1, 2, 3, 0]
    with engine:
        results = c.wait(5)
    assert sorted((r.app_id, r.class_id) for r in results) == [('a', 1), ('a', 2), ('b', 0), ('b', 1), ('b', 3)]


def test_arrival_lookahead_expects_the_next_frame_of_a_regular_camera():
    from fakes import FakeClock
    clock = FakeClock()
    engine, _ = make_engine(Collector(), clock=clock, arrival_lookahead=True, admission_control=False)
    engine.set_app('fast', Bounds(max_latency_ms=10.0))
    engine.set_app('free', Bounds())                               # no latency bound: nothing to wait for
    for i in range(6):                                             # 30 Hz, not served (no worker)
        clock.advance(33.0 if i else 0.0)
        engine.submit(['fast', 'free'], fake_image(), arrival_ns=clock() - 2_000_000)
    clock.advance(3.0)
    assert engine._expected_frames(clock()) == []                  # its last frame is still waiting
    engine._scheduler.drain()
    (e,) = engine._expected_frames(clock())
    assert e.app_id == 'fast' and e.submit_ns == clock() + 30_000_000 and e.jitter_ns == 0
    assert e.deadline_ns == e.submit_ns - 2_000_000 + 10_000_000 - int(engine.delivery_allowance_ms * 1e6)
    clock.advance(100.0)                                           # frames stopped: no longer expected
    assert engine._expected_frames(clock()) == []


@pytest.mark.parametrize('at_priority', [True, False])
def test_on_cuda_the_worker_launches_on_a_stream_of_the_highest_priority(monkeypatch, at_priority):
    # its graphs replay at their stream's priority: ahead of the background capture's and cuDNN's trials
    streams, current = [], []

    class Stream:
        def __init__(self, device=None, priority=0):
            streams.append(priority)

    monkeypatch.setattr(torch.cuda, 'Stream', Stream)
    monkeypatch.setattr(torch.cuda, 'set_stream', lambda s: current.append((threading.current_thread().name, s)))
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: None)
    model = fake_model()
    runner = FakeRunner(model)
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=runner, recheck_on_worker=False)
    engine.serve_at_priority = at_priority
    runner.device = torch.device('cuda')   # read by the worker as it starts: no CUDA needed here
    engine.start(warm_up=False)
    try:
        deadline = time.monotonic() + 5.0
        while at_priority and not current and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    if at_priority:
        assert streams == [-100] and [name for name, _ in current] == ['delen-engine']
    else:
        assert streams == [] and current == []


def test_preprocessed_frames_are_taken_as_their_batch_when_they_are_all_of_it():
    """A step-0 input is the preprocessed batch itself when its frames are that batch's rows in order
    (a saturated turn: no slice and no copy per frame); otherwise their rows, in the step's order."""
    from delen_ros.core.engine import _Frame
    batch = torch.arange(4.0).view(4, 1, 1, 1)
    frames = [_Frame(None) for _ in range(4)]
    for i, f in enumerate(frames):
        f.batch, f.row = batch, i
    assert Engine._rows_of(frames) is batch
    assert Engine._rows_of(frames[2:3]).flatten().tolist() == [2.0]
    assert Engine._rows_of([frames[3], frames[1]]).flatten().tolist() == [3.0, 1.0]
    assert Engine._rows_of(frames[:3]).flatten().tolist() == [0.0, 1.0, 2.0]   # part of it: copied
    other = _Frame(None)
    other.batch, other.row = torch.full((1, 1, 1, 1), 9.0), 0
    assert Engine._rows_of([frames[0], other]).flatten().tolist() == [0.0, 9.0]
    assert _Frame(None).tensor is None
