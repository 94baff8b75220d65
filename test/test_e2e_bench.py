"""delen_e2e_bench: the accounting on synthetic records, and one short real run (node + echo over DDS).

The real run checks the report's structure and that frames were counted; it asserts no speed.
"""
from __future__ import annotations

import json

import pytest

from delen_ros.tools.e2e_bench import _RESULT_FIELDS, analyze, device_slug, overheads, render_table

MS = 1_000_000
T0 = 1_000_000_000_000


def _row(stamp_ns: int, *, e2e_ms: float, compute_ms: float = 1.0, exit_index: int = 3, label: int = -1,
         class_id: int = 0, met: bool = True) -> list:
    values = {'stamp_ns': stamp_ns, 'cb_ns': stamp_ns + int(e2e_ms * MS), 'rx_ns': stamp_ns + int(e2e_ms * MS) - MS,
              'exit_index': exit_index, 'num_exits': 4, 'class_id': class_id, 'label': label,
              'latency_ms': e2e_ms - 2.0, 'stamp_latency_ms': e2e_ms - 0.5, 'queue_ms': 0.5, 'compute_ms': compute_ms,
              'energy_mj': 2.0, 'energy_measured': False, 'bounds_met': met}
    return [values[f] for f in _RESULT_FIELDS]


def _raw(kind: str, rows: list[list], stamps: list[int], *, bound_ms: float = 33.0) -> dict:
    return {'config': {'kind': kind, 'cameras': 1, 'policy': 'delen' if kind == 'node' else ''},
            'name': f'{kind}_n1', 'bounds_ms': [bound_ms], 'window_ns': (T0, T0 + 1000 * MS),
            'publishers': [{'cameras': [0], 'stamps_ns': [stamps], 'skipped_ticks': [0], 'publish_lag_p99_ms': 0.1,
                            'cpu_s': 0.01}],
            'recorder': {'fields': list(_RESULT_FIELDS), 'rows': [rows], 'status': []},
            'target_start': {'cpu_s': 1.0, 'rss_mb': 100.0, 'pss_mb': 80.0},
            'target_end': {'cpu_s': 1.5, 'rss_mb': 101.0, 'pss_mb': 81.0}}


def test_unanswered_frames_are_misses_and_only_window_frames_count():
    stamps = [T0 - 50 * MS] + [T0 + i * 100 * MS for i in range(10)]   # one before the window
    rows = [_row(stamps[0], e2e_ms=5.0)]                                  # warm-up: not counted
    rows += [_row(s, e2e_ms=10.0 if i < 6 else 50.0, label=i % 2, class_id=0) for i, s in enumerate(stamps[1:9])]
    rows.append(_row(stamps[1], e2e_ms=10.0))                             # a duplicate: ignored
    result = analyze(_raw('node', rows, stamps), duration_s=1.0)
    t = result['total']
    assert (t['sent'], t['answered']) == (10, 8)
    assert t['answered_share'] == pytest.approx(0.8)
    assert t['attainment'] == pytest.approx(0.6)                # 6 within 33 ms; 2 late + 2 unanswered missed
    assert t['duplicate_results'] == 1 and t['unmatched_results'] == 0
    assert t['sent_hz'] == pytest.approx(10.0) and t['results_hz'] == pytest.approx(8.0)
    assert t['exit_mix'] == [0.0, 0.0, 0.0, 1.0]
    assert t['accuracy'] == pytest.approx(0.5) and t['scored'] == 8
    assert t['resources']['cpu_ms_per_frame'] == pytest.approx(50.0)   # 0.5 s CPU over 10 frames sent
    assert t['e2e_p50_ms'] == pytest.approx(10.0)


def test_overhead_is_node_minus_compute_minus_echo():
    stamps = [T0 + i * 10 * MS for i in range(50)]
    node = analyze(_raw('node', [_row(s, e2e_ms=12.0, compute_ms=4.0) for s in stamps], stamps), duration_s=1.0)
    echo = analyze(_raw('echo', [_row(s, e2e_ms=5.0, compute_ms=0.0) for s in stamps], stamps), duration_s=1.0)
    configs = {'delen_n1': node, 'echo_n1': echo}
    overheads(configs)
    assert node['total']['overhead_p50_ms'] == pytest.approx(3.0, abs=0.01)
    assert node['total']['overhead_p99_ms'] == pytest.approx(3.0, abs=0.01)
    report = {'meta': {'model': 'm', 'device_name': 'cpu', 'cpu_count': 2, 'started': '2026-11-28', 'size': '640x480',
                       'encoding': 'rgb8', 'rate_hz': 30.0, 'source': 'synthetic', 'bounds_ms': [33.0],
                       'max_batch': 8, 'node_params': [], 'duration_s': 1.0, 'warmup_s': 1.0, 'drain_s': 1.0,
                       'policies': ['delen']},
              'configs': configs, 'engine_reference': None}
    table = render_table(report)
    assert '| delen_n1 | 1 |' in table and '| echo_n1 | 1 |' in table and '3.0 / 3.0' in table


def test_device_slug():
    assert device_slug('cpu') == 'cpu'
    assert device_slug('cuda', 'NVIDIA H200') == 'h200'
    assert device_slug('cuda:1', None) == 'cuda'


def test_short_real_run(tmp_path):
    """N=1 for 1.5 s: node (delen) and echo, each part its own process, over loopback DDS."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')
    from ros_helpers import unique_domain_id, write_test_profile

    from delen_ros.tools.e2e_bench import main
    profile = write_test_profile(tmp_path / 'profile.json')
    out = tmp_path / 'out'
    rc = main(['--ns', '1', '--policies', 'delen', '--rate', '20', '--size', '320x240', '--source', 'synthetic',
               '--pool', '4', '--duration', '1.5', '--warmup', '0.3', '--drain', '0.7', '--ready-timeout', '60',
               '--node-param', f'profile={profile}', '--node-param', 'status_period_s=0.5',
               '--domain-id', str(120 + unique_domain_id()), '--out', str(out), '--workdir', str(tmp_path / 'work')])
    assert rc == 0
    report = json.loads((out / 'e2e.json').read_text())
    assert set(report['configs']) == {'delen_n1', 'echo_n1'}
    assert sorted(report['plots']) == ['e2e_answered.png', 'e2e_latency.png', 'e2e_resources.png']
    assert all((out / name).stat().st_size > 5000 for name in report['plots'])
    assert (out / 'e2e.md').read_text().count('\n| ') >= 3
    for name, result in report['configs'].items():
        assert result.get('error') is None, (name, result.get('error'), result.get('log_tails'))
        t = result['total']
        assert 15 <= t['sent'] <= 45, t['sent']                 # ~20 Hz for 1.5 s: frames were counted
        assert 0 <= t['answered'] <= t['sent']
        assert t['answered'] > 0, f'{name}: no result matched a frame sent'
        assert t['unmatched_results'] == 0
        assert {'answered_share', 'attainment', 'results_hz', 'sent_hz', 'resources', 'publishers'} <= set(t)
        assert t['resources']['rss_mb_end'] > 0 and t['resources']['cpu_ms_per_frame'] is not None
    node = report['configs']['delen_n1']['total']
    assert {'exit_mix', 'energy_mj_per_result', 'timeline_p50_ms', 'overhead_p50_ms'} <= set(node)
    assert len(node['exit_mix']) == 4 and sum(node['exit_mix']) == pytest.approx(1.0)
