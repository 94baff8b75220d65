"""How an NVIDIA GPU's power draw moves around a CUDA process's life, sampled from NVML (issue 8, energy
above idle): what an idle reading taken at a node's start, or after its warm-up, actually reads.

One process runs phases and samples NVML every 50 ms on a thread: the energy counter, the averaged and
(where the driver has it) the instant power, the performance state and the SM clock.

    python scripts/device/idle_power_probe.py OUT.json [--phases before,context,busy,idle,serving,idle]

Phases: ``before`` (no CUDA context of ours), ``context`` (torch initialised, nothing running), ``busy``
(large matrix products back to back), ``serving`` (a small kernel every millisecond, about what 32
cameras at 30 Hz ask), ``idle`` (context up, nothing running). Durations: ``--seconds name=s,...``.
"""
from __future__ import annotations

import argparse
import json
import threading
import time

DEFAULT_SECONDS = {'before': 3.0, 'context': 3.0, 'busy': 2.0, 'idle': 10.0, 'serving': 3.0}


def _sampler(nvml, handle, out: list, stop: threading.Event, t0: float) -> None:
    instant = getattr(nvml, 'NVML_FI_DEV_POWER_INSTANT', None)
    while not stop.is_set():
        row = {'t': time.monotonic() - t0}
        try:
            row['energy_mj'] = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            row['power_w'] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            row['pstate'] = int(nvml.nvmlDeviceGetPerformanceState(handle))
            row['sm_mhz'] = nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
            row['util'] = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            if instant is not None:
                value = nvml.nvmlDeviceGetFieldValues(handle, [instant])[0]
                if value.nvmlReturn == 0:
                    row['instant_w'] = value.value.uiVal / 1000.0
        except Exception as exc:  # noqa: BLE001 - a probe: keep sampling, note what failed
            row['error'] = f'{type(exc).__name__}: {exc}'
        out.append(row)
        time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument('out')
    p.add_argument('--phases', default='before,context,busy,idle,serving,idle')
    p.add_argument('--seconds', default='', help='name=s,... overriding the default durations')
    args = p.parse_args()
    seconds = dict(DEFAULT_SECONDS)
    for item in filter(None, args.seconds.split(',')):
        name, value = item.split('=')
        seconds[name] = float(value)

    import pynvml as nvml
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    samples: list[dict] = []
    marks: list[tuple[str, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    thread = threading.Thread(target=_sampler, args=(nvml, handle, samples, stop, t0), daemon=True)
    thread.start()
    torch = None
    for phase in args.phases.split(','):
        if phase != 'before' and torch is None:   # the import (seconds) outside any phase; then the context
            marks.append(('import torch', time.monotonic() - t0))
            import torch
            torch.zeros(1, device='cuda')
            torch.cuda.synchronize()
        marks.append((phase, time.monotonic() - t0))
        end = time.monotonic() + seconds[phase]
        if phase == 'busy':
            a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)
            while time.monotonic() < end:
                for _ in range(10):
                    a = (a @ a).clamp_(-1, 1)
                torch.cuda.synchronize()
        elif phase == 'serving':
            x = torch.randn(32, 3, 160, 160, device='cuda')
            w = torch.randn(64, 3, 3, 3, device='cuda')
            while time.monotonic() < end:
                torch.nn.functional.conv2d(x, w, padding=1).relu_().mean().item()
                time.sleep(0.001)
        else:
            time.sleep(max(0.0, end - time.monotonic()))
    marks.append(('end', time.monotonic() - t0))
    stop.set()
    thread.join()
    with open(args.out, 'w') as f:
        json.dump({'gpu': str(nvml.nvmlDeviceGetName(handle)), 'marks': marks, 'samples': samples}, f)
    nvml.nvmlShutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
