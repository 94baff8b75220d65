"""Does a backlog clear? The engine alone (no ROS), many apps with one latency bound, a GPU stood in
for by sleeps, a stall injected; A/B of what the engine learns step times by and of what ends a
fused run (issue 8, session 8). Variants (``--variants``):

  per_batch   the corrector learns per (step, batch size) (before session 8), runs end for any waiting frame
  pooled      one level per step for every batch size (``LatencyCorrector.pool_batch_sizes``, the engine's now)
  earlier     per_batch, and a run ends only for work due before its own members (``Engine.split_runs_for``)
  pre_per_frame  pooled, with preprocessing's cost learnt per frame only and every stall taken in full
              (before session 9; the engine now learns per call + per frame, a lone stall clamped:
              ``core/batch_cost.BatchCost``)
  pre_clamped pre_per_frame with the stall clamp alone
  choice_behind  pooled, with steps taken by choice while the app is behind (before session 39)
  no_choice_behind  pooled, a frame of an app that is behind stops at the first exit meeting its bounds
              (``Engine.choice_steps_when_behind`` off: the engine's default since session 39)

``--pre-call-ms``: preprocessing costs this much Python (GIL held) per call whatever the batch, as the
GPU path does (a few kernel launches for the whole batch); 0: the CPU preprocessing of a tiny image.

On the H200 at 32 cameras one node sometimes stayed in a state where every fused run ended after one
step (a frame always waits), capacity fell and frames went late for the whole window, with the GPU
18-19 % busy (benchmarks/h200/e2e_native_first). Here the "GPU" is ``FakeRunner``'s sleeps (the
GIL is free meanwhile, as during a CUDA sync): ``--step-ms`` per step for a whole batch, as an H200
runs cifar10_lite0's stages at batch 1-32 in about the same time. The worker's Python per turn
(scheduling, decisions, accounting) is this machine's own, and it is what fragmentation multiplies.

    python benchmarks/fused_runs.py --out benchmarks/cpu/fused_runs            (about 3 minutes)

Writes fused_runs.json and fused_runs.png (the first repeat): per configuration, the share of frames
answered within the bound (unanswered = miss) per 250 ms, worker turns per frame, steps per turn,
and whether it recovered (every bin of the last 2 s at >= 99 %).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import pathlib
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))

from delen_ros.core.batch_cost import BatchCost  # noqa: E402
from delen_ros.core.bounds import Bounds  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from fakes import FakeRunner, fake_image, fake_model, synthetic_profile  # noqa: E402


class StallingRunner(FakeRunner):
    """``FakeRunner`` whose next stage call sleeps ``stall_ms`` extra once :meth:`stall` is called."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stall_ms = 0.0

    def stall(self, ms: float) -> None:
        self._stall_ms = ms

    def stage(self, k, x):
        if self._stall_ms:
            ms, self._stall_ms = self._stall_ms, 0.0
            time.sleep(ms / 1000.0)
        return super().stage(k, x)


def busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def with_pre_call_cost(engine: Engine, pre_call_ms: float) -> None:
    """Make each of ``engine``'s preprocessing calls cost ``pre_call_ms`` of Python (GIL held) on top, whatever
    the batch, as the GPU path's kernel launches do."""
    if pre_call_ms <= 0:
        return
    preprocess = engine._preprocess

    def gpu_like(images):
        busy(pre_call_ms)
        return preprocess(images)

    engine._preprocess = gpu_like


def offer(engine: Engine, runner: StallingRunner, names: list[str], *, rate_hz: float, duration_s: float,
          stall_at_s: float, stall_ms: float) -> tuple[int, list[int]]:
    """Submit a frame of every app in ``names`` once a period, spread over it (as free-running cameras),
    for ``duration_s``; ``runner`` stalls ``stall_ms`` once at ``stall_at_s``; then 0.5 s to drain.
    Returns the start and when each frame was submitted (monotonic ns)."""
    image = fake_image(1, 200)
    sent: list[int] = []
    t0 = time.monotonic_ns()
    period_ns = int(1e9 / rate_hz)
    end_ns = t0 + int(duration_s * 1e9)
    stalled = False
    # due times only grow
    schedule = ((t0 + tick * period_ns + i * period_ns // len(names), name)
                for tick in itertools.count() for i, name in enumerate(names))
    for due, name in schedule:
        if due >= end_ns:
            break
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        if not stalled and due - t0 >= stall_at_s * 1e9:
            runner.stall(stall_ms)
            stalled = True
        now = time.monotonic_ns()
        engine.submit([name], image, arrival_ns=now)
        sent.append(now)
    time.sleep(0.5)   # drain
    return t0, sent


def run(*, variant: str, policy: str, apps: int, rate_hz: float, bound_ms: float, step_ms: list[float],
        duration_s: float, stall_at_s: float, stall_ms: float, pre_call_ms: float = 0.0, bin_s: float = 0.25,
        queue_depth: int = 1, finish_started: bool = True) -> dict:
    model = fake_model(len(step_ms), scales=[2.0 * (k + 1) for k in range(len(step_ms))])   # FAKE_SCALES at 4
    profile = synthetic_profile(len(step_ms), step_ms=step_ms, head_ms=0.02, batch_cost=0.0)
    runner = StallingRunner(model, sleep_ms=step_ms)
    results = []
    lock = threading.Lock()

    def on_result(r):
        with lock:
            results.append((r.arrival_ns, r.latency_ms, r.exit_index))

    engine = Engine(model, profile, runner=runner, policy=policy, max_batch=32, queue_depth=queue_depth,
                    on_result=on_result, device_preprocess=False)
    engine.finish_started = finish_started   # benchmarks/overload_collapse.py's A/B
    engine.split_runs_for = 'earlier' if variant == 'earlier' else 'any'
    engine.corrector.pool_batch_sizes = variant in ('pooled', 'pre_per_frame', 'pre_clamped', 'choice_behind',
                                                    'no_choice_behind')
    engine.choice_steps_when_behind = variant != 'no_choice_behind'
    if variant == 'pre_per_frame':   # as before session 9
        engine.preprocess_cost = BatchCost.per_frame_only()
    elif variant == 'pre_clamped':
        engine.preprocess_cost = BatchCost(per_call=False)
    with_pre_call_cost(engine, pre_call_ms)
    names = [f'cam{i:02d}' for i in range(apps)]
    for name in names:
        engine.set_app(name, Bounds(max_latency_ms=bound_ms))
    turns = [0]
    launch = engine._launch

    def counted(batch, decision_ns, **kwargs):
        turns[0] += 1
        return launch(batch, decision_ns, **kwargs)

    engine._launch = counted
    engine.start()
    warm_calls = len(runner.calls)   # warm-up's own stage calls are not served steps
    t0, sent = offer(engine, runner, names, rate_hz=rate_hz, duration_s=duration_s, stall_at_s=stall_at_s,
                     stall_ms=stall_ms)
    engine.stop()
    bins = int(math.ceil(duration_s / bin_s))
    sent_per_bin = [0] * bins
    within_per_bin = [0] * bins
    answered_per_bin = [0] * bins
    for t in sent:
        sent_per_bin[min(bins - 1, int((t - t0) / 1e9 / bin_s))] += 1
    for arrival, latency, _ in results:
        answered_per_bin[min(bins - 1, int((arrival - t0) / 1e9 / bin_s))] += 1
        if latency <= bound_ms:
            within_per_bin[min(bins - 1, int((arrival - t0) / 1e9 / bin_s))] += 1
    within = sum(within_per_bin)
    latencies = sorted(latency for _, latency, _ in results)
    exits = [0] * len(step_ms)
    for *_, k in results:
        exits[k] += 1
    after = int((stall_at_s + 1.0) / bin_s)   # from a second after the stall
    steps = len(runner.calls) - warm_calls
    return {'variant': variant, 'policy': policy, 'apps': apps, 'sent': len(sent), 'answered': len(results),
            'within_share': within / max(1, len(sent)),
            'within_share_from_1s_after_stall': sum(within_per_bin[after:]) / max(1, sum(sent_per_bin[after:])),
            'latency_p50_ms': latencies[len(latencies) // 2] if latencies else None,
            'latency_p99_ms': latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
            'latency_max_ms': latencies[-1] if latencies else None,
            'exit_mix': [round(n / max(1, len(results)), 4) for n in exits], 'stops_behind': engine.stops_behind,
            'turns_per_frame': turns[0] / max(1, len(sent)), 'steps_per_turn': steps / max(1, turns[0]),
            'within_share_by_bin': [w / s if s else None for w, s in zip(within_per_bin, sent_per_bin)],
            'answered_share_by_bin': [a / s if s else None for a, s in zip(answered_per_bin, sent_per_bin)]}


def plot_within_by_bin(path: pathlib.Path, panels: list, *, duration_s: float, stall_at_s: float) -> bool:
    """One panel per ``(title, lines)``, each line ``(label, dashed, share within the bound per bin)``
    over the run's seconds, the stall marked; false where matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels)), squeeze=False)
    for ax, (title, lines) in zip(axes[:, 0], panels):
        for label, dashed, bins in lines:
            ax.plot([duration_s * (i + 0.5) / len(bins) for i in range(len(bins))], bins, label=label,
                    ls='--' if dashed else '-')
        ax.axvline(stall_at_s, color='grey', lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel('within bound'); ax.set_ylim(0, 1.05); ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel('seconds')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'fused_runs')
    p.add_argument('--apps', type=int, nargs='+', default=[16, 32])
    p.add_argument('--rate', type=float, default=30.0)
    p.add_argument('--bound-ms', type=float, default=33.0)
    p.add_argument('--step-ms', type=float, nargs='+', default=[0.5, 0.4, 0.4, 0.6])
    p.add_argument('--duration', type=float, default=6.0)
    p.add_argument('--stall-at', type=float, default=1.5)
    p.add_argument('--stall-ms', type=float, default=80.0)
    p.add_argument('--policies', nargs='+', default=['always_final', 'delen'])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--pre-call-ms', type=float, default=0.0)
    p.add_argument('--variants', nargs='+', default=['per_batch', 'pooled'],
                   choices=['per_batch', 'pooled', 'earlier', 'pre_per_frame', 'pre_clamped', 'choice_behind',
                            'no_choice_behind'])
    args = p.parse_args()
    rows = []
    for apps in args.apps:
        for policy in args.policies:
            for repeat in range(args.repeats):
                for variant in args.variants:   # alternated, same conditions
                    row = run(variant=variant, policy=policy, apps=apps, rate_hz=args.rate, bound_ms=args.bound_ms,
                              step_ms=args.step_ms, duration_s=args.duration, stall_at_s=args.stall_at,
                              stall_ms=args.stall_ms, pre_call_ms=args.pre_call_ms)
                    row['repeat'] = repeat
                    tail = [x for x in row['within_share_by_bin'][-int(2.0 / 0.25):] if x is not None]
                    row['recovered'] = bool(tail) and min(tail) >= 0.99   # every bin of the last 2 s
                    rows.append(row)
                    print(f"{apps:3d} apps {policy:13s} {variant:9s} #{repeat}: within {row['within_share']:.3f} "
                          f"(from 1 s after the stall {row['within_share_from_1s_after_stall']:.3f}, recovered "
                          f"{row['recovered']}), turns/frame {row['turns_per_frame']:.3f}, steps/turn "
                          f"{row['steps_per_turn']:.2f}", flush=True)
    summary = {}
    for variant in args.variants:
        runs = [r for r in rows if r['variant'] == variant]
        summary[variant] = {'recovered': f"{sum(r['recovered'] for r in runs)} of {len(runs)}"}
        for apps in args.apps:
            for policy in args.policies:
                some = [r for r in runs if (r['apps'], r['policy']) == (apps, policy)]
                summary[variant][f'{apps} apps, {policy}'] = {
                    'recovered': f"{sum(r['recovered'] for r in some)} of {len(some)}",
                    'within_from_1s_after_stall': [round(r['within_share_from_1s_after_stall'], 3) for r in some],
                    'steps_per_turn': [round(r['steps_per_turn'], 2) for r in some]}
    print(json.dumps(summary, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items() if k != 'out'}
    (args.out / 'fused_runs.json').write_text(json.dumps({'meta': meta, 'summary': summary, 'runs': rows}, indent=1))
    stall = f'{args.stall_ms:g} ms stall at {args.stall_at:g} s'
    plot_within_by_bin(args.out / 'fused_runs.png', [
        (f'{apps} apps x {args.rate:g} Hz, {args.bound_ms:g} ms bound, {stall}',
         [(f"{row['policy']}, {row['variant']}", row['variant'] != 'pooled', row['within_share_by_bin'])
          for row in rows if row['apps'] == apps and row['repeat'] == 0])
        for apps in args.apps], duration_s=args.duration, stall_at_s=args.stall_at)
    return 0


if __name__ == '__main__':
    sys.exit(main())
