"""What held up the late frames: a report from a flight recorder's spans (``DELEN_TRACE``,
:mod:`delen_ros.core.flight_recorder`).

    python3 -m delen_ros.tools.trace_report TRACE.jsonl [--margin-ms 1.0] [--json OUT.json]

A result is *late* when its node-side latency (the frame's stamp -> the worker deciding it) is
within ``--margin-ms`` of its latency bound, or over it (the result still has to reach its
subscriber). For late results and for all the others it compares what happened while they were in
the node: the worker's turns that served them (time to take the lock, plan, preprocess, launch,
wait for the device, decide), the turns that served other frames meanwhile (those that started frames
and those that took frames further, by choice or by need), and every other thread's spans overlapping
them (status ticks, admission re-checks, meter reads, graph captures, garbage collections, frame
submissions). It also prints when the late results came, modulo a period (``--period-s``), to show a beat.

With ``--profile PROFILE.json`` it also prints how long the worker's runs took against that profile
(:func:`step_times`): per run of steps and batch size, from its stages' launch to its results back.

``turn_cycle`` (always printed) is where the worker's time goes, turn by turn rather than result by
result: each part of a turn, then the time to the next turn split into publishing the results and the
rest; at saturation the sum is the worker's cycle, and the device's share of it is what the GPU works.

``front_end`` (always printed) is the way in, over every frame: from its arrival (the stamp, with the
node's default ``latency_from``) to the frame reader's submit and to the engine's queue, the submit itself,
and the hand-over from a receiver process (its take from DDS -> the reader), p50 / p90 / p99 / max in ms.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import math
import statistics
import sys
from typing import Any, Iterable

__all__ = ['load', 'late_report', 'step_times', 'turn_cycle', 'front_end', 'main']


def load(path: str) -> list[dict[str, Any]]:
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


class _Spans:
    """Spans of one kind, sorted by start, for overlap queries."""

    def __init__(self, spans: Iterable[dict[str, Any]]):
        self.spans = sorted(spans, key=lambda s: s['start_ns'])
        self.starts = [s['start_ns'] for s in self.spans]
        self.longest = max((s['end_ns'] - s['start_ns'] for s in self.spans), default=0)

    def overlapping(self, t0: int, t1: int) -> list[dict[str, Any]]:
        lo = bisect.bisect_left(self.starts, t0 - self.longest)
        hi = bisect.bisect_right(self.starts, t1)
        return [s for s in self.spans[lo:hi] if s['end_ns'] > t0]


def _turns(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worker's turns: each launch with the wait for the lock before it (not the idle wait for frames
    after it) and the complete after it."""
    worker = sorted((s for s in spans if s['kind'] in ('worker_lock', 'launch', 'complete')),
                    key=lambda s: s['start_ns'])
    turns, wait, launch = [], None, None
    for s in worker:
        if s['kind'] == 'worker_lock':
            wait = s
        elif s['kind'] == 'launch':
            launch = s
        elif launch is not None:
            t0, run = launch['start_ns'], launch['run_ns']
            turns.append({
                'start_ns': t0, 'end_ns': s['end_ns'], 'apps': launch.get('apps', []),
                'first_step': (launch.get('steps') or [0])[0],
                'lock': wait['end_ns'] - wait['start_ns'] if wait is not None else 0,
                'n': launch['n'], 'plan': launch['plan_ns'], 'pre': launch['pre_ns'],
                'input': max(0, run - t0 - launch['plan_ns'] - launch['pre_ns']),
                'launch': launch['end_ns'] - run, 'device': s['synced_ns'] - s['start_ns'],
                'decide': s['end_ns'] - s['synced_ns']})
            wait = launch = None
    return turns


def late_report(spans: list[dict[str, Any]], *, margin_ms: float = 1.0, period_s: float = 0.5) -> dict[str, Any]:
    results = [s for s in spans if s['kind'] == 'result' and s.get('bound_ms')]
    if not results:
        return {'results': 0}
    t_first = min(s['start_ns'] for s in results)
    others = {kind: _Spans(s for s in spans if s['kind'] == kind)
              for kind in ('status', 'recheck', 'meter', 'capture', 'cudnn_trial', 'gc', 'submit', 'publish',
                           'handover')}
    turns = _Spans(_turns(spans))
    # when each frame was queued (its submit's end), by its arrival (recorded since session 39)
    queued_at = {s['arrival_ns']: s['end_ns'] for s in spans if s['kind'] == 'submit' and 'arrival_ns' in s}
    groups: dict[str, list[dict[str, Any]]] = {'late': [], 'on_time': []}
    for r in results:
        latency = (r['end_ns'] - r['start_ns']) / 1e6
        late = latency > r['bound_ms'] - margin_ms
        t0, t1 = r['start_ns'], r['end_ns']
        row: dict[str, Any] = {'app': r['app'], 'bound_ms': r['bound_ms'], 'latency_ms': round(latency, 3),
                               'exit': r['exit'], 'at_s': round((t0 - t_first) / 1e9, 3),
                               'queue_ms': round(((r['served_ns'] if r.get('served_ns') else t1) - t0) / 1e6, 3),
                               'compute_ms': round(r['compute_ns'] / 1e6, 3)}
        if r['start_ns'] in queued_at:   # arrival -> in the engine's queue (parse, upload ahead, the reader's turn)
            row['submitted_ms'] = round((queued_at[r['start_ns']] - t0) / 1e6, 3)
        during = turns.overlapping(t0, t1)
        served = [t for t in during if r['app'] in t['apps']]
        for part in ('lock', 'plan', 'pre', 'input', 'launch', 'device', 'decide'):
            row[f'turn_{part}_ms'] = round(sum(t[part] for t in served) / 1e6, 3)
        row['turns'] = len(served)
        row['turns_of_others_ms'] = round(sum(_overlap(t0, t1, t['start_ns'], t['end_ns'])
                                              for t in during if r['app'] not in t['apps']) / 1e6, 3)
        # of those, the turns that started other frames (step 0) and those that took frames further: steps
        # their bounds needed or steps by choice (an app without an accuracy bound goes deeper while it can)
        row['others_first_steps_ms'] = round(sum(_overlap(t0, t1, t['start_ns'], t['end_ns']) for t in during
                                                 if r['app'] not in t['apps'] and t['first_step'] == 0) / 1e6, 3)
        row['others_later_steps_ms'] = round(row['turns_of_others_ms'] - row['others_first_steps_ms'], 3)
        for kind, index in others.items():
            row[f'{kind}_ms'] = round(sum(_overlap(t0, t1, s['start_ns'], s['end_ns'])
                                          for s in index.overlapping(t0, t1)) / 1e6, 3)
        groups['late' if late else 'on_time'].append(row)
    keys = list(dict.fromkeys(k for rows in groups.values() for row in rows for k in row
                              if k.endswith('_ms') and k != 'bound_ms'))   # submitted_ms: where a submit matched
    summary = {name: {k: round(statistics.fmean(row[k] for row in rows if k in row), 3)
                      for k in keys if any(k in row for row in rows)} | {'count': len(rows)}
               for name, rows in groups.items() if rows}
    phases = collections.Counter(round(math.fmod(row['at_s'], period_s), 2) for row in groups['late'])
    return {'results': len(results), 'margin_ms': margin_ms, 'mean': summary,
            'late_phase_mod_period': {'period_s': period_s, 'counts': dict(phases.most_common(12))},
            'late': groups['late']}


def step_times(spans: list[dict[str, Any]], profile: Any) -> list[dict[str, Any]]:
    """The worker's runs against ``profile`` (a :class:`~delen_ros.core.profile.Profile`): per (first
    step, last step, batch size), how many, their measured ms (launch of the stages -> results back:
    each launch paired with the next complete of the same steps and size, as the worker does them)
    at p50 and p90, the profile's p50 for those steps and the measured p50's ratio to it. A run
    launched behind another (the pipeline) counts the wait for that one too."""
    launched: dict[tuple[int, int, int], collections.deque] = collections.defaultdict(collections.deque)
    measured: dict[tuple[int, int, int], list[float]] = collections.defaultdict(list)
    for span in sorted((s for s in spans if s['kind'] in ('launch', 'complete')), key=lambda s: s['start_ns']):
        key = (span['steps'][0], span['steps'][1], span['n'])
        if span['kind'] == 'launch':
            launched[key].append(span['run_ns'])
        elif launched[key]:
            measured[key].append((span['synced_ns'] - launched[key].popleft()) / 1e6)
    rows = []
    for (first, last, n), ms in sorted(measured.items()):
        ms.sort()
        profiled = sum(profile.stage_ms(k, n) for k in range(first, last + 1)) + profile.head_ms(last, n)
        p50 = statistics.median(ms)
        rows.append({'steps': [first, last], 'batch': n, 'count': len(ms), 'p50_ms': round(p50, 3),
                     'p90_ms': round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3),
                     'profile_ms': round(profiled, 3), 'ratio': round(p50 / profiled, 2) if profiled else None})
    return rows


def turn_cycle(spans: list[dict[str, Any]], *, skip: float = 0.2) -> dict[str, Any]:
    """The worker's turns after the first ``skip`` of them (start-up): turns per second, mean frames per
    turn, and per part -- ``lock`` .. ``decide`` as in :func:`_turns`, then ``publish`` (the turn's end to
    its last result published) and ``between`` (from there to the next turn's launch: the next batch's
    choice, the worker's bookkeeping, waits for the GIL) -- the mean and p50 in ms."""
    turns = _turns(spans)
    turns = turns[int(skip * len(turns)):]
    if len(turns) < 2:
        return {}
    published = sorted(s['end_ns'] for s in spans if s['kind'] == 'publish')
    parts: dict[str, list[float]] = collections.defaultdict(list)
    for turn, after in zip(turns, turns[1:]):
        for part in ('lock', 'plan', 'pre', 'input', 'launch', 'device', 'decide'):
            parts[part].append(turn[part] / 1e6)
        i, j = bisect.bisect_left(published, turn['end_ns']), bisect.bisect_left(published, after['start_ns'])
        last = published[j - 1] if j > i else turn['end_ns']
        parts['publish'].append((last - turn['end_ns']) / 1e6)
        parts['between'].append((after['start_ns'] - last - after['lock']) / 1e6)   # its lock counted apart
    span_s = (turns[-1]['start_ns'] - turns[0]['start_ns']) / 1e9
    return {'turns': len(turns), 'turns_per_s': round((len(turns) - 1) / span_s, 1) if span_s > 0 else None,
            'mean_frames': round(statistics.mean(t['n'] for t in turns), 2),
            'cycle_ms': round(sum(statistics.mean(v) for v in parts.values()), 3),
            'parts_ms': {k: {'mean': round(statistics.mean(v), 3), 'p50': round(statistics.median(v), 3)}
                         for k, v in parts.items()}}


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]   # noqa: E731
    return {'p50': round(at(0.5), 3), 'p90': round(at(0.9), 3), 'p99': round(at(0.99), 3),
            'max': round(ordered[-1], 3)}


def front_end(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """The frames' way into the engine (see the module's text): ``arrival_to_submit_ms`` (waiting for the frame
    reader: DDS, the receiver, the hand-over, the frames handed over before it), ``submit_ms`` (of it
    ``submit_upload_ms``, the upload ahead, where frames were uploaded), ``arrival_to_queued_ms`` (both),
    ``handover_ms``; ``{}`` for a trace without submits that carry their arrival (before session 39)."""
    submits = [s for s in spans if s['kind'] == 'submit' and 'arrival_ns' in s]
    if not submits:
        return {}
    out = {'frames': len(submits),
           'arrival_to_submit_ms': _quantiles([(s['start_ns'] - s['arrival_ns']) / 1e6 for s in submits]),
           'submit_ms': _quantiles([(s['end_ns'] - s['start_ns']) / 1e6 for s in submits]),
           'arrival_to_queued_ms': _quantiles([(s['end_ns'] - s['arrival_ns']) / 1e6 for s in submits])}
    uploads = [s['upload_ns'] / 1e6 for s in submits if s.get('upload_ns')]
    if uploads:   # the part of a submit that started the frame's upload (since session 46)
        out['submit_upload_ms'] = _quantiles(uploads)
    handovers = [(s['end_ns'] - s['start_ns']) / 1e6 for s in spans if s['kind'] == 'handover']
    if handovers:
        out['handover_ms'] = _quantiles(handovers)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('trace')
    p.add_argument('--margin-ms', type=float, default=1.0)
    p.add_argument('--period-s', type=float, default=0.5)
    p.add_argument('--json', default='')
    p.add_argument('--profile', default='', help='also the runs against this profile (step_times)')
    args = p.parse_args(argv)
    spans = load(args.trace)
    report = late_report(spans, margin_ms=args.margin_ms, period_s=args.period_s)
    report['turn_cycle'] = turn_cycle(spans)
    report['front_end'] = front_end(spans)
    if args.profile:
        from ..core.profile import Profile
        report['step_times'] = step_times(spans, Profile.load(args.profile))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(report, f)
    print(json.dumps({k: v for k, v in report.items() if k not in ('late', 'step_times')}, indent=1))
    for row in report.get('step_times', []):
        print(json.dumps(row))
    for row in report.get('late', [])[:60]:
        print(json.dumps(row))
    return 0


if __name__ == '__main__':
    sys.exit(main())
