"""The admission re-check when the tails outside the device have grown since admission (issue 8/10,
session 9): how many apps it demotes and what one re-check costs the status tick (GIL held), with
demotion on device demand (the engine's rule) against demotion on the tails measured now (before).

32 apps x 30 Hz x 33 ms on a fake 4-step model; after admission the serving overhead the engine
assumes grows to ``--overhead-ms`` (as a GIL-bound spell inflates the measured tail): every app is
at risk at the tails now, none on device demand.

    python benchmarks/recheck_cost.py --out benchmarks/cpu/recheck_cost      (a few seconds)
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))

from delen_ros.core.bounds import Bounds  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from fakes import FakeRunner, fake_model, synthetic_profile  # noqa: E402


def run(*, rule: str, apps: int, overhead_ms: float, rechecks: int) -> dict:
    step_ms = [0.3, 0.3, 0.3, 0.3]
    model = fake_model(4)
    profile = synthetic_profile(4, step_ms=step_ms, head_ms=0.02, batch_cost=0.0)
    engine = Engine(model, profile, runner=FakeRunner(model, sleep_ms=step_ms), policy='delen', max_batch=32,
                    on_result=lambda r: None, device_preprocess=False)
    for i in range(apps):
        engine.set_app(f'cam{i:02d}', Bounds(max_latency_ms=33.0), rate_hz=30.0)
    engine.overhead_prior_ms = overhead_ms
    if rule == 'tails_now':   # before session 9: no cap at what admission passed with
        engine._admitted_outside = None
    times, reasons = [], {}
    for _ in range(rechecks):
        t0 = time.perf_counter()
        reasons = engine.check_schedulable()
        times.append((time.perf_counter() - t0) * 1e3)
    return {'rule': rule, 'apps': apps, 'overhead_ms': overhead_ms, 'at_risk': len(reasons),
            'demoted': len(engine._scheduler.best_effort_apps()),
            'recheck_ms_median': round(statistics.median(times), 3), 'recheck_ms_min': round(min(times), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'recheck_cost')
    p.add_argument('--apps', type=int, default=32)
    p.add_argument('--overhead-ms', type=float, default=29.0)
    p.add_argument('--rechecks', type=int, default=20)
    args = p.parse_args()
    logging.disable(logging.WARNING)   # the re-check's warnings, once per change
    rows = [run(rule=rule, apps=args.apps, overhead_ms=args.overhead_ms, rechecks=args.rechecks)
            for rule in ('device_demand', 'tails_now')]
    rows.append({'ratio_recheck_ms_tails_now_to_device_demand':
                 round(rows[1]['recheck_ms_median'] / rows[0]['recheck_ms_median'], 2)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'recheck_cost.json').write_text(json.dumps(rows, indent=1) + '\n')
    for row in rows:
        print(row)
    return 0


if __name__ == '__main__':
    sys.exit(main())
