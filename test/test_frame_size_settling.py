"""The first frames of a new frame size pay one-time costs (pinned buffers, lazily loaded kernels), and
a new app's subscription delivers old frames first: the engine takes no frame-age sample for 2 s
(``SETTLE_NS``) after either, and a size's first preprocessing run does not seed the preprocessing estimate.
Seen on an H200: 60-90 ms old first frames refused 17 of 32 feasible apps behind the placer, and 14 of
16 registered through set_bounds, as "frames arrive 65 ms old"."""
import numpy as np
import pytest

from delen_ros.core.admission import Unschedulable
from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine
from fakes import FakeClock, FakeRunner, fake_model, synthetic_profile

PROFILE = synthetic_profile()


def make_engine(clock, **kwargs) -> Engine:
    """An engine with one app, 'cam', on camera 'cam'."""
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model, sleep_ms=(0, 0, 0, 0)),
                    overhead_prior_ms=0.0, utilisation_limit=1.0, max_batch=1, clock=clock, **kwargs)
    engine.set_app('cam', Bounds(max_latency_ms=100.0), source='cam')
    return engine


def submit(engine, clock, *, age_ms: float, count: int = 1, app: str = 'cam', size=(8, 8),
           every_ms: float = 50.0) -> None:
    """``count`` frames of ``app`` reaching the engine ``age_ms`` after their stamp, ``every_ms`` apart."""
    for _ in range(count):
        engine.submit([app], np.zeros(size, np.uint8), arrival_ns=clock() - int(age_ms * 1e6))
        clock.advance(every_ms)


def test_a_stall_in_a_new_sizes_first_frames_is_not_taken_as_the_frames_age():
    clock = FakeClock()
    engine = make_engine(clock)
    submit(engine, clock, age_ms=80.0)                  # the first frame: pinned buffers, kernels
    submit(engine, clock, age_ms=40.0, count=4)         # the frames that queued behind it
    submit(engine, clock, age_ms=2.0, count=40)         # steady state
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)


def test_a_stall_after_the_settling_counts():
    clock = FakeClock()
    engine = make_engine(clock)
    submit(engine, clock, age_ms=2.0, count=45)
    submit(engine, clock, age_ms=40.0, count=10)        # 0.5 s of old frames, past the start's settling
    assert engine.feasible_range().transport_ms == pytest.approx(40.0)


def test_a_new_size_starts_a_new_settling():
    clock = FakeClock()
    engine = make_engine(clock)
    submit(engine, clock, age_ms=2.0, count=45)
    submit(engine, clock, age_ms=60.0, count=5, size=(16, 16))   # a camera switches resolution: its first 250 ms
    submit(engine, clock, age_ms=2.0, count=45, size=(16, 16))
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)


def test_a_new_apps_first_frames_do_not_set_the_age_but_an_established_apps_do():
    clock = FakeClock()
    engine = make_engine(clock)
    submit(engine, clock, age_ms=2.0, count=45)
    engine.set_app('late', Bounds(max_latency_ms=100.0), source='late')
    submit(engine, clock, age_ms=90.0, count=5, app='late')    # a new subscription's first frames: old
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)
    submit(engine, clock, age_ms=90.0, count=60, app='late')   # later, old frames of the same app count
    assert engine.feasible_range().transport_ms == pytest.approx(90.0)


def test_a_new_apps_subscription_stalling_the_other_cameras_is_not_taken_as_their_age():
    clock = FakeClock()
    engine = make_engine(clock)
    submit(engine, clock, age_ms=2.0, count=45)
    engine.set_app('other', Bounds(max_latency_ms=100.0), source='other')
    submit(engine, clock, age_ms=60.0, count=5)         # 'cam' frames held up while 'other' subscribes
    submit(engine, clock, age_ms=2.0, count=45)
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)


def test_the_other_cameras_held_up_when_a_new_apps_subscription_matches_are_not_their_age():
    # the subscription matches a second after the registration (discovery), with the app's first
    # frame: 'cam' frames held up then are not its age either
    clock = FakeClock()
    engine = make_engine(clock)
    submit(engine, clock, age_ms=2.0, count=45)
    engine.set_app('other', Bounds(max_latency_ms=100.0), source='other')
    submit(engine, clock, age_ms=2.0, count=45)         # 2.25 s: past the registration's settling
    submit(engine, clock, age_ms=2.0, app='other', every_ms=0.0)   # matched: its first frame
    submit(engine, clock, age_ms=60.0, count=5)         # 'cam' frames held up meanwhile
    submit(engine, clock, age_ms=2.0, count=45)
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)


def test_the_age_forgets_a_stall_after_five_seconds_where_few_frames_come():
    clock = FakeClock()
    engine = make_engine(clock)
    submit(engine, clock, age_ms=2.0, count=20, every_ms=100.0)
    submit(engine, clock, age_ms=70.0, every_ms=100.0)
    assert engine.feasible_range().transport_ms > 50.0
    submit(engine, clock, age_ms=2.0, count=55, every_ms=100.0)   # 5.5 s at 10 Hz: 76 frames in all, far below the window
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)


def test_before_any_frame_is_measured_the_age_prior_counts():
    clock = FakeClock()
    engine = make_engine(clock, transport_prior_ms=2.0)
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)   # nothing measured yet
    submit(engine, clock, age_ms=40.0)                                  # settling: still the prior
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)
    submit(engine, clock, age_ms=0.5, count=45)
    assert engine.feasible_range().transport_ms == pytest.approx(0.5)   # measured


def test_frames_aged_while_a_request_is_refused_are_not_taken_as_the_age():
    # the refusal's evaluation holds the node's executor thread: frames taken meanwhile come late
    clock = FakeClock()
    engine = make_engine(clock)
    submit(engine, clock, age_ms=2.0, count=45)
    with pytest.raises(Unschedulable):   # a camera at 10 kHz: the device would be busy many times over
        engine.set_app('refused', Bounds(max_latency_ms=100.0), source='refused', rate_hz=10_000.0)
    assert set(engine.apps()) == {'cam'}
    submit(engine, clock, age_ms=20.0, count=5)          # aged by the refusal
    submit(engine, clock, age_ms=2.0, count=45)
    assert engine.feasible_range().transport_ms == pytest.approx(2.0)
