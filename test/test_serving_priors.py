"""What an engine learnt about serving, kept for its next start (core/serving_priors, issue 10)."""
from __future__ import annotations

import json
import math

import pytest

from delen_ros.core.admission import Unschedulable
from delen_ros.core.batch_cost import BatchCost
from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine
from delen_ros.core.policies import LatencyCorrector
from delen_ros.core.serving_priors import FORMAT, Keeper, ServingPriors, merge, read, write

from fakes import Collector, FakeRunner, fake_model, synthetic_profile

PROFILE = synthetic_profile(step_ms=(1.0, 1.0, 1.0, 1.0), head_ms=0.0, p99_factor=1.0)
PRIORS = ServingPriors('fake', 'cpu', (3.0, None, 2.0, 2.0), overhead_ms=1.5, transport_ms=2.5,
                       preprocess_ms=(0.3, 0.02), saved_unix=1.0)


def _engine(**kwargs) -> Engine:
    model = fake_model()
    return Engine(model, PROFILE, on_result=Collector(), runner=FakeRunner(model, sleep_ms=(0, 0, 0, 0)), **kwargs)


# --- the file ----------------------------------------------------------------------------------------
def test_a_written_file_reads_back_the_same(tmp_path):
    path = tmp_path / 'sub' / 'priors.json'   # the directory is made
    write(path, PRIORS)
    assert read(path, model='fake', device='cpu', num_exits=4) == (PRIORS, '')
    assert json.loads(path.read_text())['format'] == FORMAT
    assert not list(path.parent.glob('.*.tmp'))   # written through a temporary file, renamed


def test_no_file_yet_is_no_priors_and_no_error(tmp_path):
    assert read(tmp_path / 'none.json', model='fake', device='cpu', num_exits=4) == (None, '')


@pytest.mark.parametrize('text, why', [
    ('{not json', 'ignored'),
    ('[1, 2]', 'not a serving-priors file'),
    (json.dumps({'format': 'other/1'}), 'not a serving-priors file'),
    (json.dumps({'format': FORMAT, 'model': 'fake', 'device': 'cpu', 'step_levels': 'x'}), 'step_levels'),
    (json.dumps({'format': FORMAT, 'model': 'fake', 'device': 'cpu', 'step_levels': [1, 1, 1, 'NaN']}), 'finite'),
    (json.dumps({'format': FORMAT, 'model': 'fake', 'device': 'cpu', 'step_levels': [1, 1, 1, -2]}), 'finite'),
    (json.dumps({'format': FORMAT, 'model': 'fake', 'device': 'cpu', 'step_levels': [1, 1, 1, 1],
                 'overhead_ms': -1}), 'overhead_ms'),
    (json.dumps({'format': FORMAT, 'model': 'fake', 'device': 'cpu', 'step_levels': [1, 1, 1, 1],
                 'preprocess_ms': [1]}), 'preprocess_ms'),
    (json.dumps({'format': FORMAT, 'model': 'other', 'device': 'cpu', 'step_levels': [1, 1, 1, 1]}), 'other on cpu'),
    (json.dumps({'format': FORMAT, 'model': 'fake', 'device': 'cuda:0', 'step_levels': [1, 1, 1, 1]}), 'cuda:0'),
    (json.dumps({'format': FORMAT, 'model': 'fake', 'device': 'cpu', 'step_levels': [1, 1]}), '2 step levels'),
])
def test_a_bad_or_foreign_file_gives_no_priors_says_why_and_is_left_alone(tmp_path, text, why):
    path = tmp_path / 'priors.json'
    path.write_text(text)
    priors, reason = read(path, model='fake', device='cpu', num_exits=4)
    assert priors is None and why in reason and str(path) in reason
    assert path.read_text() == text


def test_merge_keeps_what_the_new_run_did_not_measure():
    learnt = ServingPriors('fake', 'cpu', (1.2, None, None, 1.1), overhead_ms=None, transport_ms=3.0)
    merged = merge(learnt, PRIORS)
    assert merged.step_levels == (1.2, None, 2.0, 1.1)
    assert (merged.overhead_ms, merged.transport_ms, merged.preprocess_ms) == (1.5, 3.0, (0.3, 0.02))
    assert merge(learnt, None) == learnt


# --- the corrector and the preprocessing cost ----------------------------------------------------------------
def test_prior_levels_scale_the_prior_and_replace_a_warm_ups_measurements():
    corrector = LatencyCorrector(pool_batch_sizes=True)
    corrector.update(0, 1, 1.0, 1.0)   # a warm-up's bare replay: level 1
    corrector.update(1, 1, 1.0, 1.0)
    before = corrector.predict_ms(PROFILE, 0, 1, margin=0.0)
    corrector.set_prior_levels([3.0, None, 2.0, 2.0])
    assert corrector.predict_ms(PROFILE, 0, 1, margin=0.0) == pytest.approx(3 * before)   # forgot its warm-up
    assert corrector.factor(0, 1) == 3.0 and corrector.factor(2, 1) == 2.0
    assert corrector.factor(1, 1) == 1.0   # no level: its measurement stays
    assert corrector.levels(4) == [None, 1.0, None, None]
    corrector.update(0, 1, 1.5, 1.0)   # serving measures: the measurement wins
    assert corrector.factor(0, 1) == pytest.approx(1.5) and corrector.levels(4)[0] == pytest.approx(1.5)


@pytest.mark.parametrize('level', [math.nan, math.inf, 0.0, 100.0])
def test_a_prior_level_out_of_range_is_refused_and_changes_nothing(level):
    corrector = LatencyCorrector()
    corrector.set_prior_levels([2.0])
    with pytest.raises(ValueError, match='level'):
        corrector.set_prior_levels([level])
    assert corrector.factor(0, 1) == 2.0


def test_preprocessing_prior_holds_until_a_call_is_measured():
    cost = BatchCost()
    cost.prior = (0.3, 0.02)
    assert cost.predict_ms(10) == pytest.approx(0.5)
    cost.add(1, 0.1)
    assert cost.predict_ms(1) == pytest.approx(0.1)


# --- the engine ----------------------------------------------------------------------------------------------
def test_admission_at_configure_judges_on_the_priors():
    """Apps that fit on the profile's bare step times are refused once an earlier run's levels say
    serving costs three times that (the configure-time gap of benchmarks/cpu/configure_admission_gap)."""
    bounds = Bounds(max_latency_ms=12.0)

    def admitted(engine: Engine) -> int:
        count = 0
        for i in range(8):
            try:
                engine.set_app(f'app{i}', bounds, rate_hz=30.0, source=f'cam{i}')
                count += 1
            except Unschedulable:
                pass
        return count

    bare = admitted(_engine(max_batch=1))
    learnt = _engine(max_batch=1)
    learnt.use_priors(ServingPriors('fake', 'cpu', (3.0, 3.0, 3.0, 3.0), overhead_ms=1.0, transport_ms=2.0))
    assert admitted(learnt) < bare


def test_use_priors_sets_every_prior_and_refuses_another_models():
    engine = _engine()
    engine.use_priors(PRIORS)
    assert engine.corrector.factor(0, 1) == 3.0 and engine.overhead_ms() == 1.5
    assert engine._outside_ms()['transport_ms'] == 2.5 and engine.preprocess_cost.predict_ms(1) == pytest.approx(0.32)
    with pytest.raises(ValueError, match='3 step levels'):
        engine.use_priors(ServingPriors('fake', 'cpu', (1.0, 1.0, 1.0)))


def test_the_engine_reports_what_it_measured_and_none_for_the_rest():
    engine = _engine()
    fresh = engine.serving_priors(model='fake', device='cpu')
    assert fresh.empty and fresh.step_levels == (None,) * 4
    engine.corrector.update(2, 4, 2.0, 1.0)
    learnt = engine.serving_priors(model='fake', device='cpu')
    assert learnt.step_levels == (None, None, 2.0, None) and not learnt.empty and learnt.saved_unix > 0


# --- the keeper ----------------------------------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keeper_restores_then_writes_what_was_learnt_merged_and_when_due(tmp_path):
    path = tmp_path / 'priors.json'
    write(path, PRIORS)
    engine, clock = _engine(), _Clock()
    keeper = Keeper(path, engine, model='fake', device='cpu', num_exits=4, every_s=10.0, clock=clock)
    line = keeper.restore()
    assert 'serving priors from' in line and 'step levels 3.00, -, 2.00, 2.00' in line
    assert engine.corrector.factor(0, 1) == 3.0
    engine.corrector.update(1, 1, 1.7, 1.0)
    clock.now = 5.0
    assert keeper.save_if_due() and read(path, model='fake', device='cpu', num_exits=4)[0] == PRIORS   # not due
    clock.now = 11.0
    assert keeper.save_if_due()
    saved, _ = read(path, model='fake', device='cpu', num_exits=4)
    assert saved.step_levels == (3.0, 1.7, 2.0, 2.0) and saved.overhead_ms == 1.5


def test_keeper_with_a_corrupt_file_starts_bare_and_replaces_it_once_it_learnt(tmp_path):
    path = tmp_path / 'priors.json'
    path.write_text('{corrupt')
    engine = _engine()
    keeper = Keeper(path, engine, model='fake', device='cpu', num_exits=4)
    assert 'ignored' in keeper.restore() and keeper.error
    assert engine.corrector.factor(0, 1) == 1.0
    assert keeper.save() and path.read_text() == '{corrupt'   # nothing learnt yet: nothing written
    engine.corrector.update(0, 1, 1.2, 1.0)
    assert keeper.save() and keeper.error == ''
    assert read(path, model='fake', device='cpu', num_exits=4)[0].step_levels[0] == pytest.approx(1.2)


def test_keeper_reports_a_failed_write_without_raising(tmp_path):
    engine = _engine()
    engine.corrector.update(0, 1, 1.2, 1.0)
    blocker = tmp_path / 'file'
    blocker.write_text('')
    keeper = Keeper(blocker / 'priors.json', engine, model='fake', device='cpu', num_exits=4)   # a file as its directory
    assert not keeper.save() and 'could not write serving priors' in keeper.error
