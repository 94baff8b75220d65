"""The ``delen`` node's status round: ``~/status`` for a share of the apps at each tick, ``/diagnostics``
once a round (:mod:`.status_round`), from the engine's ledger through the pure message builders of
:mod:`.publishing`. The ticks come from a thread of the node's own (:class:`~.status_round.Ticker`), off
the executor, each under the app manager's lock (the services change the registry under it). A mixin of
:class:`~delen_ros.ros.node.DelenNode`: the node owns the state it reads (apps, cameras, publishers, the
round in progress)."""
from __future__ import annotations

import time

from delen_ros.core.flight_recorder import RECORDER
from delen_ros.core.gc_pauses import pause_report
from delen_ros.core.host_cpu import StolenShare

from .manager import Camera
from .publishing import CameraReport, diagnostics_cdr, status_cdr
from .rejections import clean_message
from .status_round import STATUS_ON_EXECUTOR, Ticker

__all__ = ['StatusMixin']

_QUIET_WARNING_S = 3.0           # a camera with publishers but no frames for this long is reported
_RESUBSCRIBE_MAX_S = 60.0        # ... and subscribed afresh, then again after twice as long, at least this often
#: a round in which the host stole more than this share of the machine's CPU is warned about (once a minute at
#: most): every CPU admission run with more missed issue 10's target (benchmarks/cpu/e2e_admission_session39/40)
STOLEN_WARN_SHARE = 0.01


class StatusMixin:
    """The status round's work, for :class:`~delen_ros.ros.node.DelenNode` (see the module docstring)."""

    def _start_status(self) -> None:
        """Tick the round from now on: ``status_period_s`` over its ticks."""
        period_s = self._p.status_period_s / self._round.ticks
        self._stolen_cpu = StolenShare()   # from now: not the configure's
        if STATUS_ON_EXECUTOR:   # the A/B switch: an rclpy timer, as before session 31
            self._status_timer = self.create_timer(period_s, self._status_tick)
        else:
            self._status_ticker = Ticker(self._status_tick_locked, period_s, name='delen-status')
            self._status_ticker.start()

    def _stop_status(self) -> None:
        """No tick after this returns (one in progress has ended)."""
        if self._status_timer is not None:
            self.destroy_timer(self._status_timer)
            self._status_timer = None
        if self._status_ticker is not None:
            self._status_ticker.stop()
            self._status_ticker = None

    def _status_tick_locked(self) -> None:
        apps = self._apps
        if apps is None:
            return
        try:
            with apps.lock:   # the registry and cameras as a service leaves them, never half changed
                self._status_tick()
        except Exception as exc:  # noqa: BLE001 - the thread must keep ticking
            self.get_logger().error(f'status: {type(exc).__name__}: {clean_message(exc)}', throttle_duration_sec=10.0)

    def _status_tick(self) -> None:
        """One tick of the status round (:mod:`.status_round`): a share of the cameras and their apps."""
        started, cpu_started = time.perf_counter_ns(), time.thread_time_ns()
        closing = self._round.closing
        try:
            self._publish_status_now()
        except Exception as exc:  # noqa: BLE001 - a status hiccup must not stop the timer
            self.get_logger().error(f'status: {type(exc).__name__}: {clean_message(exc)}', throttle_duration_sec=10.0)
        if closing:   # once a round: the period's summaries of refused requests and malformed frames
            for log in (self._apps.rejections if self._apps is not None else None, self._malformed):
                line = log.summary() if log is not None else ''
                if line:
                    self.get_logger().warning(line)
        ended = time.perf_counter_ns()
        self._round.done((ended - started) / 1e6, time.monotonic_ns())   # the GIL the worker waits for
        if RECORDER is not None:
            # the thread's CPU time: the GIL it held, where the span's wall time also counts waits for it
            RECORDER.add('status', started, ended, closing=closing, cpu_us=(time.thread_time_ns() - cpu_started) // 1000)

    def _camera_report(self, camera: Camera, period_s: float) -> CameraReport:
        frames, errors = camera.counters.take()
        camera.note_period(frames, period_s)
        warning = ''
        if camera.too_quiet(_QUIET_WARNING_S) and camera.subscription is not None:
            publishers = self.count_publishers(camera.topic)
            if publishers:
                warning = (f'{publishers} publisher(s) on {camera.topic} but no frame for {camera.quiet_s:.0f} s: '
                           'frames larger than the DDS transport carries, or a QoS mismatch')
                if self._apps is not None and camera.resubscribe_due(_RESUBSCRIBE_MAX_S):
                    self.get_logger().warning(f'{warning}; subscribed again {self._apps.resubscribe(camera)}')
        c = camera.counters
        return CameraReport(topic=camera.topic, app_ids=camera.app_ids, frames=frames, frames_total=c.frames_total,
                            malformed=errors, malformed_total=c.errors_total, missed_total=c.missed_total,
                            warning=warning)

    def _publish_status_now(self) -> None:
        self._wall_time = not self.get_clock().ros_time_is_active
        served, apps, round_ = self._served, self._apps, self._round
        if served is None or apps is None:
            return
        apps.fall_back_from_outlet()
        # a result published by the outlet reaches DDS later than the worker's hand-over: kept in every bound
        served.engine.publication_lag_ms = apps.publication_lag_ms()
        now_ns = time.monotonic_ns()
        stamp = self.get_clock().now().to_msg()
        configs = apps.registry.apps()
        in_use = {c.image_topic for c in configs.values()} | set(apps.cameras)
        topics = set(round_.topics(in_use))
        for topic in topics:
            camera = apps.cameras.get(topic)
            if camera is not None:
                round_.cameras[topic] = self._camera_report(camera, round_.period_s(topic, now_ns))
        for app_id, config in configs.items():   # the first read re-runs admission, once a second at most
            if config.image_topic not in topics:
                continue
            try:
                stats = round_.stats[app_id] = served.engine.stats(app_id, reset=True)
            except KeyError:   # removed meanwhile
                continue
            self._status_pub.publish(status_cdr(config, stats, stamp_sec=stamp.sec, stamp_nanosec=stamp.nanosec,
                                                camera=round_.cameras.get(config.image_topic),
                                                state_error=apps.store.status))
        if not round_.closing:
            return
        round_.forget(in_use)
        self._diagnostics_pub.publish(diagnostics_cdr(
            stamp_sec=stamp.sec, stamp_nanosec=stamp.nanosec, prefix=self.get_fully_qualified_name(),
            hardware_id=served.device,
            cameras=list(round_.cameras.values()), stats=round_.stats, period_s=round_.round_s(now_ns), engine={
                'active': self._active, 'model': served.model.info.name, 'device': served.device,
                'policy': self._p.policy, 'profile': served.profile_source, 'energy_source': served.meter.source,
                'idle_power_w': f'{served.idle_power_w:.1f}', 'apps': len(round_.stats), 'cameras': len(round_.cameras),
                'state_error': apps.store.status, 'rejected_requests_total': apps.rejections.total,
                **served.engine.graph_report(), **served.engine.worker_counters(),
                'status_tick_ms': f'{round_.longest_tick_ms:.2f}', **self._stolen_report(round_.round_s(now_ns)),
                **self._ingress_report(), **self._outlet_report(), **pause_report()}))

    def _stolen_report(self, period_s: float) -> dict:
        """The share of the machine's CPU its host took over the round (a VM's stolen time), and of its worst
        core, warned about above :data:`STOLEN_WARN_SHARE`: bounds of a few ms are then missed for reasons
        outside the node."""
        stolen = self._stolen_cpu.take()
        if stolen is None:
            return {}
        if stolen.share > STOLEN_WARN_SHARE:
            self.get_logger().warning(
                f"this machine's host took {100 * stolen.share:.1f} % of its CPU time over the last "
                f'{period_s:.1f} s (stolen time: a virtual machine whose host runs other work); tight latency '
                'bounds may be missed for it', throttle_duration_sec=60.0)
        report = {'host_cpu_stolen_pct': f'{100 * stolen.share:.2f}'}
        if stolen.worst_core_share is not None:
            report['host_cpu_stolen_worst_core_pct'] = f'{100 * stolen.worst_core_share:.2f}'
        return report

    def _outlet_report(self) -> dict:
        apps = self._apps
        outlet = (apps.outlet or apps.retired_outlet) if apps is not None else None
        if outlet is None:
            return {'results_published_by': 'node'}
        by = 'outlet' if outlet is apps.outlet else 'node (the outlet was given up on)'
        return {'results_published_by': by, 'outlet_restarts': outlet.restarts, 'results_lost_at_outlet': outlet.lost,
                'outlet_lag_p99_ms': f'{self._served.engine.publication_lag_ms:.3f}'}   # as this tick kept it

    def _ingress_report(self) -> dict:
        ingress = self._ingress
        if ingress is None:
            return {'receiver_processes': 0}
        return {'receiver_processes': ingress.processes, 'receiver': ingress.kind, 'receiver_restarts': ingress.restarts,
                'frames_dropped_at_receivers': ingress.ring_full,
                'rings_pinned': len(ingress.host_memory) if ingress.host_memory is not None else 0}
