"""What a frame's upload ahead costs its caller, with the thread busy or just woken (a lone frame's case).

    python3 benchmarks/upload_gap.py --device cuda --out OUT

``DevicePreprocessor.upload`` (a CIFAR-10 photo, 32x32x3, and a 640x480x3 camera frame) and its parts, each
timed alone: ``copyto`` (into a pinned buffer), ``to_device`` (``.to(non_blocking=True)`` on the upload
stream), ``event`` (a new event recorded there). Per shape and gap (0: back to back; 20 ms: the caller sleeps
between frames, as ``benchmarks/lone_frame.py``'s driver), the median microseconds of ``--reps`` calls. On an
H200 host a lone frame's submit took 0.52 ms, 0.08-0.14 ms on a 2-core CPU without an upload (session 46).
Writes ``OUT/upload_gap.json``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import torch

from delen_ros.core import zoo
from delen_ros.core.preprocess import DevicePreprocessor


def _median_us(fn, reps: int, gap_s: float) -> float:
    times = []
    for _ in range(reps):
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return round(statistics.median(times[reps // 5:]), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--model', default='cifar10_committee')
    ap.add_argument('--reps', type=int, default=200)
    ap.add_argument('--out', required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    pre = DevicePreprocessor(zoo.load_model(args.model).info, device)
    stream = torch.cuda.Stream(device=device)
    out = {}
    for shape in ((32, 32, 3), (480, 640, 3)):
        frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        pinned = torch.empty(shape, dtype=torch.uint8, pin_memory=True)

        def to_device():
            with torch.cuda.stream(stream):
                pinned.to(device, non_blocking=True)

        def event():
            torch.cuda.Event().record(stream)

        parts = {'upload': lambda: pre.upload(frame), 'copyto': lambda: np.copyto(pinned.numpy(), frame),
                 'to_device': to_device, 'event': event}
        for gap_ms in (0.0, 20.0):
            key = f'{shape[1]}x{shape[0]}_gap{gap_ms:g}ms'
            out[key] = {name: _median_us(fn, args.reps if gap_ms else 4 * args.reps, gap_ms / 1e3)
                        for name, fn in parts.items()}
            torch.cuda.synchronize()
            print(key, out[key], flush=True)
    path = pathlib.Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    (path / 'upload_gap.json').write_text(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
