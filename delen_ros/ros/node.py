"""The ``delen`` lifecycle node: a thin ROS adapter around the engine.

* ``__init__``: declare parameters (:mod:`.params`).
* ``configure``: read them, build device / model / profile / meter / engine (:mod:`.assembly`),
  create the publishers and the services ``~/set_bounds``, ``~/remove_app``, ``~/get_profile``
  (request queues deep enough for bursts), restore apps from the ``apps`` parameter and then the
  state file (an app that cannot be restored is skipped with an error; the others start).
* ``activate``: start the engine, subscribe to every camera an app uses, start the status timer.
* ``deactivate``: unsubscribe, stop the timer and the engine; apps stay registered.
* ``cleanup``: destroy services and publishers, free the model.

Who may change what, and what is checked before any side effect: :mod:`.registry`. Messages:
:mod:`.publishing` (pure functions of the engine's ledger); the status timer's work: :mod:`.node_status`.
The image callback converts a view of the message and queues it (``engine.submit``); inference and
publication run on the engine's worker. (Published from a thread of their own, the node served fewer
results at saturation on an H200 in 8 of 8 pairs, 0.21-0.96x: likely that thread holding the GIL when
the worker came back from the device; session 35, ``benchmarks/h200/sat_session35``.)
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from delen_ros.core.flight_recorder import RECORDER
from delen_ros.core.gc_pauses import freeze_long_lived, pause_recorder, thaw
from delen_ros.core.host_cpu import StolenShare
from delen_ros.core.host_memory import HOST_MEMORY
from delen_ros.msg import AppStatus
from delen_ros.srv import GetProfile, RemoveApp, SetBounds

from . import assembly, core_log, params
from .apps import parse_apps_param
from .conversions import ImageFormatError, image_to_array, parse_image_cdr
from .held_requests import HeldRequests
from .ingress import IngressPool, auto_processes
from .outlet import ResultOutlet, native_outlet
from .manager import SUBSCRIPTION_DEPTH, AppManager, Camera
from .publishing import result_cdr
from .qos import RESULT_QOS, status_qos
from .registry import Registry, StateStore
from .rejections import RejectionLog, clean_message
from .node_status import StatusMixin
from .status_round import DIAGNOSTICS_APART, STATUS_PARTS, StatusRound

__all__ = ['DelenNode', 'NODE_NAME', 'log_at', 'main']

NODE_NAME = 'delen'
_MAX_STAMP_AGE_NS = 1_000_000_000   # older: not the camera's clock, or not live


class DelenNode(StatusMixin, LifecycleNode):
    """Serves a multi-exit model to many apps on many camera topics (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self._core_log = core_log.attach(self.get_logger())   # the ROS-free core's logging lines, in this node's log
        params.declare(self)
        # Attribute names must not collide with rclpy.Node's own (it has _services, _timers, ...).
        self._p: params.NodeParams | None = None
        self._served: assembly.Served | None = None
        self._ingress: IngressPool | None = None
        self._outlet: ResultOutlet | None = None   # started early in configure, until the app manager takes it
        self._apps: AppManager | None = None
        self._active = False
        self._delen_services: list[Any] = []
        self._held = HeldRequests(self)   # set_bounds requests waiting for measurements (outlive a cleanup)
        self._status_pub = self._diagnostics_pub = self._status_timer = self._status_ticker = None
        self._round = StatusRound(STATUS_PARTS, 0)   # the status period in progress
        self._stolen_cpu: StolenShare | None = None   # the host's stolen CPU time per status round, from each start
        self._wall_time = False   # no simulated time (each status tick checks): see _ros_now_ns
        self._malformed = RejectionLog(what='malformed frame(s) dropped')

    # --- lifecycle -------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - a failed configure leaves the node unconfigured, not crashed
            if self.context.ok():
                self.get_logger().error(f'configure failed: {type(exc).__name__}: {clean_message(exc)}')
            else:   # Ctrl-C / SIGTERM mid-configure: rcl calls then fail on the closed context; not an error
                self.get_logger().info('configure stopped: shutting down')
            self._release()
            return TransitionCallbackReturn.FAILURE
        return super().on_configure(state)

    def _configure(self) -> None:
        started = time.perf_counter()
        pause_recorder()   # from here on, ~/diagnostics tells how long Python's collections stalled the node
        p = self._p = params.read(self)
        processes = auto_processes() if p.ingress_processes < 0 else p.ingress_processes
        if processes:   # started first: they boot while the model loads
            self._ingress = IngressPool(processes, on_frame=self._on_image, log=self._log, qos_name=p.image_qos,
                                        depth=SUBSCRIPTION_DEPTH)
        if p.result_outlet == 'auto' and native_outlet() is not None:   # boots while the model loads
            self._outlet = ResultOutlet(log=self._log)
        served = self._served = assembly.build(p, on_result=self._on_result, log=self.get_logger().info,
                                               after_results=self._flush_results)
        if self._ingress is not None and served.device.startswith('cuda') and os.environ.get('DELEN_PIN_RINGS') != '0':
            self._ingress.host_memory = HOST_MEMORY   # frames uploaded from their rings, no staging copy
            if os.environ.get('DELEN_BATCH_UPLOADS') == '1':   # an A/B: a read's frames uploaded together
                self._ingress.around_notes = served.engine.held_submits
        profile = served.profile
        initial = parse_apps_param(p.apps, figure=self._profile_figure, num_exits=profile.num_exits)
        registry = Registry(max_apps=p.max_apps, allow_takeover=p.allow_takeover, reserved_topics=[
            self.resolve_topic_name(t) for t in ('~/status', '~/transition_event')])
        store = StateStore(os.path.expandvars(os.path.expanduser(p.state_file)) if p.state_file else None)
        apps = self._apps = AppManager(self, engine=served.engine, registry=registry, store=store,
                                       image_qos_name=p.image_qos, on_image=self._on_image, ingress=self._ingress,
                                       outlet=self._outlet, held=self._held, settle_s=p.admission_settle_s)
        self._outlet = None   # the manager's from here on (it closes it)
        self._status_pub = self.create_lifecycle_publisher(AppStatus, '~/status', status_qos(p.max_apps))
        self._diagnostics_pub = self.create_lifecycle_publisher(DiagnosticArray, '/diagnostics', RESULT_QOS)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=p.service_queue_depth,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        # set_bounds in a group of its own: a request held for measurements (a coroutine) keeps its group
        # busy until answered, and everything else in that group would wait with it
        admissions = MutuallyExclusiveCallbackGroup()
        self._delen_services = [self.create_service(t, n, cb, qos_profile=qos, callback_group=group)
                                for t, n, cb, group in (
            (SetBounds, '~/set_bounds', apps.set_bounds, admissions),
            (RemoveApp, '~/remove_app', apps.remove_app, None),
            (GetProfile, '~/get_profile', self._on_get_profile, None))]
        apps.restore(initial)
        from delen_ros.core.runner import dtype_name   # here: importing the node module loads no torch
        self.get_logger().info(
            f'configured in {time.perf_counter() - started:.1f} s: model {served.model.info.name} '
            f'({served.model.num_exits} exits) on {served.device} in {dtype_name(served.model.dtype)}, '
            f'profile {served.profile_source}, energy '
            f'{served.meter.source} ({served.meter.detail}), policy {p.policy}, {len(registry)} app(s), '
            f'frames taken by {f"{processes} {self._ingress.kind} receiver process(es)" if processes else "the node itself"}, '
            f'results published by {"the outlet process" if apps.outlet is not None else "the node itself"}')

    def _log(self, level: str, text: str) -> None:
        log_at(self.get_logger(), level, text)

    def _profile_figure(self, field: str, k: int) -> float:
        """Exit ``k``'s figure for a bound written ``exit:K`` in the ``apps`` parameter."""
        profile = self._served.profile
        if field == 'max_latency_ms':
            return profile.exit_latency_ms(k, p99=True)
        return profile.accuracy(k) if field == 'min_accuracy' else profile.exit_energy_mj(k)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Everything configure built (model, graphs, modules) moves to the GC's permanent generation:
        # full collections no longer walk it, which would stall the worker for tens of ms or more.
        # Before serving starts: the collection it runs first took ~100 ms on an H200 host, and after
        # the cameras' subscriptions it held up their first frames.
        freeze_long_lived()
        try:
            with self._apps.lock:
                self._served.engine.start(warm_up=False)   # warmed up at configure
                result = super().on_activate(state)          # enables the lifecycle publishers first
                self._active = True
                self._apps.activate()
                self._round = StatusRound(STATUS_PARTS, time.monotonic_ns(), DIAGNOSTICS_APART)
                self._start_status()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f'activate failed: {type(exc).__name__}: {clean_message(exc)}')
            self._deactivate()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'active: {len(self._apps.registry)} app(s) on {len(self._apps.cameras)} camera(s)')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def _deactivate(self) -> None:
        self._active = False
        if self._apps is not None:
            self._apps.deactivate()
        self._stop_status()
        if self._served is not None:
            self._served.engine.stop()

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return super().on_error(state)

    def close(self) -> None:
        """Stop serving and free everything, whatever the state (idempotent; for shutdown paths)."""
        self._deactivate()
        self._release()

    def destroy_node(self) -> None:
        core_log.detach(self._core_log)
        super().destroy_node()

    def _release(self) -> None:
        """Undo configure: engine first (its worker publishes), then services, publishers, apps, model."""
        thaw()   # what activate froze may be garbage now (the model's cycles included)
        served, self._served = self._served, None
        if served is not None and served.engine is not None:
            served.engine.stop()
        # a held request answers through its service once its wait ends: destroyed after that
        self._held.cancel()
        services, self._delen_services = self._delen_services, []
        self._held.release_when_done(lambda: [self.destroy_service(service) for service in services])
        apps, self._apps = self._apps, None
        if apps is not None:
            apps.close()
        outlet, self._outlet = self._outlet, None
        if outlet is not None:   # configure failed before the manager took it
            outlet.close()
        ingress, self._ingress = self._ingress, None
        if ingress is not None:
            ingress.close()
        for pub in (self._status_pub, self._diagnostics_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._status_pub = self._diagnostics_pub = None
        if served is not None:
            served.close()

    def _on_get_profile(self, request: GetProfile.Request, response: GetProfile.Response) -> GetProfile.Response:
        served = self._served
        if served is None:   # cleaned up while the request waited
            return response
        profile, exits = served.profile, range(served.profile.num_exits)
        e2e = served.engine.exit_latency_ms()   # end to end on this node now: what a bound can ask for
        response.model, response.device = profile.model, f'{served.device} ({profile.device})'
        response.energy_source, response.accuracy_note = profile.energy_source, profile.accuracy_note
        response.exit_names = [e.name for e in profile.exits]
        response.latency_ms = [float(v) for v in e2e]
        response.latency_p99_ms = [float(e2e[k] - profile.exit_latency_ms(k) + profile.exit_latency_ms(k, p99=True))
                                   for k in exits]
        response.energy_mj = [float(profile.exit_energy_mj(k)) for k in exits]
        response.accuracy = [float(profile.accuracy(k)) for k in exits]
        return response

    # --- data path -----------------------------------------------------------------------------------
    def _on_image(self, serialized: bytes | memoryview, camera: Camera, arrival_ns: int | None = None) -> None:
        """A camera frame, serialized: from this node's subscription, or viewed in a receiver
        process's shared memory (``arrival_ns`` then is when the receiver took it)."""
        if arrival_ns is None:
            arrival_ns = time.perf_counter_ns()   # the engine's clock: latency bounds run from here
        elif RECORDER is not None:   # taken by a receiver process: how long the hand-over took
            RECORDER.add('handover', arrival_ns, time.perf_counter_ns(), topic=camera.topic)
        served = self._served
        if not self._active or served is None:
            return
        try:
            msg = parse_image_cdr(serialized)
        except ImageFormatError as exc:
            camera.counters.frame(0)   # arrived, though its stamp is unreadable
            self._malformed_frame(camera, served, exc)
            return
        camera.counters.frame(msg.stamp_ns)
        if self._p.latency_from == 'stamp':
            arrival_ns = self._stamp_origin(msg.stamp_ns, arrival_ns)
        try:
            image = image_to_array(msg, copy=False)   # a view of the bytes: the one copy is the upload
            if camera.app_ids:
                # the header by its fields: the result is serialized straight from them (result_cdr)
                served.engine.submit(camera.app_ids, image, arrival_ns=arrival_ns,
                                     tag=(msg.sec, msg.nanosec, msg.frame_id, camera.topic))
        except (ImageFormatError, ValueError) as exc:
            self._malformed_frame(camera, served, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the engine stopping during a transition
            self.get_logger().warning(f'{camera.topic}: frame not queued: {clean_message(exc)}',
                                      throttle_duration_sec=5.0)

    def _stamp_origin(self, stamp_ns: int, arrival_ns: int) -> int:
        """``arrival_ns`` moved back by the frame's age at arrival (ROS clock now - header.stamp), so
        that the engine's latency and deadlines run from the camera's stamp; ``arrival_ns`` itself
        for a stamp in the future or more than 1 s old (unset, another clock, a replayed bag)."""
        now_perf = time.perf_counter_ns()
        age_ns = self._ros_now_ns() - stamp_ns - (now_perf - arrival_ns)
        return arrival_ns - age_ns if 0 <= age_ns <= _MAX_STAMP_AGE_NS else arrival_ns

    def _ros_now_ns(self) -> int:
        """The ROS clock now: the wall clock unless simulated time is active (read once a status tick),
        without rclpy's ``Time`` (3.6 against 0.06 µs a read here, twice per frame)."""
        return time.time_ns() if self._wall_time else self.get_clock().now().nanoseconds

    def _malformed_frame(self, camera: Camera, served, exc: Exception) -> None:
        """Count a frame that cannot be served (camera and engine ledger) and log it, aggregated."""
        camera.counters.error()
        served.engine.count_malformed(camera.app_ids)
        line = self._malformed.add(camera.topic, f'{camera.topic}: dropping a malformed image ({exc})')
        if line:
            self.get_logger().warning(line)

    def _flush_results(self) -> None:
        """After each worker turn with results: the outlet publishes them (one write)."""
        apps = self._apps
        outlet = apps.outlet if apps is not None else None
        if outlet is not None:
            outlet.flush()

    def _on_result(self, result) -> None:
        """Called by the engine's worker thread for every finished inference: deliver, publish."""
        try:
            served, apps = self._served, self._apps
            pub = apps.publisher(result.app_id) if apps is not None else None
            if pub is None or served is None:   # removed while its frame was in flight
                return
            sec, nanosec, frame_id, topic = result.tag
            delivered = served.engine.deliver(result)   # the ledger's one definition of latency and bounds_met
            pub.publish(result_cdr(delivered, stamp_sec=sec, stamp_nanosec=nanosec, frame_id=frame_id,
                                   image_topic=topic, now_ns=self._ros_now_ns()))
            if RECORDER is not None:
                RECORDER.add('publish', delivered.finish_ns, time.perf_counter_ns(), app=result.app_id)
        except Exception as exc:  # noqa: BLE001 - never kill the worker over one result
            self.get_logger().error(f'could not publish a result for {result.app_id}: {type(exc).__name__}: '
                                    f'{clean_message(exc)}', throttle_duration_sec=5.0)

def log_at(logger, level: str, text: str) -> None:
    """``logger`` at ``level`` (``'error'``, ``'warning'``, else info). One call site per severity:
    rclpy raises when one call site logs at another severity than before, which once killed the
    frame reader (an info line, then a warning, through a single ``getattr(logger, level)`` call)."""
    if level == 'error':
        logger.error(text)
    elif level == 'warning':
        logger.warning(text)
    else:
        logger.info(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node (``delen_node``) until Ctrl-C / SIGTERM; the exit status (see :func:`.run.run_node`)."""
    from .run import run_node
    return run_node(DelenNode, argv)


if __name__ == '__main__':
    sys.exit(main())
