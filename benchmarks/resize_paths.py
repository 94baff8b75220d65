"""Does the device preprocessing give the model the photo its profile was calibrated on?

    python3 benchmarks/resize_paths.py --model cifar10_committee --device cuda --out OUT [--limit 10000]
    python3 benchmarks/resize_paths.py --as-before -m delen_ros.tools.bench --model ... --out ...

The profile's per-exit accuracy and its cascade's thresholds were measured on frames resized by the
CPU path (``cv2.INTER_AREA``). Until session 46 the device path grew frames bilinearly (32x32 CIFAR-10
photos to the committee's 160x160), a blurred photo. Per path, on the CIFAR-10 test photos: each exit's
accuracy, and the committed profile's cascades applied to them (where frames stop, the stream's accuracy):

* ``cpu``: ``preprocess`` (cv2, the profile's path), then to the device;
* ``device``: ``DevicePreprocessor`` as shipped (``core/area_resize.py``);
* ``device_bilinear``: ``DevicePreprocessor`` growing bilinearly, as before.

The model runs eagerly in the runner's precision (graphs compute the same). Writes ``OUT/resize_paths.json``.

``--as-before -m MODULE ARGS``: run a module (``delen_ros.tools.bench``) with the device path as before,
for an A/B of a whole benchmark in one call.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import runpy
import sys
import time

import numpy as np
import torch

from delen_ros.core import datasets, preprocess as preprocess_module, zoo
from delen_ros.core.area_resize import area_resize
from delen_ros.core.profile import Profile, device_slug, profile_filename
from delen_ros.core.profiling import cascade_report
from delen_ros.core.runner import StageRunner

PATHS = ('cpu', 'device', 'device_bilinear')


def bilinear_growth(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The device path's resize before session 46: torch's ``area`` shrinking, bilinear growing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] >= size[0] and x.shape[-1] >= size[1]
    if shrink:
        return torch.nn.functional.interpolate(x.float(), size=size, mode='area')
    return torch.nn.functional.interpolate(x.float(), size=size, mode='bilinear', align_corners=False)


def _outputs(runner: StageRunner, batches) -> tuple[np.ndarray, np.ndarray]:
    """Per exit and image: max-softmax confidence and predicted class, as the engine computes them."""
    confs, preds = [[] for _ in range(runner.num_exits)], [[] for _ in range(runner.num_exits)]
    for x in batches:
        x = runner.to_input(x)
        for k in range(runner.num_exits):
            x = runner.stage(k, x)
            c, p = torch.softmax(runner.head(k, x).float(), dim=1).max(dim=1)
            confs[k].append(c.cpu().numpy())
            preds[k].append(p.cpu().numpy())
    return np.array([np.concatenate(c) for c in confs]), np.array([np.concatenate(p) for p in preds])


def measure(args) -> dict:
    model = zoo.load_model(args.model)
    runner = StageRunner(model, device=args.device, max_batch=args.batch, precision='auto')
    info = model.info
    profile_path = args.profile or str(pathlib.Path('models/profiles') / profile_filename(args.model, device_slug(args.device)))
    profile = Profile.load(profile_path)
    images, labels = datasets.load_cifar10('test', limit=args.limit)
    chunks = [list(images[i:i + args.batch]) for i in range(0, len(images), args.batch)]
    cuda = args.device.startswith('cuda')
    out = {'model': args.model, 'device': args.device, 'profile': profile_path, 'images': len(labels),
           'bounds': args.bounds, 'torch': torch.__version__, 'paths': {}}
    for path in PATHS if cuda else PATHS[:1]:
        if path == 'cpu':
            batches = (preprocess_module.preprocess(c, info) for c in chunks)
        else:
            pre = preprocess_module.DevicePreprocessor(
                info, torch.device(args.device), dtype=runner.dtype,
                memory_format=torch.channels_last if runner.channels_last else torch.contiguous_format)
            resize = area_resize if path == 'device' else bilinear_growth
            preprocess_module.area_resize = resize   # the module's global, read per call
            batches = (pre(c) for c in chunks)
        t0 = time.perf_counter()
        try:
            confs, preds = _outputs(runner, batches)
        finally:
            preprocess_module.area_resize = area_resize
        correct = preds == labels[None, :]
        out['paths'][path] = {
            'exit_accuracy': [round(float(a), 4) for a in correct.mean(axis=1)],
            'mean_confidence': [round(float(c), 4) for c in confs.mean(axis=1)],
            'cascades': cascade_report(profile, confs, correct, bounds=args.bounds),
            'seconds': round(time.perf_counter() - t0, 1)}
        row = next(r for r in out['paths'][path]['cascades'] if r['feasible'])
        print(f'{path:>16}: exits {out["paths"][path]["exit_accuracy"]}; at {row["min_accuracy"]}: stream '
              f'{row["accuracy"]}, stops {row["fractions"]}', flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--as-before']:
        if argv[1:2] != ['-m'] or len(argv) < 3:
            raise SystemExit('usage: resize_paths.py --as-before -m MODULE [ARGS...]')
        preprocess_module.area_resize = bilinear_growth
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name='__main__', alter_sys=True)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='cifar10_committee')
    p.add_argument('--device', default='cuda')
    p.add_argument('--profile', default=None, help='default: the committed profile of this model on this device')
    p.add_argument('--bounds', type=lambda s: [float(b) for b in s.split(',')], default=[0.9415, 0.9438, 0.9338])
    p.add_argument('--limit', type=int, default=None, help='test photos (default: all 10 000)')
    p.add_argument('--batch', type=int, default=250)
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    result = measure(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'resize_paths.json').write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
