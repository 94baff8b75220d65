"""The node on several accelerators: a :class:`~delen_ros.core.placement.DevicePool` built from the
node's parameters (no rclpy here).

:func:`build_pool` is what :func:`.assembly.build` calls when the ``devices`` parameter names more
than one device: the first device reuses what ``build`` already loaded (model, meter, profile, idle
power); every other device gets its own model copy, energy meter (NVML index of that GPU), profile
(the committed one of that device, else a quick measurement) and idle power, and one engine each
through ``make_engine`` (the same engine settings as a single device).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ['device_list', 'build_pool', 'meter_kind']


def device_list(devices: Sequence[str]) -> list[str]:
    """The ``devices`` parameter without blanks (``['']`` and ``[]`` mean: the ``device`` parameter).

    :raises ValueError: a CUDA device named twice (two engines on one GPU compete for it; several
        ``'cpu'`` entries are allowed, for tests).
    """
    out = [d.strip() for d in devices if d and d.strip()]
    cuda = [d for d in out if d.startswith('cuda')]
    if len(set(cuda)) != len(cuda):
        raise ValueError(f'parameter devices: a CUDA device is named twice in {out!r}')
    return out


def meter_kind(energy_meter: str, devices: Sequence[str]) -> str:
    """The energy meter to build for each of ``devices``: ``energy_meter``, except ``'auto'`` on several
    CUDA devices, which gives ``'estimate'`` (the profile's figures).

    Why: on two H200s, one node with an NVML meter per GPU answered 30-71 % of 64 cameras' frames in
    six runs, and 93-96 % with estimated energy in two (benchmarks/h200/multi_gpu_session19); one node
    per GPU, each with its one NVML meter, answered 100 %. How the meters hold the workers up is not
    known: the reads themselves (2.6 ms each) hold no CUDA work up, on one GPU or two, in one process
    or two (session 20, benchmarks/h200/conv_kernels_session20). ``energy_meter:=nvml`` still measures.
    """
    if energy_meter == 'auto' and sum(1 for d in devices if d.startswith('cuda')) > 1:
        return 'estimate'
    return energy_meter


def build_pool(params: Any, make_engine: Callable[..., Any], *, first: dict[str, Any], on_result: Callable,
               log: Callable[[str], None]):
    """One engine per device of ``params.devices`` behind one :class:`DevicePool`.

    :param make_engine: ``(device, on_result, *, model, profile, meter, idle_power_w) -> Engine``.
    :param first: ``model``, ``profile``, ``meter``, ``idle_power_w`` already built for the first device.
    :param on_result: the node's result callback (gets :class:`~delen_ros.core.placement.PlacedResult`).
    """
    from delen_ros.core.energy import idle_power_with_context_w, make_meter
    from delen_ros.core.placement import DevicePool
    from delen_ros.core.zoo import load_model

    from .assembly import IDLE_WINDOW_S, load_profile, resolve_device

    devices = [resolve_device(d) for d in device_list(params.devices)]
    resources = [dict(first)]
    try:
        for device in devices[1:]:
            model = load_model(params.model, device=device)
            meter = make_meter(meter_kind(params.energy_meter, devices), device=device)
            resources.append(dict(model=model, meter=meter, profile=None, idle_power_w=0.0))
            profile, source = load_profile(params, model, device, meter, log)
            if profile.num_exits != model.num_exits:
                raise ValueError(f'profile {source} has {profile.num_exits} exits, the model {model.num_exits}')
            resources[-1]['profile'] = profile
            resources[-1]['idle_power_w'] = idle_power_with_context_w(meter, device, window_s=IDLE_WINDOW_S)
            log(f'{device}: profile {source}, energy {meter.source}')
        built = iter(resources)
        pool = DevicePool(devices, lambda device, callback: make_engine(device, callback, **next(built)),
                          on_result=on_result)
    except BaseException:
        for r in resources[1:]:
            r['meter'].close()
        raise
    log(f'serving on {len(devices)} devices: {", ".join(devices)}')
    return pool
