"""Where a lone frame's time goes in the engine: arrival -> result, split at the flight recorder's spans.

    DELEN_TRACE=/tmp/t.jsonl python3 benchmarks/lone_frame.py --model cifar10_committee --device cuda \
        --cuda-graphs --out OUT [--frames 300] [--gap-ms 20] [--four-pass-normalise]

Frames go one at a time, ``--gap-ms`` after the previous result (the worker idle between them), as
``delen_bench``'s served-latency probe sends them. Two runs: ``delen`` with a MIN_LATENCY app
(the first exit) and ``always_final`` (one fused run to the final exit). Per run, the median of each
phase over the frames after a fifth of warm-up:

* ``submit``: arrival -> ``Engine.submit`` returns (its upload ahead on CUDA: ``upload``, a part of it);
* ``wake``: -> the worker starts the launch (wake-up, lock, the scheduler's choice);
* ``plan``, ``input`` (preprocessing and the batch's input), ``launch`` (queueing the steps);
* ``wait``: -> the device's results are on the host; ``decide``: the policy's decisions;
* ``deliver``: -> the result is built and handed to ``on_result``;
* ``other``: the rest of the frame's latency, between those spans.

``--four-pass-normalise``: the device preprocessing's normalisation as before session 27 (a float
copy, subtract, multiply, cast: four launches) instead of ``preprocess.normalise``'s one, for an A/B in
one call.

The figures a user sees add the node's and DDS's costs to these (``delen_e2e_bench``). Writes
``OUT/lone_frame.json``. Needs ``DELEN_TRACE`` set before the interpreter starts (the recorder is
created at import).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import threading
import time

import torch

from delen_ros.core import flight_recorder, preprocess, zoo
from delen_ros.core.bounds import Bounds, Objective
from delen_ros.core.engine import Engine, make_runner
from delen_ros.core.profile import Profile, device_slug, profile_filename
from delen_ros.tools.bench import _load_frames

PARTS = ('submit', 'wake', 'plan', 'input', 'launch', 'wait', 'decide', 'deliver')
PHASES = (*PARTS, 'other', 'total')


def _fields(span: tuple) -> dict:
    """A recorded span's keyword fields (:meth:`FlightRecorder.add` keeps them flat after the times)."""
    return dict(zip(span[4::2], span[5::2]))


def _phases(spans: list[tuple], t_arrivals: list[int]) -> list[dict[str, float]]:
    """One dict of phase ms per frame, matching the worker's spans to the frames in time order."""
    by_kind: dict[str, list[tuple]] = {}
    for s in spans:
        by_kind.setdefault(s[0], []).append(s)
    submits, launches, completes, results = (by_kind.get(k, []) for k in ('submit', 'launch', 'complete', 'result'))
    ms = 1e-6
    rows = []
    for arrival in t_arrivals:
        sub = next(s for s in submits if s[2] >= arrival)
        result = next(s for s in results if s[2] == arrival)
        runs = [s for s in launches if sub[3] <= s[2] <= result[3]]
        looks = [s for s in completes if sub[3] <= s[2] <= result[3]]
        if not runs or not looks:
            continue
        first = _fields(runs[0])
        rows.append({
            'submit': (sub[3] - arrival) * ms,
            'upload': _fields(sub).get('upload_ns', 0) * ms,   # of it, the upload ahead (not in PARTS' sum)
            'wake': (runs[0][2] - sub[3]) * ms,
            'plan': first['plan_ns'] * ms,
            'input': (first['run_ns'] - runs[0][2] - first['plan_ns']) * ms,
            'launch': sum(r[3] - _fields(r)['run_ns'] for r in runs) * ms,
            'wait': sum(_fields(c)['synced_ns'] - c[2] for c in looks) * ms,
            'decide': sum(c[3] - _fields(c)['synced_ns'] for c in looks) * ms,
            'deliver': (result[3] - looks[-1][3]) * ms,
            'total': (result[3] - arrival) * ms,
            'turns': len(runs),
        })
        # what no span covers: between the launch and the wait, and a run's end to the next's start
        rows[-1]['other'] = rows[-1]['total'] - sum(rows[-1][p] for p in PARTS)
    return rows


def _four_passes(x: torch.Tensor, inv_std: torch.Tensor, shift: torch.Tensor, *, dtype: torch.dtype,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``preprocess.normalise`` as it was computed before session 27."""
    mean = _MEANS.get(id(shift))
    if mean is None:
        mean = _MEANS[id(shift)] = -shift / inv_std
    return ((x.float() - mean) * inv_std).to(dtype=dtype, memory_format=memory_format)


_MEANS: dict[int, torch.Tensor] = {}


def _run(model, profile: Profile, runner, images, *, policy: str, count: int, gap_s: float) -> dict:
    recorder = flight_recorder.RECORDER
    done = threading.Event()
    engine = Engine(model, profile, policy=policy, runner=runner, max_batch=1, on_result=lambda r: done.set(),
                    upload_ahead=os.environ.get('DELEN_UPLOAD_AHEAD', '1') != '0')   # as the node reads it
    engine.set_app('probe', Bounds(objective=Objective.MIN_LATENCY))
    engine.start(background_capture=False)
    arrivals = []
    try:
        recorder.spans.clear()
        for i in range(count):
            done.clear()
            arrivals.append(time.perf_counter_ns())
            engine.submit(['probe'], images[i % len(images)], arrival_ns=arrivals[-1])
            if not done.wait(5.0):
                raise RuntimeError('no result within 5 s')
            time.sleep(gap_s)
    finally:
        engine.stop()
    rows = _phases(list(recorder.spans), arrivals)[count // 5:]
    out = {p: round(statistics.median(r[p] for r in rows), 4) for p in (*PHASES, 'upload')}
    out['total_p90'] = round(sorted(r['total'] for r in rows)[int(0.9 * len(rows))], 4)
    out['turns'] = statistics.median(r['turns'] for r in rows)
    out['frames'] = len(rows)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='cifar10_lite0')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--cuda-graphs', action='store_true')
    ap.add_argument('--frames', type=int, default=300)
    ap.add_argument('--gap-ms', type=float, default=20.0)
    ap.add_argument('--out', required=True)
    ap.add_argument('--four-pass-normalise', action='store_true')
    args = ap.parse_args(argv)
    if args.four_pass_normalise:
        preprocess.normalise = _four_passes   # DevicePreprocessor._convert looks it up at each call
    if flight_recorder.RECORDER is None:
        print('set DELEN_TRACE=<file> first: the flight recorder is made at import', file=sys.stderr)
        return 2
    model = zoo.load_model(args.model, device=args.device)
    info = model.info
    frames = _load_frames(info.name, count=200, offset=0, frames_path=None, seed=0, input_size=info.input_size,
                          channels=info.in_channels)
    runner = make_runner(model, device=args.device, max_batch=8,
                         options={'cuda_graphs': True} if args.cuda_graphs else {})
    slug = device_slug(args.device)
    found = sorted((zoo.models_dir() / 'profiles').glob(profile_filename(info.name, slug, '')))
    found = found or sorted((zoo.models_dir() / 'profiles').glob(f'{info.name}__{slug.split("-")[0]}-*.json'))
    profile = Profile.load(found[0])
    report = {'model': info.name, 'device': slug, 'profile': found[0].name, 'gap_ms': args.gap_ms,
              'normalise': 'four passes' if args.four_pass_normalise else 'one pass',
              'torch': torch.__version__, 'env': {k: v for k, v in os.environ.items() if k.startswith('DELEN_')},
              'profile_ms': {'exit0': profile.exit_latency_ms(0),
                             'final': profile.exit_latency_ms(profile.final_exit)}}
    for policy in ('delen', 'always_final'):
        report[policy] = _run(model, profile, runner, frames.images, policy=policy, count=args.frames,
                              gap_s=args.gap_ms / 1e3)
        print(policy, json.dumps(report[policy]), flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'lone_frame.json').write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
