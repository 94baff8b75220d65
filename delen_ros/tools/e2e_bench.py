"""``delen_e2e_bench``: the real node over DDS, end to end, N cameras, every frame accounted for.

Each part runs in its own process, on loopback DDS (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, the
shipped Fast DDS profile, a ROS domain per configuration):

* **publishers** (:mod:`~delen_ros.tools.e2e_children` ``publish``): cameras publishing ``sensor_msgs/Image`` (640x480 rgb8,
  30 Hz by default), a few cameras per process (``--cams-per-proc``), phases spread over the period.
  A publisher starts only once every one of its topics is matched; each frame is stamped at
  publication (``header.stamp``, system clock) and every stamp is recorded, with how late each
  publication was against its schedule (so a publisher that cannot keep up shows).
* **the node** (``python -m delen_ros.ros.node``), one app per camera from the ``apps`` parameter
  (``--bounds``, in turn: a latency bound, 33 ms by default, as accurate as that allows; or with an
  accuracy bound and objective too, ``33@0.9124:min_energy``, scored per app); the bench's own
  parameters go in a params file, each ``--node-param NAME:=VALUE`` after it as ``-p NAME:=VALUE``.
  Or the **echo** (:mod:`delen_ros.tools.e2e_echo`): a pass-through that takes images raw as the node
  does and answers each with its header (``--echo-deserialize``: a Python message per image, as before).
* **a recorder** (:mod:`~delen_ros.tools.e2e_children` ``record``): subscribes to every result topic (``RESULT_QOS``) and the
  node's ``~/status``, keeps every result with its receive time, and reads the ``--node-param``
  names back from the node (``~/get_parameters``: one the node does not declare stops the sweep).

Frames count from ``--warmup`` s after everything is matched, for ``--duration`` s; the node then
has ``--drain`` s to answer the last ones. A result is matched to the frame it answers by
(camera, ``header.stamp``). Per configuration and per app: frames sent/s vs results/s, share
answered, latency stamp->receive p50/p99, attainment at the result topic (a frame counts when its
result arrived within the bound; unanswered frames are misses), the node's own ``bounds_met``,
exit mix, energy per result, accuracy when the frames carry labels (per app too, with its standard
error, and pooled over the apps with an accuracy bound against the same apps under ``always_final``),
where a frame's time goes
(stamp->arrival, queue, compute, rest of the node, delivery), node CPU per frame
(``/proc/<pid>/stat``) and by class of thread (``/proc/<pid>/task/*/stat``, :mod:`~delen_ros.tools.thread_cpu`),
node RSS / PSS / shared-memory segments (``/proc/<pid>/smaps``) and their
growth, GPU busy share (NVML or nvidia-smi; absent on a CPU), the node's configure time (its
``configured in X s`` log line). With the echo at the same N, node overhead = p(node stamp->receive
- compute) - p(echo stamp->receive), at p50 and p99.

**Admission** (``--register service,param``, issue 10): under ``service`` the node starts with no app and
a registrar asks its ``~/set_bounds`` for each camera's app, loosest bound first, ``--register-gap-s``
apart, while the admitted apps' cameras run; the window starts after the last answer. Refused apps (there,
at the node's configure under ``param``, or by the placer with ``--nodes``) are not waited for and their
frames count as misses. With both, the report runs every app refused under ``service`` anyway (its
``param`` run) and says whether it would have missed (``e2e.json`` ``admission``, :func:`admission_check`).

**Failover** (``--nodes K --kill-node-at S``, issue 12): S s into the window the bench SIGKILLs node
``/n0``'s process group and its receivers, and keeps everything else running; every process speaks DDS with
``config/fastdds_placement.xml`` (1 s lease), the nodes publish ``~/status`` every 0.2 s, and the recorder
follows every node's ``~/status`` (which node serves which app). Per app: node before / after, the
**recovery time** (kill -> first result at the result topic of a frame sent after the kill), the longest
gap between results, answered / within-bound shares before the kill, during the outage (until the last
moved app recovered) and after, summed for the moved and the untouched apps; the placer's own timeline
from its log (found dead, re-placed). In ``e2e.json`` under ``configs.<name>.failover``, a section of
``e2e.md`` and ``e2e_failover.png`` (results/s per app over time, the kill marked).

Writes ``e2e.json`` (every per-configuration figure; per node configuration also the parameters it
was given, ``node_params`` and ``node_param_overrides``, and the values the node reported,
``node_params_seen``), ``e2e.md`` (the table, also printed), ``e2e_answered.png``,
``e2e_latency.png``, ``e2e_resources.png`` (and ``e2e_failover.png``) into ``--out`` (default
``benchmarks/<device>/e2e``). Its parts: :mod:`~delen_ros.tools.e2e_children` (the processes beside the
node), :mod:`~delen_ros.tools.e2e_analysis` (the figures), :mod:`~delen_ros.tools.e2e_report` (the table
and plots); this module starts and measures each configuration.

Examples::

    delen_e2e_bench --model fashion_mnist --device cpu --ns 1,3,8 --rate 15 --duration 6
    delen_e2e_bench --model efficientnet_lite0 --device cuda --source cifar10 \\
        --engine-bench out/engine/bench.json --node-param ingress_processes:=2 --node-param cuda_graphs:=true
    delen_e2e_bench --nodes 2 --kill-node-at 4 --ns 4 --rate 15 --policies delen --no-echo --duration 10 \\
        --out benchmarks/cpu/failover
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

import numpy as np
import yaml

from ..core.bounds import Objective
from ..core.host_cpu import read_jiffies
from ..core.thread_names import name_os_thread
from .e2e_analysis import analyze, engine_reference
from .e2e_children import (PHASES, RESULT_PREFIX_ECHO, RESULT_PREFIX_NODE, STATUS_TOPIC, camera_app, camera_topic,
                           write_json_whole)
from .e2e_failover import FAILOVER_DDS_PROFILE, FAILOVER_STATUS_PERIOD_S, parse_placer_log
from .e2e_report import (admission_check, failover_summary, fmt, memory_growth, overheads, render_table, replot,
                         write_plots)
from .processes import Children, config_file, descendants, package_root, ros_child_env, sigterm_as_interrupt
from .thread_cpu import sample_threads, stat_cpu_s, stat_fields

__all__ = ['Config', 'NodeParam', 'parse_node_param', 'proc_sample', 'GpuSampler', 'overheads',
           'render_table', 'write_plots', 'device_slug', 'REGISTER_MODES', 'registration_order', 'configure_refusals',
           'main']

@dataclasses.dataclass(frozen=True)
class AppBounds:
    """One ``--bounds`` entry: a camera's app's latency bound (ms, 0: none), accuracy bound (0: none) and
    objective (``''``: the node's default)."""

    latency_ms: float
    min_accuracy: float = 0.0
    objective: str = ''


def _camera_apps(bounds: Sequence[AppBounds]) -> list[dict[str, Any]]:
    """One app per camera, camera ``i``'s with ``bounds[i]`` (its accuracy bound and objective only where set)."""
    apps = []
    for i, b in enumerate(bounds):
        app = {'app_id': camera_app(i), 'image_topic': camera_topic(i), 'max_latency_ms': b.latency_ms}
        if b.min_accuracy > 0:
            app['min_accuracy'] = b.min_accuracy
        if b.objective:
            app['objective'] = b.objective
        apps.append(app)
    return apps


def parse_bounds(text: str) -> list[AppBounds]:
    """``--bounds``: comma-separated ``LATENCY_MS[@MIN_ACCURACY[:OBJECTIVE]]`` (0: unbounded; ``ValueError``
    names a bad entry).

    >>> parse_bounds('5,33@0.9124:min_energy')  # doctest: +NORMALIZE_WHITESPACE
    [AppBounds(latency_ms=5.0, min_accuracy=0.0, objective=''),
     AppBounds(latency_ms=33.0, min_accuracy=0.9124, objective='min_energy')]
    """
    out = []
    for entry in (e.strip() for e in text.split(',')):
        if not entry:
            continue
        latency, at, rest = entry.partition('@')
        accuracy, colon, objective = rest.partition(':')
        try:
            b = AppBounds(float(latency), float(accuracy) if at else 0.0,
                          Objective.parse(objective).value if colon else '')
        except ValueError:
            raise ValueError(f'--bounds entry {entry!r}: expected LATENCY_MS[@MIN_ACCURACY[:OBJECTIVE]], objective '
                             f'one of {[o.value for o in Objective]}') from None
        if not (math.isfinite(b.latency_ms) and b.latency_ms >= 0 and 0 <= b.min_accuracy < 1):
            raise ValueError(f'--bounds entry {entry!r}: latency must be >= 0 ms and accuracy in [0, 1)')
        out.append(b)
    if not out:
        raise ValueError('--bounds is empty')
    return out


# --- /proc and GPU sampling -----------------------------------------------------------------------------------


def proc_sample(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system, all threads), threads, RSS / PSS (MB, ``smaps_rollup``), and the
    RSS / PSS of shared-memory mappings (``/dev/shm``: the DDS transport segments) of process ``pid``;
    ``None`` if it is gone."""
    try:
        _, fields = stat_fields(pathlib.Path(f'/proc/{pid}/stat').read_text())
        out: dict[str, float] = {'t_ns': time.time_ns(), 'cpu_s': stat_cpu_s(fields), 'threads': int(fields[17])}
        rollup = pathlib.Path(f'/proc/{pid}/smaps_rollup').read_text()
        for line in rollup.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == 'kB':
                out[parts[0].rstrip(':').lower() + '_mb'] = int(parts[1]) / 1024
        shm_rss = shm_pss = 0
        current_shm = False
        with open(f'/proc/{pid}/smaps') as f:
            for line in f:
                first = line.split(' ', 1)[0]
                if not first.endswith(':'):          # a mapping header: "addr perms offset dev inode path"
                    current_shm = '/dev/shm/' in line
                elif current_shm and first == 'Rss:':
                    shm_rss += int(line.split()[1])
                elif current_shm and first == 'Pss:':
                    shm_pss += int(line.split()[1])
        out['shm_rss_mb'], out['shm_pss_mb'] = shm_rss / 1024, shm_pss / 1024
        return out
    except (OSError, ValueError, IndexError):
        return None


def proc_tree_sample(pid: int) -> dict[str, float] | None:
    """:func:`proc_sample` of ``pid``, plus ``tree_cpu_s`` / ``tree_pss_mb`` / ``tree_procs`` over it and every
    live process under it (e.g. the node's ingress receiver processes; PSS adds up, RSS would not)."""
    out = proc_sample(pid)
    if out is None:
        return None
    samples = [out, *filter(None, (proc_sample(c) for c in descendants(pid)))]
    out['tree_cpu_s'] = sum(x['cpu_s'] for x in samples)
    out['tree_pss_mb'] = sum(x.get('pss_mb', 0.0) for x in samples)
    out['tree_procs'] = len(samples)
    return out


def thread_tree_sample(pid: int) -> dict[str, Any] | None:
    """:func:`~delen_ros.tools.thread_cpu.sample_threads` of ``pid``, with every live process under it."""
    return sample_threads(pid, descendants(pid))


def _host_cpu() -> tuple[float, float, float]:
    """(busy, total, stolen) jiffies of the whole machine (:func:`~delen_ros.core.host_cpu.read_jiffies`);
    zeros where they cannot be read."""
    return read_jiffies() or (0.0, 0.0, 0.0)


class GpuSampler:
    """GPU busy share (NVML ``utilization.gpu``, else ``nvidia-smi``) sampled in a thread; inert without a GPU.

    :param index: the GPU's index.
    :param period_s: sampling period (NVML's own averaging window is 1/6 s to 1 s).
    """

    def __init__(self, *, index: int = 0, period_s: float = 0.2):
        self.index, self.period_s = index, period_s
        self.source: str | None = None
        self.name: str | None = None
        self._nvml = self._handle = None
        self._samples: list[tuple[int, float, float | None]] = []   # (t_ns, busy %, power W)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self.source = 'nvml'
        except Exception:  # noqa: BLE001 - no NVML / no GPU: try nvidia-smi
            if shutil.which('nvidia-smi'):
                try:
                    text = subprocess.run(['nvidia-smi', '-i', str(index), '--query-gpu=name',
                                           '--format=csv,noheader'], capture_output=True, text=True,
                                          timeout=10).stdout.strip()
                    if text:
                        self.name, self.source, self.period_s = text.splitlines()[0], 'nvidia-smi', max(period_s, 0.5)
                except (OSError, subprocess.SubprocessError):
                    pass

    def _read(self) -> tuple[float, float | None] | None:
        if self.source == 'nvml':
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            try:
                power = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            except Exception:  # noqa: BLE001 - power not supported on this board
                power = None
            return float(util), power
        if self.source == 'nvidia-smi':
            text = subprocess.run(['nvidia-smi', '-i', str(self.index), '--query-gpu=utilization.gpu,power.draw',
                                   '--format=csv,noheader,nounits'], capture_output=True, text=True,
                                  timeout=5).stdout.strip().split(',')
            return float(text[0]), (float(text[1]) if len(text) > 1 and text[1].strip() not in ('', '[N/A]') else None)
        return None

    def start(self) -> None:
        if self.source is None:
            return
        self._stop.clear()
        self._samples = []
        self._thread = threading.Thread(target=self._run, name='e2e-gpu-sampler', daemon=True)
        self._thread.start()

    def _run(self) -> None:
        name_os_thread()
        while not self._stop.wait(self.period_s):
            try:
                value = self._read()
            except Exception:  # noqa: BLE001 - a failed sample is skipped
                continue
            if value is not None:
                self._samples.append((time.time_ns(), *value))

    def stop(self) -> dict[str, Any] | None:
        """Mean busy share (0-1) and power over the samples since :meth:`start`; ``None`` without a GPU."""
        if self.source is None:
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        busy = [s[1] for s in self._samples]
        power = [s[2] for s in self._samples if s[2] is not None]
        return {'source': self.source, 'name': self.name, 'samples': len(busy),
                'busy_share': float(np.mean(busy)) / 100.0 if busy else None,
                'busy_share_max': float(np.max(busy)) / 100.0 if busy else None,
                'power_w_mean': float(np.mean(power)) if power else None}


def device_slug(device: str, gpu_name: str | None = None) -> str:
    """Folder name under ``benchmarks/``: ``cpu``, or the GPU's model (``'NVIDIA H200'`` -> ``h200``)."""
    if not device.startswith('cuda'):
        return 'cpu'
    if not gpu_name:
        return 'cuda'
    words = [w for w in re.split(r'[^a-z0-9]+', gpu_name.lower()) if w and w not in ('nvidia', 'geforce', 'tesla')]
    return '_'.join(words[:2]) if words else 'cuda'


# --- one configuration ------------------------------------------------------------------------------------------
#: ``--register``: how a single node gets its apps. ``param``: all in its ``apps`` parameter, admitted (or
#: not) at configure, before any frame is measured; ``service``: it starts with none and the registrar asks
#: its ``~/set_bounds`` for each, loosest latency bound first, while the admitted apps' cameras run
REGISTER_MODES = ('param', 'service')


@dataclasses.dataclass(frozen=True)
class Config:
    """One run: ``kind`` ``'node'`` (with ``policy`` and ``register``, one of :data:`REGISTER_MODES`) or
    ``'echo'``, ``cameras`` cameras.

    >>> Config('node', 3, 'delen').name, Config('node', 3, 'delen', 'service').name, Config('echo', 3).name
    ('delen_n3', 'delen_n3_service', 'echo_n3')
    """

    kind: str
    cameras: int
    policy: str = ''
    register: str = 'param'

    def __post_init__(self):
        if self.register not in REGISTER_MODES:
            raise ValueError(f'register {self.register!r}: expected one of {", ".join(REGISTER_MODES)}')

    @property
    def name(self) -> str:
        if self.kind == 'echo':
            return f'echo_n{self.cameras}'
        return f'{self.policy}_n{self.cameras}' + ('' if self.register == 'param' else f'_{self.register}')


def registration_order(apps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``apps`` (each with ``max_latency_ms``; 0 = unbounded) loosest latency bound first, ties in the given
    order: each request is then judged beside apps that ask less of the device than it does.

    >>> [a['app_id'] for a in registration_order([{'app_id': 'a', 'max_latency_ms': 5},
    ...     {'app_id': 'b', 'max_latency_ms': 33}, {'app_id': 'c', 'max_latency_ms': 0},
    ...     {'app_id': 'd', 'max_latency_ms': 33}])]
    ['c', 'b', 'd', 'a']
    """
    def looseness(app: dict[str, Any]) -> float:
        bound = float(app.get('max_latency_ms') or 0.0)
        return math.inf if bound <= 0 else bound
    return sorted(apps, key=looseness, reverse=True)   # sorted is stable: ties keep their order


#: the node's log line for an app of its ``apps`` parameter it refused at configure
_NOT_RESTORED = re.compile(r'\]: app (\S+) not restored: (.*)$', re.MULTILINE)


def configure_refusals(log_text: str) -> dict[str, dict[str, Any]] | None:
    """The node's verdict on its ``apps`` parameter, from its log, in the registrar's format (app ->
    ``{accepted: False, message}``, refused apps only); ``None`` until the node has configured.

    >>> configure_refusals('[ERROR] [1.2] [delen]: app cam00 not restored: too tight\\n'
    ...                    '[INFO] [1.3] [delen]: configured in 1.6 s: model ...')
    {'cam00': {'accepted': False, 'message': 'too tight'}}
    """
    if not _CONFIGURED.search(log_text):
        return None
    return {app: {'accepted': False, 'message': why.strip()} for app, why in _NOT_RESTORED.findall(log_text)}


def _config_apps(args, config: 'Config', bounds: Sequence[float]) -> list[dict[str, Any]]:
    """The configuration's apps: ``--bounds``'s entries (``args.app_bounds``; else latency bounds
    ``bounds`` alone) given to the cameras in turn."""
    entries = getattr(args, 'app_bounds', None) or [AppBounds(float(b)) for b in bounds]
    return _camera_apps([entries[i % len(entries)] for i in range(config.cameras)])


#: node parameters the bench sets from its own options (a --node-param for one would contradict the report)
_BENCH_SET_PARAMS = {'model': '--model', 'device': '--device', 'devices': '--devices', 'policy': '--policies',
                     'max_batch': '--max-batch', 'image_qos': '--image-qos', 'apps': '--ns / --bounds'}
_PARAM_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*')


@dataclasses.dataclass(frozen=True)
class NodeParam:
    """One ``--node-param NAME:=VALUE``: ``value`` is the text as given (the node's rcl reads it as YAML)."""

    name: str
    value: str

    @property
    def ros_arg(self) -> str:
        """``NAME:=VALUE``, what follows ``-p`` on the node's command line."""
        return f'{self.name}:={self.value}'


def parse_node_param(text: str) -> NodeParam:
    """Read ``NAME:=VALUE`` (``NAME=VALUE`` is accepted too) for the node's ``-p NAME:=VALUE``.

    :raises ValueError: no name or value, a name ROS would not take, a value rcl cannot read (a YAML
        mapping, or not YAML), or a parameter the bench sets from its own options (the message names it).

    >>> parse_node_param('ingress_processes:=-1').ros_arg
    'ingress_processes:=-1'
    >>> parse_node_param('torch_threads=1')
    NodeParam(name='torch_threads', value='1')
    """
    name, sep, value = text.partition(':=')
    if not sep:
        name, sep, value = text.partition('=')
    name = name.strip()
    if not sep or not name or not value:
        raise ValueError(f"node parameter {text!r}: expected NAME:=VALUE (an empty string is written NAME:=\"''\")")
    if not _PARAM_NAME.fullmatch(name):
        raise ValueError(f'node parameter {text!r}: {name!r} is not a ROS parameter name')
    if name in _BENCH_SET_PARAMS:
        raise ValueError(f'node parameter {name!r} is set by the bench: use {_BENCH_SET_PARAMS[name]}')
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ValueError(f'node parameter {text!r}: the value is not YAML ({" ".join(str(exc).split())})') from None
    if isinstance(parsed, dict):
        raise ValueError(f'node parameter {text!r}: a mapping is not a parameter value')
    return NodeParam(name, value)


def _parse_node_params(items: Sequence[str]) -> list[NodeParam]:
    """The ``--node-param`` list, checked; a name given twice is an error (which one would count?)."""
    params = [parse_node_param(item) for item in items]
    names = [p.name for p in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f'node parameter(s) given more than once: {", ".join(twice)}')
    return params


def _node_params(args, config: Config, bounds: Sequence[float]) -> dict[str, Any]:
    """The parameters the bench sets (the node's params file); ``--node-param`` goes on as ``-p`` (:func:`_node_ros_args`)."""
    # under 'service' the registrar asks for them once the node is up
    apps = [] if config.register == 'service' else _config_apps(args, config, bounds)
    params: dict[str, Any] = {'model': args.model, 'device': args.device, 'policy': config.policy,
                              'max_batch': args.max_batch, 'state_file': '', 'image_qos': args.image_qos,
                              'max_apps': max(64, config.cameras), 'apps': yaml.safe_dump(apps, default_flow_style=True)}
    if config.register == 'param' and 'service' in getattr(args, 'registers', ()):
        # the forced run: every app admitted whose bounds compute alone can meet (no admission control, no
        # assumed frame age), so that requests refused under 'service' run anyway beside the apps admitted
        # there (with admission, configure refused one of those instead: session 28, a 2-core CPU)
        params.update(admission_control=False, transport_prior_ms=0.0, admission_headroom=0.0,
                      admission_headroom_min_ms=0.0)
    devices = [d for d in getattr(args, 'devices', '').split(',') if d]
    if len(devices) > 1 and getattr(args, 'nodes', 1) <= 1:
        params['devices'] = devices   # one node driving several GPUs (a DevicePool)
    return params


def _node_ros_args(params_file: pathlib.Path, node_params: Sequence[NodeParam]) -> list[Any]:
    """The node's ROS arguments: its params file, then ``-p NAME:=VALUE`` per ``--node-param`` (rcl applies
    overrides in command-line order, so these win over a file's value of the same name)."""
    out: list[Any] = ['--ros-args', '--params-file', params_file]
    for param in node_params:
        out += ['-p', param.ros_arg]
    return out


def _start_nodes_and_placer(args, config: Config, children: Children, workdir: pathlib.Path,
                            bounds: Sequence[float], raw: dict[str, Any]) -> subprocess.Popen:
    """``--nodes K``: K delen nodes in namespaces ``/n0`` .. (hosts on one machine; node ``j`` on
    ``--devices``'s ``j``-th device in turn, else ``--device``), the placer in front of them, and a
    registrar that registers every camera's app through ``/delen_placer/set_bounds`` (results on
    ``/delen/<app>/result``, as with one node). Returns the first node's process.

    The nodes publish ``~/status`` every :data:`FAILOVER_STATUS_PERIOD_S` (the placer's liveness check
    reads it; a ``--node-param status_period_s:=...`` still wins), and the placer
    gets ``--liveness-timeout-s`` / ``--check-period-s`` where given (else its own defaults)."""
    devices = [d for d in args.devices.split(',') if d] or [args.device]
    base = _node_params(args, config, bounds)
    base.pop('apps')   # the placer's, through the registrar
    apps = _config_apps(args, config, bounds)
    base.pop('devices', None)
    # the placer declares a node dead after liveness_timeout_s (1 s) without its ~/status: with the
    # node's default period (1 s) a busy but live node could be found dead
    base['status_period_s'] = FAILOVER_STATUS_PERIOD_S
    first = None
    for j in range(args.nodes):
        params = dict(base, device=devices[j % len(devices)])
        path = workdir / f'node{j}_params.yaml'
        path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
        proc = children.start(f'node{j}' if j else 'node', ['-m', 'delen_ros.ros.node',
                                                           *_node_ros_args(path, args.node_params),
                                                           '-r', f'__ns:=/n{j}'])
        first = first or proc
    namespaces = [f'/n{j}' for j in range(args.nodes)]
    placer_params = {name: value for name, value in (('liveness_timeout_s', getattr(args, 'liveness_timeout_s', None)),
                                                     ('check_period_s', getattr(args, 'check_period_s', None)))
                     if value is not None}
    # each a double: '1' would be an integer, which the placer's parameter refuses
    overrides = [a for name, value in placer_params.items() for a in ('-p', f'{name}:={float(value)!r}')]
    children.start('placer', ['-m', 'delen_ros.ros.placer', '--ros-args', '-p', f'nodes:={json.dumps(namespaces)}',
                              *overrides])
    raw['placer_params'] = placer_params
    (workdir / 'apps.json').write_text(json.dumps(apps))
    _start_registrar(children, workdir, apps, via='/delen_placer/set_bounds',
                     wait=[f'{ns}/delen/set_bounds' for ns in namespaces], gap_s=0.0, timeout_s=args.ready_timeout)
    raw['node_params'] = dict(base, devices=devices, nodes=namespaces)
    return first


def _start_registrar(children: Children, workdir: pathlib.Path, apps: Sequence[dict[str, Any]], *, via: str,
                     wait: Sequence[str] = (), gap_s: float, timeout_s: float) -> subprocess.Popen:
    """Start the registrar (:mod:`~delen_ros.tools.e2e_children`, ``register``): once ``via`` and every service in ``wait`` are up, it asks
    ``via`` (a ``SetBounds`` service) for ``apps`` in the given order, ``gap_s`` apart, and writes each answer
    to ``workdir/registrar.json``."""
    (workdir / 'apps.json').write_text(json.dumps(list(apps)))
    return children.start('registrar', ['-m', 'delen_ros.tools.e2e_children', 'register', '--apps', workdir / 'apps.json',
                                        '--via', via, '--wait', ','.join(wait), '--gap-s', gap_s,
                                        '--out', workdir / 'registrar.json', '--timeout', timeout_s])


def run_config(args, config: Config, *, domain_id: int, workdir: pathlib.Path, bounds: Sequence[float],
               gpu: GpuSampler) -> dict[str, Any]:
    """Start the processes of one configuration, measure, stop them; the raw material for
    :func:`~delen_ros.tools.e2e_analysis.analyze`."""
    workdir.mkdir(parents=True, exist_ok=True)
    kill_at = getattr(args, 'kill_node_at', None) if config.kind == 'node' and args.nodes > 1 else None
    env = ros_child_env(domain_id)
    if kill_at is not None:   # every process on the short DDS lease, so the dead node leaves the graph in 1 s
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(config_file(FAILOVER_DDS_PROFILE))
    children = Children(workdir, env, cwd=workdir, log_command=True)
    n = config.cameras
    topics = [camera_topic(i) for i in range(n)]
    prefix = RESULT_PREFIX_ECHO if config.kind == 'echo' else RESULT_PREFIX_NODE
    result_topics = [f'{prefix}/{camera_app(i)}/result' for i in range(n)]
    apps = _config_apps(args, config, bounds)
    raw: dict[str, Any] = {'config': dataclasses.asdict(config), 'name': config.name, 'domain_id': domain_id,
                           'rate_hz': args.rate, 'topics': topics, 'result_topics': result_topics,
                           'bounds_ms': [float(a['max_latency_ms']) for a in apps],
                           'min_accuracy': [a.get('min_accuracy', 0.0) for a in apps]}
    # Who admits the apps, and so who may refuse some: the placer (--nodes), the node's ~/set_bounds
    # (--register service), or the node at configure (its apps parameter). Every refusal lands in
    # registrar.json (app -> accepted, message): publishers and recorder do not wait for refused apps.
    answers_path = workdir / 'registrar.json'
    refused_by = None if config.kind != 'node' else ('placer' if args.nodes > 1 else
                                                     'node ~/set_bounds' if config.register == 'service' else
                                                     'node at configure (apps parameter)')
    node_params: list[NodeParam] = list(getattr(args, 'node_params', []))
    param_nodes: list[str] = []
    status_topics = [STATUS_TOPIC] if config.kind == 'node' else []
    t_start = time.monotonic()
    try:
        if config.kind == 'echo':
            raw['echo'] = 'deserialize' if args.echo_deserialize else 'raw'
            target = children.start('echo', ['-m', 'delen_ros.tools.e2e_echo', '--topics', ','.join(topics),
                                             '--result-prefix', prefix, '--image-qos', args.image_qos,
                                             *(['--deserialize'] if args.echo_deserialize else [])])
        elif args.nodes > 1:
            target = _start_nodes_and_placer(args, config, children, workdir, bounds, raw)
            param_nodes = [f'/n{j}/delen' for j in range(args.nodes)]
            status_topics = [f'/n{j}{STATUS_TOPIC}' for j in range(args.nodes)]
        else:
            params_path = workdir / 'params.yaml'
            raw['node_params'] = _node_params(args, config, bounds)
            params_path.write_text(yaml.safe_dump({'/**': {'ros__parameters': raw['node_params']}}))
            target = children.start('node', ['-m', 'delen_ros.ros.node', *_node_ros_args(params_path, node_params)])
            param_nodes = ['/delen']
            if config.register == 'service':
                ordered = registration_order(apps)
                raw['register_order'] = [a['app_id'] for a in ordered]
                raw['register_gap_s'] = args.register_gap_s
                _start_registrar(children, workdir, ordered, via=f'{RESULT_PREFIX_NODE}/set_bounds',
                                 gap_s=args.register_gap_s, timeout_s=args.ready_timeout)
        if config.kind == 'node' and node_params:
            raw['node_param_overrides'] = {p.name: p.value for p in node_params}
        target_name = 'echo' if config.kind == 'echo' else 'node'
        if kill_at is not None:   # the resources are the survivor's, which takes the killed node's apps
            target_name = 'node1'
            target = children.procs[target_name]
        raw['target'] = target_name
        children.start('recorder', ['-m', 'delen_ros.tools.e2e_children', 'record', '--topics', ','.join(result_topics),
                                    '--status', ','.join(status_topics),
                                    '--param-nodes', ','.join(param_nodes) if node_params else '',
                                    '--param-names', ','.join(p.name for p in node_params),
                                    '--ready', workdir / 'recorder.ready', '--out', workdir / 'recorder.json',
                                    '--registrar', answers_path if refused_by else ''])
        publishers = []
        for k, first in enumerate(range(0, n, args.cams_per_proc)):
            count = min(args.cams_per_proc, n - first)
            name = f'pub{k}'
            children.start(name, ['-m', 'delen_ros.tools.e2e_children', 'publish', '--first', first, '--count', count,
                                  '--total', n, '--rate', args.rate, '--size', args.size, '--encoding', args.encoding,
                                  '--source', args.source, '--pool', args.pool, '--qos', args.image_qos,
                                  '--phase', args.phase, '--ready', workdir / f'{name}.ready',
                                  '--registrar', answers_path if refused_by else '',
                                  *(['--early'] if config.kind == 'node' and config.register == 'service' else []),
                                  '--out', workdir / f'{name}.json'])
            publishers.append(name)
        # the window starts once every app was answered (registrar.json written) and every other one matched
        ready_files = [workdir / 'recorder.ready', *[workdir / f'{p}.ready' for p in publishers],
                       *([answers_path] if refused_by else [])]
        deadline = time.monotonic() + args.ready_timeout
        while not all(f.exists() for f in ready_files):
            if refused_by and refused_by.startswith('node at') and not answers_path.exists():
                verdict = configure_refusals(children.log_path('node').read_text(errors='replace'))
                if verdict is not None:   # configured: the apps it did not restore are refused
                    write_json_whole(answers_path, verdict)
            dead = children.dead(done=('registrar',))
            if dead:
                raise RuntimeError(f'{", ".join(dead)} exited before the run started')
            if time.monotonic() > deadline:
                missing = [f.stem for f in ready_files if not f.exists()]
                raise RuntimeError(f'not matched within {args.ready_timeout:g} s: {", ".join(missing)}')
            time.sleep(0.05)
        raw['startup_s'] = time.monotonic() - t_start
        if refused_by:   # apps refused: their frames count as misses
            answers = json.loads(answers_path.read_text())
            raw['refused'] = {app: answer['message'] for app, answer in answers.items() if not answer.get('accepted')}
            raw['refused_by'] = refused_by
            if config.register == 'service':
                raw['register_answers'] = answers
        ready_ns = time.time_ns()
        window = (ready_ns + int(args.warmup * 1e9), ready_ns + int((args.warmup + args.duration) * 1e9))
        raw['window_ns'] = window
        _sleep_until_ns(window[0])
        raw['target_start'] = proc_tree_sample(target.pid)
        raw['target_threads_start'] = thread_tree_sample(target.pid)
        raw['host_cpu_start'] = _host_cpu()
        raw['procs_start'] = {name: proc_sample(p.pid) for name, p in children.procs.items()}
        if os.environ.get('DELEN_E2E_WINDOW_MARK'):   # a profiler watching it samples the nodes now
            pathlib.Path(os.environ['DELEN_E2E_WINDOW_MARK']).write_text(f'{args.duration}\n')
        gpu.start()
        if kill_at is not None:
            _sleep_until_ns(window[0] + int(kill_at * 1e9))
            raw['kill'] = _kill_node(children, 'node', namespace='/n0')
            print(f"[e2e]   killed node /n0 (pid {raw['kill']['pid']}) {kill_at:g} s into the window", flush=True)
        _sleep_until_ns(window[1])
        raw['gpu'] = gpu.stop()
        raw['target_end'] = proc_tree_sample(target.pid)
        raw['target_threads_end'] = thread_tree_sample(target.pid)
        raw['host_cpu_end'] = _host_cpu()
        raw['procs_end'] = {name: proc_sample(p.pid) for name, p in children.procs.items()}
        raw['exit_codes'] = children.stop(publishers)
        time.sleep(args.drain)
        raw['exit_codes'].update(children.stop(['recorder']))
        if kill_at is not None:
            raw['placer_events'] = parse_placer_log(children.log_path('placer').read_text(errors='replace'))
        dead = [n for n in children.dead(done=('registrar',)) if n == target_name]
        raw['target_alive_at_end'] = not dead
        raw['publishers'] = [json.loads((workdir / f'{p}.json').read_text()) for p in publishers
                             if (workdir / f'{p}.json').exists()]
        raw['recorder'] = json.loads((workdir / 'recorder.json').read_text())
        raw['cpu_count'] = os.cpu_count()
    except (RuntimeError, OSError, ValueError) as exc:
        raw['error'] = str(exc)
        raw['log_tails'] = {name: children.log_tail(name) for name in children.procs}
    finally:
        raw.setdefault('exit_codes', {}).update(children.stop(list(children.procs)))
        raw['wall_s'] = time.monotonic() - t_start
        if config.kind == 'node':
            raw['node_configure_s'] = [configure_seconds(children.log_path(name))
                                       for name in children.procs if re.fullmatch(r'node\d*', name)]
            raw['node_graphs_settled_s'] = [graphs_settled_seconds(children.log_path(name))
                                            for name in children.procs if re.fullmatch(r'node\d*', name)]
            raw['held_requests'] = [h for name in children.procs if re.fullmatch(r'node\d*', name)
                                    for h in held_requests(children.log_path(name))]
    return raw


def _kill_node(children: Children, name: str, *, namespace: str) -> dict[str, Any]:
    """SIGKILL child ``name``'s process group and the ingress receivers it started (each in a session
    of its own), as when its host dies; when it happened (system clock, as the stamps)."""
    proc = children.procs[name]
    receivers = descendants(proc.pid)
    t_ns = time.time_ns()
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in receivers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass
    return {'node': namespace, 'process': name, 'pid': proc.pid, 't_ns': t_ns, 'signal': 'SIGKILL (process group)'}


#: ``[SEVERITY] [seconds.nanoseconds] [delen_placer]: message``: the ROS console's default line
_CONFIGURED = re.compile(r'configured in ([0-9]+(?:\.[0-9]*)?) s\b')
_SETTLED = re.compile(r'CUDA graphs settled after ([0-9]+(?:\.[0-9]*)?) s in the background')


def _last_seconds(log: pathlib.Path, pattern: re.Pattern) -> float | None:
    """The seconds in ``pattern``'s last match in the node's log; ``None`` if none (or no log)."""
    try:
        found = pattern.findall(pathlib.Path(log).read_text(errors='replace'))
    except OSError:
        return None
    return float(found[-1]) if found else None


def configure_seconds(log: pathlib.Path) -> float | None:
    """The node's configure time from its log (its ``configured in X s`` line; the last, if it configured
    more than once); ``None`` if the log has none (the node failed or never got that far)."""
    return _last_seconds(log, _CONFIGURED)


def graphs_settled_seconds(log: pathlib.Path) -> float | None:
    """How long the node's background CUDA-graph captures and cuDNN trials took (its ``CUDA graphs settled
    after X s`` line); ``None`` where they did not end in the run, or there were none (CPU, no graphs)."""
    return _last_seconds(log, _SETTLED)


_HELD = re.compile(r"set_bounds\('([^']*)'\) held ([0-9]+) ms for the first frames of ([^(\n]*)(?:\(([0-9]+) of them)?")


def held_requests(log: pathlib.Path) -> list[dict[str, Any]]:
    """The node's requests held for the first frames of the apps admitted before them (its ``set_bounds(...)
    held N ms`` lines): ``app``, ``held_ms``, ``waited_for`` (apps), ``unserved`` (of them, not served by then).

    >>> import tempfile; f = tempfile.NamedTemporaryFile('w', suffix='.log', delete=False)
    >>> _ = f.write("[INFO] [1.2] [delen]: set_bounds('cam00') held 412 ms for the first frames of cam01\\n"); f.close()
    >>> held_requests(pathlib.Path(f.name))
    [{'app': 'cam00', 'held_ms': 412, 'waited_for': ['cam01'], 'unserved': 0}]
    """
    try:
        text = pathlib.Path(log).read_text(errors='replace')
    except OSError:
        return []
    return [{'app': app, 'held_ms': int(ms), 'waited_for': [a.strip() for a in others.split(',') if a.strip()],
             'unserved': int(unserved or 0)} for app, ms, others, unserved in _HELD.findall(text)]


def _sleep_until_ns(t_ns: int) -> None:
    while True:
        left = (t_ns - time.time_ns()) / 1e9
        if left <= 0:
            return
        time.sleep(min(left, 0.2))


# --- main -----------------------------------------------------------------------------------------------------------
def _default_source(model: str) -> str:
    try:
        from delen_ros.core.datasets import camera_sources
        sources = camera_sources()
    except Exception:  # noqa: BLE001 - data sets missing: synthetic frames
        sources = {}
    # Labelled frames only where the model's classes are the labels' (else accuracy would be meaningless).
    preferred = ('fashion_mnist',) if 'fashion_mnist' in model else ('cifar10',) if 'cifar10' in model else ('vtest',)
    for name in preferred:
        if name in sources:
            return name
    return 'synthetic'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='delen_e2e_bench', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--model', default='fashion_mnist', help='node parameter model')
    p.add_argument('--device', default='cpu', help='node parameter device: cpu | cuda | cuda:N')
    p.add_argument('--policies', default='delen,always_final', help='comma-separated node policies')
    p.add_argument('--ns', default='1,3,8,16,32', help='comma-separated camera counts')
    p.add_argument('--echo', action=argparse.BooleanOptionalAction, default=True, help='run the echo node too')
    p.add_argument('--echo-ns', default='', help='camera counts for the echo (default: --ns)')
    p.add_argument('--echo-deserialize', action='store_true',
                   help='the echo builds a Python sensor_msgs/Image per frame (as before the node went raw) '
                   'instead of taking images raw as the node does')
    p.add_argument('--rate', type=float, default=30.0, help='frames per second per camera')
    p.add_argument('--size', default='640x480', help='WxH of the published images')
    p.add_argument('--encoding', default='rgb8')
    p.add_argument('--source', default='auto', help='camera source (delen_camera list: fashion_mnist, vtest, '
                   'cifar10 where installed, a folder or video), "synthetic", or auto (the model\'s data set if '
                   'shipped, else vtest, else synthetic); labelled sources are scored for accuracy')
    p.add_argument('--pool', type=int, default=30, help='distinct frames each publisher process cycles through')
    p.add_argument('--bounds', default='33', help='bounds, comma-separated, assigned to cameras in turn: a latency '
                   'bound in ms, or LATENCY_MS@MIN_ACCURACY[:OBJECTIVE] for an app that also bounds accuracy (e.g. '
                   '33@0.9124:min_energy; objective default, max_accuracy, min_latency or min_energy)')
    p.add_argument('--devices', default='', help='comma-separated devices (cuda:0,cuda:1): one node drives them all '
                   '(node parameter devices); with --nodes, node j runs on the j-th in turn')
    p.add_argument('--nodes', type=int, default=1, help='delen nodes in namespaces /n0.. behind delen_placer (hosts '
                   'on one machine); apps registered through the placer')
    p.add_argument('--kill-node-at', type=float, default=None, metavar='S',
                   help='with --nodes K >= 2: SIGKILL node /n0 (its process group and its receivers) S s '
                   'into the measured window, keep the rest running, and report the failover (per app: node before / '
                   'after, recovery = kill -> first result of a frame sent after it, longest gap, attainment before / '
                   'during the outage / after, moved vs untouched apps; e2e_failover.png). Every process then uses '
                   f'config/{FAILOVER_DDS_PROFILE} (1 s DDS lease) and the nodes publish ~/status every '
                   f'{FAILOVER_STATUS_PERIOD_S:g} s (--node-param status_period_s:=... wins)')
    p.add_argument('--liveness-timeout-s', type=float, default=None,
                   help='with --nodes: the placer\'s liveness_timeout_s (default: the placer\'s own)')
    p.add_argument('--check-period-s', type=float, default=None,
                   help='with --nodes: the placer\'s check_period_s (default: the placer\'s own)')
    p.add_argument('--register', default='param',
                   help='comma-separated, how the single node gets its apps (one configuration each): param = all in '
                   'its apps parameter, admitted or refused at configure before any frame is measured (configuration '
                   '<policy>_n<N>); service = the node starts with none, and once its ~/set_bounds is up a registrar '
                   'asks it for each camera\'s app, loosest latency bound first, --register-gap-s apart, while the '
                   'admitted apps\' cameras already run (<policy>_n<N>_service). Either way refused apps are not '
                   'waited for, their frames count as misses and the report lists why; with both, the report runs '
                   'every app refused under service anyway (under param) and says whether it would have missed')
    p.add_argument('--register-gap-s', type=float, default=0.5,
                   help='--register service: seconds between one answer and the next request')
    p.add_argument('--max-batch', type=int, default=8, help='node parameter max_batch')
    p.add_argument('--image-qos', default='sensor_data', choices=['sensor_data', 'reliable'])
    p.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                   help='a node parameter, given to the node as -p NAME:=VALUE (after its params file, so it wins); '
                   'repeatable, e.g. --node-param ingress_processes:=2 --node-param torch_threads:=1 (NAME=VALUE '
                   'also works); recorded in e2e.json and the report, and read back from the node: a name the node '
                   'does not declare stops the sweep')
    p.add_argument('--cams-per-proc', type=int, default=4, help='cameras per publisher process')
    p.add_argument('--phase', default='spread', choices=PHASES,
                   help='camera phases spread over the period, all at once, or spread and drifting (rates off '
                        'by up to 0.2 %%, as free-running cameras: a refusal for a running step is judged only '
                        'where frames of two cameras can meet)')
    p.add_argument('--duration', type=float, default=8.0, help='measured seconds per configuration')
    p.add_argument('--warmup', type=float, default=2.0, help='seconds after everything matched, not counted')
    p.add_argument('--drain', type=float, default=2.0, help='seconds after the last counted frame for its result')
    p.add_argument('--ready-timeout', type=float, default=90.0, help='seconds to wait for start-up and discovery')
    p.add_argument('--engine-bench', default=None, help='a delen_bench bench.json: the engine-only reference')
    p.add_argument('--domain-id', type=int, default=None,
                   help='first ROS domain id (one per configuration, at most 232); default from the pid')
    p.add_argument('--out', default=None, help='output folder (default benchmarks/<device>/e2e)')
    p.add_argument('--workdir', default=None, help='logs and raw files of each configuration (default: a temp dir, '
                   'removed unless --keep-work)')
    p.add_argument('--keep-work', action='store_true')
    p.add_argument('--note', default='', help='a sentence for the report (e.g. what else loaded the machine)')
    p.add_argument('--replot', default=None, metavar='E2E_JSON',
                   help='only rewrite the table and plots of an existing e2e.json (into its folder, or --out)')
    return p


def _git_revision() -> str | None:
    """The commit of the code that the children run (``+dirty`` with uncommitted changes). When that code is
    an installed copy (``pip install``, ``colcon``), ``installed copy`` instead: a venv inside a checkout
    would otherwise report the checkout's commit for code that ``scripts/setup.sh`` installed earlier."""
    root = package_root()
    try:
        top = subprocess.run(['git', 'rev-parse', '--show-toplevel'], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not top or pathlib.Path(top).resolve() != root.resolve():
            return f'installed copy in {root}'
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ('+dirty' if dirty else '')) if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replot:
        print(replot(pathlib.Path(args.replot), out=pathlib.Path(args.out) if args.out else None, note=args.note))
        return 0
    try:
        args.node_params = _parse_node_params(args.node_param)
    except ValueError as exc:
        parser.error(str(exc))
    if args.kill_node_at is not None:
        if args.nodes < 2:
            parser.error(f'--kill-node-at needs --nodes >= 2 (got --nodes {args.nodes}): the apps need a node to '
                         'move to')
        if not 0 <= args.kill_node_at < args.duration:
            parser.error(f'--kill-node-at {args.kill_node_at:g} is not within the measured window '
                         f'(0..{args.duration:g} s)')
    policies = [p for p in args.policies.split(',') if p]
    ns = [int(v) for v in args.ns.split(',') if v]
    echo_ns = [int(v) for v in (args.echo_ns or args.ns).split(',') if v] if args.echo else []
    try:
        args.app_bounds = parse_bounds(args.bounds)
    except ValueError as e:
        parser.error(str(e))
    bounds = [b.latency_ms for b in args.app_bounds]
    if args.source == 'auto':
        args.source = _default_source(args.model)
    registers = args.registers = [r for r in args.register.split(',') if r]
    if not registers or set(registers) - set(REGISTER_MODES) or len(set(registers)) < len(registers):
        parser.error(f'--register {args.register!r}: a comma-separated list of {", ".join(REGISTER_MODES)}, each once')
    if args.nodes > 1 and registers != ['param']:
        parser.error('--register is for one node; with --nodes the placer registers every app (through its '
                     '~/set_bounds)')
    if args.register_gap_s < 0:
        parser.error(f'--register-gap-s {args.register_gap_s:g} is negative')
    configs = [Config('node', n, p, r) for n in ns for p in policies for r in registers] + \
        [Config('echo', n) for n in echo_ns]
    first_domain = args.domain_id if args.domain_id is not None else 100 + os.getpid() % 100
    if first_domain < 0 or first_domain + len(configs) - 1 > 232:
        raise SystemExit(f'domain ids {first_domain}..{first_domain + len(configs) - 1} leave 0..232 (Fast DDS)')
    gpu = GpuSampler(index=int(args.device.split(':')[1]) if args.device.startswith('cuda:') else 0)
    if not args.device.startswith('cuda'):
        gpu.source = None   # a CPU run: GPU activity is not this benchmark's
    slug = device_slug(args.device, gpu.name)
    out = pathlib.Path(args.out or package_root() / 'benchmarks' / slug / 'e2e')
    out.mkdir(parents=True, exist_ok=True)
    workroot = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tempfile.mkdtemp(prefix='delen_e2e_'))
    import platform
    meta = {'model': args.model, 'device': args.device, 'device_slug': slug,
            'device_name': gpu.name if args.device.startswith('cuda') and gpu.name else platform.processor() or 'CPU',
            'cpu_count': os.cpu_count(), 'policies': policies, 'ns': ns, 'echo_ns': echo_ns, 'rate_hz': args.rate,
            'size': args.size, 'encoding': args.encoding, 'source': args.source, 'bounds_ms': bounds,
            'min_accuracy': [b.min_accuracy for b in args.app_bounds],
            'objectives': [b.objective or 'default' for b in args.app_bounds],
            'max_batch': args.max_batch, 'image_qos': args.image_qos, 'nodes': args.nodes, 'register': registers,
            'register_gap_s': args.register_gap_s,
            'kill_node_at_s': args.kill_node_at, 'liveness_timeout_s': args.liveness_timeout_s,
            'check_period_s': args.check_period_s,
            'node_params': [p.ros_arg for p in args.node_params], 'echo': 'deserialize' if args.echo_deserialize else 'raw',
            'duration_s': args.duration, 'warmup_s': args.warmup, 'drain_s': args.drain,
            'cams_per_proc': args.cams_per_proc, 'phase': args.phase, 'python': platform.python_version(),
            'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'git': _git_revision(), 'note': args.note}
    if meta['device_name'] in ('', 'x86_64', 'CPU'):
        try:
            for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
                if line.startswith('model name'):
                    meta['device_name'] = line.split(':', 1)[1].strip()
                    break
        except OSError:
            pass
    report: dict[str, Any] = {'meta': meta, 'engine_reference': engine_reference(args.engine_bench), 'configs': {}}
    interrupted = False
    t_all = time.monotonic()
    previous_sigterm = sigterm_as_interrupt()   # the children stopped and what ran written, as on Ctrl-C
    try:
        for k, config in enumerate(configs):
            print(f'[e2e] {config.name}: {config.cameras} camera(s) at {args.rate:g} Hz ...', flush=True)
            raw = run_config(args, config, domain_id=first_domain + k, workdir=workroot / config.name,
                             bounds=bounds, gpu=gpu)
            result = analyze(raw, duration_s=args.duration)
            report['configs'][config.name] = result
            t = result.get('total')
            configured = [v for v in result.get('node_configure_s') or [] if v is not None]
            if t:
                print(f"[e2e]   sent {t['sent_hz']:.1f}/s, results {t['results_hz']:.1f}/s, answered "
                      f"{fmt(t['answered_share'], '.1f', 100)} %, within bound {fmt(t['attainment'], '.1f', 100)} %, "
                      f"p50 {fmt(t.get('e2e_p50_ms'))} / p99 {fmt(t.get('e2e_p99_ms'))} ms "
                      f"(start-up {raw.get('startup_s', 0):.1f} s"
                      f"{f', node configured in {max(configured):.1f} s' if configured else ''}, {raw['wall_s']:.1f} s)",
                      flush=True)
            else:
                print(f"[e2e]   failed: {result.get('error')}", flush=True)
            if result.get('refused'):
                print(f"[e2e]   refused by the {result.get('refused_by') or 'placer'} (their frames count as misses): "
                      + '; '.join(f'{app}: {why[:160]}' for app, why in sorted(result['refused'].items())), flush=True)
            if result.get('failover'):
                print(f"[e2e]   {failover_summary(result['failover'])}", flush=True)
                for name, tail in (result.get('log_tails') or {}).items():
                    print(f'[e2e]   --- {name} log ---\n{tail}', flush=True)
            if result.get('node_params_unknown'):
                meta['stopped'] = (f"the node does not declare {', '.join(result['node_params_unknown'])} (given by "
                                   f"--node-param, so ignored by the node): the sweep stopped after {config.name}")
                print(f"[e2e] {meta['stopped']}", flush=True)
                break
    except KeyboardInterrupt:
        interrupted = True
        print('[e2e] interrupted: writing what ran', flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    overheads(report['configs'])
    report['admission'] = admission_check(report['configs'])
    report['memory_growth'] = memory_growth(report)
    meta['wall_s'] = time.monotonic() - t_all
    meta['interrupted'] = interrupted
    report['plots'] = write_plots(report, out) if report['configs'] else []
    table = render_table(report)
    (out / 'e2e.md').write_text(table)
    (out / 'e2e.json').write_text(json.dumps(report, indent=1, default=float) + '\n')
    print(table)
    print(f"[e2e] wrote {out / 'e2e.json'}, {out / 'e2e.md'}, {', '.join(report['plots'])} in {meta['wall_s']:.0f} s")
    if not args.workdir and not args.keep_work:
        shutil.rmtree(workroot, ignore_errors=True)
    elif not args.workdir:
        print(f'[e2e] logs in {workroot}')
    return 130 if interrupted else 2 if meta.get('stopped') else 0


if __name__ == '__main__':
    sys.exit(main())
