"""Does a baseline policy keep serving under overload? The engine alone (no ROS), many apps with one
latency bound, a GPU stood in for by sleeps (``FakeRunner``: flat in batch size, as on an H200), a
stall injected; A/B of what the scheduler does with late work when it does not enforce deadlines
(issue 8's saturation row, session 34).

  before  a started request that went late waited for idle time, behind every on-time frame, and a
          queued frame was judged late on its first step only (before session 34)
  now     a started request keeps its EDF place, late or not (work begun is finished), and without
          enforcement a frame is judged late on its way to the first exit its policy may stop at
          (``always_final``: the last), so it is late before it starts, not part-way through

On the H200 the node at 32 cameras x 120 Hz with ``always_final`` served 0.36x the engine alone, some
results 0.6-2.3 s late, frames waiting part-way through the network (benchmarks/h200/sat_session33).
``delen`` enforces deadlines (a late started request is finished at once at its last exit), so it is
the same in both arms: the control.

    python benchmarks/overload_collapse.py --out benchmarks/cpu/overload_collapse     (about 4 minutes)

Writes overload_collapse.json and overload_collapse.png (the first repeat): per arm, the share of frames
answered within the bound (unanswered = miss) per 250 ms, and latency p50 / p99 / max.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))

from fused_runs import plot_within_by_bin, run  # noqa: E402

ARMS = {'before': False, 'now': True}   # Scheduler.finish_started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'overload_collapse')
    p.add_argument('--apps', type=int, default=32)
    p.add_argument('--rate', type=float, default=70.0, help='Hz per app: near what this CPU serves')
    p.add_argument('--bound-ms', type=float, default=33.0)
    # the committee's six steps on an H200, about 3x (this CPU's Python per turn is about that much slower)
    p.add_argument('--step-ms', type=float, nargs='+', default=[1.0, 0.6, 0.6, 1.0, 2.6, 3.0])
    p.add_argument('--duration', type=float, default=5.0)
    p.add_argument('--stall-at', type=float, default=1.5)
    p.add_argument('--stall-ms', type=float, default=80.0)
    p.add_argument('--queue-depth', type=int, default=2)
    p.add_argument('--policies', nargs='+', default=['always_final', 'delen'])
    p.add_argument('--repeats', type=int, default=3)
    args = p.parse_args()
    rows = []
    for repeat in range(args.repeats):
        for policy in args.policies:
            for arm, finish_started in ARMS.items():   # alternated, same conditions
                row = run(variant='pooled', policy=policy, apps=args.apps, rate_hz=args.rate, bound_ms=args.bound_ms,
                          step_ms=args.step_ms, duration_s=args.duration, stall_at_s=args.stall_at,
                          stall_ms=args.stall_ms, queue_depth=args.queue_depth, finish_started=finish_started)
                row.update(arm=arm, repeat=repeat)
                rows.append(row)
                print(f"{policy:13s} {arm:6s} #{repeat}: within {row['within_share']:.3f} (from 1 s after the stall "
                      f"{row['within_share_from_1s_after_stall']:.3f}), answered {row['answered'] / row['sent']:.3f}, "
                      f"latency p50 {row['latency_p50_ms']:.1f} p99 {row['latency_p99_ms']:.1f} "
                      f"max {row['latency_max_ms']:.1f} ms", flush=True)
    summary = {}
    for policy in args.policies:
        for arm in ARMS:
            some = [r for r in rows if (r['policy'], r['arm']) == (policy, arm)]
            summary[f'{policy}, {arm}'] = {
                'within': [round(r['within_share'], 3) for r in some],
                'within_from_1s_after_stall': [round(r['within_share_from_1s_after_stall'], 3) for r in some],
                'within_median': round(statistics.median(r['within_share'] for r in some), 3),
                'latency_p99_ms': [round(r['latency_p99_ms'], 1) for r in some],
                'latency_max_ms': [round(r['latency_max_ms'], 1) for r in some]}
    print(json.dumps(summary, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items() if k != 'out'}
    (args.out / 'overload_collapse.json').write_text(json.dumps({'meta': meta, 'summary': summary, 'runs': rows},
                                                                indent=1))
    plot_within_by_bin(args.out / 'overload_collapse.png', [
        (f'{policy}: {args.apps} apps x {args.rate:g} Hz, {args.bound_ms:g} ms bound, '
         f'{args.stall_ms:g} ms stall at {args.stall_at:g} s',
         [(f"{row['arm']}: within {row['within_share']:.1%}, p99 {row['latency_p99_ms']:.0f} ms", row['arm'] != 'now',
           row['within_share_by_bin']) for row in rows if row['policy'] == policy and row['repeat'] == 0])
        for policy in args.policies], duration_s=args.duration, stall_at_s=args.stall_at)
    return 0


if __name__ == '__main__':
    sys.exit(main())
