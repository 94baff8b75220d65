"""The engine alone: a 10 ms app beside a 20 ms app on two drifting cameras, arrival lookahead on and off.

    python3 benchmarks/arrival_lookahead.py --out OUT [--model cifar10_committee] [--device cpu] [--seconds 20] [--runs 2]

Two cameras at 15 Hz, one 0.2 % fast and one 0.2 % slow, so that their frames meet at every phase within
a run. The 10 ms app's camera is `fast`, the 20 ms app's (as accurate as its bound allows) `slow`. The frames
are 640x480, submitted straight to an :class:`~delen_ros.core.engine.Engine` (no ROS, no transport), with
admission off. Runs alternate, lookahead on first. Per run: each app's share of results within its bound,
the 10 ms app's p99, and how often the scheduler held a step back for an expected frame. Writes
``OUT/arrival_lookahead.json``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import threading
import time

import numpy as np

from delen_ros.core import zoo
from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine
from delen_ros.core.profile import Profile, device_slug

APPS = {'fast': (10.0, 1 / 15 * 0.998, 0.0), 'slow': (20.0, 1 / 15 * 1.002, 0.03)}   # bound ms, period s, offset s


def _run(model, profile: Profile, device: str, *, lookahead: bool, seconds: float) -> dict:
    latencies: dict[str, list[float]] = {app: [] for app in APPS}
    holds = [0]
    engine = Engine(model, profile, device=device, on_result=lambda r: latencies[r.app_id].append(r.latency_ms),
                    max_batch=8, admission_control=False, arrival_lookahead=lookahead)
    next_batch = engine._scheduler.next_batch

    def counted(now_ns, expected=()):
        schedule = next_batch(now_ns, expected)
        holds[0] += schedule.wait_until_ns is not None
        return schedule

    engine._scheduler.next_batch = counted
    for app, (bound, _, _) in APPS.items():
        engine.set_app(app, Bounds(max_latency_ms=bound))
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    engine.start()
    end = time.perf_counter() + seconds

    def camera(app: str, period: float, offset: float) -> None:
        t = time.perf_counter() + offset
        while t < end:
            if t > time.perf_counter():
                time.sleep(t - time.perf_counter())
            engine.submit([app], image)
            t += period

    threads = [threading.Thread(target=camera, args=(app, period, offset)) for app, (_, period, offset) in APPS.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.3)
    engine.stop()
    out = {'lookahead': lookahead, 'holds': holds[0]}
    for app, (bound, _, _) in APPS.items():
        ms = sorted(latencies[app])
        out[app] = {'results': len(ms), 'within': round(sum(x <= bound for x in ms) / max(1, len(ms)), 4),
                    'p99_ms': round(ms[int(0.99 * (len(ms) - 1))], 2) if ms else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='cifar10_committee')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--seconds', type=float, default=20.0)
    ap.add_argument('--runs', type=int, default=2)
    ap.add_argument('--out', required=True)
    args = ap.parse_args(argv)
    model = zoo.load_model(args.model, device=args.device)
    slug = device_slug(args.device).split('-')[0]
    profile = Profile.load(sorted((zoo.models_dir() / 'profiles').glob(f'{args.model}__{slug}-*.json'))[0])
    runs = []
    for i in range(2 * args.runs):
        runs.append(_run(model, profile, args.device, lookahead=i % 2 == 0, seconds=args.seconds))
        print(json.dumps(runs[-1]), flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'arrival_lookahead.json').write_text(json.dumps({'model': args.model, 'device': args.device,
                                                            'seconds': args.seconds, 'apps': APPS, 'runs': runs},
                                                           indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
