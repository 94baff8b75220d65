"""A worker turn's own cost (scheduling, planning, the policy's decisions), learnt apart from its steps'
(``Engine(separate_turn_cost=True)``, ``DELEN_TURN_COST=1`` in the node) and counted once a turn, and
admission pricing it once a run (``CostModel.turn_ms``).

Folded into the steps (the default), one estimate per step serves a frame that runs a step at a time
(a cascade looking at every exit: one turn a step) and a fused run (one turn for all): the first is
priced below its cost, the second above it."""
import pytest
import torch

from delen_ros.core.admission import CostModel, Task, check
from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine
from delen_ros.core.policies import LatencyCorrector
from fakes import FakeClock, FakeRunner, fake_image, fake_model, synthetic_profile

torch.set_num_threads(1)
PROFILE = synthetic_profile()   # steps at batch 1 (stage + head): 1.1, 2.1, 3.1, 4.1 ms


def _cost(turn_ms: float = 0.0, *, fused_runs: bool = True) -> CostModel:
    return CostModel(step_ms=lambda k, b: 1.0, num_exits=4, fused_runs=fused_runs, turn_ms=turn_ms)


@pytest.mark.parametrize('fused, exit_index, stops, runs', [
    (False, 3, (), 4), (True, 3, (), 1), (True, 3, (0, 1, 2), 4), (True, 3, (1,), 2),
    (True, 1, (1, 2), 1),   # stops at or past the exit end nothing
])
def test_a_frame_takes_a_turn_a_step_or_a_stretch_between_stops(fused, exit_index, stops, runs):
    assert _cost(fused_runs=fused).runs(exit_index, stops) == runs


def test_a_turn_is_priced_once_a_run():
    cost = _cost(turn_ms=0.5)
    assert cost.frame_ms(3, 1) == pytest.approx(4.5)                  # fused: one turn
    assert cost.frame_ms(3, 1, (0, 1, 2)) == pytest.approx(6.0)       # a look at every exit: four
    assert cost.frame_ms(3, 2, (0, 1, 2)) == pytest.approx(3.0)       # a batch shares its turns
    assert cost.blocking_ms(3, 1) == pytest.approx(4.5)
    assert cost.blocking_ms(3, 1, (1,)) == pytest.approx(2.5)         # the longest stretch, and its turn
    assert _cost(turn_ms=0.5, fused_runs=False).blocking_ms(3, 1) == pytest.approx(1.5)
    # without it (the engine's default: folded into the steps) nothing changes
    assert _cost().frame_ms(3, 1, (0, 1, 2)) == _cost().frame_ms(3, 1) == pytest.approx(4.0)
    assert _cost().blocking_ms(3, 1) == pytest.approx(4.0)


def test_admission_tells_a_cascade_from_a_fused_run_by_its_turns():
    """The same frame, to the same exit: run in one turn it fits its 6 ms, a step a turn it does not."""
    fused, cascade = Task('a', 50.0, 6.0, 3), Task('a', 50.0, 6.0, 3, stops=(0, 1, 2))
    assert check([fused], _cost(turn_ms=0.6)).ok
    verdict = check([cascade], _cost(turn_ms=0.6))
    assert not verdict.ok and 'needs 6.4 ms' in verdict.at_risk['a']
    assert check([cascade], _cost()).ok   # folded into the steps, the turns go unseen


def test_the_corrector_learns_a_turns_cost_as_it_learns_the_tail():
    c = LatencyCorrector(margin=2.0)
    assert c.turn_ms() == 0.0
    for _ in range(50):
        c.update_turn(0.3)
    assert c.turn_ms(margin=0.0) == pytest.approx(0.3, rel=1e-3)
    c.update_turn(100.0)                                    # a lone stall: at most 4x the mean
    assert c.turn_ms(margin=0.0) < 0.3 + 0.125 * 4 * 0.3 + 1e-9
    c.update_turn(float('nan'))
    c.update_turn(-1.0)                                     # ignored
    assert c.turn_ms() > c.turn_ms(margin=0.0)              # the margin adds deviations


def _steps_learnt(separate: bool, *, decision_ms: float, turns: int = 30) -> Engine:
    """An engine that ran ``turns`` single-step turns (always_final, unfused), each scheduled with a
    decision of ``decision_ms`` (injected: no sleep, no machine speed in the figures)."""
    clock = FakeClock()
    model = fake_model()
    engine = Engine(model, PROFILE, on_result=lambda r: None, runner=FakeRunner(model), clock=clock,
                    policy='always_final', fuse_steps=False, separate_turn_cost=separate)
    engine.set_app('cam', Bounds())
    for i in range(turns // 4):
        engine.submit(['cam'], fake_image(1, i))
        while engine._scheduler.pending():
            batch = engine._scheduler.next_batch(clock()).batch
            engine._complete(engine._launch(batch, int(decision_ms * 1e6)))
    return engine


def test_a_turns_cost_is_learnt_apart_from_its_steps():
    folded = _steps_learnt(False, decision_ms=3.0)
    apart = _steps_learnt(True, decision_ms=3.0)
    step = [engine.corrector.predict_ms(PROFILE, 1, 1, margin=0.0) for engine in (folded, apart)]
    assert step[0] > 3.0                       # folded: every step carries the turn's 3 ms
    assert step[1] < step[0] - 2.5            # apart: the step's own time
    assert apart.corrector.turn_ms(margin=0.0) >= 3.0 and folded._turn_ms(0.0) == 0.0
    # counted once a turn: in a step run alone, in admission's runs, once in a lone frame's latency
    assert apart._predict_ms(1, 1, margin=0.0) == pytest.approx(step[1] + apart.corrector.turn_ms(margin=0.0))
    assert apart._cost_model().turn_ms == pytest.approx(apart.corrector.turn_ms(margin=0.0))
    assert folded._cost_model().turn_ms == 0.0
    latency = apart.exit_latency_ms()
    assert latency[3] - latency[0] < 3 * 2.5   # three more steps, no more turns
