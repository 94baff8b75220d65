"""How a camera's growth of a 32x32 CIFAR-10 photo to a stream size changes what the committee sees (session 46).

    DELEN_CIFAR10=<npz> python benchmarks/cpu/camera_growth_session46/camera_growth.py [--count 1000] [--size 320x240]

Per way of growing the photo to ``--size`` (none: the photo itself, the profile's path; ``bilinear``:
``cv2.INTER_LINEAR``, the camera player's rule for sizes that are not whole multiples until session 46;
``area``: ``cv2.INTER_AREA``, its rule now), then the CPU preprocessing (``INTER_AREA`` to 160x160): each exit's
accuracy and the CPU profile's cascades at the demo's inspection bound (0.896) and issue 9's (0.9415) applied to
the test photos. Writes ``camera_growth.json`` beside this file.
"""
import argparse
import json
import pathlib

import cv2
import numpy as np
import torch

from delen_ros.core import datasets, zoo
from delen_ros.core.preprocess import preprocess
from delen_ros.core.profile import Profile
from delen_ros.core.profiling import cascade_report
from delen_ros.core.runner import StageRunner

HERE = pathlib.Path(__file__).resolve().parent
PROFILE = HERE.parents[2] / 'models' / 'profiles' / 'cifar10_committee__cpu-intel-r-xeon-r-processor.json'


def outputs(runner, info, frames, batch=250):
    confs, preds = [[] for _ in range(runner.num_exits)], [[] for _ in range(runner.num_exits)]
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            x = runner.to_input(preprocess(frames[i:i + batch], info))
            for k in range(runner.num_exits):
                x = runner.stage(k, x)
                c, p = torch.softmax(runner.head(k, x).float(), dim=1).max(dim=1)
                confs[k].append(c.numpy())
                preds[k].append(p.numpy())
    return np.array([np.concatenate(c) for c in confs]), np.array([np.concatenate(p) for p in preds])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--count', type=int, default=1000)
    ap.add_argument('--size', default='320x240')
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split('x'))
    model = zoo.load_model('cifar10_committee')
    runner = StageRunner(model, device='cpu', max_batch=250)
    profile = Profile.load(PROFILE)
    images, labels = datasets.load_cifar10('test', limit=args.count)
    out = {'count': len(labels), 'size': args.size, 'profile': PROFILE.name, 'ways': {}}
    for name, interpolation in (('photo', None), ('bilinear', cv2.INTER_LINEAR), ('area', cv2.INTER_AREA)):
        frames = list(images) if interpolation is None else [cv2.resize(im, size, interpolation=interpolation)
                                                             for im in images]
        conf, pred = outputs(runner, model.info, frames)
        correct = pred == labels[None, :]
        out['ways'][name] = {'exit_accuracy': [round(float(a), 4) for a in correct.mean(axis=1)],
                             'cascades': cascade_report(profile, conf, correct, bounds=[0.896, 0.9415])}
        print(name, out['ways'][name]['exit_accuracy'],
              [(r['min_accuracy'], r['accuracy'], r['fractions'][0]) for r in out['ways'][name]['cascades']], flush=True)
    (HERE / 'camera_growth.json').write_text(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__':
    main()
