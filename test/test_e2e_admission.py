"""delen_e2e_bench --register (issue 10): registration order, configuration names, the node's refusals at
configure read from its log, the report's join of refused requests with their forced run, and one short
real run of both modes over DDS (an app with a bound below the fastest exit is refused by both).
"""
from __future__ import annotations

import json

import pytest

from delen_ros.core.app_ledger import DEMOTED_NOTE
from delen_ros.tools import e2e_bench
from delen_ros.tools.e2e_analysis import analyze
from delen_ros.tools.e2e_bench import Config, configure_refusals, registration_order
from delen_ros.tools.e2e_children import RESULT_FIELDS
from delen_ros.tools.e2e_report import admission_check, kept_within, render_table

MS = 1_000_000
T0 = 1_000_000_000_000


@pytest.mark.parametrize('bounds, order', [
    ([33, 20, 3], [0, 1, 2]),
    ([3, 20, 33], [2, 1, 0]),
    ([5, 10, 33, 5, 10, 33], [2, 5, 1, 4, 0, 3]),     # ties keep the camera order
    ([0, 33, 0.5], [0, 1, 2]),                        # 0 = unbounded: the loosest of all
    ([], []),
])
def test_registration_order_is_loosest_bound_first(bounds, order):
    apps = [{'app_id': f'cam{i:02d}', 'max_latency_ms': b} for i, b in enumerate(bounds)]
    assert [a['app_id'] for a in registration_order(apps)] == [f'cam{i:02d}' for i in order]


@pytest.mark.parametrize('config, name', [
    (Config('node', 3, 'delen'), 'delen_n3'),                          # as before --register: old files still join
    (Config('node', 3, 'delen', 'param'), 'delen_n3'),
    (Config('node', 16, 'always_final', 'service'), 'always_final_n16_service'),
    (Config('echo', 3), 'echo_n3'),
])
def test_config_names(config, name):
    assert config.name == name


def test_unknown_register_mode_is_refused():
    with pytest.raises(ValueError, match="register 'placer'"):
        Config('node', 3, 'delen', 'placer')


@pytest.mark.parametrize('argv, words', [
    (['--register', 'services'], 'a comma-separated list of param, service'),
    (['--register', 'service,service'], 'each once'),
    (['--register', 'service', '--nodes', '2'], 'is for one node'),
    (['--register-gap-s', '-1'], 'negative'),
])
def test_bad_register_options_stop_the_bench_before_it_starts(argv, words, capsys):
    with pytest.raises(SystemExit):
        e2e_bench.main([*argv, '--out', '/nonexistent/never'])
    assert words in capsys.readouterr().err


def test_configure_refusals_from_the_node_log():
    log = ('[INFO] [1.0] [delen]: model loaded\n'
           "[ERROR] [1.2] [delen]: app cam00 not restored: 'cam00' at 30 Hz does not fit beside 0 admitted app(s)\n"
           '[ERROR] [1.3] [delen]: app cam04 not restored: infeasible bounds: max_latency_ms=0.5 is below ...\n')
    assert configure_refusals(log) is None                            # not configured yet: nothing known
    verdict = configure_refusals(log + '[INFO] [1.6] [delen]: configured in 1.6 s: model m (4 exits) on cpu\n')
    assert verdict == {'cam00': {'accepted': False, 'message': "'cam00' at 30 Hz does not fit beside 0 admitted app(s)"},
                       'cam04': {'accepted': False, 'message': 'infeasible bounds: max_latency_ms=0.5 is below ...'}}
    assert configure_refusals('[INFO] [1.6] [delen]: configured in 1.6 s: all restored') == {}


def _row(stamp_ns: int, e2e_ms: float) -> list:
    values = {'stamp_ns': stamp_ns, 'cb_ns': stamp_ns + int(e2e_ms * MS), 'rx_ns': 0, 'exit_index': 3,
              'num_exits': 4, 'class_id': 0, 'label': -1, 'latency_ms': e2e_ms - 2.0, 'stamp_latency_ms': e2e_ms - 0.5,
              'queue_ms': 0.5, 'compute_ms': 1.0, 'energy_mj': 2.0, 'energy_measured': False, 'bounds_met': True}
    return [values.get(f, 0) for f in RESULT_FIELDS]


def _raw(register: str, bounds: list[float], e2e_ms: list[float | None], *, refused: dict[str, str] | None = None,
         status: list | None = None) -> dict:
    """Raw material of one node configuration: camera ``i`` sends 100 frames in the window, each answered
    ``e2e_ms[i]`` ms later (``None``: never answered)."""
    n = len(bounds)
    stamps = [[T0 + k * 10 * MS + i for k in range(100)] for i in range(n)]
    raw = {'config': {'kind': 'node', 'cameras': n, 'policy': 'delen', 'register': register},
           'name': 'delen_n3' + ('_service' if register == 'service' else ''), 'bounds_ms': bounds,
           'window_ns': (T0, T0 + 1000 * MS),
           'publishers': [{'cameras': list(range(n)), 'stamps_ns': stamps, 'skipped_ticks': [0] * n,
                           'publish_lag_p99_ms': 0.1, 'cpu_s': 0.01}],
           'recorder': {'fields': list(RESULT_FIELDS), 'status': status or [],
                        'rows': [[] if e is None else [_row(s, e) for s in stamps[i]] for i, e in enumerate(e2e_ms)]}}
    if refused is not None:
        raw['refused'] = refused
        raw['refused_by'] = 'node ~/set_bounds' if register == 'service' else 'node at configure (apps parameter)'
    if register == 'service':
        raw['register_order'] = [f'cam{i:02d}' for i in sorted(range(n), key=lambda i: -bounds[i])]
        raw['register_gap_s'] = 0.5
    return raw


def test_refused_requests_are_joined_with_their_forced_run():
    """cam00 (3 ms) refused and would have missed; cam01 (20 ms) refused but would have met; cam03 refused
    under both; the admitted cam02 within bound on 100 %, cam04 admitted but silent."""
    bounds = [3.0, 20.0, 33.0, 0.5, 33.0]
    flagged = [(T0 + 100 * MS, 'cam00', 1, 1, 0, 0, 'unschedulable: cam00 ...; ' + DEMOTED_NOTE),
               (T0 + 300 * MS, 'cam00', 2, 2, 0, 0, ''),
               (T0 + 200 * MS, 'cam01', 1, 1, 0, 0, '')]
    raw_service = _raw('service', bounds, [None, None, 8.0, None, None],
                       refused={'cam00': 'does not fit', 'cam01': 'infeasible', 'cam03': 'below the fastest exit'})
    raw_service['held_requests'] = [{'app': 'cam01', 'held_ms': 212, 'waited_for': ['cam02', 'cam04'], 'unserved': 1}]
    service = analyze(raw_service, duration_s=1.0)
    param = analyze(_raw('param', bounds, [9.0, 12.0, 8.0, None, 8.0], refused={'cam03': 'not restored'},
                         status=flagged), duration_s=1.0)
    assert param['apps']['cam00']['node_flagged_share'] == pytest.approx(0.5)
    assert param['apps']['cam00']['node_flagged_reason'] == 'unschedulable: cam00 ...; ' + DEMOTED_NOTE
    assert param['apps']['cam00']['node_demoted_share'] == pytest.approx(0.5)
    assert param['apps']['cam01']['node_flagged_share'] == 0.0 and 'node_flagged_share' not in param['apps']['cam02']
    assert service['apps_without_results_or_reason'] == ['cam04']      # refused apps have a reason
    configs = {'delen_n3_service': service, 'delen_n3': param}
    check = admission_check(configs)
    assert list(check) == ['delen_n3_service']
    a = check['delen_n3_service']
    assert a['forced_config'] == 'delen_n3' and a['register_order'] == ['cam02', 'cam04', 'cam01', 'cam00', 'cam03']
    assert a['admitted'] == {'apps': ['cam02', 'cam04'], 'worst_app': 'cam04', 'worst_within': 0.0,
                             'below_target': ['cam04'], 'met': False}
    assert a['without_results_or_reason'] == ['cam04']
    rows = a['refused']
    assert rows['cam00']['verdict'] == 'would have missed' and rows['cam00']['forced']['within'] == 0.0
    assert rows['cam00']['forced']['answered_share'] == 1.0 and rows['cam00']['forced']['node_flagged_share'] == 0.5
    assert rows['cam01']['verdict'] == 'would have met' and rows['cam01']['forced']['within'] == 1.0
    assert rows['cam03'] == {'bound_ms': 0.5, 'reason': 'below the fastest exit',
                             'forced': {'refused_too': 'not restored'}, 'verdict': 'not run',
                             'beside_refused': ['cam00', 'cam01']}
    assert rows['cam00']['beside_refused'] == ['cam01']   # cam03 never ran there
    meta = {'model': 'm', 'device_name': 'cpu', 'cpu_count': 2, 'started': '2026-11-30', 'size': '640x480',
            'encoding': 'rgb8', 'rate_hz': 100.0, 'source': 'synthetic', 'bounds_ms': bounds, 'max_batch': 8,
            'node_params': [], 'duration_s': 1.0, 'warmup_s': 1.0, 'drain_s': 1.0, 'policies': ['delen']}
    table = render_table({'meta': meta, 'configs': configs, 'engine_reference': None, 'admission': check})
    assert '### Refused requests run anyway' in table
    assert '| cam00 | 3 | does not fit | 100.0 / 0.0 % |' in table
    assert ('would have missed: refusal right (beside cam01, refused too) (the node demoted it in 50 % of its '
            'status messages)') in table
    assert '**would have met its bound: refusal too cautious**' in table
    assert 'Not every refusal was needed: cam01 met its bound when forced in.' in table
    assert 'refused at configure too: not restored' in table
    assert 'worst within bound **0.0 %** (cam04, 33 ms): target **missed** by cam04' in table
    assert 'Apps with no result and no reason: 1 (cam04).' in table
    assert ('Requests held until the apps admitted before them had frames served (`admission_settle_s`): cam01 '
            '212 ms for cam02, cam04 (1 not served by then).') in table
    assert 'delen_n3_service: refused by the node ~/set_bounds, 3 app(s)' in table
    assert 'delen_n3: refused by the node at configure (apps parameter), 1 app(s)' in table
    # without the admission key (a file from before it), the table computes it
    assert render_table({'meta': meta, 'configs': configs, 'engine_reference': None}) == table


def test_a_forced_run_without_an_admitted_app_does_not_judge_a_refusal():
    """Under service the 33 ms app was admitted and the 20 and 10 ms apps refused; at configure the forced run
    refused the 33 ms app instead: the 20 ms app met its bound there, but not beside the app it was refused
    for (session 28 on a 2-core CPU); the 10 ms app missed even without it."""
    bounds = [10.0, 20.0, 33.0]
    service = analyze(_raw('service', bounds, [None, None, 8.0], refused={'cam00': 'does not fit', 'cam01': 'does not fit'}),
                      duration_s=1.0)
    param = analyze(_raw('param', bounds, [12.0, 9.0, None], refused={'cam02': 'does not fit beside'}), duration_s=1.0)
    configs = {'delen_n3_service': service, 'delen_n3': param}
    a = admission_check(configs)['delen_n3_service']
    assert a['forced_without'] == ['cam02']
    assert a['refused']['cam00']['verdict'] == 'would have missed'
    assert a['refused']['cam01']['verdict'] == 'met without the admitted set'
    meta = {'model': 'm', 'device_name': 'cpu', 'cpu_count': 2, 'started': '2026-12-01', 'size': '640x480',
            'encoding': 'rgb8', 'rate_hz': 100.0, 'source': 'synthetic', 'bounds_ms': bounds, 'max_batch': 8,
            'node_params': [], 'duration_s': 1.0, 'warmup_s': 1.0, 'drain_s': 1.0, 'policies': ['delen']}
    table = render_table({'meta': meta, 'configs': configs, 'engine_reference': None, 'admission': {'delen_n3_service': a}})
    assert 'met its bound without cam02 (refused in the forced run): not judged' in table
    assert 'Not judged: cam01 met its bound in a forced run without cam02' in table
    assert 'refusal too cautious' not in table and 'Not every refusal was needed' not in table


def test_no_section_without_a_service_run_and_all_met():
    param = analyze(_raw('param', [33.0], [8.0]), duration_s=1.0)
    assert admission_check({'delen_n1': param}) == {}
    service = analyze(_raw('service', [33.0, 20.0], [8.0, 9.0], refused={}), duration_s=1.0)
    a = admission_check({'delen_n2_service': service})['delen_n2_service']
    assert a['forced_config'] is None and a['refused'] == {} and a['admitted']['met'] is True
    assert a['admitted']['worst_within'] == 1.0


def test_short_real_run_of_both_registrations(tmp_path):
    """2 cameras, bounds 0.5 and 33 ms: under service the node admits the 33 ms app and refuses the other
    (below its fastest exit); under param it refuses it at configure. Neither run waits for the refused app."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')
    from ros_helpers import unique_domain_id, write_test_profile
    profile = write_test_profile(tmp_path / 'profile.json')
    out = tmp_path / 'out'
    rc = e2e_bench.main(['--ns', '2', '--policies', 'delen', '--rate', '20', '--size', '160x120', '--source', 'synthetic',
                         '--pool', '2', '--duration', '1.0', '--warmup', '0.3', '--drain', '0.5', '--ready-timeout', '60',
                         '--bounds', '0.5,33', '--register', 'service,param', '--register-gap-s', '0.3', '--no-echo',
                         '--node-param', f'profile:={profile}', '--node-param', 'torch_threads:=1',
                         '--domain-id', str(unique_domain_id(first=170, count=50)), '--out', str(out),
                         '--workdir', str(tmp_path / 'work')])
    assert rc == 0
    report = json.loads((out / 'e2e.json').read_text())
    assert list(report['configs']) == ['delen_n2_service', 'delen_n2'] and report['meta']['register'] == ['service', 'param']
    service, param = report['configs']['delen_n2_service'], report['configs']['delen_n2']
    for r in (service, param):
        assert r.get('error') is None, (r.get('error'), r.get('log_tails'))
        assert list(r['refused']) == ['cam00'] and r['apps']['cam00']['answered'] == 0
        assert r['apps']['cam00']['sent'] > 10                       # its frames were sent: misses
        assert r['apps']['cam01']['answered'] > 0 and r['apps_without_results_or_reason'] == []
    assert service['refused_by'] == 'node ~/set_bounds' and param['refused_by'].startswith('node at configure')
    assert service['register_order'] == ['cam01', 'cam00'] and service['node_params']['apps'] == '[]\n'
    assert service['register_answers']['cam01']['accepted'] is True
    a = report['admission']['delen_n2_service']
    assert a['refused']['cam00']['verdict'] == 'not run' and a['admitted']['apps'] == ['cam01']
    assert '### Refused requests run anyway' in (out / 'e2e.md').read_text()


def test_an_app_with_an_accuracy_bound_is_judged_by_every_bound():
    """Forced in, the 33 ms app with an accuracy bound was on time for every frame, but the node judged its
    accuracy unmet for a fifth of them (frames stopped early by the latency bound): its refusal was right."""
    bounds = [20.0, 33.0]
    service = analyze(_raw('service', bounds, [9.0, None], refused={'cam01': 'does not fit'}), duration_s=1.0)
    forced = _raw('param', bounds, [9.0, 12.0])
    forced['min_accuracy'] = [0.0, 0.9415]
    bounds_met = RESULT_FIELDS.index('bounds_met')
    for row in forced['recorder']['rows'][1][::5]:
        row[bounds_met] = False
    param = analyze(forced, duration_s=1.0)
    assert param['apps']['cam01']['attainment'] == 1.0 and param['apps']['cam01']['within_all_bounds'] == 0.8
    assert param['apps']['cam00']['within_all_bounds'] == 1.0 and 'min_accuracy' not in param['apps']['cam00']
    a = admission_check({'delen_n3_service': service, 'delen_n3': param})['delen_n3_service']
    assert a['refused']['cam01']['verdict'] == 'would have missed'
    assert a['refused']['cam01']['forced']['within'] == 0.8


def test_drifting_cameras_meet_at_every_phase_within_a_run():
    """Under --phase drift two cameras' frames come by each other: a refusal for a running step of another
    app can be judged (with spread phases the bench's frames never meet)."""
    import doctest
    from delen_ros.tools import e2e_children
    from delen_ros.tools.e2e_children import camera_period_ns
    assert doctest.testmod(e2e_children).failed == 0
    slow, fast = camera_period_ns(15.0, 0, 3, 'drift'), camera_period_ns(15.0, 2, 3, 'drift')
    period = camera_period_ns(15.0, 1, 3, 'drift')
    assert period == camera_period_ns(15.0, 0, 3, 'spread') == camera_period_ns(15.0, 2, 3, 'sync')
    assert 450 * abs(fast - slow) > period   # 30 s at 15 Hz: one's phase against the other moves a whole period


def test_kept_apps_are_those_neither_refused_nor_demoted_judged_within_all_bounds():
    config = {'refused': {'c': 'too tight'}, 'total': {'apps_demoted': ['b']}, 'apps': {
        'a': {'attainment': 1.0, 'min_accuracy': 0.9, 'within_all_bounds': 0.95},
        'b': {'attainment': 0.5}, 'c': {'attainment': 0.0}, 'd': {'attainment': 0.99}}}
    assert kept_within(config) == {'a': 0.95, 'd': 0.99}
