"""The worker's pipeline on a GPU, engine only (no ROS): the same backlog of frames served with
``pipeline='off'`` and ``'always'``. Checks that every frame gets the same answer (class and exit)
both ways, and times the backlog's service both ways (frames/s, alternated rounds).

    python benchmarks/pipeline_check.py --model cifar10_lite0 --device cuda --out pipeline_check.json

Frames: 640x480 blurred noise (what matters here is the bookkeeping and the device's idle gaps,
not accuracy); apps: full depth, a latency bound, and an accuracy bound that goes exit by exit on
each frame's confidence.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import threading
import time

import cv2
import numpy as np
import torch

from delen_ros.core import zoo
from delen_ros.core.bounds import Bounds
from delen_ros.core.engine import Engine, make_runner
from delen_ros.core.profile import Profile, device_slug, profile_filename

APPS = {'final': Bounds(), 'bounded': Bounds(max_latency_ms=5000.0),
        'accurate': Bounds(min_accuracy=0.9, objective='min_energy')}


class Collector:
    def __init__(self, expected: int):
        self.results, self.expected, self.done = [], expected, threading.Event()

    def __call__(self, result) -> None:
        self.results.append(result)
        if len(self.results) >= self.expected:
            self.done.set()


def serve(model, profile, runner, frames, *, pipeline: str, cameras: int, max_batch: int) -> dict:
    """Every frame queued for every app before the worker starts; served to the end."""
    collector = Collector(len(frames) * len(APPS))
    engine = Engine(model, profile, runner=runner, on_result=collector, max_batch=max_batch,
                    queue_depth=len(frames), admission_control=False, pipeline=pipeline)
    for app_id, bounds in APPS.items():
        engine.set_app(app_id, bounds)
    for i, image in enumerate(frames):
        engine.submit(list(APPS), image, tag=i)
    t0 = time.perf_counter()
    engine.start(warm_up=False)
    try:
        if not collector.done.wait(120):
            raise RuntimeError(f'{len(collector.results)} of {collector.expected} results in 120 s')
        seconds = time.perf_counter() - t0
        worker = engine.worker_stats()
    finally:
        engine.stop()
    answers = {(r.app_id, r.tag): (r.class_id, r.exit_index) for r in collector.results}
    return {'answers': answers, 'frames_per_s': len(frames) / seconds, 'seconds': seconds,
            'pipelined_runs': worker.pipelined_runs, 'mean_batch': worker.mean_batch}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='cifar10_lite0')
    p.add_argument('--device', default='cuda')
    p.add_argument('--frames', type=int, default=512)
    p.add_argument('--max-batch', type=int, default=32)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--out', default='pipeline_check.json')
    args = p.parse_args(argv)
    model = zoo.load_model(args.model, device=args.device)
    profile = Profile.load(zoo.models_dir() / 'profiles' / profile_filename(model.info.name, device_slug(args.device)))
    runner = make_runner(model, device=args.device, max_batch=args.max_batch, options={'cuda_graphs': True})
    runner.warmup()
    rng = np.random.default_rng(0)
    frames = [cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
              for _ in range(args.frames)]
    runs = {'off': [], 'always': []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(serve(model, profile, runner, frames, pipeline=mode, cameras=len(APPS),
                                    max_batch=args.max_batch))
    base = runs['off'][0]['answers']
    differing = {mode: [sum(base[k] != r['answers'].get(k) for k in base) for r in rs] for mode, rs in runs.items()}
    exits = sorted({e for (app, _), (_, e) in base.items() if app == 'accurate'})
    report = {
        'device': torch.cuda.get_device_name() if args.device.startswith('cuda') else args.device,
        'model': args.model, 'frames': args.frames, 'apps': list(APPS), 'max_batch': args.max_batch,
        'accurate_app_exits': exits, 'answers': len(base),
        'answers_differing_from_the_first_unpipelined_round': differing,
        'frames_per_s': {m: [round(r['frames_per_s'], 1) for r in rs] for m, rs in runs.items()},
        'pipelined_runs': {m: [r['pipelined_runs'] for r in rs] for m, rs in runs.items()},
        'mean_batch': {m: [round(r['mean_batch'], 2) for r in rs] for m, rs in runs.items()},
    }
    report['speedup_median'] = statistics.median(report['frames_per_s']['always']) / \
        statistics.median(report['frames_per_s']['off'])
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    worst = max(max(v) for v in differing.values())
    return 0 if worst <= 0.01 * len(base) else 1


if __name__ == '__main__':
    sys.exit(main())
