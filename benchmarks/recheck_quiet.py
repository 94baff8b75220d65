"""What one admission re-check costs when apps are at risk but none is missing its bounds (issue 10, session 32).

Since session 32 a re-check demotes nobody unless the apps served are measured missing their bounds
(``Engine._served_apps_missing``), so while none is missing it no longer works out whom it would demote: the
demand test alone says who is at risk. On CUDA the re-check runs on the engine's worker, so its time is time
the 10 ms apps' frames wait.

The set is issue 10's: `cifar10_committee` (its H200 profile), 8 apps at 10 ms and 8 at 33 ms with accuracy
>= 0.9415 (minimum energy), 30 Hz each, a fake runner (nothing is computed). The frames' age on arrival is set
to 1 ms (every app fits) or 5.5 ms (what a slow H200 host measured at the tail: half the apps at risk). Per
case, three ways: ``quiet`` (no misses seen: the demand test only), ``missing`` (misses seen: the search for
whom to demote as well) and ``verdict_alone`` (``demote_on_misses`` off, as before session 32). One process,
the ways in turn; median and max of ``--rechecks`` re-checks.

    python benchmarks/recheck_quiet.py --out benchmarks/cpu/recheck_quiet      (about 20 s)
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))

from delen_ros.core import zoo  # noqa: E402
from delen_ros.core.bounds import Bounds, Objective  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from delen_ros.core.profile import Profile  # noqa: E402
from fakes import FakeRunner  # noqa: E402

PROFILE = REPO / 'models' / 'profiles' / 'cifar10_committee__cuda-nvidia-h200.json'
WAYS = ('quiet', 'missing', 'verdict_alone')


def engine_for(model, profile: Profile, *, age_ms: float, way: str) -> Engine:
    engine = Engine(model, profile, runner=FakeRunner(model), policy='delen', max_batch=32, on_result=lambda r: None,
                    device_preprocess=False, overhead_prior_ms=0.5, transport_prior_ms=1.0, recheck_on_worker=True)
    for i in range(16):
        bounds = (Bounds(max_latency_ms=10.0) if i % 2 == 0 else
                  Bounds(max_latency_ms=33.0, min_accuracy=0.9415, objective=Objective.MIN_ENERGY))
        engine.set_app(f'cam{i:02d}', bounds, rate_hz=30.0)
    engine._age.prior_ms = age_ms   # the tails after admission (nothing is measured: the priors stand)
    engine.overhead_prior_ms = 1.0
    engine.demote_on_misses = way != 'verdict_alone'
    return engine


def run(model, profile: Profile, *, age_ms: float, way: str, rechecks: int) -> dict:
    engine = engine_for(model, profile, age_ms=age_ms, way=way)
    times, reasons = [], {}
    for _ in range(rechecks):
        for app in engine._apps.values():   # 30 frames a re-check each; 3 late each where misses are seen
            app.results_out += 30
            app.served_late += 3 if way == 'missing' else 0
        t0 = time.perf_counter()
        reasons = engine.check_schedulable()
        times.append((time.perf_counter() - t0) * 1e3)
    return {'age_ms': age_ms, 'way': way, 'at_risk': len(reasons),
            'demoted': len(engine._scheduler.best_effort_apps()),
            'recheck_ms_median': round(statistics.median(times), 3), 'recheck_ms_max': round(max(times), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rechecks', type=int, default=50)
    ap.add_argument('--out', required=True)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)   # the re-check's warnings, once per change
    model = zoo.load_model('cifar10_committee', device='cpu')
    profile = Profile.load(PROFILE)
    rows = [run(model, profile, age_ms=age, way=way, rechecks=args.rechecks)
            for age in (1.0, 5.5) for way in WAYS]
    for r in rows:
        print(json.dumps(r))
    slow = {r['way']: r['recheck_ms_median'] for r in rows if r['age_ms'] == 5.5}
    report = {'python': platform.python_version(), 'machine': platform.processor() or platform.machine(),
              'rechecks': args.rechecks, 'rows': rows,
              'quiet_over_verdict_alone_at_5.5ms': round(slow['quiet'] / slow['verdict_alone'], 3)}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'recheck_quiet.json').write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
