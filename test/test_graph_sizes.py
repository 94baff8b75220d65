"""CUDA graphs for the few batch sizes worth padding to (configure time, issue 8), and configure's
phase log. The graphs themselves run on CUDA only (test_runner.py's CUDA tests)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from delen_ros.core.cpu_threads import auto_intra_op_threads
from delen_ros.core.runner import StageRunner, padded_graph_sizes
from fakes import fake_model


def test_padded_graph_sizes_keep_only_sizes_worth_a_capture():
    h200 = {1: 1.11, 2: 1.08, 4: 1.11, 8: 1.24, 16: 1.39, 32: 1.75}   # cifar10_lite0, ms to the final exit
    assert padded_graph_sizes(32, h200.__getitem__) == (1, 32)
    assert padded_graph_sizes(32, lambda b: 0.5 * b) == (1, 2, 4, 8, 16, 32)   # time grows with the batch
    assert padded_graph_sizes(1, lambda b: 1.0) == (1,)
    assert padded_graph_sizes(8, lambda b: 1.0 + b / 16) == (1, 8)
    assert padded_graph_sizes(8, lambda b: 1.0 + b / 4) == (1, 2, 8)   # 8 costs 2x what 2 does


def test_graph_sizes_must_end_at_max_batch():
    assert StageRunner(fake_model(), max_batch=8, graph_sizes=(8, 1, 1)).graph_sizes == (1, 8)
    assert StageRunner(fake_model(), max_batch=8).graph_sizes == (1, 2, 4, 8)
    for bad in ((1, 4), (0, 8)):
        with pytest.raises(ValueError, match='graph sizes'):
            StageRunner(fake_model(), max_batch=8, graph_sizes=bad)


@contextlib.contextmanager
def _built(**params):
    """The node's core built on a CPU as configure builds it (fashion_mnist, its CPU profile), with
    ``params`` over the defaults; yields it and the lines it logged. Restores torch's thread count."""
    from delen_ros.core.zoo import models_dir
    from delen_ros.ros.assembly import build
    from delen_ros.ros.params import _SPECS, NodeParams
    values = {name: spec[0] for name, spec in _SPECS.items()}
    profile = sorted((models_dir() / 'profiles').glob('fashion_mnist__cpu-*.json'))[0]
    values.update(model='fashion_mnist', device='cpu', profile=str(profile), energy_meter='estimate',
                  max_batch=8, apps='', **params)
    lines = []
    threads_before = torch.get_num_threads()
    served = build(NodeParams(**values), on_result=lambda r: None, log=lines.append)
    try:
        yield served, lines
    finally:
        served.close()
        torch.set_num_threads(threads_before)


def test_build_logs_its_phases():
    with _built(choice_headroom=0.25, admission_control=False, arrival_lookahead=True,
                choice_yields='demand') as (served, lines):
        # torch_threads 0 on a CPU: half the cores (this process's torch is set, as the node's is)
        assert torch.get_num_threads() == auto_intra_op_threads('cpu')
        assert [line for line in lines if line.startswith(f'torch intra-op threads: {auto_intra_op_threads("cpu")} (')]
        assert served.engine.policy.choice_headroom == 0.25   # the parameters reach the delen policy
        assert served.engine.admission_control is False        # ... and the engine
        assert served.engine.arrival_lookahead is True
        assert served.engine.choice_yields == 'demand'
        assert list(served.phases) == ['meter', 'idle power', 'model', 'profile', 'engine', 'warm-up']
        assert all(s >= 0 for s in served.phases.values())
        assert [line for line in lines if line.startswith('configure phases: meter ')]


@pytest.mark.parametrize('env, expected', [('pressed', 'pressed'), ('0', 'never'), ('sometimes', 'demand')])
def test_the_choice_yields_ab_switch_names_a_rule_or_is_refused_with_a_line(monkeypatch, env, expected):
    """``DELEN_CHOICE_YIELDS`` (a developer's A/B) overrides the parameter with a rule it names; an unknown
    value leaves the parameter in force and says so (it meant ``pressed`` until session 42)."""
    monkeypatch.setenv('DELEN_CHOICE_YIELDS', env)
    with _built(choice_yields='demand') as (served, lines):
        assert served.engine.choice_yields == expected
        refused = [line for line in lines if line.startswith('DELEN_CHOICE_YIELDS=')]
        assert refused == ([] if env != 'sometimes' else
                           ["DELEN_CHOICE_YIELDS='sometimes' is not one of waiting, pressed, demand, never (or 0): "
                            "choice_yields stays 'demand'"])


@pytest.mark.parametrize('env, expected', [('2', 2.0), ('nan', 0.0), ('-1', 0.0), ('two', 0.0)])
def test_the_choice_yield_margin_ab_switch_takes_a_number_or_is_refused_with_a_line(monkeypatch, env, expected):
    """``DELEN_CHOICE_YIELD_MARGIN_MS`` that is not a finite number >= 0 leaves the margin as it was (0 ms) and
    says so; before session 43 it stopped the configure with a bare ValueError."""
    monkeypatch.setenv('DELEN_CHOICE_YIELD_MARGIN_MS', env)
    with _built() as (served, lines):
        assert served.engine.choice_yield_margin_ms == expected
        refused = [line for line in lines if line.startswith('DELEN_CHOICE_YIELD_MARGIN_MS=')]
        assert refused == ([] if expected else
                           [f"DELEN_CHOICE_YIELD_MARGIN_MS={env!r} is not a finite number of ms >= 0: the margin "
                            "stays 0 ms"])
