"""Does delen's learnt choice margin shed depth under overload, and what does that do? The engine alone
(no ROS), 32 apps with one latency bound, a GPU stood in for by sleeps (``FakeRunner``: flat in batch
size), the node's host costs added (per result published, per frame preprocessed, and a GIL-holding
pause every ``--hiccup-every`` results after their decisions, as a collection or a log line makes),
results delivered as the node delivers them (after publishing's own time). A/B of session 36's change:

  before  a result late while its app's frames are being pushed out of its queue raises the margin
          (``Engine.margin_learns_when_behind``)
  now     it does not; on-time results still lower the margin

On the H200 node (host-bound: a saturated turn is 10 ms of Python for 3.7 ms of GPU) the margins raised
behind the backlog cut fused runs short, split them into more turns, and ``delen`` served 0.43-0.51x the
engine (benchmarks/h200/sat_session36). Here the device is what early exits save, so the same margins
may serve more frames within the bound, at the cost of depth: the other side of the trade.

    python benchmarks/margin_behind.py --out benchmarks/cpu/margin_behind      (about 1 minute)

Writes margin_behind.json and margin_behind.png: per arm and second, the share of frames sent answered
within the bound (unanswered = miss) and the share of results at the final exit; the margins at the end.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib
import sys
import threading

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))
sys.path.insert(0, str(REPO / 'benchmarks'))

from delen_ros.core.bounds import Bounds  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from fakes import fake_model, synthetic_profile  # noqa: E402
from fused_runs import StallingRunner, busy, offer  # noqa: E402

ARMS = {'always_final': ('always_final', False), 'delen, before': ('delen', True), 'delen, now': ('delen', False)}


def run(*, policy: str, learns_when_behind: bool, args: argparse.Namespace) -> dict:
    steps = args.step_ms
    model = fake_model(len(steps), scales=[2.0 * (k + 1) for k in range(len(steps))])
    profile = synthetic_profile(len(steps), step_ms=steps, head_ms=0.02, batch_cost=0.0)
    runner = StallingRunner(model, sleep_ms=steps)
    results, lock, count = [], threading.Lock(), [0]
    engine = None

    def on_result(r):
        busy(args.publish_ms)
        count[0] += 1
        if count[0] % args.hiccup_every == 0:
            busy(args.hiccup_ms)
        delivered = engine.deliver(r)   # as the node: after publishing's own time
        with lock:
            results.append((delivered.arrival_ns, delivered.latency_ms, delivered.exit_index))

    engine = Engine(model, profile, runner=runner, policy=policy, max_batch=32, queue_depth=1, on_result=on_result,
                    device_preprocess=False, external_delivery=True, delivery_allowance_ms=1.0)
    engine.margin_learns_when_behind = learns_when_behind
    preprocess = engine._preprocess

    def with_host_cost(images):
        busy(args.preprocess_ms * len(images))
        return preprocess(images)

    engine._preprocess = with_host_cost
    names = [f'cam{i:02d}' for i in range(args.apps)]
    for name in names:
        engine.set_app(name, Bounds(max_latency_ms=args.bound_ms))
    engine.start()
    t0, sent = offer(engine, runner, names, rate_hz=args.rate, duration_s=args.duration, stall_at_s=args.stall_at,
                     stall_ms=args.stall_ms)
    margins = [engine.stats(n, recheck_s=math.inf).choice_margin_ms for n in names]
    engine.stop()
    bins = int(math.ceil(args.duration))
    sent_by, within_by, exits_by = [0] * bins, [0] * bins, [collections.Counter() for _ in range(bins)]
    for t in sent:
        sent_by[min(bins - 1, int((t - t0) / 1e9))] += 1
    for arrival, latency, exit_index in results:
        b = min(bins - 1, int((arrival - t0) / 1e9))
        within_by[b] += latency <= args.bound_ms
        exits_by[b][exit_index] += 1
    final = len(steps) - 1
    return {'policy': policy, 'margin_learns_when_behind': learns_when_behind, 'sent': len(sent),
            'answered': len(results), 'within_share': sum(within_by) / max(1, len(sent)),
            'final_exit_share': sum(c[final] for c in exits_by) / max(1, len(results)),
            'within_share_by_s': [w / s if s else None for w, s in zip(within_by, sent_by)],
            'final_exit_share_by_s': [c[final] / max(1, sum(c.values())) for c in exits_by],
            'margin_ms_at_end': {'mean': sum(margins) / len(margins), 'max': max(margins)}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'margin_behind')
    p.add_argument('--apps', type=int, default=32)
    p.add_argument('--rate', type=float, default=120.0)
    p.add_argument('--bound-ms', type=float, default=20.0)
    p.add_argument('--step-ms', type=float, nargs='+', default=[0.5, 0.3, 0.3, 0.3, 1.0, 1.3])
    p.add_argument('--publish-ms', type=float, default=0.06)
    p.add_argument('--preprocess-ms', type=float, default=0.08)
    p.add_argument('--hiccup-every', type=int, default=300)
    p.add_argument('--hiccup-ms', type=float, default=15.0)
    p.add_argument('--duration', type=float, default=8.0)
    p.add_argument('--stall-at', type=float, default=2.0)
    p.add_argument('--stall-ms', type=float, default=100.0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for label, (policy, learns) in ARMS.items():
        runs[label] = run(policy=policy, learns_when_behind=learns, args=args)
        r = runs[label]
        print(f"{label:14s} within {r['within_share']:.3f}, final exit {r['final_exit_share']:.3f}, "
              f"margin at the end {r['margin_ms_at_end']['mean']:.1f} ms (max {r['margin_ms_at_end']['max']:.1f})",
              flush=True)
    (args.out / 'margin_behind.json').write_text(json.dumps({'args': {k: str(v) if isinstance(v, pathlib.Path) else v
                                                                      for k, v in vars(args).items()},
                                                             'runs': runs}, indent=1))
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for label, r in runs.items():
        secs = [i + 0.5 for i in range(len(r['within_share_by_s']))]
        axes[0].plot(secs, r['within_share_by_s'], label=label)
        axes[1].plot(secs, r['final_exit_share_by_s'], label=label)
    axes[0].set_ylabel('within bound'); axes[1].set_ylabel('at the final exit'); axes[1].set_xlabel('seconds')
    for ax in axes:
        ax.set_ylim(0, 1.05); ax.axvline(args.stall_at, color='grey', lw=0.8); ax.legend(fontsize=7)
    axes[0].set_title(f'{args.apps} apps x {args.rate:g} Hz, {args.bound_ms:g} ms, GPU by sleeps (device-bound)', fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / 'margin_behind.png', dpi=90)
    return 0


if __name__ == '__main__':
    sys.exit(main())
