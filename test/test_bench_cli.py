"""``delen_bench`` (the engine alone) from the command line, in a process of its own (it sets torch's threads)."""
import json
import subprocess
import sys

import pytest

from delen_ros.core.cpu_threads import auto_intra_op_threads


def test_a_cpu_bench_runs_on_the_nodes_threads_by_default(tmp_path):
    out = tmp_path / 'bench'
    run = subprocess.run([sys.executable, '-m', 'delen_ros.tools.bench', '--model', 'fashion_mnist', '--device', 'cpu',
                          '--scenarios', 'steady', '--policies', 'delen', '--duration', '1', '--frame-count', '30',
                          '--out', str(out)], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / 'bench.json').read_text())
    assert report['threads'] == auto_intra_op_threads('cpu')   # half the cores, as torch_threads 0 serves


def test_float16_on_a_cpu_is_refused_with_one_line(tmp_path):
    for flag in (['--half'], ['--precision', 'float16']):
        run = subprocess.run([sys.executable, '-m', 'delen_ros.tools.bench', '--model', 'fashion_mnist', '--device',
                              'cpu', *flag, '--out', str(tmp_path / 'bench')], capture_output=True, text=True,
                             timeout=120)
        lines = [line for line in run.stderr.splitlines() if line.strip() and 'Warning' not in line]
        assert run.returncode == 2 and 'needs a CUDA device' in run.stderr and 'Traceback' not in run.stderr, lines
        assert not (tmp_path / 'bench').exists()


def test_the_overload_scenario_can_bound_its_apps_as_the_nodes_saturation_runs_do(tmp_path):
    out = tmp_path / 'bench'
    run = subprocess.run([sys.executable, '-m', 'delen_ros.tools.bench', '--model', 'fashion_mnist', '--device', 'cpu',
                          '--scenarios', 'overload', '--overload-bound-ms', '33', '--overload-policy', 'delen',
                          '--overload-max-hz', '600', '--duration', '1', '--frame-count', '30', '--out', str(out)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    over = json.loads((out / 'bench.json').read_text())['scenarios']['overload']
    assert over['bound_ms'] == 33.0 and over['policy'] == 'delen'
    assert 0 < over['batched']['within_bound_hz'] <= over['batched']['served_hz'] * 1.0001
    assert 'within 33 ms' in run.stdout


def _app(p50_ms: float, accuracy: float, energy_mj: float) -> dict:
    return {'bounds': {'max_latency_ms': 7.0, 'min_accuracy': 0.94}, 'latency_attainment': 1.0, 'latency_p50_ms': p50_ms,
            'accuracy': accuracy, 'accuracy_stderr': 0.013, 'expected_accuracy': accuracy,
            'estimated_energy_per_frame_mj': energy_mj}


def test_the_targets_give_the_accuracy_bound_apps_median_latency_against_always_final_per_scenario():
    from delen_ros.tools.bench import _targets
    runs = {'steady': {'always_final': {'apps': {'arm': _app(2.5, 0.95, 34.9)}},
                       'delen': {'apps': {'arm': _app(1.5, 0.947, 5.0)}, 'worker': dict.fromkeys(
                           ('decision_us_mean', 'decision_us_p50', 'decision_us_p99'), 100.0)}},
            'bursty': {'always_final': {'apps': {'arm': _app(2.0, 0.95, 34.9)}},
                       'delen': {'apps': {'arm': _app(1.5, 0.94, 5.0)}}}}
    targets = _targets({'scenarios': runs})
    assert targets['median_latency']['steady']['lower_by'] == pytest.approx(0.4)
    assert targets['median_latency']['bursty']['lower_by'] == pytest.approx(0.25)
    assert targets['median_latency_target_lower_by'] == 0.4
    assert targets['energy_app']['accuracy_stderr_delen'] == 0.013
    assert targets['energy_ratio_vs_always_final'] == pytest.approx(5.0 / 34.9)
