"""``delen_profile``: measure a multi-exit model's per-exit profile on this device.

For every exit ``k`` and batch size ``b``: the time of stage ``k`` and of head ``k`` (warm, p50 and
p99, CUDA synchronised around each, through the same :class:`~delen_ros.core.runner.StageRunner`
the engine serves with); the energy per frame of the step (stage + head) where a meter exists;
the exit's accuracy and confidence calibration on held-out data. Writes
``models/profiles/<model>__<device_slug>.json`` and two plots beside it (accuracy vs latency,
accuracy vs energy).

Energy. A meter reads the whole device (idle draw included) and NVML moves only every ~100 ms, so
each step runs in a loop for ``--energy-window-s`` (at least 5 meter periods), the window aligned
to the meter's updates at both ends, and energy / iterations / batch size is the step's energy per
frame. Idle power is measured first (same alignment, the device idle right after one run). The
profile's ``stage_energy_mj`` *includes* idle power (what the engine's meter windows also see),
``energy_includes_idle=True``;
``--subtract-idle`` stores the energy above idle instead. Either way ``meta`` holds the idle power
and the other table. Without a meter, energy = p50 step time x ``--estimate-power-w`` / batch size,
``energy_source='estimate'``: the assumed power stands for what computing adds to the idle draw
(default: 5 W per torch CPU thread, 100 W on a GPU; rough figures, so such profiles say so).

Accuracy on ``delen_ros.core.datasets.eval_set(model)``: top-1 against labels where they exist,
else agreement with the final exit's answers (``accuracy_note`` says which). Calibration rows per
exit: ``(threshold, accuracy of inputs with confidence >= threshold, their fraction)``; and, in
``samples``, every exit's confidence and correctness on the same inputs (up to ``--max-samples``),
from which ``Profile.cascade`` calibrates per-input early exit conditional on reaching each exit.

Honest evaluation. Where the model's data set has a validation split apart from its test set
(``datasets.calibration_set``: CIFAR-10's 5 000 held-out training photos for ``cifar10_lite0``), the
calibration rows and the per-input ``samples`` (hence every cascade threshold) come from it, and
only the reported per-exit accuracy from the test set; ``meta['cascade_test']`` then reports, per
accuracy bound, the cascade calibrated on the validation split as it does on the test set
(:func:`cascade_report`).

Examples::

    delen_profile fashion_mnist efficientnet_lite0 --device cpu --threads 2
    delen_profile efficientnet_lite0 --device cuda --cuda-graphs --batch-sizes 1,2,4,8,16,32,64
    delen_profile fashion_mnist --quick --out /tmp/profiles      # seconds; for tests
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

import torch

from ..core.energy import MeterUnavailable, available_meters, make_meter
from ..core.pointwise import CONV_KERNELS
from ..core.profile import Profile, profile_filename
from ..core.runner import PRECISIONS
from ..core.profiling import (CALIBRATION_THRESHOLDS, CPU_THREAD_POWER_W, GPU_POWER_W, DEFAULT_BATCH_SIZES, calibration_table, cascade_report,  # noqa: F401
                              default_estimate_power_w, format_cascade_report, measure_energy,
                              measure_idle_power_w, profile_model, quick_batch_sizes, quick_profile)

__all__ = ['profile_model', 'quick_profile', 'quick_batch_sizes', 'measure_energy', 'measure_idle_power_w',
           'calibration_table', 'plot_profile', 'format_profile', 'default_estimate_power_w',
           'CALIBRATION_THRESHOLDS', 'DEFAULT_BATCH_SIZES', 'main', 'cascade_report', 'format_cascade_report']


# --- reporting --------------------------------------------------------------------------------------------
def format_profile(profile: Profile) -> str:
    """A table: per exit, batch-1 step and cumulative latency (p50/p99), energy, accuracy."""
    sizes = sorted(profile.exits[0].stage_ms)
    big = sizes[-1]
    mark = '' if profile.energy_source != 'estimate' else '~'
    lines = [f'{profile.model} on {profile.device} ({profile.dtype}); energy: {profile.energy_source}'
             f'{" incl. idle" if profile.energy_includes_idle else ""}; accuracy: {profile.accuracy_note}',
             f'{"exit":>4} {"name":14s} {"step ms":>8} {"exit ms":>8} {"p99 ms":>8} {f"b{big} ms/fr":>10} '
             f'{"mJ/frame":>9} {f"b{big} mJ/fr":>10} {"accuracy":>8}']
    for k, e in enumerate(profile.exits):
        lines.append(f'{k:>4} {e.name:14s} {profile.step_ms(k):8.3f} {profile.exit_latency_ms(k):8.3f} '
                     f'{profile.exit_latency_ms(k, p99=True):8.3f} {profile.exit_latency_ms(k, big) / big:10.3f} '
                     f'{mark + format(profile.exit_energy_mj(k), ".3f"):>9} '
                     f'{mark + format(profile.exit_energy_mj(k, big), ".4f"):>10} '
                     f'{e.accuracy:8.4f}')
    return '\n'.join(lines)


def plot_profile(profile: Profile, path: str | pathlib.Path) -> list[pathlib.Path]:
    """Write ``<stem>.latency.png`` (accuracy vs cumulative latency) and ``<stem>.energy.png``
    (accuracy vs cumulative energy per frame) next to ``path`` (the profile's JSON); returns them.

    Each plot has a curve for batch 1 and one per frame at the largest profiled batch size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    sizes = sorted(profile.exits[0].stage_ms)
    acc = [e.accuracy for e in profile.exits]
    names = [e.name for e in profile.exits]
    is_agreement = 'agreement' in profile.accuracy_note
    ylabel = 'agreement with the final exit' if is_agreement else 'top-1 accuracy'
    est = ' (estimated)' if profile.energy_source == 'estimate' else f' ({profile.energy_source}' + \
        (', idle included)' if profile.energy_includes_idle else ', above idle)')
    curves = {
        'latency': ('latency to exit, ms', [
            ('batch 1, p50', [profile.exit_latency_ms(k) for k in range(profile.num_exits)], '-o'),
            ('batch 1, p99', [profile.exit_latency_ms(k, p99=True) for k in range(profile.num_exits)], ':x'),
            (f'batch {sizes[-1]}, per frame', [profile.exit_latency_ms(k, sizes[-1]) / sizes[-1]
                                                 for k in range(profile.num_exits)], '--s')]),
        'energy': ('energy to exit per frame, mJ' + est, [
            ('batch 1', [profile.exit_energy_mj(k) for k in range(profile.num_exits)], '-o'),
            (f'batch {sizes[-1]}', [profile.exit_energy_mj(k, sizes[-1]) for k in range(profile.num_exits)], '--s')]),
    }
    out = []
    for kind, (xlabel, series) in curves.items():
        fig = Figure(figsize=(6.4, 4.4), tight_layout=True)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for label, xs, style in series:
            ax.plot(xs, acc, style, label=label)
        for name, x, y in zip(names, series[0][1], acc):
            ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, -10), fontsize=8)
        positive = all(x > 0 for _, xs, _ in series for x in xs)
        if positive and max(max(xs) for _, xs, _ in series) / min(min(xs) for _, xs, _ in series) > 30:
            ax.set_xscale('log')
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f'{profile.model} on {profile.device}', fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        target = path.with_name(f'{path.stem}.{kind}.png')
        fig.savefig(target, dpi=110)
        out.append(target)
    return out


# --- CLI --------------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f'expected integers >= 1, got {text!r}')
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='delen_profile', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('models', nargs='+', help='model names in the zoo (e.g. fashion_mnist efficientnet_lite0) or paths')
    p.add_argument('--device', default='cpu', help='auto | cpu | cuda | cuda:N')
    p.add_argument('--batch-sizes', type=_int_list, default=None,
                   help=f'comma-separated (default {",".join(map(str, DEFAULT_BATCH_SIZES))}; quick: 1,4,8)')
    p.add_argument('--runs', type=int, default=200, help='timed runs per batch size (fewer if over --time-budget-s)')
    p.add_argument('--warmup', type=int, default=5, help='untimed runs per batch size')
    p.add_argument('--time-budget-s', type=float, default=10.0, help='timed seconds per batch size, roughly')
    p.add_argument('--meter', default='auto', help='auto | ' + ' | '.join(available_meters()))
    p.add_argument('--energy-window-s', type=float, default=1.0, help='energy loop per step (>= 5 meter periods)')
    p.add_argument('--idle-window-s', type=float, default=2.0, help='idle-power window')
    p.add_argument('--subtract-idle', action='store_true', help='store energy above idle (default: idle included)')
    p.add_argument('--estimate-power-w', type=float, default=None,
                   help=f'assumed power above idle without a meter (default {CPU_THREAD_POWER_W:g} W per torch '
                        f'CPU thread; {GPU_POWER_W:g} W on CUDA)')
    p.add_argument('--eval-limit', type=int, default=None, help='at most this many eval images (default all; quick 500)')
    p.add_argument('--no-eval', action='store_true', help='take accuracy from the model file; no calibration')
    p.add_argument('--accuracy-from', default=None, metavar='PROFILE',
                   help="re-time only: accuracy, calibration and samples from this profile (the same model; implies "
                        "--no-eval), e.g. on a device without the data set")
    p.add_argument('--calibration', choices=('auto', 'eval'), default='auto',
                   help='auto: calibrate on the data set\'s validation split where it has one (CIFAR-10), else '
                        'on the eval set; eval: always on the eval set')
    p.add_argument('--max-samples', type=int, default=5000,
                   help='per-input confidences kept in the profile for cascade calibration (0: none, -1: all)')
    p.add_argument('--half', action=argparse.BooleanOptionalAction, default=None,
                   help='fp16 (--half) or fp32 (--no-half); shorthand for --precision')
    p.add_argument('--precision', choices=PRECISIONS, default=None,
                   help="weights and activations (default 'auto', as the node: float16 on CUDA, bfloat16 on a CPU "
                        "with AMX, else float32); a bfloat16 profile is saved as <model>__<device>__bfloat16.json")
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None, help='NHWC memory format (default: yes, but with --conv-kernels matmul)')
    p.add_argument('--cuda-graphs', action='store_true', help='time CUDA-graph replays (as the engine with that option)')
    p.add_argument('--conv-kernels', choices=CONV_KERNELS, default='cudnn',
                   help="on CUDA: the node's conv_kernels ('cudnn' by default; 'matmul': 1x1 convolutions as matrix "
                        "products, saved as <model>__<device>__matmul.json)")
    p.add_argument('--threads', type=int, default=None,
                   help="torch CPU threads (default: the node's, half the cores on a CPU, torch's default on CUDA)")
    p.add_argument('--out', default=None, help='output folder (default: <models dir>/profiles)')
    p.add_argument('--no-plots', action='store_true')
    p.add_argument('--quick', action='store_true', help='seconds: few runs and batch sizes, small eval set, short windows')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f'--threads must be >= 1, got {args.threads}', file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    try:
        threads = args.threads if args.threads is not None else _serving_threads(args.device)
        if threads:
            torch.set_num_threads(threads)
        return _profile(args)
    finally:   # run in-process (tests), the caller's torch keeps its own
        torch.set_num_threads(threads_before)


def _serving_threads(device: str) -> int:
    """The node's intra-op threads on ``device`` (its ``torch_threads`` 0): a CPU profile is measured as the
    node serves, on half the cores (``core/cpu_threads.py``); 0, torch's default, elsewhere."""
    from ..core.cpu_threads import auto_intra_op_threads
    from ..core.runner import resolve_device
    try:
        return auto_intra_op_threads(resolve_device(device).type)
    except ValueError:   # a device not here: the profile run says so
        return 0


def _precision_options(args) -> dict:
    """``--half`` and ``--precision`` as runner options (both given: the runner refuses); neither: 'auto'."""
    if args.half is None and args.precision is None:
        return {'precision': 'auto'}
    return {k: v for k, v in (('half', args.half), ('precision', args.precision)) if v is not None}


def _profile(args: argparse.Namespace) -> int:
    from ..core import datasets
    from ..core.zoo import load_model, models_dir

    quick = args.quick
    batch_sizes = args.batch_sizes or ([1, 4, 8] if quick else list(DEFAULT_BATCH_SIZES))
    eval_limit = args.eval_limit if args.eval_limit is not None else (500 if quick else None)
    out_dir = pathlib.Path(args.out) if args.out else models_dir() / 'profiles'
    try:
        meter = make_meter(args.meter, device=None if args.device == 'auto' else args.device)
    except (ValueError, MeterUnavailable) as exc:
        print(f'delen_profile: {exc}', file=sys.stderr)
        return 2
    print(f'energy meter: {meter.source} ({meter.detail})')
    try:
        accuracy_from = Profile.load(args.accuracy_from) if args.accuracy_from else None
        for name in args.models:
            model = load_model(name)
            data = None
            if not args.no_eval and accuracy_from is None:
                try:
                    data = datasets.eval_set(model.info.name, limit=eval_limit)
                except (KeyError, FileNotFoundError) as exc:
                    print(f'{name}: no eval set ({exc}); accuracy from the model file', file=sys.stderr)
            calib = None
            if data is not None and args.calibration == 'auto':
                calib = datasets.calibration_set(model.info.name, limit=eval_limit)
                if calib is not None:
                    print(f'{name}: thresholds calibrated on {calib.note}; accuracy reported on {data.note}')
            options = {'channels_last': args.channels_last, 'cuda_graphs': args.cuda_graphs,
                       'pointwise_matmul': args.conv_kernels == 'matmul',
                       **_precision_options(args)}
            profile = profile_model(
                model, device=args.device, batch_sizes=batch_sizes, runs=10 if quick else args.runs,
                warmup=2 if quick else args.warmup, min_runs=3 if quick else 5,
                time_budget_s=1.0 if quick else args.time_budget_s, meter=meter, eval_set=data,
                runner_options=options, energy_window_s=0.5 if quick else args.energy_window_s,
                idle_window_s=0.5 if quick else args.idle_window_s, energy_per_step=not quick,
                subtract_idle=args.subtract_idle, estimate_power_w=args.estimate_power_w, progress=not args.quiet,
                max_samples=None if args.max_samples < 0 else args.max_samples,
                tool='delen_profile --quick' if quick else 'delen_profile', calibration_set=calib)
            if accuracy_from is not None:
                profile = profile.with_accuracy_from(accuracy_from, note=f'accuracy, calibration and samples from '
                                                     f'{pathlib.Path(args.accuracy_from).name} ({accuracy_from.meta.get("date", "?")})')
            kernels = 'matmul' if profile.meta.get('pointwise_matmul') else ''
            path = profile.save(out_dir / profile_filename(profile.model, profile.device, kernels, profile.dtype))
            plots = [] if args.no_plots else plot_profile(profile, path)
            print(format_profile(profile))
            if 'cascade_test' in profile.meta:
                print('cascade per accuracy bound (thresholds from the calibration set, figures on the eval set; '
                      'latency / energy x = batch-1 expected cost relative to the final exit):')
                print(format_cascade_report(profile.meta['cascade_test']))
            print(f'wrote {path}' + ''.join(f', {p.name}' for p in plots))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        print(f'delen_profile: {exc}', file=sys.stderr)
        return 1
    finally:
        meter.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
