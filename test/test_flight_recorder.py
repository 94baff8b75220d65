"""The flight recorder (DELEN_TRACE) and the late-frame report read from it."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from delen_ros.core.flight_recorder import FlightRecorder
from delen_ros.tools.trace_report import front_end, late_report, load, step_times, turn_cycle
from fakes import synthetic_profile

MS = 1_000_000


def _turn(recorder: FlightRecorder, t0: int, device_ms: float, app: str, step: int = 0) -> int:
    """One worker turn from ``t0`` at ``step``: 0.1 ms plan, launch, ``device_ms`` waiting; returns its end."""
    launched = t0 + MS // 5
    recorder.add('worker_lock', t0 - 1000, t0)
    recorder.add('launch', t0, launched, run_ns=t0 + MS // 10, plan_ns=MS // 10, pre_ns=0, n=1, requests=1,
                 steps=[step, step], padded=1, apps=[app])
    synced = launched + int(device_ms * MS)
    recorder.add('complete', launched, synced + MS // 10, synced_ns=synced, n=1, steps=[step, step], finished=1)
    return synced + MS // 10


def test_spans_round_trip_and_a_late_frame_is_blamed_on_what_overlapped_it(tmp_path):
    recorder = FlightRecorder(str(tmp_path / 'trace.jsonl'))
    # an on-time frame: 1 ms in the node, bound 10 ms
    end = _turn(recorder, 0, 0.5, 'a')
    recorder.add('result', 0, end, app='a', bound_ms=10.0, exit=0, served_ns=0, compute_ns=end, late=False,
                 expired=False)
    # a late one: a 4 ms status tick on another thread, the device wait stretched to 9.5 ms
    t0 = 100 * MS
    recorder.add('status', t0 + MS, t0 + 5 * MS, closing=False)
    end = _turn(recorder, t0, 9.5, 'a')
    recorder.add('result', t0, end, app='a', bound_ms=10.0, exit=0, served_ns=t0, compute_ns=end - t0, late=False,
                 expired=False)
    recorder.write()
    recorder.write()   # once only: the second call does nothing
    spans = load(str(tmp_path / 'trace.jsonl'))
    assert [s['kind'] for s in spans].count('result') == 2
    report = late_report(spans, margin_ms=1.0)
    assert report['mean']['late']['count'] == 1 and report['mean']['on_time']['count'] == 1
    late = report['late'][0]
    assert late['status_ms'] == 4.0
    assert late['turn_device_ms'] == 9.5
    assert report['mean']['on_time']['status_ms'] == 0.0


def test_unset_means_no_recorder_and_set_writes_at_exit(tmp_path):
    code = ('from delen_ros.core import flight_recorder as f; import time; '
            'print(f.RECORDER is None); f.RECORDER and f.RECORDER.add("status", 0, 1)')
    env = {k: v for k, v in os.environ.items() if k != 'DELEN_TRACE'}
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'True'
    path = tmp_path / 'node_{pid}.jsonl'
    out = subprocess.run([sys.executable, '-c', code], env=env | {'DELEN_TRACE': str(path)}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == 'False'
    written = list(tmp_path.glob('node_*.jsonl'))
    assert len(written) == 1 and '{pid}' not in written[0].name
    kinds = {json.loads(line)['kind'] for line in written[0].read_text().splitlines()}
    assert 'status' in kinds


def test_the_engine_records_each_schedule_and_each_submits_arrival(tmp_path):
    # a real engine in a process of its own (the recorder is made at import, from DELEN_TRACE)
    code = ('import sys; sys.path.insert(0, sys.argv[1]); '
            'from delen_ros.core.bounds import Bounds; from delen_ros.core.engine import Engine; '
            'from fakes import Collector, FakeRunner, fake_image, fake_model, synthetic_profile; '
            'm = fake_model(); c = Collector(); '
            'e = Engine(m, synthetic_profile(), on_result=c, runner=FakeRunner(m)); '
            'e.set_app("a", Bounds(max_latency_ms=500.0)); e.start(warm_up=False); '
            'e.submit(["a"], fake_image(1), arrival_ns=e.clock() - 2_000_000); c.wait(1); e.stop()')
    path = tmp_path / 'trace.jsonl'
    subprocess.run([sys.executable, '-c', code, str(pathlib.Path(__file__).parent)],
                   env=os.environ | {'DELEN_TRACE': str(path)}, check=True, timeout=60)
    spans = load(str(path))
    schedule = next(s for s in spans if s['kind'] == 'schedule')
    assert schedule['step'] == 0 and schedule['n'] == 1 and schedule['queued_after'] == 0
    assert 0 < schedule['head_slack_ms'] < 500.0
    submit = next(s for s in spans if s['kind'] == 'submit')
    result = next(s for s in spans if s['kind'] == 'result')
    assert submit['arrival_ns'] == result['start_ns'] <= submit['start_ns'] - 2_000_000


def test_spans_leave_the_collectors_books(tmp_path):
    # 400 000 tracked spans made full collections of up to 44 ms: the node's own stalls, in its own trace
    import gc
    recorder = FlightRecorder(str(tmp_path / 'trace.jsonl'))
    for i in range(100):
        recorder.add('launch', i, i + 1, n=1, steps=(0, 3), apps=('cam00', 'cam01'), late=False, bound_ms=None)
    gc.collect()
    assert not any(gc.is_tracked(span) for span in recorder.spans)


def test_a_late_frame_s_wait_behind_others_splits_into_their_first_steps_and_their_later_ones(tmp_path):
    recorder = FlightRecorder(str(tmp_path / 'trace.jsonl'))
    t = _turn(recorder, 0, 1.7, 'b')               # b's frame starts: 2.0 ms (0.3 ms of it not the device's)
    t = _turn(recorder, t, 2.7, 'b', step=1)       # b goes on (by choice): 3.0 ms
    t = _turn(recorder, t, 3.7, 'c', step=2)       # c further still: 4.0 ms
    end = _turn(recorder, t, 0.7, 'a')             # at last a's own: 1.0 ms
    recorder.add('result', 0, end, app='a', bound_ms=10.0, exit=0, served_ns=t, compute_ns=end - t, late=True,
                 expired=False)
    recorder.write()
    late = late_report(load(str(tmp_path / 'trace.jsonl')))['late'][0]
    assert late['turns_of_others_ms'] == 9.0
    assert (late['others_first_steps_ms'], late['others_later_steps_ms']) == (2.0, 7.0)


def test_a_trace_without_late_frames_still_sums_the_on_time_ones(tmp_path):
    recorder = FlightRecorder(str(tmp_path / 'trace.jsonl'))
    end = _turn(recorder, 0, 0.5, 'a')
    recorder.add('result', 0, end, app='a', bound_ms=10.0, exit=0, served_ns=0, compute_ns=end, late=False,
                 expired=False)
    recorder.write()
    on_time = late_report(load(str(tmp_path / 'trace.jsonl')))['mean']['on_time']
    assert on_time['count'] == 1 and on_time['turn_device_ms'] == 0.5


def test_a_late_frame_says_how_long_after_its_arrival_it_was_queued(tmp_path):
    recorder = FlightRecorder(str(tmp_path / 'trace.jsonl'))
    recorder.add('submit', 5 * MS, 6 * MS, apps=1, ahead=True, queued=1, arrival_ns=0)   # queued 6 ms after it came
    end = _turn(recorder, 7 * MS, 3.0, 'a')
    recorder.add('result', 0, end, app='a', bound_ms=10.0, exit=0, served_ns=7 * MS, compute_ns=3 * MS, late=True,
                 expired=False)
    recorder.add('result', 1, 2 * MS, app='b', bound_ms=10.0, exit=0, served_ns=MS, compute_ns=MS, late=False,
                 expired=False)   # no submit recorded for it (a trace from before session 39)
    recorder.write()
    report = late_report(load(str(tmp_path / 'trace.jsonl')))
    assert report['late'][0]['submitted_ms'] == 6.0 and report['mean']['late']['submitted_ms'] == 6.0
    assert 'submitted_ms' not in report['mean']['on_time']


def test_step_times_pair_each_run_with_its_results_and_compare_them_with_the_profile(tmp_path):
    recorder = FlightRecorder(str(tmp_path / 'trace.jsonl'))
    t = 10 * MS
    for device_ms in (2.0, 3.0, 4.0):   # the turn's step 0 at batch 1: the profile says 1.1 ms (stage + head)
        t = _turn(recorder, t, device_ms, 'a') + MS
    recorder.write()
    rows = step_times(load(str(tmp_path / 'trace.jsonl')), synthetic_profile())
    # from the stages' launch (0.1 ms in) to the results back (0.2 ms launch + the device's time)
    assert rows == [{'steps': [0, 0], 'batch': 1, 'count': 3, 'p50_ms': 3.1, 'p90_ms': 4.1, 'profile_ms': 1.1,
                     'ratio': 2.82}]


def test_the_turn_cycle_splits_the_time_between_turns_into_publishing_and_the_rest(tmp_path):
    recorder = FlightRecorder(str(tmp_path / 'trace.jsonl'))
    t = 10 * MS
    for _ in range(4):
        end = _turn(recorder, t, 2.0, 'a')
        for i in range(1, 4):   # three results published, the last 0.6 ms after the turn
            recorder.add('publish', end + (i - 1) * MS // 5, end + i * MS // 5, app='a')
        t = end + MS      # the next turn 1 ms after this one ended (its lock wait 1 µs of it)
    recorder.write()
    cycle = turn_cycle(load(str(tmp_path / 'trace.jsonl')), skip=0.0)
    parts = cycle['parts_ms']
    assert cycle['turns'] == 4 and cycle['mean_frames'] == 1
    assert parts['device']['mean'] == 2.0 and parts['plan']['mean'] == 0.1
    assert parts['publish']['mean'] == 0.6
    assert abs(parts['between']['mean'] - 0.399) < 1e-9
    # the parts add up to the time from one turn's launch to the next's
    assert abs(cycle['cycle_ms'] - (0.2 + 2.0 + 0.1 + 1.0)) < 1e-9


def test_the_front_end_splits_each_frames_way_in_into_the_wait_for_the_reader_and_its_submit(tmp_path):
    recorder = FlightRecorder(str(tmp_path / 'trace.jsonl'))
    for i in range(10):   # frame i arrives at 10 i ms, waits (1 + i / 10) ms for the reader, submits in 0.3 ms
        arrival = 10 * i * MS
        start = arrival + MS + i * MS // 10
        recorder.add('handover', arrival + MS // 2, start, topic='/cam')
        recorder.add('submit', start, start + 3 * MS // 10, apps=1, ahead=True, queued=1, arrival_ns=arrival,
                     upload_ns=2 * MS // 10)
    recorder.write()
    spans = load(str(tmp_path / 'trace.jsonl'))
    front = front_end(spans)
    assert front['submit_upload_ms']['p50'] == 0.2   # the part of the submit that started the upload
    assert front['frames'] == 10
    assert front['arrival_to_submit_ms'] == {'p50': 1.5, 'p90': 1.9, 'p99': 1.9, 'max': 1.9}
    assert front['submit_ms']['p50'] == 0.3 and front['arrival_to_queued_ms']['max'] == 2.2
    assert front['handover_ms']['p50'] == 1.0
    assert front_end([s for s in spans if s['kind'] != 'submit']) == {}   # a trace from before session 39
