"""How far apart are admission's costs at configure and under load? (issue 10, session 17)

Apps in the node's ``apps`` parameter are admitted at configure, before any frame is measured: on the
profile's step times (CUDA-graph replays) and the priors for the frames' age and the serving overhead.
On the H200 such a set (8 apps at 10 ms beside 8 accuracy-bound cascades at 33 ms, 16 cameras at
30 Hz, ``cifar10_resnet9``) was admitted, and its 10 ms apps then met their bound for 86.7-100 % of
frames while the node's re-check said "frames due within 5.18 ms need 7.17 ms of device time".

This replays the configure-time verdict with the engine's own admission code (ROS-free, no frame, no
device: the H200 profile as committed) and asks how much dearer the steps, or each worker turn, must
be before the same set is refused. The answer says what admission at configure is missing.

    python benchmarks/configure_admission_gap.py --out benchmarks/cpu/configure_admission_gap   (seconds)

Writes configure_admission_gap.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from delen_ros.core import admission, zoo  # noqa: E402
from delen_ros.core.bounds import Bounds, Objective  # noqa: E402
from delen_ros.core.engine import Engine  # noqa: E402
from delen_ros.core.profile import Profile  # noqa: E402


def configured_engine(profile_path: pathlib.Path, model: str, cameras: int, rate_hz: float) -> Engine:
    """An engine with the node's configure-time settings and the mixed set registered, as the
    ``apps`` parameter does (alternating a 10 ms app and a 33 ms app with accuracy >= 0.9124)."""
    engine = Engine(zoo.load_model(model, device='cpu'), Profile.load(profile_path), device='cpu', max_batch=32,
                    on_result=lambda result: None, transport_prior_ms=2.0, delivery_allowance_ms=1.0)
    for i in range(cameras):
        bounds = Bounds(max_latency_ms=10.0) if i % 2 == 0 else Bounds(
            max_latency_ms=33.0, min_accuracy=0.9124, objective=Objective.MIN_ENERGY)
        engine.set_app(f'cam{i:02d}', bounds, rate_hz=rate_hz, source=f'/cam{i:02d}')
    return engine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='cifar10_resnet9')
    p.add_argument('--profile', default=str(ROOT / 'models/profiles/cifar10_resnet9__cuda-nvidia-h200.json'))
    p.add_argument('--cameras', type=int, default=16)
    p.add_argument('--rate', type=float, default=30.0)
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    engine = configured_engine(pathlib.Path(args.profile), args.model, args.cameras, args.rate)
    cost = engine._cost_model()
    with engine._cond:
        now = engine.clock()
        tasks = [engine._task(a, st, now) for a, st in sorted(engine._apps.items(), key=lambda item: item[1].seq)]

    def verdict(model: admission.CostModel) -> dict:
        v = admission.check(tasks, model)
        return {'ok': v.ok, 'utilisation': round(v.utilisation, 3),
                'first_reason': next(iter(v.at_risk.values()), '')}

    rows = {'configure': verdict(cost)}
    for factor in (2, 3, 4, 5, 6):
        rows[f'steps x{factor}'] = verdict(dataclasses.replace(
            cost, step_ms=lambda k, b, f=factor: f * cost.step_ms(k, b)))
    for turn_ms in (0.25, 0.5, 0.75, 1.0):
        rows[f'turn +{turn_ms} ms'] = verdict(dataclasses.replace(cost, turn_ms=turn_ms))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {'model': args.model, 'profile': pathlib.Path(args.profile).name, 'cameras': args.cameras,
              'rate_hz': args.rate, 'outside_ms_at_configure': engine._outside_ms(),
              'step_ms_batch1': [round(cost.step_ms(k, 1), 3) for k in range(cost.num_exits)],
              'runs_stop_at': [list(t.stops) for t in tasks[:2]], 'verdicts': rows}
    (out / 'configure_admission_gap.json').write_text(json.dumps(record, indent=1) + '\n')
    for name, row in rows.items():
        print(f'{name:>14}: {"admitted" if row["ok"] else "refused "} device {row["utilisation"]:.0%} '
              f'{row["first_reason"][:110]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
