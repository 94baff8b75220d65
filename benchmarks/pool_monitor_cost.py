"""What one pass of a device pool's monitor costs (``DevicePool.rebalance``, every 0.25 s), against what
it cost before session 19, in the same run (issue 12's one-node-many-GPUs layout; session 18: on two
H200s at 64 cameras that node left half its frames unanswered, its monitor thread using ~17 % of a core).

Before, each pass built every app's ``AppStats`` (its results' percentiles) to read two counters, ran
an admission re-check (an EDF test over every app) on every device, and where some app was at risk tried
to move a group (an admission test on every device). Now it reads the counters (``Engine.totals``), acts
on the last re-check's verdict, re-run once a second at most (``Engine.at_risk``), and tries a move only
after 2 s at risk and then every 2 s (``overload_grace_s``, ``move_backoff_s``).

Engine level, CPU, no ROS: two CPU "devices", ``--apps`` apps, each camera's frames at 30 Hz,
``--age-ms`` old on arrival (every app at risk, as there); measured: each pass's wall time on an
otherwise idle process (the GIL it holds) and its share of the monitor's period. (On the H200s the
monitor was not the main cause: ``benchmarks/h200/multi_gpu_session19``.)

    python benchmarks/pool_monitor_cost.py --out benchmarks/cpu/pool_monitor_cost      (seconds)
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))

from delen_ros.core.bounds import Bounds  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from delen_ros.core.placement import DevicePool  # noqa: E402
from fakes import FakeRunner, fake_image, fake_model, synthetic_profile  # noqa: E402

PROFILE = synthetic_profile(step_ms=(0.3, 0.3, 0.3, 0.3), head_ms=0.05)


def make_engine(device: str, on_result) -> Engine:
    model = fake_model()
    return Engine(model, PROFILE, on_result=on_result, runner=FakeRunner(model), max_batch=32, queue_depth=64,
                  policy='always_final', stats_window=2000)


def stats_of_every_app(pool: DevicePool) -> None:
    """What the monitor's health check did before session 19, besides reading two counters."""
    for engine in pool.engines:
        for app_id in engine.apps():
            engine.stats(app_id, recheck_s=math.inf)


def monitor(pool: DevicePool, *, passes: int, period_s: float, before: bool) -> list[float]:
    """``passes`` monitor passes ``period_s`` apart: the ms each held (the GIL, on an idle process)."""
    out = []
    for _ in range(passes):
        t = time.perf_counter()
        if before:
            stats_of_every_app(pool)
        pool.rebalance()
        out.append((time.perf_counter() - t) * 1e3)
        time.sleep(max(0.0, period_s - (time.perf_counter() - t)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--apps', type=int, default=64, help='apps (one camera each), over two devices')
    p.add_argument('--feed-s', type=float, default=3.0, help='seconds of frames at 30 Hz a camera before measuring')
    p.add_argument('--age-ms', type=float, default=36.0,
                   help="the frames' age on arrival: 36 ms (as the H200 pool reported) puts every 33 ms app at risk")
    p.add_argument('--passes', type=int, default=24, help='monitor passes per run (0.25 s apart: 6 s)')
    p.add_argument('--period-s', type=float, default=0.25, help="the pool monitor's period, s")
    p.add_argument('--out', type=pathlib.Path)
    args = p.parse_args()
    pool = DevicePool(['cpu', 'cpu'], make_engine, on_result=lambda r: None, rebalance_period_s=0)
    for i in range(args.apps):
        pool.set_app(f'cam{i:02d}', Bounds(max_latency_ms=33.0), rate_hz=30.0, source=f'cam{i:02d}')
    pool.start(warm_up=False)
    image = fake_image(1, 250)
    rows = []
    try:
        # every app's camera at 30 Hz for --feed-s (past the frame-age tail's settling, 2 s)
        t_end = time.perf_counter() + args.feed_s
        while time.perf_counter() < t_end:
            for i in range(args.apps):
                pool.submit([f'cam{i:02d}'], image, arrival_ns=time.perf_counter_ns() - int(args.age_ms * 1e6))
            time.sleep(1 / 30)
        at_risk = sum(len(e.at_risk(recheck_s=0)) for e in pool.engines)
        for label, before in (('before', True), ('now', False)):
            # before: a re-check and a move tried on every pass; now: the defaults
            pool.recheck_s, pool.overload_grace_s, pool.move_backoff_s = (0.0, 0.0, 0.0) if before else (1.0, 2.0, 2.0)
            pool._at_risk_since.clear()
            pool._next_move_ns.clear()
            ms = monitor(pool, passes=args.passes, period_s=args.period_s, before=before)
            rows.append({'monitor': label, 'passes': len(ms), 'pass_ms_median': round(statistics.median(ms), 3),
                         'pass_ms_max': round(max(ms), 2),
                         'held_share': round(sum(ms) / (len(ms) * args.period_s * 1e3), 4)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        pool.stop()
    row = {'apps': args.apps, 'age_ms': args.age_ms, 'apps_at_risk': at_risk, 'period_s': args.period_s,
           'runs': rows, 'ratio_held_before_to_now': round(rows[0]['held_share'] / max(rows[1]['held_share'], 1e-9), 1)}
    print(json.dumps(row))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / 'pool_monitor_cost.json').write_text(json.dumps(row, indent=1) + '\n')


if __name__ == '__main__':
    main()
