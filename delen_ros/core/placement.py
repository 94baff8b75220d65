"""Several accelerators behind one engine API: a :class:`DevicePool` places apps on devices.

One :class:`~delen_ros.core.engine.Engine` per device (each with its own runner, CUDA graphs and
streams, worker thread, scheduler and admission); the pool exposes the API the node uses on one
engine (``set_app``, ``remove_app``, ``submit``, ``deliver``, ``count_malformed``, ``stats``,
``feasible_range``, ``worker_stats``, ``warm_up``, ``start``, ``stop``, ``apps``), so the node drives
several GPUs without knowing it.

Placement:

* A **camera group** (every app on one ``source``) lives on one device, so each frame is
  preprocessed and computed once.
* A new group goes to the healthy device with the most headroom (lowest admission utilisation now)
  whose own admission accepts it; a device that refuses is skipped. An update stays where the app
  is, unless that device's admission refuses it: then its whole group moves to a device that admits
  it. Only when every device refuses is the caller told (the first device's reason).
* :meth:`DevicePool.rebalance` (the pool's monitor thread calls it every ``rebalance_period_s``)
  reads every device's last admission re-check at the measured frame rates (re-run once a second at
  most); from a device where some app has been at risk for ``overload_grace_s`` it moves one camera
  group (at risk, lightest first) to another device that admits it beside its own apps, and tries
  again ``move_backoff_s`` later at the soonest. A try costs an admission test on every device (tens
  of ms of Python at 64 cameras): tried on every pass, with every app at risk after a start-up's old
  frames, the monitor held the GIL a fifth of the time (``benchmarks/pool_monitor_cost.py``).
* A **move** loses no frame in flight: the group is registered on the new device first, new frames
  go there at once, and the old device keeps the apps until it has answered (or dropped) every frame
  it had (``drain_timeout_s`` at most); then they are removed there and their counters are carried
  into the app's ledger (:meth:`DevicePool.stats` sums the devices' counters since registration).
* A **failed device** (its worker thread died, or ``failure_checks`` consecutive checks saw steps
  fail and no result) is stopped and its groups re-placed on the others (under admission: apps that
  fit nowhere wait, unplaced, their ``unschedulable_reason`` says so, and every check retries them).

Results carry the index of the device that produced them (:class:`PlacedResult`), so
:meth:`DevicePool.deliver` records each on the engine that computed it.

Example (CPU "devices" stand in for GPUs)::

    pool = DevicePool(['cuda:0', 'cuda:1'], lambda device, on_result: Engine(
        load_model('fashion_mnist', device=device), profile, device=device, on_result=on_result),
        on_result=publish)
    pool.start()
    pool.set_app('nav', Bounds(max_latency_ms=33.0), source='/cam0')
    pool.submit(['nav'], image)
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from . import admission
from .bounds import Bounds, FeasibleRange, InfeasibleBounds, LatePolicy, Plan
from .results import AppStats, Result, WorkerStats
from .thread_names import name_os_thread

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ['PlacedResult', 'Move', 'DeviceState', 'DevicePool']

_log = logging.getLogger(__name__)

#: AppStats fields that count since registration: summed over the devices an app has lived on
_CUMULATIVE = ('frames_in', 'results_out', 'dropped', 'dropped_overflow', 'dropped_late', 'failed', 'expired',
               'dropped_malformed', 'served_late')


@dataclasses.dataclass(frozen=True)
class PlacedResult(Result):
    """A :class:`~delen_ros.core.results.Result` with the index of the pool device that computed it."""

    device_index: int = -1


@dataclasses.dataclass(frozen=True)
class Move:
    """One camera group moved by the pool: its apps, from and to device indices, and why."""

    app_ids: tuple[str, ...]
    from_index: int | None
    to_index: int
    reason: str


@dataclasses.dataclass(frozen=True)
class DeviceState:
    """One device as :meth:`DevicePool.devices` reports it: ``utilisation`` is admission's (0-1)
    at the measured rates; ``failed``: why it was taken out of service ('' = healthy)."""

    index: int
    device: str
    apps: tuple[str, ...]
    draining: tuple[str, ...]
    utilisation: float
    failed: str


@dataclasses.dataclass
class _AppConfig:
    bounds: Bounds
    late_policy: LatePolicy
    rate_hz: float | None
    source: str | None


@dataclasses.dataclass
class _Health:
    failed_requests: int = 0
    results: int = 0
    bad_checks: int = 0


class DevicePool:
    """Drives one engine per device and places apps on them (see the module docstring).

    :param devices: device names (``'cuda:0'``, ``'cuda:1'``, ...; the same name may repeat, e.g.
        several ``'cpu'`` entries in tests); at least one.
    :param make_engine: ``(device, on_result) -> Engine``: builds one device's engine; it must pass
        ``on_result`` on (the pool tags each result with its device).
    :param on_result: called from the devices' worker threads with every :class:`PlacedResult`.
    :param rebalance_period_s: period of the monitor thread (health, drains, rebalancing) once
        started; 0: no thread (call :meth:`rebalance` yourself).
    :param failure_checks: consecutive checks that saw failed steps and no result before a device is
        declared failed.
    :param drain_timeout_s: longest a moved app stays on its old device for its frames in flight.
    :param recheck_s: the monitor re-runs a device's admission re-check when the last one (the
        node's status tick runs one a second) is older than this, s; in between it acts on that verdict.
    :param overload_grace_s: how long some app of a device must stay at risk before a camera group
        is moved off it, s (a transient, e.g. a start-up's old frames, passes without a move).
    :param move_backoff_s: the least time between two tries to move a group off one device, s.
    :raises ValueError: no devices, or bad settings.
    """

    def __init__(self, devices: Sequence[str], make_engine: Callable[[str, Callable[[Result], None]], 'Engine'], *,
                 on_result: Callable[[Result], None], rebalance_period_s: float = 0.25,
                 failure_checks: int = 2, drain_timeout_s: float = 2.0, recheck_s: float = 1.0,
                 overload_grace_s: float = 2.0, move_backoff_s: float = 2.0):
        devices = list(devices)
        if not devices:
            raise ValueError('devices must name at least one device, got []')
        if not callable(on_result):
            raise ValueError(f'on_result must be callable, got {on_result!r}')
        if not math.isfinite(rebalance_period_s) or rebalance_period_s < 0:
            raise ValueError(f'rebalance_period_s must be >= 0, got {rebalance_period_s!r}')
        if failure_checks < 1:
            raise ValueError(f'failure_checks must be >= 1, got {failure_checks!r}')
        for name, value in (('drain_timeout_s', drain_timeout_s), ('recheck_s', recheck_s),
                            ('overload_grace_s', overload_grace_s), ('move_backoff_s', move_backoff_s)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f'{name} must be >= 0, got {value!r}')
        self.device_names = tuple(devices)
        self.on_result = on_result
        self.rebalance_period_s = rebalance_period_s
        self.failure_checks = failure_checks
        self.drain_timeout_s = drain_timeout_s
        self.recheck_s = recheck_s
        self.overload_grace_s = overload_grace_s
        self.move_backoff_s = move_backoff_s
        self._at_risk_since: dict[int, int] = {}   # device -> monotonic ns since some app has been at risk
        self._next_move_ns: dict[int, int] = {}    # device -> no move tried off it before then
        self.engines: list[Engine] = [make_engine(d, self._hook(i)) for i, d in enumerate(devices)]
        first = self.engines[0]
        self.model, self.profile, self.info = first.model, first.profile, first.info
        self.external_delivery = first.external_delivery
        self._lock = threading.RLock()
        self._configs: dict[str, _AppConfig] = {}
        self._placement: dict[str, int | None] = {}   # app -> device index (None: unplaced); read lock-free by submit
        self._draining: dict[tuple[str, int], int] = {}   # (app, device) -> monotonic ns the move happened
        self._carried: dict[str, dict[str, int]] = {}     # counters of devices an app has left
        self._failed: dict[int, str] = {}
        self._health = [_Health() for _ in self.engines]
        self.moves: list[Move] = []
        self._started = False
        self._stop_monitor = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- results ---------------------------------------------------------------------------------------
    def _hook(self, index: int) -> Callable[[Result], None]:
        def on_result(result: Result) -> None:
            self.on_result(PlacedResult(**vars(result), device_index=index))
        return on_result

    def deliver(self, result: Result, *, delivered_ns: int | None = None) -> Result:
        """:meth:`Engine.deliver <delen_ros.core.engine.Engine.deliver>` on the device that computed
        ``result`` (its app's current device for a plain :class:`Result`)."""
        index = getattr(result, 'device_index', -1)
        if not 0 <= index < len(self.engines):
            index = self._placement.get(result.app_id)
            index = 0 if index is None else index
        return self.engines[index].deliver(result, delivered_ns=delivered_ns)

    # --- apps ------------------------------------------------------------------------------------------
    def _healthy(self) -> list[int]:
        return [i for i in range(len(self.engines)) if i not in self._failed]

    def _utilisation(self, index: int) -> float:
        try:
            return float(self.engines[index].schedulability().utilisation)
        except Exception:  # noqa: BLE001 -- a device that cannot answer has no headroom
            _log.exception('device %d: schedulability failed', index)
            return math.inf

    def _by_headroom(self, exclude: Sequence[int] = ()) -> list[int]:
        """Healthy devices, most headroom first (admission utilisation, then fewer apps, then index)."""
        candidates = [i for i in self._healthy() if i not in exclude]
        return sorted(candidates, key=lambda i: (self._utilisation(i), len(self.engines[i].apps()), i))

    def _group(self, app_id: str, source: str | None) -> list[str]:
        """The other apps on ``source`` (none for a source-less app)."""
        if source is None:
            return []
        return [a for a, c in self._configs.items() if a != app_id and c.source == source]

    def _rate(self, app_id: str) -> float | None:
        """The app's measured rate on its device now (what it brings to a new device), else its hint."""
        index = self._placement.get(app_id)
        if index is not None:
            measured = self.engines[index].measured_rate_hz(app_id)
            if measured is not None:
                return measured
        return self._configs[app_id].rate_hz

    def _admit(self, index: int, members: Sequence[tuple[str, _AppConfig, float | None]]) -> Plan:
        """Register every member on device ``index`` (all or none); returns the last one's plan."""
        engine, added, plan = self.engines[index], [], None
        try:
            for app_id, config, rate_hz in members:
                known = app_id in engine.apps()
                plan = engine.set_app(app_id, config.bounds, late_policy=config.late_policy, rate_hz=rate_hz,
                                      source=config.source)
                if not known:
                    added.append(app_id)
        except BaseException:
            for app_id in added:
                engine.remove_app(app_id)
            raise
        return plan

    def _switch(self, app_ids: Sequence[str], to_index: int, reason: str) -> None:
        """Point ``app_ids`` at device ``to_index``: their old device drains what it holds."""
        now = time.monotonic_ns()
        sources = {self._placement.get(a) for a in app_ids}
        for app_id in app_ids:
            old = self._placement.get(app_id)
            self._placement[app_id] = to_index
            self._draining.pop((app_id, to_index), None)
            if old is not None and old != to_index:
                self._draining[(app_id, old)] = now
        from_index = next(iter(sources)) if len(sources) == 1 else None
        if from_index is not None and from_index != to_index:
            move = Move(tuple(app_ids), from_index, to_index, reason)
            self.moves.append(move)
            _log.info('moved %s from %s (#%d) to %s (#%d): %s', ', '.join(app_ids), self.device_names[from_index],
                      from_index, self.device_names[to_index], to_index, reason)

    def set_app(self, app_id: str, bounds: Bounds, *, late_policy: LatePolicy | str = LatePolicy.SERVE_FASTEST,
                rate_hz: float | None = None, source: str | None = None, device_index: int | None = None) -> Plan:
        """Register an app or update its bounds on the device that admits it (see the module docstring).

        Same contract as :meth:`Engine.set_app <delen_ros.core.engine.Engine.set_app>`; a rejected
        request changes nothing.

        :param device_index: place it (and its camera group) on this device only (tests, pinning);
            ``None``: by headroom.
        :raises InfeasibleBounds: / :class:`~delen_ros.core.admission.Unschedulable`: no healthy
            device admits it (the reason from the device it would have gone to first).
        :raises ValueError: bad arguments, or ``device_index`` out of range.
        """
        if device_index is not None and not 0 <= device_index < len(self.engines):
            raise ValueError(f'device_index must be in [0, {len(self.engines)}), got {device_index!r}')
        late_policy = LatePolicy.parse(late_policy)
        with self._lock:
            old = self._configs.get(app_id)
            if source is None and old is not None:
                source = old.source
            config = _AppConfig(bounds, late_policy, rate_hz if rate_hz is not None else
                                (old.rate_hz if old is not None else None), source)
            group = self._group(app_id, source)
            # where its camera group is, else where it is now
            current = self._placement.get(group[0]) if group else self._placement.get(app_id)
            if current is not None and current in self._failed:
                current = None
            first_error: InfeasibleBounds | None = None
            if current is not None and device_index in (None, current):
                try:
                    plan = self._admit(current, [(app_id, config, rate_hz)])
                except InfeasibleBounds as exc:
                    first_error = exc
                else:
                    self._configs[app_id] = config
                    if self._placement.get(app_id) not in (None, current):   # moved to another camera's device
                        self._switch([app_id], current, 'joined its camera group')
                    self._placement[app_id] = current
                    return plan
            if device_index is not None:
                candidates = [] if device_index in self._failed or device_index == current else [device_index]
            else:
                candidates = self._by_headroom(exclude=[current] if current is not None else [])
            members = [(a, self._configs[a], self._rate(a)) for a in group] + [(app_id, config, rate_hz)]
            for index in candidates:
                try:
                    plan = self._admit(index, members)
                except InfeasibleBounds as exc:
                    first_error = first_error or exc
                    continue
                self._configs[app_id] = config
                self._switch([a for a, _, _ in members], index,
                             f'{self.device_names[current]} (#{current}) does not admit {app_id}'
                             if current is not None else 'placed')
                return plan
            if first_error is not None:
                raise first_error
            raise admission.Unschedulable(f'{app_id!r}: no healthy device to place it on (failed: '
                                          f'{self._failed_text() or "none"})', self.engines[0].feasible_range())

    def remove_app(self, app_id: str) -> bool:
        """Forget an app on every device (queued frames and results in flight are discarded)."""
        with self._lock:
            if self._configs.pop(app_id, None) is None:
                return False
            self._placement.pop(app_id, None)
            self._carried.pop(app_id, None)
            for key in [k for k in self._draining if k[0] == app_id]:
                del self._draining[key]
            for engine in self.engines:
                engine.remove_app(app_id)
            return True

    def apps(self) -> dict[str, Bounds]:
        with self._lock:
            return {a: c.bounds for a, c in self._configs.items()}

    def placement(self) -> dict[str, str | None]:
        """App -> the device serving it (``'cuda:1#1'``: name and index; ``None``: unplaced)."""
        with self._lock:
            return {a: None if i is None else f'{self.device_names[i]}#{i}' for a, i in self._placement.items()}

    def device_index(self, app_id: str) -> int | None:
        return self._placement.get(app_id)

    # --- frames ----------------------------------------------------------------------------------------
    def submit(self, app_ids: Sequence[str], image: np.ndarray, *, arrival_ns: int | None = None,
               tag: object = None) -> int:
        """Queue a frame on the device of each app in ``app_ids`` (one device per camera group, so
        normally one call); returns how many apps it was queued for."""
        placement = self._placement
        first = placement.get(app_ids[0]) if app_ids else None
        if all(placement.get(a) == first for a in app_ids):   # the usual case: one camera, one device
            return 0 if first is None else self.engines[first].submit(app_ids, image, arrival_ns=arrival_ns, tag=tag)
        by_device: dict[int, list[str]] = {}
        for a in app_ids:
            index = placement.get(a)
            if index is not None:
                by_device.setdefault(index, []).append(a)
        return sum(self.engines[i].submit(ids, image, arrival_ns=arrival_ns, tag=tag) for i, ids in by_device.items())

    def count_malformed(self, app_ids: Sequence[str], count: int = 1) -> None:
        by_device: dict[int, list[str]] = {}
        for a in app_ids:
            index = self._placement.get(a)
            if index is not None:
                by_device.setdefault(index, []).append(a)
        for index, ids in by_device.items():
            self.engines[index].count_malformed(ids, count)

    # --- figures ---------------------------------------------------------------------------------------
    def _best(self) -> 'Engine':
        """The healthy engine with the most headroom (what a new app would be offered)."""
        order = self._by_headroom()
        return self.engines[order[0] if order else 0]

    def feasible_range(self) -> FeasibleRange:
        """The feasible range on the device a new app would go to first."""
        return self._best().feasible_range()

    def exit_latency_ms(self) -> list[float]:
        return self._best().exit_latency_ms()

    def overhead_ms(self) -> float:
        return self._best().overhead_ms()

    @property
    def publication_lag_ms(self) -> float:
        """Every device's :attr:`Engine.publication_lag_ms` (one publisher serves them all)."""
        return self.engines[0].publication_lag_ms

    @publication_lag_ms.setter
    def publication_lag_ms(self, ms: float) -> None:
        for engine in self.engines:
            engine.publication_lag_ms = ms

    def unmeasured_apps(self, app_id: str, **kwargs) -> list[str]:
        """Every device's (:meth:`Engine.unmeasured_apps`): a request may be placed on any of them."""
        return [a for engine in self.engines for a in engine.unmeasured_apps(app_id, **kwargs)]

    def plan(self, bounds: Bounds) -> Plan:
        return self._best().plan(bounds)

    def stats(self, app_id: str, *, reset: bool = False, recheck_s: float = 1.0) -> AppStats:
        """The app's ledger on its device, with the counters of devices it has left added in."""
        with self._lock:
            if app_id not in self._configs:
                raise KeyError(f'unknown app {app_id!r}; known: {sorted(self._configs)}')
            index = self._placement.get(app_id)
            carried = dict(self._carried.get(app_id, {}))
            draining = [i for (a, i) in self._draining if a == app_id]
        reason = ''
        if index is None:
            reason = f'no healthy device admits it now (failed: {self._failed_text() or "none"})'
            stats = self._last_stats(app_id)
            if stats is None:
                raise KeyError(f'app {app_id!r} is not on any device')
        else:
            stats = self.engines[index].stats(app_id, reset=reset, recheck_s=recheck_s)
        for i in draining:   # frames still finishing on the device it left
            try:
                old = self.engines[i].stats(app_id, recheck_s=math.inf)
            except KeyError:
                continue
            for name in _CUMULATIVE:
                carried[name] = carried.get(name, 0) + getattr(old, name)
        if not carried and not reason:
            return stats
        changes = {name: getattr(stats, name) + carried.get(name, 0) for name in _CUMULATIVE}
        if reason:
            changes['unschedulable_reason'] = reason
        return dataclasses.replace(stats, **changes)

    def _last_stats(self, app_id: str) -> AppStats | None:
        for engine in self.engines:
            try:
                return engine.stats(app_id, recheck_s=math.inf)
            except KeyError:
                continue
        return None

    def schedulability(self) -> admission.Verdict:
        """Admission's verdict over every healthy device: ok only if each is; the highest utilisation."""
        verdicts = [self.engines[i].schedulability() for i in self._healthy()]
        if not verdicts:
            return admission.Verdict(False, {}, math.inf, 1, 'no healthy device')
        at_risk = {a: why for v in verdicts for a, why in v.at_risk.items()}
        return admission.Verdict(all(v.ok for v in verdicts), at_risk, max(v.utilisation for v in verdicts),
                                 max(v.batch for v in verdicts), '; '.join(
                                     f'{self.device_names[i]}#{i}: {v.message}' for i, v in zip(self._healthy(), verdicts)))

    def check_schedulable(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in self._healthy():
            out.update(self.engines[i].check_schedulable())
        return out

    def worker_stats(self, *, reset: bool = False) -> WorkerStats:
        """Every device's worker figures together: counts, busy time and energy summed, means weighted
        by steps, percentiles the worst device's (per device: :meth:`device_worker_stats`)."""
        parts = self.device_worker_stats(reset=reset)
        steps = sum(p.steps for p in parts)

        def weighted(name: str) -> float:
            values = [(getattr(p, name), p.steps) for p in parts if p.steps and math.isfinite(getattr(p, name))]
            total = sum(w for _, w in values)
            return sum(v * w for v, w in values) / total if total else math.nan

        def worst(name: str) -> float:
            values = [getattr(p, name) for p in parts if math.isfinite(getattr(p, name))]
            return max(values) if values else math.nan

        scales = [p.energy_scale for p in parts if p.energy_scale is not None]
        return WorkerStats(
            steps=steps, mean_batch=weighted('mean_batch'), busy_s=sum(p.busy_s for p in parts),
            decision_us_mean=weighted('decision_us_mean'), decision_us_p50=worst('decision_us_p50'),
            decision_us_p99=worst('decision_us_p99'), step_ms_p50=worst('step_ms_p50'),
            step_ms_p99=worst('step_ms_p99'), preprocess_ms_per_frame=worst('preprocess_ms_per_frame'),
            preprocess_ms_p99=worst('preprocess_ms_p99'),
            energy_scale=sum(scales) / len(scales) if scales else None, corrections=parts[0].corrections,
            overhead_ms=worst('overhead_ms'), energy_mj=sum(p.energy_mj for p in parts),
            idle_energy_mj=sum(p.idle_energy_mj for p in parts), pipelined_runs=sum(p.pipelined_runs for p in parts))

    def graph_count(self) -> int:
        return sum(e.graph_count() for e in self.engines)

    def graph_report(self) -> dict[str, int | bool]:
        reports = [e.graph_report() for e in self.engines]
        return {'graphs_captured': sum(r['graphs_captured'] for r in reports),
                'graphs_on_cudnn': sum(r['graphs_on_cudnn'] for r in reports),
                'pointwise_matmul': any(r['pointwise_matmul'] for r in reports),
                'graphs_settled': all(r['graphs_settled'] for r in reports)}

    def worker_counters(self) -> dict[str, int]:
        """Every device's :meth:`Engine.worker_counters`, summed."""
        total: collections.Counter[str] = collections.Counter()
        for e in self.engines:
            total.update(e.worker_counters())
        return dict(total)

    def device_worker_stats(self, *, reset: bool = False) -> list[WorkerStats]:
        return [e.worker_stats(reset=reset) for e in self.engines]

    def devices(self) -> list[DeviceState]:
        """Every device: its apps, the apps it is draining, admission utilisation, failure."""
        with self._lock:
            return [DeviceState(index=i, device=self.device_names[i],
                                apps=tuple(sorted(a for a, j in self._placement.items() if j == i)),
                                draining=tuple(sorted(a for (a, j) in self._draining if j == i)),
                                utilisation=self._utilisation(i) if i not in self._failed else math.nan,
                                failed=self._failed.get(i, '')) for i in range(len(self.engines))]

    def _failed_text(self) -> str:
        return '; '.join(f'{self.device_names[i]}#{i}: {why}' for i, why in sorted(self._failed.items()))

    # --- load changes and failures -----------------------------------------------------------------------
    def rebalance(self) -> list[Move]:
        """One pass of the monitor: finish drains, take failed devices out (re-placing their apps),
        place unplaced apps, and move one camera group off each device whose admission says some
        app is at risk at the measured rates. Returns the moves made."""
        with self._lock:
            before = len(self.moves)
            self._finish_drains()
            self._check_health()
            self._place_unplaced()
            now = time.monotonic_ns()
            for index in self._healthy():
                # the last re-check's verdict, re-run once a second at most: an EDF test over every
                # app, and this runs every rebalance_period_s
                at_risk = self.engines[index].at_risk(recheck_s=self.recheck_s)
                if not at_risk:
                    self._at_risk_since.pop(index, None)
                    continue
                since = self._at_risk_since.setdefault(index, now)
                if now - since < self.overload_grace_s * 1e9 or now < self._next_move_ns.get(index, 0):
                    continue
                self._next_move_ns[index] = now + int(self.move_backoff_s * 1e9)
                risky = [g for g in self._camera_groups(index) if any(a in at_risk for a in g)]
                risky.sort(key=lambda g: (sum(self._rate(a) or 0.0 for a in g), g))
                for group in risky:
                    if self._move_group(group, index, f'admission on {self.device_names[index]} (#{index}) says: '
                                        f'{at_risk[next(a for a in group if a in at_risk)]}'):
                        break
            return self.moves[before:]

    def _move_group(self, group: Sequence[str], from_index: int | None, reason: str) -> bool:
        members = [(a, self._configs[a], self._rate(a)) for a in group]
        exclude = [from_index] if from_index is not None else []
        for index in self._by_headroom(exclude=exclude):
            try:
                self._admit(index, members)
            except InfeasibleBounds:
                continue
            self._switch(list(group), index, reason)
            return True
        return False

    def _pending(self, app_id: str, index: int) -> int:
        return self.engines[index].pending(app_id)

    def _retire(self, app_id: str, index: int) -> None:
        """Remove ``app_id`` from device ``index`` and carry its counters into the app's ledger."""
        engine = self.engines[index]
        try:
            old = engine.stats(app_id, recheck_s=math.inf)
        except KeyError:
            return
        carried = self._carried.setdefault(app_id, {})
        for name in _CUMULATIVE:
            carried[name] = carried.get(name, 0) + getattr(old, name)
        engine.remove_app(app_id)

    def _finish_drains(self) -> None:
        now = time.monotonic_ns()
        for (app_id, index), since in list(self._draining.items()):
            timed_out = (now - since) / 1e9 >= self.drain_timeout_s
            if index in self._failed or timed_out or self._pending(app_id, index) == 0:
                if timed_out and index not in self._failed and self._pending(app_id, index):
                    _log.warning('%s: %d frame(s) still on %s (#%d) after %.1f s; dropped', app_id,
                                 self._pending(app_id, index), self.device_names[index], index, self.drain_timeout_s)
                self._retire(app_id, index)
                del self._draining[(app_id, index)]

    def _check_health(self) -> None:
        for index in self._healthy():
            engine = self.engines[index]
            if self._started and not engine.running:
                self._fail(index, 'its worker thread stopped')
                continue
            # counters only: not every app's AppStats (percentiles over its results) every
            # rebalance_period_s for two sums
            results, failed = engine.totals()
            h = self._health[index]
            bad = failed > h.failed_requests and results == h.results
            h.bad_checks = h.bad_checks + 1 if bad else 0
            h.failed_requests, h.results = failed, results
            if h.bad_checks >= self.failure_checks:
                self._fail(index, f'steps failing with no result for {h.bad_checks} checks')

    def fail_device(self, index: int, reason: str) -> None:
        """Take device ``index`` out of service now and re-place its apps (e.g. told by a driver)."""
        with self._lock:
            if index not in self._failed:
                self._fail(index, reason)

    def _fail(self, index: int, reason: str) -> None:
        self._failed[index] = reason
        _log.error('device %s (#%d) failed: %s; re-placing its apps', self.device_names[index], index, reason)
        try:
            self.engines[index].stop(timeout=1.0)
        except Exception:  # noqa: BLE001 -- it failed already; the others must go on
            _log.exception('stopping failed device %d', index)
        for (app_id, i) in [k for k in self._draining if k[1] == index]:
            del self._draining[(app_id, i)]
            self._retire(app_id, i)
        for group in self._camera_groups(index):
            rates = {a: self._rate(a) for a in group}
            for app_id in group:
                self._retire(app_id, index)
                self._placement[app_id] = None
            if not self._place_group(group, rates, from_index=index, why=f'device failed: {reason}'):
                _log.error('no healthy device admits %s: unplaced until one does', ', '.join(group))

    def _place_unplaced(self) -> None:
        for group in self._camera_groups(None):
            self._place_group(group, {a: self._configs[a].rate_hz for a in group}, from_index=None,
                              why='placed after a device failure')

    def _camera_groups(self, index: int | None) -> list[list[str]]:
        """The apps placed on device ``index`` (``None``: unplaced), grouped by camera: they move together."""
        groups: dict[str, list[str]] = {}
        for app_id, i in self._placement.items():
            if i == index:
                c = self._configs[app_id]
                groups.setdefault(c.source if c.source is not None else f'\0{app_id}', []).append(app_id)
        return list(groups.values())

    def _place_group(self, group: Sequence[str], rates: dict[str, float | None], *, from_index: int | None,
                     why: str) -> bool:
        """Admit an unplaced camera group on the healthy device with the most headroom; whether one took it."""
        members = [(a, self._configs[a], rates[a]) for a in group]
        for target in self._by_headroom():
            try:
                self._admit(target, members)
            except InfeasibleBounds:
                continue
            for app_id in group:
                self._placement[app_id] = target
            self.moves.append(Move(tuple(group), from_index, target, why))
            _log.info('placed %s on %s (#%d): %s', ', '.join(group), self.device_names[target], target, why)
            return True
        return False

    # --- life cycle ------------------------------------------------------------------------------------
    def _on_device(self, index: int):
        """Device ``index`` as the current CUDA device (graph capture, kernel choice); no-op on CPU."""
        device = torch.device(self.device_names[index])
        if device.type == 'cuda' and device.index is not None:
            return torch.cuda.device(device.index)
        return contextlib.nullcontext()

    def warm_up(self, *, reps: int = 3) -> None:
        for i, engine in enumerate(self.engines):
            with self._on_device(i):
                engine.warm_up(reps=reps)

    def start(self, *, warm_up: bool = True) -> None:
        """Start every healthy device's worker (after its warm-up unless ``warm_up`` is false) and the
        monitor thread."""
        if self._monitor is not None and self._monitor.is_alive():
            raise RuntimeError('device pool already started')
        for i in self._healthy():
            with self._on_device(i):
                self.engines[i].start(warm_up=warm_up)
        self._started = True
        self._stop_monitor.clear()
        if self.rebalance_period_s > 0:
            self._monitor = threading.Thread(target=self._run_monitor, name='delen-placement', daemon=True)
            self._monitor.start()

    def _run_monitor(self) -> None:
        name_os_thread()
        while not self._stop_monitor.wait(self.rebalance_period_s):
            try:
                self.rebalance()
            except Exception:  # noqa: BLE001 -- the monitor must outlive one bad pass
                _log.exception('rebalance failed')

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the monitor and every device's worker (queued frames are discarded)."""
        self._stop_monitor.set()
        if self._monitor is not None:
            self._monitor.join(timeout)
            self._monitor = None
        self._started = False
        for engine in self.engines:
            engine.stop(timeout)

    @property
    def running(self) -> bool:
        return self._started and any(self.engines[i].running for i in self._healthy())

    def __enter__(self) -> 'DevicePool':
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
