"""Energy meters: one tiny interface over the power sensors a robot or a server may have.

Back ends (``make_meter(kind)``; ``'auto'`` tries them in this order and takes the first that works):

* ``jetson`` — the INA3221 power monitors of NVIDIA Jetson boards, read from sysfs in either layout
  (iio ``in_power{N}_input`` mW, or ``in_current{N}_input`` mA x ``in_voltage{N}_input`` mV; hwmon
  ``in{N}_input`` mV x ``curr{N}_input`` mA). They give power, not energy: a background thread
  samples at ~100 Hz and integrates (trapezoid rule).
* ``nvml`` — an NVIDIA GPU's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ,
  updated about every 100 ms), through ``pynvml`` (package ``nvidia-ml-py``).
* ``rapl`` — Intel (and recent AMD) CPU package energy through Linux powercap
  (``intel-rapl:N/energy_uj``, wrap-around handled). Usually readable by root only.
* ``estimate`` — no sensor: ``measured`` is ``False`` and :meth:`EnergyMeter.energy_mj` is ``None``;
  callers fall back to the profile's estimates and flag them.

Every meter reports the energy of the whole device it watches (board, GPU or CPU package), idle
draw included: attributing it to inferences, and subtracting idle power or not, is the caller's
decision (see ``delen_profile`` and the engine).
"""
from __future__ import annotations

import abc
import glob
import logging
import math
import os
import pathlib
import re
import threading
import time
from typing import Any, Callable, Sequence

from .registry import Registry
from .thread_names import name_os_thread

__all__ = ['EnergyMeter', 'MeterUnavailable', 'JetsonMeter', 'NvmlMeter', 'RaplMeter', 'EstimateMeter',
           'make_meter', 'register_meter', 'available_meters', 'AUTO_ORDER', 'measure_energy',
           'measure_idle_power_w', 'idle_power_w', 'idle_power_with_context_w', 'IDLE_READING_MAX_AGE_S']

_log = logging.getLogger(__name__)


class MeterUnavailable(RuntimeError):
    """This back end cannot measure on this machine (no sensor, no permission, no library)."""


class EnergyMeter(abc.ABC):
    """Cumulative energy of one device since the meter was created.

    :attr source: which back end: ``'jetson'``, ``'nvml'``, ``'rapl'`` or ``'estimate'``.
    :attr measured: ``False`` only for the estimate (no sensor).
    :attr period_s: how often the reading changes, seconds (e.g. 0.1 for NVML, the sampling
        interval for Jetson); windows shorter than a few periods are meaningless. ``None``: never
        changes (the estimate).
    :attr detail: what is measured, e.g. the rails or the GPU (for logs and profiles).
    """

    source: str = ''
    measured: bool = True
    period_s: float | None = None
    detail: str = ''

    @abc.abstractmethod
    def energy_mj(self) -> float | None:
        """Energy since creation, mJ (non-decreasing); ``None`` when nothing is measured."""

    def power_w(self) -> float | None:
        """Current power draw, W, where the back end gives it cheaply; ``None`` otherwise."""
        return None

    def close(self) -> None:
        """Release the sensor (stop threads, shut libraries down). Idempotent."""

    @property
    def update_period_s(self) -> float | None:
        """Alias of :attr:`period_s` (the engine reads this name)."""
        return self.period_s

    def __enter__(self) -> 'EnergyMeter':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'{type(self).__name__}(source={self.source!r}, detail={self.detail!r})'


def _read_float(path: str | pathlib.Path) -> float:
    with open(path) as f:
        return float(f.read().strip())


def _read_text(path: str | pathlib.Path) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# --- Jetson INA3221 ---------------------------------------------------------------------------------------
class _Rail:
    """One INA3221 channel: a name and how to read its power (mW)."""

    def __init__(self, name: str, *, power: str | None = None, volts: str | None = None, amps: str | None = None):
        self.name, self._power, self._volts, self._amps = name, power, volts, amps

    def read_mw(self) -> float:
        if self._power is not None:
            return _read_float(self._power)
        return _read_float(self._volts) * _read_float(self._amps) / 1000.0   # mV x mA / 1000 = mW

    def __repr__(self) -> str:
        return f'_Rail({self.name!r})'


def _iio_rails(root: pathlib.Path) -> list[_Rail]:
    """Rails of ``bus/iio/devices/iio:device*`` named ina3221* (Jetson Nano, TX2, Xavier on L4T < 34)."""
    rails = []
    for dev in sorted(root.glob('bus/iio/devices/iio:device*')):
        if not (_read_text(dev / 'name') or '').startswith('ina3221'):
            continue
        channels = {int(m.group(1)) for p in dev.iterdir()
                    if (m := re.fullmatch(r'in_(?:power|current)(\d+)_input', p.name))}
        for n in sorted(channels):
            name = _read_text(dev / f'rail_name_{n}') or f'{dev.name}/ch{n}'
            if (dev / f'in_power{n}_input').exists():
                rails.append(_Rail(name, power=str(dev / f'in_power{n}_input')))
            elif (dev / f'in_voltage{n}_input').exists() and (dev / f'in_current{n}_input').exists():
                rails.append(_Rail(name, volts=str(dev / f'in_voltage{n}_input'), amps=str(dev / f'in_current{n}_input')))
    return rails


def _hwmon_rails(root: pathlib.Path) -> list[_Rail]:
    """Rails of ``class/hwmon/hwmon*`` named ina3221 (Jetson Orin, L4T >= 34).

    Channels with a bus voltage ``in{N}_input``, a current ``curr{N}_input`` and a label; the
    driver's shunt-voltage and sum channels have no label and are skipped, as are ``NC`` labels
    (not connected) and disabled channels.
    """
    rails = []
    for mon in sorted(root.glob('class/hwmon/hwmon*')):
        if _read_text(mon / 'name') != 'ina3221':
            continue
        for curr in sorted(mon.glob('curr*_input')):
            n = re.fullmatch(r'curr(\d+)_input', curr.name).group(1)
            label = _read_text(mon / f'in{n}_label')
            volts = mon / f'in{n}_input'
            if not label or label.upper() == 'NC' or not volts.exists() or _read_text(mon / f'in{n}_enable') == '0':
                continue
            rails.append(_Rail(label, volts=str(volts), amps=str(curr)))
    return rails


# A rail that feeds the whole module (VDD_IN on Orin NX/Nano, Xavier NX, TX2; POM_5V_IN on Nano): the
# others are parts of it, so summing everything would count them twice. Boards without one (AGX
# Xavier, AGX Orin: VIN_SYS_5V0 is one rail among others) are summed.
_INPUT_RAIL = re.compile(r'(^|_)IN$', re.IGNORECASE)


class JetsonMeter(EnergyMeter):
    """Energy of a Jetson module from its INA3221 rails, integrated from sampled power.

    :param sysfs_root: where sysfs is mounted (tests pass a fake tree).
    :param rails: names of the rails to add up; ``None``: the module's input rail(s) if there is one
        (``VDD_IN``, ``POM_5V_IN``: the whole module), else the sum of every rail.
    :param sample_hz: background sampling rate; 0: no thread, samples are taken only when
        :meth:`energy_mj` / :meth:`power_w` are called (deterministic; for tests).
    :param clock: seconds, monotonic (tests inject a fake one).
    :raises MeterUnavailable: no INA3221 found, no requested rail, or the rails cannot be read.
    """

    source = 'jetson'

    def __init__(self, *, sysfs_root: str | os.PathLike = '/sys', rails: Sequence[str] | None = None,
                 sample_hz: float = 100.0, clock: Callable[[], float] = time.monotonic):
        if not math.isfinite(sample_hz) or sample_hz < 0:
            raise ValueError(f'sample_hz must be >= 0, got {sample_hz!r}')
        root = pathlib.Path(sysfs_root)
        found = _iio_rails(root) + _hwmon_rails(root)
        if not found:
            raise MeterUnavailable(f'no INA3221 power monitor under {root} (bus/iio/devices, class/hwmon)')
        if rails is not None:
            chosen = [r for r in found if r.name in set(rails)]
            missing = set(rails) - {r.name for r in chosen}
            if missing:
                raise MeterUnavailable(f'rails {sorted(missing)} not found; known: {[r.name for r in found]}')
        else:
            chosen = [r for r in found if _INPUT_RAIL.search(r.name)] or found
        self._rails = chosen
        self._clock = clock
        self._lock = threading.Lock()
        try:
            power = self._read_power_w()
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(f'cannot read INA3221 rails {[r.name for r in chosen]}: {exc}') from exc
        self._last = (self._clock(), power)
        self._energy_j = 0.0
        self.rails = tuple(r.name for r in chosen)
        self.detail = '+'.join(self.rails)
        self.period_s = 1.0 / sample_hz if sample_hz > 0 else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if sample_hz > 0:
            self._thread = threading.Thread(target=self._run, name='jetson-power-sampler', daemon=True)
            self._thread.start()

    def _read_power_w(self) -> float:
        return sum(r.read_mw() for r in self._rails) / 1000.0

    def _sample(self) -> None:
        """Read the rails now and add the trapezoid since the last sample. A failed read is skipped."""
        try:
            power = self._read_power_w()
        except (OSError, ValueError):
            return
        with self._lock:
            now = self._clock()
            t0, p0 = self._last
            self._energy_j += 0.5 * (p0 + power) * max(0.0, now - t0)
            self._last = (now, power)

    def _run(self) -> None:
        name_os_thread()
        period = self.period_s
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._sample()
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:   # fell behind (busy CPU): don't try to catch up with a burst
                next_t, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    def energy_mj(self) -> float:
        self._sample()   # integrate up to now, not up to the last background sample
        with self._lock:
            return self._energy_j * 1000.0

    def power_w(self) -> float:
        self._sample()
        with self._lock:
            return self._last[1]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._thread = None


# --- NVML -------------------------------------------------------------------------------------------------
def _nvml_handle(nvml: Any, device_index: int) -> Any:
    """NVML's handle of CUDA device ``device_index``, mapped through ``CUDA_VISIBLE_DEVICES``
    (NVML numbers all GPUs of the host; CUDA only the visible ones)."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is None or not visible.strip():
        return nvml.nvmlDeviceGetHandleByIndex(device_index)
    entries = [e.strip() for e in visible.split(',') if e.strip()]
    if not 0 <= device_index < len(entries):
        raise MeterUnavailable(f'CUDA device {device_index} is not among CUDA_VISIBLE_DEVICES={visible!r}')
    entry = entries[device_index]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    return nvml.nvmlDeviceGetHandleByUUID(entry)


class NvmlMeter(EnergyMeter):
    """Energy of one NVIDIA GPU from NVML's total-energy counter (Volta and later).

    :param device_index: the CUDA device index (mapped through ``CUDA_VISIBLE_DEVICES``).
    :param nvml: the NVML module; ``None``: ``import pynvml`` (tests inject a fake).
    :raises MeterUnavailable: no pynvml, no driver, no such GPU, or no energy counter on it.
    """

    source = 'nvml'
    period_s = 0.1   # the counter moves about 10 times a second

    def __init__(self, *, device_index: int = 0, nvml: Any = None):
        if device_index < 0:
            raise ValueError(f'device_index must be >= 0, got {device_index!r}')
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                raise MeterUnavailable('pynvml is not installed (pip package nvidia-ml-py)') from exc
        self._nvml = nvml
        self._open = False
        try:
            nvml.nvmlInit()
            self._open = True
            self._handle = _nvml_handle(nvml, device_index)
            self._start_mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            name = nvml.nvmlDeviceGetName(self._handle)
        except MeterUnavailable:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - NVMLError and friends: the library's own exception types
            self.close()
            raise MeterUnavailable(f'NVML cannot read GPU {device_index}\'s energy: {type(exc).__name__}: {exc}') from exc
        self.detail = f'GPU {device_index}: {name.decode() if isinstance(name, bytes) else name}'

    def energy_mj(self) -> float:
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) - self._start_mj

    def power_w(self) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0   # mW
        except Exception:  # noqa: BLE001 - power readings are optional
            return None

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down twice or after a driver error is harmless
                pass


# --- RAPL -------------------------------------------------------------------------------------------------
class _RaplDomain:
    def __init__(self, path: pathlib.Path):
        self.path = path
        self.name = _read_text(path / 'name') or path.name
        self.max_uj = _read_float(path / 'max_energy_range_uj')
        self.last_uj = self.read()

    def read(self) -> float:
        return _read_float(self.path / 'energy_uj')


class RaplMeter(EnergyMeter):
    """CPU package energy from Linux powercap (``class/powercap/intel-rapl:N``).

    Package domains (``package-*``) are summed; ``psys`` and sub-domains (``intel-rapl:N:M``) are
    parts or supersets of them and are left out. The counters wrap at ``max_energy_range_uj``
    (minutes to hours at full load): a background thread reads them every ``poll_s`` so that no
    wrap is missed between calls.

    :param sysfs_root: where sysfs is mounted.
    :param poll_s: wrap-guard interval, seconds; 0: no thread.
    :raises MeterUnavailable: no RAPL domain, or ``energy_uj`` not readable (root only since 2020).
    """

    source = 'rapl'
    period_s = 0.001   # RAPL counters update about every millisecond

    def __init__(self, *, sysfs_root: str | os.PathLike = '/sys', poll_s: float = 10.0):
        if not math.isfinite(poll_s) or poll_s < 0:
            raise ValueError(f'poll_s must be >= 0, got {poll_s!r}')
        top = [pathlib.Path(p) for p in sorted(glob.glob(os.path.join(os.fspath(sysfs_root), 'class/powercap/intel-rapl:*')))
               if re.fullmatch(r'intel-rapl:\d+', pathlib.Path(p).name)]
        if not top:
            raise MeterUnavailable(f'no RAPL domain under {sysfs_root}/class/powercap')
        try:
            domains = [_RaplDomain(p) for p in top]
        except PermissionError as exc:
            raise MeterUnavailable(f'RAPL energy not readable ({exc.filename}): needs root or a udev rule') from exc
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(f'cannot read RAPL under {sysfs_root}: {exc}') from exc
        self._domains = [d for d in domains if d.name.startswith('package')] or domains
        self._lock = threading.Lock()
        self._total_uj = 0.0
        self.detail = '+'.join(d.name for d in self._domains)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if poll_s > 0:
            self._thread = threading.Thread(target=self._run, args=(poll_s,), name='rapl-wrap-guard', daemon=True)
            self._thread.start()

    def _update(self) -> None:
        with self._lock:
            for d in self._domains:
                now = d.read()
                delta = now - d.last_uj
                if delta < 0:   # wrapped past max_energy_range_uj back to 0
                    delta += d.max_uj
                self._total_uj += delta
                d.last_uj = now

    def _run(self, poll_s: float) -> None:
        name_os_thread()
        while not self._stop.wait(poll_s):
            try:
                self._update()
            except (OSError, ValueError):
                pass

    def energy_mj(self) -> float:
        self._update()
        with self._lock:
            return self._total_uj / 1000.0

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._thread = None


# --- estimate ---------------------------------------------------------------------------------------------
class EstimateMeter(EnergyMeter):
    """No sensor: energy comes from the profile's estimates (flagged as such by its users).

    :param reason: why nothing is measured (kept in :attr:`detail` for logs).
    """

    source = 'estimate'
    measured = False
    period_s = None

    def __init__(self, *, reason: str = 'no energy meter'):
        self.detail = reason

    def energy_mj(self) -> None:
        return None


# --- registry ---------------------------------------------------------------------------------------------
def _make_jetson(*, sysfs_root: str, device_index: int, nvml: Any) -> EnergyMeter:
    return JetsonMeter(sysfs_root=sysfs_root)


def _make_nvml(*, sysfs_root: str, device_index: int, nvml: Any) -> EnergyMeter:
    return NvmlMeter(device_index=device_index, nvml=nvml)


def _make_rapl(*, sysfs_root: str, device_index: int, nvml: Any) -> EnergyMeter:
    return RaplMeter(sysfs_root=sysfs_root)


def _make_estimate(*, sysfs_root: str, device_index: int, nvml: Any) -> EnergyMeter:
    return EstimateMeter()


MeterFactory = Callable[..., EnergyMeter]
_REGISTRY: Registry[MeterFactory] = Registry('energy meter', reserved=('auto',))
for _name, _factory in (('jetson', _make_jetson), ('nvml', _make_nvml), ('rapl', _make_rapl),
                        ('estimate', _make_estimate)):
    _REGISTRY.add(_name, _factory)
#: what ``'auto'`` tries, in order (the first that works wins; ``estimate`` always does)
AUTO_ORDER: tuple[str, ...] = ('jetson', 'nvml', 'rapl', 'estimate')


def register_meter(name: str, factory: MeterFactory) -> None:
    """Add a back end: ``factory(*, sysfs_root, device_index, nvml) -> EnergyMeter``, raising
    :class:`MeterUnavailable` where it cannot measure. Duplicate names and ``'auto'`` raise ``ValueError``."""
    _REGISTRY.add(name, factory)


def available_meters() -> list[str]:
    """Registered back-end names (``'auto'`` not included)."""
    return _REGISTRY.names()


def make_meter(kind: str = 'auto', *, sysfs_root: str | os.PathLike = '/sys', device_index: int = 0,
               nvml: Any = None, device: str | None = None) -> EnergyMeter:
    """An energy meter of back end ``kind``.

    :param kind: ``'auto'`` (first of :data:`AUTO_ORDER` that works) or a registered name.
    :param sysfs_root: where sysfs is mounted (Jetson and RAPL; tests pass a fake tree).
    :param device_index: CUDA device for NVML.
    :param nvml: an NVML module to use instead of ``pynvml`` (tests).
    :param device: the device the work runs on (``'cpu'``, ``'cuda:N'``); ``None``: unknown. With
        ``'auto'``, a CPU device skips NVML (a GPU's energy says nothing about CPU work), and
        ``'cuda:N'`` sets ``device_index`` to N.
    :raises ValueError: unknown ``kind`` (the message lists the known ones).
    :raises MeterUnavailable: an explicitly named back end cannot measure here.
    """
    if kind != 'auto' and kind not in _REGISTRY:
        raise ValueError(f'unknown energy meter {kind!r}; known: {["auto"] + available_meters()}')
    if device is not None and device.startswith('cuda:'):
        device_index = int(device.split(':', 1)[1])
    options = dict(sysfs_root=os.fspath(sysfs_root), device_index=device_index, nvml=nvml)
    if kind != 'auto':
        return _REGISTRY.get(kind)(**options)
    reasons = []
    for name in AUTO_ORDER:
        if name == 'nvml' and device is not None and not device.startswith('cuda'):
            reasons.append(f'nvml: skipped, work runs on {device}')
            continue
        try:
            meter = (EstimateMeter(reason='; '.join(reasons) or 'no energy meter') if name == 'estimate'
                     else _REGISTRY.get(name)(**options))
        except MeterUnavailable as exc:
            reasons.append(f'{name}: {exc}')
            continue
        _log.info('energy meter: %s (%s)', meter.source, meter.detail)
        return meter
    raise AssertionError('unreachable: the estimate meter always works')  # pragma: no cover


# --- Reading a meter ----------------------------------------------------------------------------------
def measure_energy(meter: EnergyMeter, work: Callable[[], None], *, window_s: float,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[float, float, int]:
    """Run ``work`` back to back for at least ``window_s`` seconds and read the meter around it.

    Both ends are aligned to a change of the meter's reading (NVML's counter moves every ~100 ms), so
    the energy and the time cover the same span: the error is about one ``work`` call's duration at
    each end, not one meter period. Returns ``(mJ per call, s per call, calls)``.

    :param clock: seconds (tests pass a fake one that ``work`` advances).
    """
    timeout = 3 * (meter.period_s or 0.1) + 0.5
    e_prev, t_wait = meter.energy_mj(), clock()
    while True:   # start right after an update
        work()
        e0 = meter.energy_mj()
        if e0 != e_prev or clock() - t_wait > timeout:
            break
    t0, n, e_window = clock(), 0, None
    while True:
        work()
        n += 1
        t = clock()
        if t - t0 < window_s:
            continue
        e = meter.energy_mj()
        if e_window is None:
            e_window = e
        elif e != e_window or t - t0 > window_s + timeout:   # stop right after an update
            break
    return (e - e0) / n, (t - t0) / n, n


def _idle_sleep() -> None:
    time.sleep(0.002)


def measure_idle_power_w(meter: EnergyMeter, *, window_s: float) -> float:
    """The device's power while nothing runs on it, W (meter reading over a quiet window); 0 for a
    meter that measures nothing (the estimate).

    The node subtracts it so that results carry energy *above idle*: a big board (an H200 idles near
    120 W) would otherwise charge each of a few results joules of idle draw.
    """
    if not meter.measured:
        return 0.0
    mj, s, _ = measure_energy(meter, _idle_sleep, window_s=window_s)
    return mj / s / 1000.0 if s > 0 else 0.0


#: how long one idle reading serves later configures of the same process, s
IDLE_READING_MAX_AGE_S = 120.0
_idle_lock = threading.Lock()
_idle_readings: dict[tuple[str, str], tuple[float, float]] = {}   # (source, detail) -> (W, monotonic s)


def idle_power_w(meter: EnergyMeter, *, window_s: float, max_age_s: float = IDLE_READING_MAX_AGE_S) -> float:
    """:func:`measure_idle_power_w`, read once per sensor and process and reused for ``max_age_s``.

    A reconfigure of the same process looks it up instead of spending another window on it (see
    :func:`idle_power_with_context_w` for when to read it). A reading in progress is waited for,
    never overlapped; a meter that measures nothing reads 0 at once.
    """
    if not meter.measured:
        return 0.0
    key = (meter.source, meter.detail)
    with _idle_lock:
        reading = _idle_readings.get(key)
        if reading is not None and time.monotonic() - reading[1] <= max_age_s:
            return reading[0]
        watts = measure_idle_power_w(meter, window_s=window_s)
        _idle_readings[key] = (watts, time.monotonic())
        return watts


def idle_power_with_context_w(meter: EnergyMeter, device: str, *, window_s: float,
                              synchronize: Callable[[str], None] | None = None) -> float:
    """:func:`idle_power_w` of a GPU with this process's CUDA context up on ``device`` and nothing of ours
    running: the floor the node draws while it serves, the one its results' energy is counted above.

    A GPU with no context draws much less, and one another process has just left a little more. On an
    H200 (``scripts/device/idle_power_probe.py``, session 24): 79 W with no context, 121 W steady from
    the moment one is created (the SM clock goes from 345 to 1980 MHz), about 125 W for 1.5 s after
    another process exits. Read before any context of ours existed, the idle figure was whichever of
    those the GPU happened to sit at, and two nodes serving the same frames reported 66 and 138 mJ per
    result. The profiler reads its idle the same way (``profiling.profile_model``), so a profile's
    step energies and the node's measurements are above the same floor.

    :param synchronize: ``(device) -> None``, creating the context if need be and waiting for its
        queued work (default ``torch.cuda.synchronize``); a device that is not CUDA reads 0.
    """
    if not device.startswith('cuda') or not meter.measured:
        return 0.0
    if synchronize is None:
        import torch
        synchronize = torch.cuda.synchronize
    synchronize(device)
    return idle_power_w(meter, window_s=window_s)
