"""What ``configure`` builds: device, model, energy meter, profile and engine (no rclpy here).

Kept out of the node so the node stays an adapter: :func:`build` returns a :class:`Served` bundle
or raises with a one-line reason; :meth:`Served.close` frees it (CUDA memory included).

On CUDA the engine captures its CUDA graphs here, for the few batch sizes worth padding to
(``runner.padded_graph_sizes``: capturing all 48 of six sizes took ~20 s of the configure on an
H200); the configure log says how long each phase took.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import re
import time
from typing import Any, Callable

from .params import CHOICE_YIELDS, NodeParams

__all__ = ['Served', 'resolve_device', 'load_profile', 'build']

_QUICK_EVAL_IMAGES = 500   # held-out images for a quick profile's accuracy and calibration
IDLE_WINDOW_S = 0.6        # idle power read at configure (NVML moves every ~0.1 s)


def resolve_device(device: str) -> str:
    """``'auto'`` -> ``'cuda'`` if available else ``'cpu'``; checks ``cpu``, ``cuda``, ``cuda:N``.

    :raises ValueError: unknown spelling, or a CUDA device that is not there.
    """
    import torch
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cpu':
        return device
    match = re.fullmatch(r'cuda(?::(\d+))?', device)
    if not match:
        raise ValueError(f'device must be auto, cpu, cuda or cuda:N, got {device!r}')
    if not torch.cuda.is_available():
        raise ValueError(f'device {device!r} asked for, but CUDA is not available here')
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f'device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here')
    return device


def load_profile(params: NodeParams, model: Any, device: str, meter: Any, log: Callable[[str], None]):
    """``(profile, where it came from)``: the ``profile`` parameter's file, else the committed profile
    of this model on this device, else a quick measurement (core profiling library)."""
    import torch

    from delen_ros.core.profile import Profile, device_slug, find_profile, profile_filename
    from delen_ros.core.runner import dtype_name, resolve_precision
    from delen_ros.core.zoo import models_dir

    if params.profile:
        path = os.path.expanduser(params.profile)
        return Profile.load(path), path
    name = model.info.name
    folder = models_dir() / 'profiles'
    slug = device_slug(device)
    dtype = dtype_name(resolve_precision(params.precision, torch.device(device)))
    kernels = 'matmul' if device.startswith('cuda') and params.conv_kernels == 'matmul' else ''
    # measured with the kernels and the precision that serve, if there is one; else the default profile
    committed = find_profile(folder, name, slug, kernels, dtype) or folder / profile_filename(name, slug)
    if committed.is_file():
        profile = Profile.load(committed)
        if profile.dtype != dtype:
            log(f'profile {committed.name} was timed in {profile.dtype}; serving in {dtype}')
        return profile, str(committed)
    from delen_ros.core.profiling import quick_profile
    others = sorted(folder.glob(profile_filename(name, '*')))
    reference = Profile.load(others[0]) if others else None
    evaluation = None
    if reference is None:   # accuracy and calibration need held-out data (device-independent otherwise)
        try:
            from delen_ros.core.datasets import eval_set
            evaluation = eval_set(name, limit=_QUICK_EVAL_IMAGES)
        except (KeyError, OSError, ValueError) as exc:
            log(f'no held-out data for {name} ({exc}): accuracy from the model file, no confidence calibration')
    log(f'no committed profile {committed.name}: measuring a quick one on {device}')
    started = time.perf_counter()
    profile = quick_profile(model, device=device, max_batch=params.max_batch, reference=reference,
                            eval_set=evaluation, meter=meter if meter.measured else None,
                            runner_options={'precision': params.precision})
    return profile, f'quick measurement on {device} ({time.perf_counter() - started:.1f} s)'


@dataclasses.dataclass
class Served:
    """The model, its profile, the meter and the engine, as configure built them."""

    device: str
    model: Any
    profile: Any
    profile_source: str
    meter: Any
    engine: Any
    idle_power_w: float
    phases: dict[str, float] = dataclasses.field(default_factory=dict)   # configure's phases, s

    def close(self) -> None:
        """Stop the engine, close the meter, free the model (and
        CUDA memory)."""
        self.engine.stop()
        self.meter.close()
        self.engine = self.model = self.profile = None
        gc.collect()
        if self.device.startswith('cuda'):
            import torch
            torch.cuda.empty_cache()


def build(params: NodeParams, *, on_result: Callable, log: Callable[[str], None],
          after_results: Callable[[], None] | None = None) -> Served:
    """Load everything configure needs and warm the engine up (graph capture, kernel choice);
    ``after_results``: each engine's :attr:`~delen_ros.core.engine.Engine.after_results`."""
    from delen_ros.core.batch_cost import BatchCost
    from delen_ros.core.cpu_threads import auto_intra_op_threads
    from delen_ros.core.energy import idle_power_with_context_w, make_meter
    from delen_ros.core.engine import Engine
    from delen_ros.core.zoo import load_model

    from .multi_device import device_list, meter_kind
    devices = device_list(params.devices)   # several: one engine per device behind a DevicePool (issue 12)
    device = resolve_device(devices[0] if devices else params.device)
    threads = params.torch_threads or auto_intra_op_threads(device.split(':')[0])
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
        log(f'torch intra-op threads: {threads}' + ('' if params.torch_threads else ' (torch_threads 0: half the cores, '
                                                   'the others left to the receivers, cameras and DDS)'))
    phases: dict[str, float] = {}
    clock = _PhaseClock(phases)
    cuda = device.startswith('cuda')
    meter_name = meter_kind(params.energy_meter, [resolve_device(d) for d in devices])
    if meter_name != params.energy_meter:
        log(f'energy_meter auto on {len(devices)} GPUs: energy estimated from the profile (NVML meters, one per GPU '
            'in one node, held its workers up; energy_meter:=nvml measures anyway)')
    meter = make_meter(meter_name, device=device)
    clock.lap('meter')
    try:
        if cuda:
            from delen_ros.core.runner import warm_cuda_libraries
            warm_cuda_libraries(device)   # done at the process's start (run.py), or waited for here
            clock.lap('cuda libraries')
        # with our context up and nothing running: the floor results are counted above (energy.py)
        idle_power_w = idle_power_with_context_w(meter, device, window_s=IDLE_WINDOW_S)
        clock.lap('idle power')
        model = load_model(params.model, device=device)
        clock.lap('model')
        profile, source = load_profile(params, model, device, meter, log)
        if profile.num_exits != model.num_exits:
            raise ValueError(f'profile {source} has {profile.num_exits} exits, the model {model.num_exits}')
        clock.lap('profile')
        def make_engine(dev, on_result, *, model, profile, meter, idle_power_w):
            options = {'precision': params.precision}
            if dev.startswith('cuda'):
                # Graphs for the few batch sizes worth padding to, all captured here: natively first,
                # then cuDNN tried for the larger sizes, here or while serving (cudnn_trials; runner.py's
                # notes), or (conv_kernels:=matmul) 1x1 convolutions as matrix products and no cuDNN,
                # milliseconds a size. The worker only ever replays captured sizes (cuDNN's set-up on
                # the worker once cost 20+ s of misses).
                from delen_ros.core.runner import padded_graph_sizes
                graph_sizes = padded_graph_sizes(
                    params.max_batch, lambda b: sum(profile.step_ms(k, b) for k in range(profile.num_exits)))
                # DELEN_NATIVE_FIRST=0: capture on cuDNN from the start (the A/B of runner's native first);
                # DELEN_TRIAL_BATCH1=1: batch 1's cuDNN trial in the background while serving (before session 9)
                options = {'precision': params.precision, 'cuda_graphs': params.cuda_graphs, 'graph_sizes': graph_sizes,
                           'pointwise_matmul': params.conv_kernels == 'matmul',
                           'native_first': os.environ.get('DELEN_NATIVE_FIRST', '1') != '0',
                           'trial_smallest': os.environ.get('DELEN_TRIAL_BATCH1') == '1',
                           'trials_while_serving': params.cudnn_trials == 'serving'}
            built = Engine(model, profile, device=dev, policy=params.policy, meter=meter,
                          queue_depth=params.queue_depth, max_batch=params.max_batch, on_result=on_result,
                          runner_options=options, idle_power_w=idle_power_w, external_delivery=True,
                          energy_window_s=params.energy_window_s,
                          transport_prior_ms=params.transport_prior_ms, rate_prior_hz=params.rate_prior_hz,
                          fuse_steps=params.fuse_steps, arrival_lookahead=params.arrival_lookahead,
                          worker_nice=params.worker_nice or None,
                          delivery_allowance_ms=params.delivery_allowance_ms,
                          admission_control=params.admission_control, admission_headroom=params.admission_headroom,
                          admission_headroom_min_ms=params.admission_headroom_min_ms,
                          upload_ahead=os.environ.get('DELEN_UPLOAD_AHEAD', '1') != '0',
                          # an A/B: every frame uploaded on arrival, as before session 12
                          ahead_when_behind=os.environ.get('DELEN_UPLOAD_WHEN_BEHIND') == '1',
                          # an A/B: 'behind' launches the next batch before looking at the last one's results
                          pipeline=os.environ.get('DELEN_PIPELINE', 'off'),
                          # an A/B: a worker turn's own cost learnt apart from the steps' (session 16)
                          separate_turn_cost=os.environ.get('DELEN_TURN_COST') == '1',
                          # an A/B: the admission re-check on the worker (1) or the status tick's thread (0);
                          # unset: on the worker on CUDA only (session 25)
                          recheck_on_worker={'0': False, '1': True}.get(os.environ.get('DELEN_RECHECK_ON_WORKER', '')))
            if os.environ.get('DELEN_LATE_RIDERS') == '0':   # an A/B: late frames in idle time only (before session 26)
                built.late_riders = False
            if hasattr(built.policy, 'choice_headroom'):   # the delen policy's
                built.policy.choice_headroom = params.choice_headroom
            if os.environ.get('DELEN_POLICY_ALLOWANCE') == '0':   # an A/B: the policy's limit the whole bound (before session 27)
                built.policy_keeps_allowance = False
            if os.environ.get('DELEN_CASCADE_ADMISSION') == '0':
                # an A/B: a cascade admitted at its static fallback exit for every frame, a step not
                # measured lately at the profile's prior (before session 29)
                built.cascade_admission = False
                built.corrector.level_prior = False
            if os.environ.get('DELEN_DEMOTED_LAST') == '0':   # an A/B: demoted apps' frames before late ones (before session 30)
                built.demoted_last = False
            if os.environ.get('DELEN_TRIALS_WHEN_IDLE') == '1':   # an A/B: cuDNN trials only while the worker waits (session 34)
                built.trials_when_idle = True
            if os.environ.get('DELEN_FUSE_PER_FRAME') == '1':   # an A/B: a fused run asks every frame (before session 35)
                built.policy.monotone_ahead = False
            if os.environ.get('DELEN_FINISH_STARTED') == '0':   # an A/B: a baseline's late started work in idle time (before session 34)
                built.finish_started = False
            if os.environ.get('DELEN_DEMOTE_ON_MISSES') == '0':   # an A/B: demoted on the re-check's verdict alone (before session 32)
                built.demote_on_misses = False
            if os.environ.get('DELEN_DEMOTE_FOR_OWN_MISSES') == '1':   # an A/B: the misfits' own misses demote them (before session 43)
                built.demote_for_own_misses = True
            if os.environ.get('DELEN_DEMOTE_ON_HOST_TAILS') == '1':   # an A/B: misfits short of time outside the device demoted too (before session 44)
                built.demote_on_host_tails = True
            if os.environ.get('DELEN_DEMOTE_NEVER') == '1':   # an A/B (session 44): the re-check flags, never demotes
                built.demote_after = 10 ** 9
            if os.environ.get('DELEN_CHOICE_MARGIN') == '0':   # an A/B: choice_headroom alone (before session 30)
                built.learn_choice_margin = False
            if os.environ.get('DELEN_CHOICE_WHEN_BEHIND') == '1':   # an A/B: steps by choice while behind (before session 39)
                built.choice_steps_when_behind = True
            built.choice_yields = params.choice_yields
            yields = os.environ.get('DELEN_CHOICE_YIELDS', '')   # an A/B (sessions 40-41): 0 = never, or a mode's name
            if yields == '0' or yields in CHOICE_YIELDS:
                built.choice_yields = 'never' if yields == '0' else yields
            elif yields:
                log(f'DELEN_CHOICE_YIELDS={yields[:32]!r} is not one of {", ".join(CHOICE_YIELDS)} (or 0): '
                    f'choice_yields stays {params.choice_yields!r}')
            margin = os.environ.get('DELEN_CHOICE_YIELD_MARGIN_MS', '')   # an A/B (session 41): with pressed or demand
            if margin:
                try:
                    built.choice_yield_margin_ms = _non_negative_ms(margin)
                except ValueError:
                    log(f'DELEN_CHOICE_YIELD_MARGIN_MS={margin[:32]!r} is not a finite number of ms >= 0: '
                        f'the margin stays {built.choice_yield_margin_ms:g} ms')
            if os.environ.get('DELEN_MARGIN_WHEN_BEHIND') == '1':   # an A/B: late results behind a backlog raise it (before session 36)
                built.margin_learns_when_behind = True
            if os.environ.get('DELEN_STREAM_PRIORITY') == '0':   # an A/B: the worker on the default stream (before session 30)
                built.serve_at_priority = False
            if os.environ.get('DELEN_RECHECK_YIELDS') == '1':   # an A/B: GIL yields in the worker's re-check (before session 30)
                built.recheck_yields_on_worker = True
            if os.environ.get('DELEN_SPLIT_RUNS') == 'earlier':   # an A/B of what ends a fused run
                built.split_runs_for = 'earlier'
            if os.environ.get('DELEN_CORRECTOR_PER_BATCH') == '1':   # an A/B: step times learnt per batch size
                built.corrector.pool_batch_sizes = False
            if os.environ.get('DELEN_PRE_PER_FRAME') == '1':   # an A/B: preprocessing's cost as before session 9
                built.preprocess_cost = BatchCost.per_frame_only()
            built.after_results = after_results
            return built
        first = dict(model=model, profile=profile, meter=meter, idle_power_w=idle_power_w)
        if len(devices) > 1:
            from .multi_device import build_pool
            engine = build_pool(params, make_engine, first=first, on_result=on_result, log=log)
        else:
            engine = make_engine(device, on_result, **first)
        clock.lap('engine')
        engine.warm_up()
        clock.lap('warm-up')
    except BaseException:
        meter.close()
        raise
    log(f'configure phases: {_phase_line(phases, engine)}')
    return Served(device=device, model=model, profile=profile, profile_source=source, meter=meter, engine=engine,
                  idle_power_w=idle_power_w, phases=phases)


class _PhaseClock:
    """Seconds since the previous lap, into ``phases`` by name."""

    def __init__(self, phases: dict[str, float]):
        self.phases = phases
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.phases[name] = t - self._t
        self._t = t


def _non_negative_ms(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def _phase_line(phases: dict[str, float], engine: Any) -> str:
    """``model 1.2 s, ..., warm-up 6.8 s (16 graphs captured)``."""
    line = ', '.join(f'{name} {s:.1f} s' for name, s in phases.items())
    captured = engine.graph_count()
    if captured:
        matmul = engine.graph_report().get('pointwise_matmul')
        line += f' ({captured} graphs captured{", 1x1 convolutions as matrix products" if matmul else ""})'
    return line
