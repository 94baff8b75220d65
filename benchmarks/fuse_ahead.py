"""The worker's host time deciding how far a batch runs before it looks (``Engine._fuse_to``): every
frame asked at every exit ahead (before session 35), or each app once for its most pressed frame
(``Policy.monotone_ahead``). py-spy of the node at 32 cameras x 120 Hz on an H200 put ~15 % of the
worker's GIL time in ``_fuse_to`` (``benchmarks/h200/sat_session35``).

No device: the real engine and the committed H200 profile of ``cifar10_committee``, a batch of B frames
from B apps (one app per camera, as at saturation), at the first step, asked as the worker asks them;
both arms in one run, interleaved.

    python benchmarks/fuse_ahead.py --out benchmarks/cpu/fuse_ahead      (about 20 s)

Writes fuse_ahead.json: per policy and bound mix, microseconds per call (median of repeats) each way
and their ratio.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine, _State
from delen_ros.core.profile import Profile
from delen_ros.core.scheduler import Request
from delen_ros.core.zoo import load_model

REPO = pathlib.Path(__file__).resolve().parents[1]
PROFILE = REPO / 'models' / 'profiles' / 'cifar10_committee__cuda-nvidia-h200.json'
MIXES = {
    'one bound (33 ms)': [Bounds(max_latency_ms=33.0)],
    'mixed set (10 ms, 33 ms @ 0.9415)': [Bounds(max_latency_ms=10.0),
                                          Bounds(max_latency_ms=33.0, min_accuracy=0.9415, objective='min_energy')],
}


def _batch(bounds: list[Bounds], size: int, now_ns: int) -> list[Request]:
    out = []
    for i in range(size):
        b = bounds[i % len(bounds)]
        arrival = now_ns - 1_000_000 - 37_000 * i   # spread over the last few ms, as a batch is
        out.append(Request(app_id=f'cam{i:02d}', frame=object(), arrival_ns=arrival,
                           deadline_ns=arrival + int((b.max_latency_ms - 1.0) * 1e6), latency_bound_ms=b.max_latency_ms,
                           state=_State(bounds=b)))
    return out


def _us_per_call(engine: Engine, requests: list[Request], now_ns: int, calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        engine._fuse_to(0, requests, len(requests), now_ns, enforce=engine._scheduler.enforce_deadlines)
    return (time.perf_counter_ns() - t0) / calls / 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'fuse_ahead')
    p.add_argument('--batch', type=int, default=28, help='frames per batch (the engine bench: 28 at 3 840/s)')
    p.add_argument('--calls', type=int, default=300)
    p.add_argument('--repeats', type=int, default=7)
    args = p.parse_args()
    model = load_model('cifar10_committee')
    profile = Profile.load(PROFILE)
    rows = []
    for policy in ('always_final', 'delen'):
        engine = Engine(model, profile, policy=policy, on_result=lambda r: None, max_batch=32)
        for mix, bounds in MIXES.items():
            now_ns = time.perf_counter_ns()
            requests = _batch(bounds, args.batch, now_ns)
            times = {True: [], False: []}
            reached = {}
            for _ in range(args.repeats):
                for grouped in (False, True):
                    engine.policy.monotone_ahead = grouped
                    times[grouped].append(_us_per_call(engine, requests, now_ns, args.calls))
                    reached[grouped] = engine._fuse_to(0, requests, len(requests), now_ns,
                                                       enforce=engine._scheduler.enforce_deadlines)
            per_frame, per_app = statistics.median(times[False]), statistics.median(times[True])
            rows.append({'policy': policy, 'bounds': mix, 'batch': args.batch, 'us_per_frame_asked': round(per_frame, 1),
                         'us_per_app_asked': round(per_app, 1), 'ratio': round(per_app / per_frame, 3),
                         'fused_to_exit': {'per_frame': reached[False], 'per_app': reached[True]}})
            print(f"{policy:13s} {mix:34s} every frame {per_frame:7.1f} us, once per app {per_app:7.1f} us "
                  f"({per_app / per_frame:.2f}x); runs to exit {reached[False]} / {reached[True]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'fuse_ahead.json').write_text(json.dumps({
        'what': __doc__.split('\n\n')[0], 'command': 'python benchmarks/fuse_ahead.py', 'profile': PROFILE.name,
        'rows': rows}, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
