"""Energy meters against fake sysfs trees and a fake NVML module."""
from __future__ import annotations

import pathlib
import sys

import pytest

from delen_ros.core import energy
from delen_ros.core.energy import (EstimateMeter, JetsonMeter, MeterUnavailable, NvmlMeter, RaplMeter,
                                   available_meters, make_meter, register_meter)


class Clock:
    """Settable seconds clock for the Jetson integrator."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def write(path: pathlib.Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{value}\n')


def iio_device(root: pathlib.Path, index: int, rails: dict[str, float], *, power_files: bool = True,
               name: str = 'ina3221x') -> pathlib.Path:
    """An iio INA3221 with ``rails`` name -> mW (in_power, or 5000 mV x current)."""
    dev = root / 'bus/iio/devices' / f'iio:device{index}'
    write(dev / 'name', name)
    for n, (rail, mw) in enumerate(rails.items()):
        write(dev / f'rail_name_{n}', rail)
        if power_files:
            write(dev / f'in_power{n}_input', mw)
        else:
            write(dev / f'in_voltage{n}_input', 5000)
            write(dev / f'in_current{n}_input', mw / 5.0)   # mA at 5 V
    return dev


def hwmon_device(root: pathlib.Path, index: int, rails: dict[str, tuple[float, float]], *,
                 name: str = 'ina3221') -> pathlib.Path:
    """A hwmon INA3221 with ``rails`` label -> (mV, mA), channels 1..3, plus the driver's unlabelled
    shunt/sum channels (in4..in7, curr4) that must be ignored."""
    mon = root / 'class/hwmon' / f'hwmon{index}'
    write(mon / 'name', name)
    for n, (label, (mv, ma)) in enumerate(rails.items(), start=1):
        write(mon / f'in{n}_label', label)
        write(mon / f'in{n}_input', mv)
        write(mon / f'curr{n}_input', ma)
        write(mon / f'in{n}_enable', 1)
    write(mon / 'in4_input', 12)      # shunt voltage of channel 1
    write(mon / 'curr4_input', 9999)  # sum of currents
    return mon


# --- Jetson ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('layout, rails, expected_rails, expected_w', [
    ('iio', {'POM_5V_IN': 5000, 'POM_5V_GPU': 1000, 'POM_5V_CPU': 800}, ('POM_5V_IN',), 5.0),
    ('iio-va', {'VDD_IN': 4000, 'VDD_CPU_GPU_CV': 1500, 'VDD_SOC': 900}, ('VDD_IN',), 4.0),
    ('iio', {'GPU': 1000, 'CPU': 2000, 'SOC': 500}, ('GPU', 'CPU', 'SOC'), 3.5),   # AGX Xavier: no input rail
    ('hwmon', {'VDD_IN': (5000, 1200), 'VDD_CPU_GPU_CV': (5000, 400), 'VDD_SOC': (5000, 200)}, ('VDD_IN',), 6.0),
    ('hwmon', {'VDD_GPU_SOC': (5000, 600), 'VDD_CPU_CV': (5000, 200), 'VIN_SYS_5V0': (5000, 400)},
     ('VDD_GPU_SOC', 'VDD_CPU_CV', 'VIN_SYS_5V0'), 6.0),   # AGX Orin: summed
])
def test_jetson_rails_and_power(tmp_path, layout, rails, expected_rails, expected_w):
    if layout == 'hwmon':
        hwmon_device(tmp_path, 0, rails)
    else:
        iio_device(tmp_path, 0, rails, power_files=layout == 'iio')
    with JetsonMeter(sysfs_root=tmp_path, sample_hz=0, clock=Clock()) as meter:
        assert meter.source == 'jetson' and meter.measured
        assert meter.rails == expected_rails
        assert meter.power_w() == pytest.approx(expected_w)


def test_jetson_integrates_by_trapezoid(tmp_path):
    dev = iio_device(tmp_path, 0, {'VDD_IN': 5000})
    clock = Clock()
    meter = JetsonMeter(sysfs_root=tmp_path, sample_hz=0, clock=clock)
    assert meter.energy_mj() == 0.0
    clock.t += 2.0
    assert meter.energy_mj() == pytest.approx(10_000.0)        # 5 W x 2 s
    write(dev / 'in_power0_input', 7000)
    clock.t += 1.0
    assert meter.energy_mj() == pytest.approx(16_000.0)        # + (5 + 7) / 2 W x 1 s
    clock.t += 0.5
    assert meter.energy_mj() == pytest.approx(19_500.0)        # + 7 W x 0.5 s
    (dev / 'in_power0_input').unlink()                          # a failed read is skipped, not fatal
    clock.t += 1.0
    assert meter.energy_mj() == pytest.approx(19_500.0)
    meter.close()


def test_jetson_skips_nc_disabled_and_other_devices(tmp_path):
    mon = hwmon_device(tmp_path, 1, {'VDD_A': (5000, 100), 'NC': (5000, 100), 'VDD_C': (5000, 300)})
    write(mon / 'in3_enable', 0)
    hwmon_device(tmp_path, 0, {'VDD_X': (5000, 100)}, name='coretemp')
    iio_device(tmp_path, 0, {'VDD_Y': 1000}, name='bmi160')
    with JetsonMeter(sysfs_root=tmp_path, sample_hz=0) as meter:
        assert meter.rails == ('VDD_A',)
        assert meter.power_w() == pytest.approx(0.5)


def test_jetson_sums_several_monitors_and_picks_named_rails(tmp_path):
    iio_device(tmp_path, 0, {'GPU': 1000, 'CPU': 2000})
    iio_device(tmp_path, 1, {'SOC': 500, 'CV': 250})
    with JetsonMeter(sysfs_root=tmp_path, sample_hz=0) as meter:
        assert meter.power_w() == pytest.approx(3.75)
    with JetsonMeter(sysfs_root=tmp_path, sample_hz=0, rails=['CPU', 'CV']) as meter:
        assert meter.power_w() == pytest.approx(2.25)
    with pytest.raises(MeterUnavailable, match='VDD_IN'):
        JetsonMeter(sysfs_root=tmp_path, sample_hz=0, rails=['VDD_IN'])


def test_jetson_background_sampler_starts_and_stops(tmp_path):
    iio_device(tmp_path, 0, {'VDD_IN': 5000})
    meter = JetsonMeter(sysfs_root=tmp_path, sample_hz=200)
    thread = meter._thread
    assert meter.period_s == pytest.approx(0.005)
    assert thread is not None and thread.is_alive()
    assert meter.energy_mj() >= 0.0
    meter.close()
    assert not thread.is_alive()
    meter.close()   # idempotent


@pytest.mark.parametrize('sample_hz', [-1.0, float('nan')])
def test_jetson_rejects_bad_rate(tmp_path, sample_hz):
    iio_device(tmp_path, 0, {'VDD_IN': 5000})
    with pytest.raises(ValueError, match='sample_hz'):
        JetsonMeter(sysfs_root=tmp_path, sample_hz=sample_hz)


def test_jetson_unavailable_without_monitor(tmp_path):
    with pytest.raises(MeterUnavailable, match='INA3221'):
        JetsonMeter(sysfs_root=tmp_path, sample_hz=0)


# --- NVML ------------------------------------------------------------------------------------------------
class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """The pynvml calls the meter uses; GPUs by index with a settable energy counter (mJ)."""

    def __init__(self, gpus: int = 2, *, energy_supported: bool = True):
        self.energy = {i: 1_000_000.0 * (i + 1) for i in range(gpus)}
        self.power_mw = {i: 120_000 + i for i in range(gpus)}
        self.uuids = {f'GPU-{i:04d}': i for i in range(gpus)}
        self.energy_supported = energy_supported
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        if index not in self.energy:
            raise FakeNvmlError(f'invalid argument {index}')
        return ('handle', index)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ('handle', self.uuids[uuid])

    def nvmlDeviceGetName(self, handle):
        return b'Fake H200' if handle[1] == 0 else 'Fake A100'

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_supported:
            raise FakeNvmlError('Not Supported')
        return int(self.energy[handle[1]])

    def nvmlDeviceGetPowerUsage(self, handle):
        return self.power_mw[handle[1]]


def test_nvml_counts_from_creation(monkeypatch):
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    nvml = FakeNvml()
    meter = NvmlMeter(device_index=1, nvml=nvml)
    assert (meter.source, meter.measured, meter.period_s) == ('nvml', True, 0.1)
    assert meter.update_period_s == 0.1
    assert meter.detail == 'GPU 1: Fake A100'
    assert meter.energy_mj() == 0.0
    nvml.energy[1] += 1234
    nvml.energy[0] += 99   # another GPU's energy is not ours
    assert meter.energy_mj() == 1234.0
    assert meter.power_w() == pytest.approx(120.001)
    meter.close()
    meter.close()
    assert nvml.shutdowns == 1


@pytest.mark.parametrize('visible, index, expected_gpu', [
    ('1,0', 0, 1),
    ('1,0', 1, 0),
    ('GPU-0001', 0, 1),
    ('', 1, 1),   # empty: no mapping
])
def test_nvml_maps_cuda_visible_devices(monkeypatch, visible, index, expected_gpu):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', visible)
    nvml = FakeNvml()
    with NvmlMeter(device_index=index, nvml=nvml) as meter:
        nvml.energy[expected_gpu] += 10
        assert meter.energy_mj() == 10.0


@pytest.mark.parametrize('nvml, env, match', [
    (FakeNvml(energy_supported=False), None, 'Not Supported'),
    (FakeNvml(gpus=1), None, 'invalid argument'),
    (FakeNvml(gpus=2), '0', 'CUDA_VISIBLE_DEVICES'),
])
def test_nvml_unavailable(monkeypatch, nvml, env, match):
    if env is None:
        monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    else:
        monkeypatch.setenv('CUDA_VISIBLE_DEVICES', env)
    shutdowns = nvml.shutdowns
    with pytest.raises(MeterUnavailable, match=match):
        NvmlMeter(device_index=1, nvml=nvml)
    assert nvml.shutdowns == shutdowns + 1   # initialised, so shut down again


def test_nvml_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pynvml', None)   # import raises ImportError
    with pytest.raises(MeterUnavailable, match='nvidia-ml-py'):
        NvmlMeter()


# --- RAPL ------------------------------------------------------------------------------------------------
def rapl_tree(root: pathlib.Path, domains: dict[str, tuple[str, float]], *, max_uj: float = 1_000_000.0) -> pathlib.Path:
    base = root / 'class/powercap'
    for folder, (name, uj) in domains.items():
        write(base / folder / 'name', name)
        write(base / folder / 'energy_uj', int(uj))
        write(base / folder / 'max_energy_range_uj', int(max_uj))
    return base


def test_rapl_sums_packages_only(tmp_path):
    base = rapl_tree(tmp_path, {'intel-rapl:0': ('package-0', 500_000), 'intel-rapl:1': ('package-1', 100),
                                'intel-rapl:0:0': ('core', 7), 'intel-rapl:2': ('psys', 0)})
    with RaplMeter(sysfs_root=tmp_path, poll_s=0) as meter:
        assert meter.detail == 'package-0+package-1'
        assert meter.energy_mj() == 0.0
        write(base / 'intel-rapl:0/energy_uj', 600_000)
        write(base / 'intel-rapl:1/energy_uj', 50_100)
        write(base / 'intel-rapl:0:0/energy_uj', 999_999)
        write(base / 'intel-rapl:2/energy_uj', 999_999)
        assert meter.energy_mj() == pytest.approx(150.0)   # (100 000 + 50 000) uJ


def test_rapl_wraps_around(tmp_path):
    base = rapl_tree(tmp_path, {'intel-rapl:0': ('package-0', 900_000)}, max_uj=1_000_000)
    with RaplMeter(sysfs_root=tmp_path, poll_s=0) as meter:
        write(base / 'intel-rapl:0/energy_uj', 50_000)     # passed the maximum
        assert meter.energy_mj() == pytest.approx(150.0)
        write(base / 'intel-rapl:0/energy_uj', 80_000)
        assert meter.energy_mj() == pytest.approx(180.0)


def test_rapl_background_poll_thread_stops(tmp_path):
    rapl_tree(tmp_path, {'intel-rapl:0': ('package-0', 1)})
    meter = RaplMeter(sysfs_root=tmp_path, poll_s=0.01)
    thread = meter._thread
    assert thread.is_alive()
    meter.close()
    assert not thread.is_alive()


def test_rapl_permission_denied_is_unavailable(tmp_path, monkeypatch):
    rapl_tree(tmp_path, {'intel-rapl:0': ('package-0', 1)})
    real = energy._read_float

    def denied(path):
        if str(path).endswith('energy_uj'):
            raise PermissionError(13, 'Permission denied', str(path))
        return real(path)
    monkeypatch.setattr(energy, '_read_float', denied)
    with pytest.raises(MeterUnavailable, match='root'):
        RaplMeter(sysfs_root=tmp_path, poll_s=0)


def test_rapl_unavailable_without_domains(tmp_path):
    with pytest.raises(MeterUnavailable, match='RAPL'):
        RaplMeter(sysfs_root=tmp_path)


# --- estimate and the registry ------------------------------------------------------------------------------
def test_estimate_meter():
    meter = EstimateMeter()
    assert (meter.source, meter.measured, meter.energy_mj(), meter.power_w(), meter.period_s) == \
        ('estimate', False, None, None, None)
    meter.close()


@pytest.mark.parametrize('tree, nvml, device, expected', [
    ('jetson', True, None, 'jetson'),
    ('none', True, None, 'nvml'),
    ('none', True, 'cuda:0', 'nvml'),
    ('rapl', True, 'cpu', 'rapl'),       # a CPU device skips NVML
    ('rapl', False, None, 'rapl'),
    ('none', False, None, 'estimate'),
    ('none', True, 'cpu', 'estimate'),
])
def test_make_meter_auto_order(tmp_path, monkeypatch, tree, nvml, device, expected):
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    if tree == 'jetson':
        iio_device(tmp_path, 0, {'VDD_IN': 1000})
    elif tree == 'rapl':
        rapl_tree(tmp_path, {'intel-rapl:0': ('package-0', 1)})
    fake = FakeNvml() if nvml else FakeNvml(energy_supported=False)
    with make_meter('auto', sysfs_root=tmp_path, nvml=fake, device=device) as meter:
        assert meter.source == expected
        if expected == 'estimate':
            assert 'jetson' in meter.detail and 'rapl' in meter.detail   # says why nothing measures


def test_make_meter_by_name(tmp_path):
    rapl_tree(tmp_path, {'intel-rapl:0': ('package-0', 1)})
    with make_meter('rapl', sysfs_root=tmp_path) as meter:
        assert isinstance(meter, RaplMeter)
    assert isinstance(make_meter('estimate'), EstimateMeter)
    with make_meter('nvml', nvml=FakeNvml(), device='cuda:1') as meter:
        assert meter.detail.startswith('GPU 1')
    with pytest.raises(MeterUnavailable):
        make_meter('jetson', sysfs_root=tmp_path)


def test_make_meter_unknown_lists_known():
    with pytest.raises(ValueError, match=r"'nvml'.*'rapl'") as info:
        make_meter('tegrastats')
    assert 'tegrastats' in str(info.value) and 'auto' in str(info.value)


def test_register_meter_rejects_duplicates():
    for name in ('nvml', 'auto'):
        with pytest.raises(ValueError, match='already registered'):
            register_meter(name, energy._make_estimate)
    assert available_meters() == ['estimate', 'jetson', 'nvml', 'rapl']
