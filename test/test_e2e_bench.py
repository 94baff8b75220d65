"""delen_e2e_bench: the accounting on synthetic records, --node-param, the report (and --replot of a
committed e2e.json), the raw echo, and short real runs over DDS (node + raw echo with node parameters;
the deserializing echo alone; a node parameter the node does not declare).

The real runs check the report's structure and that frames were counted; they assert no speed.
"""
from __future__ import annotations

import doctest
import json
import pathlib
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from delen_ros.core.app_ledger import DEMOTED_NOTE
from delen_ros.tools import e2e_bench
from delen_ros.tools import e2e_children
from delen_ros.tools.e2e_analysis import analyze
from delen_ros.tools.e2e_bench import (NodeParam, _node_ros_args, _parse_node_params, configure_seconds, device_slug,
                                       graphs_settled_seconds, parse_node_param)
from delen_ros.tools.e2e_children import RESULT_FIELDS
from delen_ros.tools.e2e_report import overheads, render_table, replot, write_plots

REPO = pathlib.Path(__file__).resolve().parents[1]

MS = 1_000_000
T0 = 1_000_000_000_000


def _row(stamp_ns: int, *, e2e_ms: float, compute_ms: float = 1.0, exit_index: int = 3, label: int = -1,
         class_id: int = 0, met: bool = True) -> list:
    values = {'stamp_ns': stamp_ns, 'cb_ns': stamp_ns + int(e2e_ms * MS), 'rx_ns': stamp_ns + int(e2e_ms * MS) - MS,
              'exit_index': exit_index, 'num_exits': 4, 'class_id': class_id, 'label': label,
              'latency_ms': e2e_ms - 2.0, 'stamp_latency_ms': e2e_ms - 0.5, 'queue_ms': 0.5, 'compute_ms': compute_ms,
              'energy_mj': 2.0, 'energy_measured': False, 'bounds_met': met}
    return [values.get(f, 0) for f in RESULT_FIELDS]


def _raw(kind: str, rows: list[list], stamps: list[int], *, bound_ms: float = 33.0) -> dict:
    return {'config': {'kind': kind, 'cameras': 1, 'policy': 'delen' if kind == 'node' else ''},
            'name': f'{kind}_n1', 'bounds_ms': [bound_ms], 'window_ns': (T0, T0 + 1000 * MS),
            'publishers': [{'cameras': [0], 'stamps_ns': [stamps], 'skipped_ticks': [0], 'publish_lag_p99_ms': 0.1,
                            'cpu_s': 0.01}],
            'recorder': {'fields': list(RESULT_FIELDS), 'rows': [rows], 'status': []},
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


def _meta(**extra) -> dict:
    meta = {'model': 'm', 'device_name': 'cpu', 'cpu_count': 2, 'started': '2026-11-28', 'size': '640x480',
            'encoding': 'rgb8', 'rate_hz': 30.0, 'source': 'synthetic', 'bounds_ms': [33.0], 'max_batch': 8,
            'node_params': [], 'duration_s': 1.0, 'warmup_s': 1.0, 'drain_s': 1.0, 'policies': ['delen']}
    meta.update(extra)
    return meta


@pytest.mark.parametrize('text, name, value', [
    ('ingress_processes:=2', 'ingress_processes', '2'),
    ('ingress_processes:=-1', 'ingress_processes', '-1'),
    ('torch_threads=1', 'torch_threads', '1'),                  # the older NAME=VALUE form
    ('profile:=/tmp/a=b.json', 'profile', '/tmp/a=b.json'),     # '=' in the value
    ("profile:=''", 'profile', "''"),                           # an empty string, as rcl reads it
    ('gpu_list:=[cuda:0,cuda:1]', 'gpu_list', '[cuda:0,cuda:1]'),
    ('ns.sub_param:=true', 'ns.sub_param', 'true'),
])
def test_node_param_parsing(text, name, value):
    param = parse_node_param(text)
    assert param == NodeParam(name, value)
    assert param.ros_arg == f'{name}:={value}'


@pytest.mark.parametrize('text, words', [
    ('ingress_processes', 'NAME:=VALUE'), ('ingress_processes:=', 'NAME:=VALUE'), (':=2', 'NAME:=VALUE'),
    ('1x:=2', 'not a ROS parameter name'), ('a-b:=2', 'not a ROS parameter name'),
    ('policy:=always_final', 'use --policies'), ('max_batch:=4', 'use --max-batch'), ('apps:=[]', 'set by the bench'),
    ('x:={a: 1}', 'a mapping'), ('x:=[1, 2', 'not YAML'),
])
def test_node_param_rejections(text, words):
    with pytest.raises(ValueError, match=words.replace('-', '\\-')):
        parse_node_param(text)


def test_node_param_twice_is_an_error_and_doctests_hold():
    with pytest.raises(ValueError, match='more than once: a'):
        _parse_node_params(['a:=1', 'b:=2', 'a=3'])
    assert doctest.testmod(e2e_bench).failed == 0


def test_the_report_and_analysis_doctests_hold():   # e.g. the host CPU cell says what the hypervisor stole
    from delen_ros.tools import e2e_analysis, e2e_report
    assert doctest.testmod(e2e_report).attempted >= 1 and doctest.testmod(e2e_report).failed == 0
    assert doctest.testmod(e2e_analysis).failed == 0


def test_the_forced_run_admits_every_app_compute_alone_can_serve():
    # the run that forces in what 'service' refused: no assumed frame age, no headroom kept, so a
    # refusal is shown to miss wherever compute alone admits the app
    args = SimpleNamespace(model='fashion_mnist', device='cpu', max_batch=8, image_qos='sensor_data',
                           registers=('service', 'param'))
    forced = e2e_bench._node_params(args, e2e_bench.Config('node', 3, 'delen', 'param'), [3.0, 20.0])
    assert (forced['transport_prior_ms'], forced['admission_headroom'], forced['admission_headroom_min_ms']) == (0, 0, 0)
    assert forced['admission_control'] is False   # every app in, beside the apps 'service' admitted
    assert len(e2e_bench.yaml.safe_load(forced['apps'])) == 3
    service = e2e_bench._node_params(args, e2e_bench.Config('node', 3, 'delen', 'service'), [3.0, 20.0])
    assert 'admission_headroom_min_ms' not in service and 'admission_control' not in service
    assert e2e_bench.yaml.safe_load(service['apps']) == []
    args.registers = ('param',)   # no service run to compare with: the node's own defaults
    assert 'transport_prior_ms' not in e2e_bench._node_params(args, e2e_bench.Config('node', 3, 'delen'), [3.0])


def test_node_params_follow_the_params_file_as_ros_args(tmp_path):
    """rcl applies overrides in command-line order: -p after --params-file wins over the file's value."""
    params = _parse_node_params(['ingress_processes:=2', 'torch_threads=1'])
    assert _node_ros_args(tmp_path / 'p.yaml', params) == [
        '--ros-args', '--params-file', tmp_path / 'p.yaml', '-p', 'ingress_processes:=2', '-p', 'torch_threads:=1']


def test_bad_node_param_stops_the_bench_before_it_starts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        e2e_bench.main(['--node-param', 'policy:=always_final', '--out', '/nonexistent/never'])
    assert exit_info.value.code == 2
    assert 'use --policies' in capsys.readouterr().err


def test_configure_and_graph_settling_seconds_from_the_node_log(tmp_path):
    log = tmp_path / 'node.log'
    log.write_text('[INFO] [1.0] [delen]: loading\n[INFO] [2.0] [delen]: configured in 3.4 s: model fashion_mnist '
                   '(4 exits) on cpu, profile file\n')
    assert configure_seconds(log) == pytest.approx(3.4)
    assert graphs_settled_seconds(log) is None   # the CPU: no graphs
    log.write_text(log.read_text() + '[INFO] [5.0] [delen]: CUDA graphs settled after 2.7 s in the background: '
                   '9 of 60 on cuDNN, the others on native convolutions (faster there)\n')
    assert graphs_settled_seconds(log) == pytest.approx(2.7)
    log.write_text('delen_node: parameter torch_threads: must be in [0, 256]; got -3\n')
    assert configure_seconds(log) is None
    assert configure_seconds(tmp_path / 'missing.log') is None


def test_report_header_names_node_params_echo_and_configure_time():
    stamps = [T0 + i * 10 * MS for i in range(50)]
    node = analyze(dict(_raw('node', [_row(s, e2e_ms=12.0, compute_ms=4.0) for s in stamps], stamps),
                        node_configure_s=[2.5], node_param_overrides={'ingress_processes': '2'}), duration_s=1.0)
    echo = analyze(dict(_raw('echo', [_row(s, e2e_ms=5.0, compute_ms=0.0) for s in stamps[:40]], stamps),
                        echo='raw'), duration_s=1.0)
    assert node['node_configure_s'] == [2.5] and node['node_param_overrides'] == {'ingress_processes': '2'}
    configs = {'delen_n1': node, 'echo_n1': echo}
    overheads(configs)
    table = render_table({'meta': _meta(node_params=['ingress_processes:=2'], echo='raw'), 'configs': configs,
                          'engine_reference': None})
    assert 'node params `ingress_processes:=2`' in table and 'Echo: raw' in table
    header = next(line for line in table.splitlines() if line.startswith('| config'))
    assert header.endswith('| configure s |')
    assert len(header.split('|')) == len(table.splitlines()[table.splitlines().index(header) + 1].split('|'))
    node_row = next(line for line in table.splitlines() if line.startswith('| delen_n1 |'))
    echo_row = next(line for line in table.splitlines() if line.startswith('| echo_n1 |'))
    assert node_row.endswith('| 2.5 |') and echo_row.endswith('| – |')
    assert '| 80.0 % | 80.0 % | 80.0 / 80.0 % |' in echo_row   # 40 of 50 frames answered, all in bound
    # A file written before the raw echo (no meta.echo): its echo deserialized, and the report says so.
    old = render_table({'meta': _meta(), 'configs': configs, 'engine_reference': None})
    assert 'Echo: deserializing' in old and 'node params' not in old


def test_failed_configuration_row_has_every_column():
    table = render_table({'meta': _meta(), 'engine_reference': None, 'configs': {
        'delen_n1': {'config': {'kind': 'node', 'cameras': 1, 'policy': 'delen'}, 'error': 'node exited',
                     'node_configure_s': [None]}}})
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith('| config'))
    row = next(line for line in lines if line.startswith('| delen_n1 |'))
    assert row.count('|') == header.count('|') and 'failed: node exited' in row


def test_unknown_node_param_is_reported():
    stamps = [T0 + i * 10 * MS for i in range(5)]
    raw = _raw('node', [_row(s, e2e_ms=12.0) for s in stamps], stamps)
    raw['recorder']['node_params_seen'] = {'/delen': {'torch_threads': 1, 'ingres_processes': None}}
    result = analyze(raw, duration_s=1.0)
    assert result['node_params_unknown'] == ['ingres_processes']
    table = render_table({'meta': _meta(), 'configs': {'delen_n1': result}, 'engine_reference': None})
    assert 'does not declare' in table and 'ingres_processes' in table


@pytest.mark.parametrize('folder, echo', [('benchmarks/h200/e2e_in_process', 'raw'),
                                          ('benchmarks/cpu/e2e', 'deserializing'), ('benchmarks/h200/e2e', 'raw')])
def test_replot_of_a_committed_e2e_json(tmp_path, folder, echo):
    """Files written before node params, configure times and the raw echo still replot (into another
    folder), as do those written since."""
    source = REPO / folder / 'e2e.json'
    if not source.exists():
        pytest.skip(f'{source} not in this checkout')
    copy = tmp_path / 'e2e.json'
    shutil.copy(source, copy)
    table = replot(copy, out=tmp_path / 'out')
    report = json.loads(source.read_text())
    assert copy.read_text() == source.read_text()                     # no note: the file is left alone
    assert (tmp_path / 'out' / 'e2e.md').read_text() == table
    assert all(f'| {name} |' in table for name in report['configs'])
    assert f'Echo: {echo}' in table
    for name in ('e2e_answered.png', 'e2e_latency.png', 'e2e_resources.png'):
        assert (tmp_path / 'out' / name).stat().st_size > 5000
    assert e2e_bench.main(['--replot', str(copy), '--out', str(tmp_path / 'out2')]) == 0
    assert (tmp_path / 'out2' / 'e2e.md').read_text() == table


def test_raw_echo_answers_with_the_image_header():
    pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')
    import numpy as np
    from rclpy.serialization import serialize_message

    from delen_ros.ros.conversions import ImageFormatError, array_to_image
    from delen_ros.tools.e2e_echo import result_from_raw
    image = array_to_image(np.zeros((4, 6, 3), np.uint8), encoding='rgb8')
    image.header.stamp.sec, image.header.stamp.nanosec = 1_800_000_000, 123_456_789
    image.header.frame_id = 'cam03/label_7'
    out = result_from_raw(serialize_message(image), app_id='cam03', image_topic='/e2e/cam03/image_raw')
    assert (out.header.stamp.sec, out.header.stamp.nanosec) == (1_800_000_000, 123_456_789)
    assert out.header.frame_id == 'cam03/label_7'
    assert (out.app_id, out.image_topic, out.exit_index, out.latency_ms) == ('cam03', '/e2e/cam03/image_raw', 0, 0.0)
    with pytest.raises(ImageFormatError):
        result_from_raw(serialize_message(image)[:30], app_id='cam03', image_topic='/e2e/cam03/image_raw')


def test_node_cpu_counts_the_processes_it_started():
    """Work the node hands to processes of its own (ingress receivers) stays in its CPU per frame."""
    import subprocess
    import time

    from delen_ros.tools.e2e_bench import proc_tree_sample
    parent = subprocess.Popen(['bash', '-c', 'sleep 5 & sleep 5 & wait'])
    try:
        deadline = time.monotonic() + 5.0
        while (proc_tree_sample(parent.pid) or {}).get('tree_procs', 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        sample = proc_tree_sample(parent.pid)
        assert sample['tree_procs'] == 3 and sample['tree_cpu_s'] >= sample['cpu_s']
        assert sample['tree_pss_mb'] >= sample['pss_mb'] > 0
    finally:
        parent.kill()
        parent.wait()
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)
    raw['target_start'].update(tree_cpu_s=2.0, tree_pss_mb=150.0, tree_procs=3)
    raw['target_end'].update(tree_cpu_s=3.0, tree_pss_mb=151.0, tree_procs=3)
    res = analyze(raw, duration_s=1.0)['total']['resources']
    assert res['cpu_ms_per_frame'] == pytest.approx(100.0)                # 1 s over 10 frames, all three processes
    assert res['cpu_ms_per_frame_main_process'] == pytest.approx(50.0)    # the node process alone
    assert res['processes'] == 3 and res['tree_pss_mb_end'] == 151.0
    table = render_table({'meta': _meta(), 'configs': {'delen_n1': analyze(raw, duration_s=1.0)},
                          'engine_reference': None})
    assert '100.00 (3 procs; node process 50.00)' in table
    assert 'by thread' not in table   # no thread samples (runs from before them): no line


def test_node_cpu_by_thread():
    """Issue 8: the node's CPU per frame sent split by its threads' names, its receivers apart."""
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)

    def threads(cpu_s, engine_s, dds_s, receiver_s):
        return {'pid': 7, 'cpu_s': cpu_s, 'children': {'9': ['delen_receiver', receiver_s]},
                'threads': {'7': ['python3', 0.5], '8': ['delen-engine', engine_s], '11': ['dds.ev.0', dds_s]}}
    raw['target_threads_start'] = threads(1.0, 0.25, 0.25, 0.5)
    raw['target_threads_end'] = threads(1.5, 0.6, 0.4, 0.7)
    result = analyze(raw, duration_s=1.0)
    res = result['total']['resources']
    assert res['cpu_ms_per_frame_by_thread'] == pytest.approx(
        {'engine': 35.0, 'ingress': 0.0, 'energy': 0.0, 'delen_other': 0.0, 'main': 0.0, 'dds': 15.0, 'cuda': 0.0,
         'other': 0.0, 'receivers': 20.0, 'exited': 0.0})
    assert res['threads_by_class']['dds'] == 1 and res['threads_by_class']['receivers'] == 1
    table = render_table({'meta': _meta(), 'configs': {'delen_n1': result}, 'engine_reference': None})
    assert 'delen_n1: engine 35.00, main 0.00, dds 15.00, receivers 20.00' in table


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
               '--node-param', f'profile:={profile}', '--node-param', 'status_period_s:=0.5',
               '--node-param', 'torch_threads=1',
               '--domain-id', str(unique_domain_id(first=110, count=50)), '--out', str(out), '--workdir', str(tmp_path / 'work')])
    assert rc == 0
    report = json.loads((out / 'e2e.json').read_text())
    assert set(report['configs']) == {'delen_n1', 'echo_n1'}
    # --node-param: on the node's command line as -p after its params file, recorded, and read back from the node
    assert report['meta']['node_params'] == [f'profile:={profile}', 'status_period_s:=0.5', 'torch_threads:=1']
    assert 'node params `profile:=' in (out / 'e2e.md').read_text()
    node_cmd = (tmp_path / 'work' / 'delen_n1' / 'node.log').read_text().splitlines()[0]
    assert node_cmd.endswith(f'-p profile:={profile} -p status_period_s:=0.5 -p torch_threads:=1')
    delen = report['configs']['delen_n1']
    assert delen['node_param_overrides'] == {'profile': str(profile), 'status_period_s': '0.5', 'torch_threads': '1'}
    assert delen['node_params_seen'] == {'/delen': {'profile': str(profile), 'status_period_s': 0.5,
                                                    'torch_threads': 1}}
    assert 'node_params_unknown' not in delen and delen['node_params']['policy'] == 'delen'
    assert len(delen['node_configure_s']) == 1 and 0 < delen['node_configure_s'][0] < 60
    # the echo took images raw, as the node does
    assert report['meta']['echo'] == 'raw' and report['configs']['echo_n1']['echo'] == 'raw'
    assert 'images taken raw' in (tmp_path / 'work' / 'echo_n1' / 'echo.log').read_text()
    assert sorted(report['plots']) == ['e2e_answered.png', 'e2e_latency.png', 'e2e_over_time.png',
                                       'e2e_resources.png']
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
        threads = t['resources']['threads_by_class']   # Fast DDS names its threads dds.*
        assert threads['main'] == 1 and threads['dds'] >= 1, threads
    node = report['configs']['delen_n1']['total']
    assert {'exit_mix', 'energy_mj_per_result', 'timeline_p50_ms', 'overhead_p50_ms'} <= set(node)
    assert len(node['exit_mix']) == 4 and sum(node['exit_mix']) == pytest.approx(1.0)
    assert all(a['answered_share'] is not None for a in report['configs']['delen_n1']['apps'].values())
    assert 'by thread' in (out / 'e2e.md').read_text()


def _short_run_args(tmp_path, domain_offset: int) -> list[str]:
    from ros_helpers import unique_domain_id
    return ['--ns', '1', '--rate', '20', '--size', '160x120', '--source', 'synthetic', '--pool', '2',
            '--duration', '1.0', '--warmup', '0.2', '--drain', '0.5', '--ready-timeout', '60',
            '--domain-id', str(unique_domain_id(first=110, count=50) + domain_offset), '--out', str(tmp_path / 'out'),
            '--workdir', str(tmp_path / 'work')]


def test_deserializing_echo_alone(tmp_path):
    """--echo-deserialize with no policy: only the echo runs, the old way, and the report says so."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')
    assert e2e_bench.main([*_short_run_args(tmp_path, 2), '--policies', '', '--echo-deserialize']) == 0
    report = json.loads((tmp_path / 'out' / 'e2e.json').read_text())
    assert set(report['configs']) == {'echo_n1'} and report['meta']['echo'] == 'deserialize'
    echo = report['configs']['echo_n1']
    assert echo.get('error') is None, echo.get('log_tails')
    assert echo['echo'] == 'deserialize' and echo['total']['answered'] > 0
    assert 'images taken deserialize' in (tmp_path / 'work' / 'echo_n1' / 'echo.log').read_text()
    assert 'Echo: deserializing' in (tmp_path / 'out' / 'e2e.md').read_text()


def test_a_node_param_the_node_does_not_declare_stops_the_sweep(tmp_path):
    """rclpy ignores an override of an undeclared parameter; the bench reads the names back and stops."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')
    from ros_helpers import write_test_profile
    profile = write_test_profile(tmp_path / 'profile.json')
    rc = e2e_bench.main([*_short_run_args(tmp_path, 3), '--policies', 'delen,always_final', '--no-echo',
                         '--node-param', f'profile:={profile}', '--node-param', 'no_such_parameter:=3'])
    assert rc == 2
    report = json.loads((tmp_path / 'out' / 'e2e.json').read_text())
    assert list(report['configs']) == ['delen_n1']            # stopped after the first configuration
    assert report['configs']['delen_n1']['node_params_unknown'] == ['no_such_parameter']
    assert report['configs']['delen_n1']['node_params_seen']['/delen']['profile'] == str(profile)
    assert 'no_such_parameter' in report['meta']['stopped']
    assert '**Stopped:**' in (tmp_path / 'out' / 'e2e.md').read_text()


def test_refused_apps_are_read_from_the_registrars_answers(tmp_path):
    from delen_ros.tools.e2e_children import _refused
    path = tmp_path / 'registrar.json'
    assert _refused(str(path)) == set() and _refused('') == set()    # not written yet / not --nodes
    path.write_text('{"cam00": {"accepted": tr')                      # being written
    assert _refused(str(path)) == set()
    path.write_text(json.dumps({'cam00': {'accepted': True, 'message': ''},
                                'cam01': {'accepted': False, 'message': 'infeasible'}}))
    assert _refused(str(path)) == {'cam01'}


def test_node_rx_counts_only_apps_whose_status_was_seen():
    """An app whose ~/status the recorder missed is left out of the node's counters: its frames sent
    must be left out too, not read as frames the node never received."""
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)
    raw['config']['cameras'] = 2
    raw['bounds_ms'] = [33.0, 33.0]
    raw['publishers'][0].update(cameras=[0, 1], stamps_ns=[stamps, stamps])
    raw['recorder']['rows'] = [raw['recorder']['rows'][0], [_row(s, e2e_ms=10.0) for s in stamps]]
    # cam00 reports 10 frames in over the window; cam01's status never arrived
    raw['recorder']['status'] = [(T0 - 10 * MS, 'cam00', 100, 100, 0, 0, ''),
                                 (T0 + 990 * MS, 'cam00', 110, 109, 1, 0, '')]
    status = analyze(raw, duration_s=1.0)['total']['node_status']
    assert status['apps'] == 1 and status['apps_sent_hz'] == pytest.approx(10.0)
    assert status['received_share_of_sent'] == pytest.approx(1.0, rel=0.02)   # not 0.5
    assert status['dropped_share_of_received'] == pytest.approx(0.1, rel=0.02)


def test_collections_in_the_window_are_summed_and_reported():
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)
    raw['recorder']['gc_pauses'] = [(T0 - MS, '/delen: engine', 5, 90.0, 95.0),     # before the window
                                    (T0 + 500 * MS, '/delen: engine', 1, 42.0, 50.0),
                                    (T0 + 900 * MS, '/delen: engine', 0, 1.5, 3.0)]
    result = analyze(raw, duration_s=1.0)
    gc_total = result['total']['node_gc']
    assert (gc_total['full_collections'], gc_total['pause_max_ms'], gc_total['pause_total_ms']) == (1, 42.0, 53.0)
    table = render_table({'meta': _meta(), 'configs': {'delen_n1': result}, 'engine_reference': None})
    assert '1 full, longest 42.0 ms' in table


def test_the_outlet_lag_in_the_window_is_reported():
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)
    raw['recorder']['outlet_lags'] = [(T0 - MS, '/delen: engine', 9.0),       # before the window
                                      (T0 + 300 * MS, '/delen: engine', 0.25),
                                      (T0 + 600 * MS, '/delen: engine', 0.45),
                                      (T0 + 900 * MS, '/delen: engine', 0.3)]
    lag = analyze(raw, duration_s=1.0)['total']['node_outlet_lag_p99_ms']
    assert (lag['median'], lag['max'], lag['periods']) == (0.3, 0.45, 3)


def test_the_nodes_view_of_the_hosts_theft_in_the_window_is_reported():
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)
    raw['recorder']['stolen_pcts'] = [(T0 - MS, '/delen: engine', 30.0, 90.0),       # before the window
                                      (T0 + 300 * MS, '/delen: engine', 0.5, 8.0),
                                      (T0 + 900 * MS, '/delen: engine', 2.5, 4.0)]
    stolen = analyze(raw, duration_s=1.0)['total']['node_host_cpu_stolen_pct']
    assert (stolen['median'], stolen['max'], stolen['rounds'], stolen['worst_core_max']) == (1.5, 2.5, 2, 8.0)


def test_frames_stopped_early_behind_count_within_the_window_per_node():
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)
    raw['recorder']['stops_behind'] = [(T0 - MS, '/n0/delen: engine', 40),       # before the window: not counted
                                       (T0 + 300 * MS, '/n0/delen: engine', 55),
                                       (T0 + 900 * MS, '/n0/delen: engine', 70),
                                       (T0 + 500 * MS, '/n1/delen: engine', 3),   # a second node, from 0
                                       (T0 + 2000 * MS, '/n1/delen: engine', 99)]  # after the window
    raw['recorder']['stops_yielded'] = [(T0 - MS, '/n0/delen: engine', 7), (T0 + 800 * MS, '/n0/delen: engine', 12)]
    total = analyze(raw, duration_s=1.0)['total']
    assert total['node_stops_behind'] == 30 + 3 and total['node_stops_yielded'] == 5


def test_choice_margins_in_the_window_are_reported():
    """delen's learnt margins, as the cameras' /diagnostics entries name them, summed up over the window."""
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)
    raw['recorder']['choice_margins'] = [(T0 - MS, '/delen: /cam00', 1, 16.5),    # before the window
                                         (T0 + 500 * MS, '/delen: /cam00', 2, 3.3),
                                         (T0 + 900 * MS, '/delen: /cam01', 1, 1.6)]
    result = analyze(raw, duration_s=1.0)
    margin = result['total']['node_choice_margin']
    assert (margin['max_ms'], margin['reports'], margin['apps_max']) == (3.3, 2, 2)
    table = render_table({'meta': _meta(), 'configs': {'delen_n1': result}, 'engine_reference': None})
    assert 'delen_n1: up to 3.3 ms, 2 app(s) at most' in table


def test_frames_over_time_are_binned_and_plotted(tmp_path):
    stamps = [T0 + i * 50 * MS for i in range(20)]            # 1 s, two frames per 100 ms bin
    rows = [_row(s, e2e_ms=10.0 if i < 10 else 60.0) for i, s in enumerate(stamps[:16])]   # 4 unanswered
    result = analyze(_raw('node', rows, stamps), duration_s=1.0)
    ot = result['total']['over_time']
    assert len(ot['within']) == 10 and sum(ot['within']) == 10 and sum(ot['late']) == 6
    assert ot['unanswered'][-2:] == [2, 2] and ot['max_ms'][0] == pytest.approx(10.0)
    written = write_plots({'meta': _meta(), 'configs': {'delen_n1': result}, 'engine_reference': None}, tmp_path)
    assert 'e2e_over_time.png' in written and (tmp_path / 'e2e_over_time.png').stat().st_size > 0


def test_an_app_with_no_result_is_silent_unless_the_node_said_why():
    """Issue 10: an app with frames sent and no result counts as starved in silence unless the node
    flagged it (its admission re-check) or warned about its camera (publishers, but no frame)."""
    stamps = [T0 + i * 10 * MS for i in range(5)]
    silent = analyze(_raw('node', [], stamps), duration_s=1.0)
    assert silent['apps_without_results_or_reason'] == ['cam00']
    table = render_table({'meta': _meta(), 'configs': {'delen_n1': silent}, 'engine_reference': None})
    assert 'no reason from the node:** delen_n1: cam00' in table
    raw = _raw('node', [], stamps)
    raw['recorder']['status'] = [(T0 + 500 * MS, 'cam00', 0, 0, 0, 0, '', '1 publisher(s) on /cam00 but no frame for 3 s')]
    warned = analyze(raw, duration_s=1.0)
    assert warned['apps_without_results_or_reason'] == []
    assert 'no reason from the node' not in render_table({'meta': _meta(), 'configs': {'delen_n1': warned},
                                                           'engine_reference': None})


def test_apps_the_node_demoted_are_named_and_the_worst_kept_app_is_reported_apart():
    """Issue 10: an app whose guarantee the node withdrew (demoted, told why) is not among the apps
    whose bound it kept; their worst share is reported on its own."""
    stamps = [T0 + i * 100 * MS for i in range(10)]
    raw = _raw('node', [_row(s, e2e_ms=10.0) for s in stamps], stamps)
    raw['config']['cameras'] = 2
    raw['bounds_ms'] = [33.0, 33.0]
    raw['publishers'][0].update(cameras=[0, 1], stamps_ns=[stamps, stamps])
    raw['recorder']['rows'] = [raw['recorder']['rows'][0], [_row(s, e2e_ms=50.0) for s in stamps]]   # cam01 late
    raw['recorder']['status'] = [(T0 + 500 * MS, 'cam00', 5, 5, 0, 0, 'at risk, not demoted: it fits beside ...'),
                                 (T0 + 500 * MS, 'cam01', 5, 5, 0, 0, 'it does not fit; ' + DEMOTED_NOTE)]
    total = analyze(raw, duration_s=1.0)['total']
    assert total['apps_demoted'] == ['cam01']
    assert total['attainment_min_app'] == 0.0 and total['attainment_min_app_kept'] == 1.0
    table = render_table({'meta': _meta(), 'configs': {'delen_n2': analyze(raw, duration_s=1.0)},
                          'engine_reference': None})
    assert 'delen_n2: cam01; worst of the others within bound 100.0 %' in table


@pytest.mark.parametrize('text, entries', [
    ('33', [(33.0, 0.0, '')]), ('5, 10,33@0.9124', [(5.0, 0.0, ''), (10.0, 0.0, ''), (33.0, 0.9124, '')]),
    ('0@0.8:MIN_ENERGY', [(0.0, 0.8, 'min_energy')]), ('33@0.9:min_latency', [(33.0, 0.9, 'min_latency')]),
])
def test_bounds_take_an_accuracy_and_objective_after_the_latency(text, entries):
    assert e2e_bench.parse_bounds(text) == [e2e_bench.AppBounds(*e) for e in entries]


@pytest.mark.parametrize('text', ['', '33@', 'x', '33@1.2', '-5', 'nan', '33@0.9@0.8', '33@0.9:fast', '33@0.9:'])
def test_bad_bounds_are_refused(text):
    with pytest.raises(ValueError, match='--bounds'):
        e2e_bench.parse_bounds(text)


def test_accuracy_bounds_reach_the_node_and_the_registrar():
    """``--bounds 5,33@0.91:min_energy``: the apps parameter (param) and the registrar's requests (service)
    carry the accuracy bound and objective of every second camera, and only theirs."""
    args = SimpleNamespace(model='cifar10_resnet9', device='cpu', max_batch=8, image_qos='sensor_data',
                           registers=('param',), app_bounds=e2e_bench.parse_bounds('5,33@0.91:min_energy'))
    apps = e2e_bench.yaml.safe_load(e2e_bench._node_params(args, e2e_bench.Config('node', 3, 'delen'), [5.0, 33.0])['apps'])
    assert [(a.get('min_accuracy'), a.get('objective')) for a in apps] == [(None, None), (0.91, 'min_energy'),
                                                                           (None, None)]
    assert [a['max_latency_ms'] for a in apps] == [5.0, 33.0, 5.0]
    ordered = e2e_bench.registration_order(e2e_bench._config_apps(args, e2e_bench.Config('node', 2, 'delen'), [5.0, 33.0]))
    assert [(a['app_id'], a.get('min_accuracy')) for a in ordered] == [('cam01', 0.91), ('cam00', None)]
    assert e2e_children._SRV_OBJECTIVE['min_energy'] == 3 and e2e_children._SRV_OBJECTIVE['default'] == 0


def test_an_accuracy_bound_app_is_scored_and_compared_with_always_final():
    """Per app: accuracy over its labelled results (with a standard error), exit mix and energy; the report
    sets the app's energy against the same app under always_final and says whether the bound was met."""
    stamps = [T0 + i * 100 * MS for i in range(10)]

    def run(policy: str, exit_index: int, energy: float, right: int) -> dict:
        rows = [_row(s, e2e_ms=10.0, exit_index=exit_index, label=1, class_id=1 if i < right else 0)
                for i, s in enumerate(stamps)]
        for r in rows:
            r[RESULT_FIELDS.index('energy_mj')] = energy
        raw = _raw('node', rows, stamps)
        raw['config']['policy'] = policy
        raw['min_accuracy'] = [0.85]
        return analyze(raw, duration_s=1.0)

    delen, final = run('delen', 0, 1.0, 9), run('always_final', 3, 4.0, 10)
    app = delen['apps']['cam00']
    assert (app['min_accuracy'], app['scored'], app['accuracy']) == (0.85, 10, pytest.approx(0.9))
    assert app['accuracy_se'] == pytest.approx((0.9 * 0.1 / 10) ** 0.5)
    assert app['exit_mix'] == [1.0, 0.0, 0.0, 0.0] and app['energy_mj_per_result'] == pytest.approx(1.0)
    final['config']['policy'] = 'always_final'
    meta = {**_meta(), 'min_accuracy': [0.85]}
    table = render_table({'meta': meta, 'configs': {'delen_n1': delen, 'always_final_n1': final},
                          'engine_reference': None})
    assert 'accuracy bounds [0.85]' in table
    line = next(x for x in table.splitlines() if x.startswith('- delen_n1 cam00'))
    assert 'accuracy 0.900 ± 0.095 over 10 frames (met)' in line
    assert "0.25 × always_final's 4" in line and 'exits 100/0/0/0' in line
    assert 'missed' not in line
    # two such apps: their frames pooled, beside always_final's
    for result, right in ((delen, 8), (final, 10)):
        result['apps']['cam01'] = {**result['apps']['cam00'], 'accuracy': right / 10}
    table = render_table({'meta': meta, 'configs': {'delen_n1': delen, 'always_final_n1': final},
                          'engine_reference': None})
    pooled = next(x for x in table.splitlines() if x.startswith('- **delen_n1'))
    assert 'accuracy 0.8500 ± 0.0798 over 20 frames' in pooled and "0.25 × always_final's 4" in pooled


def test_the_bench_processes_refuse_an_unknown_part(capsys):
    assert e2e_children.main([]) == 2 and e2e_children.main(['publsh']) == 2
    assert 'publish|record|register' in capsys.readouterr().err


def test_result_delivery_is_split_where_dds_stamps_it():
    """With the writer's and the reader's DDS timestamps, the way out is split: the node's publish call ->
    its writer's write -> the recorder's reception -> its callback; a stall shows in its own part."""
    stamps = [T0 + i * 10 * MS for i in range(50)]
    rows = []
    for k, s in enumerate(stamps):
        row = dict(zip(RESULT_FIELDS, _row(s, e2e_ms=12.0, compute_ms=4.0)))
        published = s + int(row['stamp_latency_ms'] * MS)              # the node's publish call
        stall = 300 * MS if k == 49 else 0                            # one sample late between the two DDS ends
        row['src_ns'] = published + MS // 5                           # written 0.2 ms after the call
        row['rx_ns'] = row['src_ns'] + MS // 10 + stall               # received 0.1 ms later (or 300.1)
        row['cb_ns'] = row['rx_ns'] + MS // 2                         # its callback 0.5 ms after that
        row['pub_seq'] = k + 1
        rows.append([row[f] for f in RESULT_FIELDS])
    total = analyze(_raw('node', rows, stamps), duration_s=1.0)['total']
    split = total['delivery_split_ms']
    assert split['write'][0] == pytest.approx(0.2, abs=1e-6) and split['callback'][0] == pytest.approx(0.5, abs=1e-6)
    assert split['transport'][0] == pytest.approx(0.1, abs=1e-6) and split['transport'][2] == pytest.approx(300.1)
    table = render_table({'meta': _meta(), 'configs': {'delen_n1': analyze(_raw('node', rows, stamps), duration_s=1.0)},
                          'engine_reference': None})
    assert "Result delivery, split where DDS stamps it" in table and '- delen_n1: 0.20 / ' in table
    # without the timestamps (an older recorder, or a middleware that gives none) there is no split
    old = analyze(_raw('node', [_row(s, e2e_ms=12.0) for s in stamps], stamps), duration_s=1.0)['total']
    assert 'delivery_split_ms' not in old


def test_provenance_names_the_commit_of_a_checkout_and_not_of_an_installed_copy(tmp_path, monkeypatch):
    """A venv inside a checkout: its installed copy must not be reported under the checkout's commit."""
    from delen_ros.tools.e2e_report import _provenance
    git = ['git', '-c', 'user.email=t@example.com', '-c', 'user.name=t']
    subprocess.run([*git, 'init', '-q', str(tmp_path)], check=True)
    subprocess.run([*git, '-C', str(tmp_path), 'commit', '-q', '--allow-empty', '-m', 'x'], check=True)
    head = subprocess.run(['git', '-C', str(tmp_path), 'rev-parse', '--short', 'HEAD'], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.setattr(e2e_bench, 'package_root', lambda: tmp_path)            # run from the checkout
    assert e2e_bench._git_revision() == head
    installed = tmp_path / '.venv' / 'site-packages'                            # a venv inside it
    (installed / 'delen_ros').mkdir(parents=True)
    monkeypatch.setattr(e2e_bench, 'package_root', lambda: installed)
    assert e2e_bench._git_revision() == f'installed copy in {installed}'
    assert _provenance(f'installed copy in {installed}') == f'installed copy in {installed}'
    assert _provenance('abc1234+dirty') == 'git abc1234+dirty' and _provenance(None) == 'git ?'


def test_a_sigterm_stops_the_bench_and_every_process_it_started(tmp_path):
    """A kill (or a CI job's timeout) ends the bench as Ctrl-C does: its children stopped, what ran written.
    Before session 43 the node and its receivers ran on, orphaned."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')
    import os
    import signal
    import sys
    import time
    from delen_ros.tools.processes import descendants
    args = _short_run_args(tmp_path, 3)
    args[args.index('--duration') + 1] = '60'
    bench = subprocess.Popen([sys.executable, '-m', 'delen_ros.tools.e2e_bench', *args, '--policies', 'delen',
                              '--no-echo', '--model', 'fashion_mnist', '--device', 'cpu'],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        started: list[int] = []
        while time.monotonic() < deadline and bench.poll() is None:   # the node and its receivers are up
            started = descendants(bench.pid)
            if (tmp_path / 'work' / 'delen_n1' / 'recorder.log').exists() and len(started) >= 3:
                break
            time.sleep(0.2)
        assert bench.poll() is None and len(started) >= 3, bench.stdout.read() if bench.poll() is not None else ''
        bench.send_signal(signal.SIGTERM)
        out, _ = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert '[e2e] interrupted: writing what ran' in out, out[-2000:]
    time.sleep(0.5)
    alive = []
    for pid in started:
        try:
            state = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
        except OSError:
            continue
        if state != 'Z':
            alive.append(pid)
            os.kill(pid, signal.SIGKILL)
    assert alive == [], f'left running: {alive}'
    assert json.loads((tmp_path / 'out' / 'e2e.json').read_text())['meta']['interrupted'] is True
