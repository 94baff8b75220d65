"""delen_e2e_bench --kill-node-at: the failover figures on synthetic timestamps (no ROS): recovery from the
kill to the first result of a frame sent after it, the longest gap, the before / outage / after shares of
the moved and untouched apps, who served what from ~/status and the placer's log, and the report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from delen_ros.tools import e2e_bench
from delen_ros.tools.e2e_analysis import analyze
from delen_ros.tools.e2e_children import RESULT_FIELDS
from delen_ros.tools.e2e_failover import failover_figures, longest_gap, parse_placer_log, recovery_s, serving_nodes
from delen_ros.tools.e2e_report import failover_summary, render_table, write_plots

MS = 1_000_000
S = 1_000_000_000
T0 = 1_800_000_000 * S            # the window's start (system clock, ns)
PERIOD = S // 15                  # a 15 Hz camera
KILL = T0 + 4 * S                 # the node is killed 4 s into a 10 s window
WINDOW = (T0, T0 + 10 * S)


def _stamps(offset_ns: int = 0) -> list[int]:
    return list(range(T0 + offset_ns, WINDOW[1], PERIOD))


def _moved_results(stamps: list[int], *, back_ns: int, latency_ms: float = 10.0) -> list[tuple[int, int]]:
    """Answered in ``latency_ms`` until the kill, then nothing until ``back_ns`` (frames sent from then on are
    answered); the last frame sent before the kill is answered 50 ms after it (late): a result received after
    the kill, of a frame sent before it, which is no recovery."""
    out = [(s, s + int(latency_ms * MS)) for s in stamps if s < KILL - PERIOD or s >= back_ns]
    last_before = max(s for s in stamps if s < KILL)
    out.append((last_before, KILL + 50 * MS))
    return out


def test_recovery_counts_only_frames_sent_after_the_kill():
    stamps = _stamps()
    back = KILL + 1_300 * MS
    results = _moved_results(stamps, back_ns=back)
    first_after = min(s for s in stamps if s >= back)
    assert recovery_s(KILL, results) == pytest.approx((first_after + 10 * MS - KILL) / S)
    assert recovery_s(KILL, results) > 1.3                       # not the old frame answered 50 ms after the kill
    assert recovery_s(KILL, [(s, r) for s, r in results if s < KILL]) is None


def test_longest_gap_with_the_span_edges():
    assert longest_gap([], start_ns=0, end_ns=5 * S) == (5.0, 0)                       # no result: the whole span
    assert longest_gap([1 * S, 2 * S, 4_500 * MS], start_ns=0, end_ns=5 * S) == (2.5, 2 * S)
    assert longest_gap([1 * S, 9 * S], start_ns=0, end_ns=5 * S) == (4.0, 1 * S)       # outside the span: ignored
    with pytest.raises(ValueError, match='empty span'):
        longest_gap([1], start_ns=5, end_ns=5)


def _apps(back_ns: int | None) -> dict:
    """cam00 on the killed node (back at ``back_ns``; never if None); cam01 untouched, two late results after."""
    s0, s1 = _stamps(), _stamps(PERIOD // 2)
    moved = _moved_results(s0, back_ns=back_ns if back_ns is not None else WINDOW[1])
    late = set(sorted(s for s in s1 if s >= KILL + 3 * S)[:2])
    untouched = [(s, s + (50 if s in late else 8) * MS) for s in s1]
    return {'cam00': {'sent_ns': s0, 'results': moved, 'bound_ms': 33.0},
            'cam01': {'sent_ns': s1, 'results': untouched, 'bound_ms': 33.0}}


def test_failover_figures_split_moved_and_untouched_apps_by_phase():
    back = KILL + 1_300 * MS
    f = failover_figures(kill_ns=KILL, window_ns=WINDOW, apps=_apps(back), moved=['cam00'], bin_s=0.2)
    s0 = np.array(_stamps())
    rec = f['apps']['cam00']['recovery_s']
    recovered = KILL + int(rec * S)
    assert f['recovered_s'] == pytest.approx(rec, abs=1e-9) and f['recovery_s_max'] == rec and f['recovered_all']
    assert f['moved_apps'] == ['cam00'] and f['untouched_apps'] == ['cam01']
    assert f['apps']['cam01']['recovery_s'] is None and not f['apps']['cam01']['moved']
    moved = f['groups']['moved']
    before_sent = int(np.sum(s0 < KILL))
    assert moved['before']['sent'] == before_sent
    assert moved['before']['answered'] == before_sent                 # the last one answered 50 ms after the kill
    assert moved['before']['within'] == before_sent - 1               # ... past its bound
    outage_sent = int(np.sum((s0 >= KILL) & (s0 < recovered)))
    answered_in_outage = int(np.sum((s0 >= back) & (s0 < recovered)))   # sent after the return, before recovery
    assert moved['outage'] == {'sent': outage_sent, 'answered': answered_in_outage, 'within': answered_in_outage,
                               'answered_share': pytest.approx(answered_in_outage / outage_sent),
                               'attainment': pytest.approx(answered_in_outage / outage_sent)}
    assert moved['after']['answered_share'] == 1.0 and moved['after']['attainment'] == 1.0
    others = f['groups']['untouched']
    assert others['before']['attainment'] == 1.0 and others['outage']['attainment'] == 1.0
    assert others['after']['answered_share'] == 1.0
    assert others['after']['within'] == others['after']['sent'] - 2   # the two late results
    # every frame of the window is in exactly one phase
    assert sum(moved[p]['sent'] for p in ('before', 'outage', 'after')) == len(s0)
    # the gap: from the last result received (the late one, 50 ms after the kill) to the recovery
    gap = f['apps']['cam00']
    assert gap['max_gap_s'] == pytest.approx(rec - 0.05, abs=1e-6) and gap['max_gap_at_s'] == pytest.approx(0.05)
    assert PERIOD / S <= f['apps']['cam01']['max_gap_s'] < 0.15          # a period, one late result stretches it
    # the timeline: results/s in bins of receive time, zero during the outage, and the groups' shares
    tl = f['timeline']
    hz = np.array(tl['results_hz']['cam00'])
    x = tl['start_s'] + tl['bin_s'] * (np.arange(len(hz)) + 0.5)
    assert tl['start_s'] == pytest.approx(-4.0) and len(hz) == 50
    assert np.all(hz[(x > 0.2) & (x < 1.2)] == 0) and np.all(hz[x < -0.5] == 15.0)
    share = np.array([np.nan if v is None else v for v in tl['attainment']['moved']])
    assert np.all(share[(x > 0.2) & (x < 1.2)] == 0) and np.all(share[x < -0.5] == 1.0)
    assert json.loads(json.dumps(f)) == f                                 # JSON as it stands


def test_a_moved_app_never_served_again():
    f = failover_figures(kill_ns=KILL, window_ns=WINDOW, apps=_apps(None), moved=['cam00'])
    a = f['apps']['cam00']
    assert a['recovery_s'] is None and f['recovery_s_max'] is None and not f['recovered_all']
    assert f['recovered_s'] == pytest.approx(6.0)                         # the outage runs to the window's end
    assert f['groups']['moved']['after']['sent'] == 0 and f['groups']['moved']['after']['attainment'] is None
    assert a['max_gap_s'] == pytest.approx(5.95)                          # from the late result to the end
    assert 'not every moved app' in failover_summary(dict(f, killed_node='/n0'))


def test_failover_figures_reject_a_kill_outside_the_window_and_unknown_apps():
    with pytest.raises(ValueError, match='outside the window'):
        failover_figures(kill_ns=WINDOW[1], window_ns=WINDOW, apps=_apps(None), moved=[])
    with pytest.raises(ValueError, match='cam09'):
        failover_figures(kill_ns=KILL, window_ns=WINDOW, apps=_apps(None), moved=['cam09'])


def test_serving_nodes_and_the_placer_log():
    topics = ['/n0/delen/status', '/n1/delen/status']
    status = [(KILL - S, 'cam00', 1, 1, 0, 0), (KILL - S, 'cam01', 1, 1, 0, 1), (KILL - 100, 'cam00', 2, 2, 0, 0),
              (KILL + 2 * S, 'cam00', 1, 1, 0, 1), (KILL + 2 * S, 'cam01', 9, 9, 0, 1), (KILL - S, 'old', 1, 1, 0)]
    assert serving_nodes(status, topics, KILL) == {'cam00': ['/n0', '/n1'], 'cam01': ['/n1', '/n1']}
    log = '\n'.join([
        '-m delen_ros.ros.placer --ros-args -p nodes:=["/n0", "/n1"]',
        '[INFO] [1800000000.100000000] [delen_placer]: cam00 on /e2e/cam00/image_raw placed on /n0/delen; results on x',
        '[ERROR] [1800000005.000000000] [delen_placer]: /n0/delen is gone (status silent 1.01 s, service up); re-placing',
        '[WARN] [1800000005.005000000] [delen_placer]: /n1/delen refused cam00: result_topic \'x\' already has a publisher',
        '[INFO] [1800000005.108000000] [delen_placer]: re-placed cam00 on /n1/delen 108 ms after its node was found dead'])
    events = parse_placer_log(log)
    assert events['placed'] == {'cam00': '/n0/delen'}
    assert events['gone'] == {'/n0/delen': 1_800_000_005 * S}
    assert events['re_placed'] == {'cam00': {'node': '/n1/delen', 't_ns': 1_800_000_005 * S + 108 * MS,
                                             'after_found_dead_ms': 108}}
    assert events['refusals']['cam00']['count'] == 1 and 'already has a publisher' in events['refusals']['cam00']['last']


def _row(stamp: int, received: int) -> list:
    values = {'stamp_ns': stamp, 'cb_ns': received, 'rx_ns': received - MS, 'exit_index': 3, 'num_exits': 4,
              'class_id': 0, 'label': -1, 'latency_ms': 5.0, 'stamp_latency_ms': 6.0, 'queue_ms': 1.0,
              'compute_ms': 2.0, 'energy_mj': 1.0, 'energy_measured': False, 'bounds_met': True}
    return [values.get(f, 0) for f in RESULT_FIELDS]


def test_analyze_reports_the_failover_in_json_markdown_and_plot(tmp_path):
    apps = _apps(KILL + 1_300 * MS)
    raw = {'config': {'kind': 'node', 'cameras': 2, 'policy': 'delen'}, 'name': 'delen_n2', 'rate_hz': 15.0,
           'bounds_ms': [33.0, 33.0], 'window_ns': WINDOW,
           'publishers': [{'cameras': [0, 1], 'stamps_ns': [apps['cam00']['sent_ns'], apps['cam01']['sent_ns']],
                           'skipped_ticks': [0, 0], 'publish_lag_p99_ms': 0.1, 'cpu_s': 0.1}],
           'recorder': {'fields': list(RESULT_FIELDS), 'status_topics': ['/n0/delen/status', '/n1/delen/status'],
                        'rows': [[_row(s, r) for s, r in apps[a]['results']] for a in ('cam00', 'cam01')],
                        'status': [(KILL - S, 'cam00', 1, 1, 0, 0), (KILL - S, 'cam01', 1, 1, 0, 1),
                                   (KILL + 3 * S, 'cam00', 1, 1, 0, 1)]},
           'kill': {'node': '/n0', 't_ns': KILL, 'signal': 'SIGKILL (process group)'},
           'placer_params': {'liveness_timeout_s': 1.0},
           'node_params': {'status_period_s': 0.2},
           'placer_events': {'gone': {'/n0/delen': KILL + 900 * MS},
                             're_placed': {'cam00': {'node': '/n1/delen', 't_ns': KILL + 1_250 * MS}}}}
    result = analyze(raw, duration_s=10.0)
    f = result['failover']
    assert f['moved_apps'] == ['cam00'] and f['placer_found_dead_s'] == pytest.approx(0.9)
    assert f['timeline']['bin_s'] == pytest.approx(4 / 15)                  # whole frame periods
    a = f['apps']['cam00']
    assert (a['node_before'], a['node_after'], a['re_placed_s']) == ('/n0', '/n1', pytest.approx(1.25))
    assert a['first_result_after_re_placed_s'] == pytest.approx(a['recovery_s'] - 1.25)
    assert (f['apps']['cam01']['node_before'], f['apps']['cam01']['node_after']) == ('/n1', None)
    assert f['node_status_period_s'] == 0.2
    # the overall figure counts the outage's frames as misses
    assert result['total']['sent'] == sum(f['groups'][g][p]['sent'] for g in ('moved', 'untouched')
                                          for p in ('before', 'outage', 'after'))
    assert result['total']['answered'] < result['total']['sent']
    meta = {'model': 'm', 'device_name': 'cpu', 'cpu_count': 2, 'started': '2026-11-29', 'size': '640x480',
            'encoding': 'rgb8', 'rate_hz': 15.0, 'source': 'synthetic', 'bounds_ms': [33.0], 'max_batch': 8,
            'node_params': [], 'duration_s': 10.0, 'warmup_s': 2.0, 'drain_s': 2.0, 'policies': ['delen']}
    report = {'meta': meta, 'configs': {'delen_n2': result}, 'engine_reference': None}
    table = render_table(report)
    assert '## Failover (delen_n2): node /n0 killed 4.00 s' in table and '**met**' in table
    assert '| cam00 (moved) | /n0 → /n1 | 1.3' in table and '| untouched (1) |' in table
    assert 'placer liveness_timeout_s 1 s, check_period_s default' in table
    written = write_plots(report, tmp_path)
    assert 'e2e_failover.png' in written and (tmp_path / 'e2e_failover.png').stat().st_size > 5000


@pytest.mark.parametrize('argv, words', [
    (['--kill-node-at', '4'], '--nodes >= 2'),
    (['--kill-node-at', '12', '--nodes', '2', '--duration', '10'], 'not within the measured window'),
])
def test_kill_node_at_needs_a_second_node_and_the_window(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        e2e_bench.main([*argv, '--out', '/nonexistent/never'])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err
