"""Does the node's 1 Hz status tick hold up the engine's worker? (issue 8, sessions 9 and 10)

The tick is pure Python: per app, the ledger read (``Engine.stats``) and the publication (here a
0.2 ms busy loop, about what rclpy's publish of an ``AppStatus`` costs on an H200 host). Held whole,
the worker, back from its (stand-in) CUDA wait, gets the GIL only when the interpreter's 5 ms switch
interval forces it. Three ways of ticking, alternated: ``whole`` (all apps in one tick), ``sliced``
(session 9: one tick yielding the GIL between apps, ``time.sleep(0)``) and ``parts`` (session 10,
what the node does now: ``ros/status_round.py``, the period in 4 ticks, each a quarter of the apps,
held whole).

The engine alone, 32 apps x 30 Hz x 33 ms, a GPU stood in for by sleeps (``FakeRunner``, GIL free
meanwhile). Per run: result latency (arrival -> on_result) p50 / p99 / max, for frames that arrived
within 100 ms after a tick began and for the others.

    python benchmarks/status_tick_gil.py --out benchmarks/cpu/status_tick_gil      (about a minute)
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))

from delen_ros.core.arrivals import percentiles  # noqa: E402
from delen_ros.core.bounds import Bounds  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from fakes import FakeRunner, fake_image, fake_model, synthetic_profile  # noqa: E402


TICKS = ('whole', 'sliced', 'parts')


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def run(*, mode: str, apps: int, rate_hz: float, duration_s: float, publish_ms: float) -> dict:
    step_ms = [0.3, 0.3, 0.3, 0.3]
    model = fake_model(4)
    profile = synthetic_profile(4, step_ms=step_ms, head_ms=0.02, batch_cost=0.0)
    results: list[tuple[int, float]] = []
    engine = Engine(model, profile, runner=FakeRunner(model, sleep_ms=step_ms), policy='delen', max_batch=32,
                    on_result=lambda r: results.append((r.arrival_ns, r.latency_ms)), device_preprocess=False)
    names = [f'cam{i:02d}' for i in range(apps)]
    for name in names:
        engine.set_app(name, Bounds(max_latency_ms=33.0), rate_hz=rate_hz)
    engine.start()
    ticks: list[int] = []
    stop = threading.Event()

    parts = 4 if mode == 'parts' else 1

    def status() -> None:
        part = 0
        while not stop.wait(1.0 / parts):
            ticks.append(time.monotonic_ns())
            for name in names[part::parts]:
                if mode == 'sliced':
                    time.sleep(0)
                engine.stats(name, reset=True)
                _busy(publish_ms)
            part = (part + 1) % parts

    ticker = threading.Thread(target=status, daemon=True)
    ticker.start()
    image = fake_image()
    period_ns = int(1e9 / rate_hz)
    t0 = time.monotonic_ns()
    end_ns = t0 + int(duration_s * 1e9)
    tick = 0
    while True:
        for i, name in enumerate(names):
            due = t0 + tick * period_ns + i * period_ns // apps
            if due >= end_ns:
                break
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            engine.submit([name], image, arrival_ns=time.monotonic_ns())
        else:
            tick += 1
            continue
        break
    time.sleep(0.3)
    stop.set()
    engine.stop()
    near, far = [], []
    for arrival, latency in results:
        (near if any(0 <= arrival - t < 100_000_000 for t in ticks) else far).append(latency)

    def summary(values: list[float]) -> dict:
        p50, p99 = percentiles(values, (50, 99)) if values else (None, None)
        if not values:
            return {'n': 0}
        return {'n': len(values), 'p50_ms': round(p50, 2), 'p99_ms': round(p99, 2), 'max_ms': round(max(values), 2),
                'within_33ms': round(sum(v <= 33.0 for v in values) / len(values), 4)}

    return {'tick': mode, 'all': summary(near + far), 'ticks': len(ticks), 'after_tick': summary(near),
            'other': summary(far)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'status_tick_gil')
    p.add_argument('--apps', type=int, default=32)
    p.add_argument('--rate', type=float, default=30.0)
    p.add_argument('--duration', type=float, default=8.0)
    p.add_argument('--publish-ms', type=float, default=0.2)
    p.add_argument('--repeats', type=int, default=2)
    args = p.parse_args()
    rows = []
    for repeat in range(args.repeats):
        for tick in TICKS:   # alternated, same conditions
            row = run(mode=tick, apps=args.apps, rate_hz=args.rate, duration_s=args.duration,
                      publish_ms=args.publish_ms)
            row['repeat'] = repeat
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for tick in TICKS:
        some = [r for r in rows if r['tick'] == tick]
        summary[tick] = {'all_p99_ms': statistics.median(r['all']['p99_ms'] for r in some),
                         'all_max_ms': statistics.median(r['all']['max_ms'] for r in some),
                         'after_tick_p99_ms': statistics.median(r['after_tick']['p99_ms'] for r in some),
                         'after_tick_max_ms': statistics.median(r['after_tick']['max_ms'] for r in some),
                         'other_p99_ms': statistics.median(r['other']['p99_ms'] for r in some)}
    print(json.dumps(summary, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items() if k != 'out'}
    (args.out / 'status_tick_gil.json').write_text(json.dumps({'meta': meta, 'summary': summary, 'runs': rows},
                                                              indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
