"""Whom the admission re-check demotes, on the engine alone (a GPU stood in for by sleeps): the rule shipped
(session 44: only apps short of device time, only while apps other than the misfits miss their bounds)
against session 43's (``Engine.demote_on_host_tails``: apps short of time outside the device too) and the one
before it (``Engine.demote_for_own_misses`` as well: the misfits' own misses are enough).

On an H200 host that stole CPU (benchmarks/h200/session43, host B) the mixed set's 10 ms apps, admitted at
configure, turned out short of time even alone at a 6 ms p99 frame age; only they missed. Where the re-check
demoted six to eight of them they met 17.7-62 % of their frames, where it demoted none 92.3-98.7 %. This
stand-in gives the frames such a tail: each is stamped ``--transport-ms`` before it is submitted, and
``--tail-share`` of them ``--tail-ms`` more (uniform over that range). The apps (half at 10 ms, half at 33 ms) are
admitted at the start on the profile alone (as at configure); the re-check runs once a second, as the node's
status tick has it run.

    python benchmarks/demotion_stand_in.py --seeds 1 2 3 4 5 6      (about 4 minutes)

Writes demotion_stand_in.json and .png: per seed and rule, every app's share of frames within its bound
(unanswered = miss), and the apps demoted at the end.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))
sys.path.insert(0, str(REPO / 'benchmarks'))

from delen_ros.core.bounds import Bounds  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from fakes import fake_image, fake_model, synthetic_profile  # noqa: E402
from fused_runs import with_pre_call_cost  # noqa: E402
from mixed_phases import BatchedSleepRunner, feed_cameras, phases, stolen_ticks  # noqa: E402

RULES = ('shipped', 'host_tails', 'own_misses')
LABELS = {'shipped': 'shipped (session 44)', 'host_tails': 'session 43', 'own_misses': 'before session 43'}


def run(*, rule: str, seed: int, cameras: int, rate_hz: float, tight_ms: float, loose_ms: float,
        step_ms: list[float], pre_call_ms: float, transport_ms: float, tail_share: float, tail_ms: tuple[float, float],
        delivery_ms: float, duration_s: float, warmup_s: float) -> dict:
    model = fake_model(len(step_ms), scales=[2.0 * (k + 1) for k in range(len(step_ms))])
    profile = synthetic_profile(len(step_ms), step_ms=step_ms, head_ms=0.02)
    runner = BatchedSleepRunner(model, sleep_ms=list(step_ms), batch_cost=0.0)
    results: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def on_result(r):
        with lock:
            results.append((r.app_id, r.arrival_ns, r.latency_ms))

    engine = Engine(model, profile, runner=runner, max_batch=8, on_result=on_result, device_preprocess=False,
                    delivery_allowance_ms=delivery_ms, admission_headroom=0.0)
    engine.demote_on_host_tails = rule in ('host_tails', 'own_misses')
    engine.demote_for_own_misses = rule == 'own_misses'
    with_pre_call_cost(engine, pre_call_ms)
    names = [f'cam{i:02d}' for i in range(cameras)]
    bounds = {name: (Bounds(max_latency_ms=tight_ms) if i % 2 == 0 else Bounds(max_latency_ms=loose_ms))
              for i, name in enumerate(names)}
    for name in names:   # on the profile alone: no frame measured yet, as at configure
        engine.set_app(name, bounds[name], rate_hz=rate_hz)
    period_ns = int(1e9 / rate_hz)
    offsets = phases(seed, cameras=cameras, groups=4, period_ms=period_ns / 1e6, within_ms=0.2)
    schedule = sorted((int(off * 1e6), name) for off, name in zip(offsets, names))
    images = [fake_image(i, s) for i, s in enumerate((250, 120, 80, 40, 10))]
    rng = random.Random(seed)
    stop = threading.Event()

    def recheck() -> None:   # the node's status tick: a re-check once a second
        while not stop.wait(1.0):
            engine.check_schedulable()

    engine.start()
    checker = threading.Thread(target=recheck, daemon=True)
    checker.start()
    stolen = stolen_ticks()
    sent, start_ns, end_ns = feed_cameras(
        engine, schedule, period_ns=period_ns, warmup_s=warmup_s, duration_s=duration_s, images=images,
        age_ms=lambda: transport_ms + (rng.uniform(*tail_ms) if rng.random() < tail_share else 0.0))
    time.sleep(0.3)   # drain
    stop.set()
    checker.join()
    demoted = sorted(engine._scheduler.best_effort_apps())
    reasons = {n: engine.stats(n, recheck_s=float('inf')).unschedulable_reason for n in names}
    engine.stop()
    per_app = {}
    for name in names:   # a frame belongs to the window by when it was sent (its stamp + its age)
        mine = [lat for app, arrival, lat in results if app == name and start_ns <= arrival + int(transport_ms * 1e6)
                and arrival < end_ns]
        bound = bounds[name].max_latency_ms
        within = sum(lat + delivery_ms <= bound for lat in mine)
        per_app[name] = {'bound_ms': bound, 'sent': sent[name], 'within_share': round(within / max(1, sent[name]), 4)}
    tight = [a['within_share'] for a in per_app.values() if a['bound_ms'] == tight_ms]
    loose = [a['within_share'] for a in per_app.values() if a['bound_ms'] == loose_ms]
    return {'rule': rule, 'seed': seed, 'apps': per_app, 'demoted': demoted,
            'flagged': sorted(n for n, r in reasons.items() if r),
            'tight_within': [min(tight), max(tight)], 'loose_within': [min(loose), max(loose)],
            'missed': sum(round((1 - a['within_share']) * a['sent']) for a in per_app.values()),
            'stolen_ticks': stolen_ticks() - stolen}


def _shown(path: pathlib.Path) -> str:
    """``path`` relative to the repository where it lies in it (as committed), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def plot(path: pathlib.Path, runs: list[dict]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4))
    seeds = sorted({r['seed'] for r in runs})
    rules = [rule for rule in RULES if any(r['rule'] == rule for r in runs)]   # session 43's runs had two
    for j, (rule, colour) in enumerate(zip(rules, ('C3', 'C1', 'C0'))):
        for i, seed in enumerate(seeds):
            r = next(r for r in runs if (r['rule'], r['seed']) == (rule, seed))
            lo, hi = (100 * v for v in r['tight_within'])
            ax.plot([i + 0.25 * j] * 2, [lo, hi], color=colour, linewidth=6, solid_capstyle='butt',
                    label=LABELS[rule] if i == 0 else None)
            ax.annotate(f"{len(r['demoted'])}", (i + 0.25 * j, lo), textcoords='offset points', xytext=(0, -10),
                        ha='center', fontsize=7)
    ax.axhline(99, color='r', linestyle=':')
    ax.set_xticks([i + 0.25 * (len(rules) - 1) / 2 for i in range(len(seeds))], [f'seed {s}' for s in seeds])
    ax.set_ylabel('10 ms apps within their bound, %\n(lowest to highest; under each bar: apps demoted)')
    ax.set_title(f"engine alone, {len(runs[0]['apps'])} apps admitted on priors, a tail of older frames: whom the "
                 're-check demotes', fontsize=9)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'demotion_stand_in')
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3, 4])
    p.add_argument('--cameras', type=int, default=8, help='half at 10 ms, half at 33 ms (16 overloads 2 cores)')
    p.add_argument('--rate', type=float, default=30.0)
    p.add_argument('--tight-ms', type=float, default=10.0)
    p.add_argument('--loose-ms', type=float, default=33.0)
    p.add_argument('--step-ms', type=float, nargs='+', default=[0.3] * 6)
    p.add_argument('--pre-call-ms', type=float, default=0.2)
    p.add_argument('--transport-ms', type=float, default=1.9)
    p.add_argument('--tail-share', type=float, default=0.03)
    p.add_argument('--tail-ms', type=float, nargs=2, default=[4.0, 8.0])
    p.add_argument('--delivery-ms', type=float, default=1.0)
    p.add_argument('--duration', type=float, default=8.0)
    p.add_argument('--warmup', type=float, default=7.0, help='s: the confirmation and three re-checks come first')
    p.add_argument('--replot', action='store_true')
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / 'demotion_stand_in.json'
    if args.replot:
        plot(args.out / 'demotion_stand_in.png', json.loads(path.read_text())['runs'])
        return 0
    runs = []
    for seed in args.seeds:
        for rule in (RULES if seed % 2 else RULES[::-1]):   # interleaved, each rule first in turn
            r = run(rule=rule, seed=seed, cameras=args.cameras, rate_hz=args.rate, tight_ms=args.tight_ms,
                    loose_ms=args.loose_ms, step_ms=args.step_ms, pre_call_ms=args.pre_call_ms,
                    transport_ms=args.transport_ms, tail_share=args.tail_share, tail_ms=tuple(args.tail_ms),
                    delivery_ms=args.delivery_ms, duration_s=args.duration, warmup_s=args.warmup)
            runs.append(r)
            print(f"seed {seed} {rule:10s}: 10 ms apps {100 * r['tight_within'][0]:.1f}-{100 * r['tight_within'][1]:.1f} %, "
                  f"33 ms apps {100 * r['loose_within'][0]:.1f}-{100 * r['loose_within'][1]:.1f} %, "
                  f"{len(r['demoted'])} demoted, {len(r['flagged'])} flagged, {r['missed']} missed, "
                  f"{r['stolen_ticks']} ticks stolen", flush=True)
    path.write_text(json.dumps({'args': {k: (_shown(v) if isinstance(v, pathlib.Path) else v)
                                         for k, v in vars(args).items()}, 'runs': runs}, indent=1) + '\n')
    plot(args.out / 'demotion_stand_in.png', runs)
    return 0


if __name__ == '__main__':
    sys.exit(main())
