"""The apps as the node serves them: registry, state file, camera subscriptions, result publishers.

:class:`AppManager` applies the :mod:`.registry`'s decisions to the node: every check runs before any
side effect (names, types, ownership, bounds, admission), and what a change creates (a result
publisher, a camera subscription) is destroyed again if a later step fails, so a rejected request
leaves no trace. It also answers ``~/set_bounds`` and ``~/remove_app``.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Callable, Sequence

from sensor_msgs.msg import Image

from delen_ros.msg import InferenceResult
from delen_ros.srv import RemoveApp, SetBounds

from .apps import AppConfig
from .outlet import OutletPublisher
from .qos import RESULT_QOS, image_qos
from .registry import Registry, Rejected, StateStore
from .rejections import RejectionLog, clean_message
from .stats import CameraCounters

__all__ = ['LATE_POLICIES', 'Camera', 'AppManager']

LATE_POLICIES = {SetBounds.Request.LATE_SERVE_FASTEST: 'serve_fastest', SetBounds.Request.LATE_DROP: 'drop'}

#: DDS history of a camera subscription (the engine's queue_depth then keeps the newest)
SUBSCRIPTION_DEPTH = 4


@dataclasses.dataclass
class Camera:
    """One subscribed camera topic and the apps it feeds (``app_ids`` is replaced, never mutated)."""

    topic: str
    app_ids: tuple[str, ...] = ()
    counters: CameraCounters = dataclasses.field(default_factory=CameraCounters)
    subscription: Any = None
    quiet_s: float = 0.0            # how long no frame came (the node's status tick keeps it)
    usual_gap_s: float = 0.0        # how quiet it gets between frames (a camera sending one every 5 s)
    resubscribe_after_s: float = 0.0   # quiet this long, it is subscribed afresh (again)

    def note_period(self, frames: int, period_s: float) -> None:
        """One status period's frames: how long the camera has been quiet, and how quiet it
        usually gets (the longest recent spell that ended with frames, forgotten 10 % a period)."""
        if frames:
            self.usual_gap_s = max(self.quiet_s, 0.9 * self.usual_gap_s)
            self.quiet_s = self.resubscribe_after_s = 0.0
        else:
            self.quiet_s += period_s

    def too_quiet(self, threshold_s: float) -> bool:
        """Quiet for ``threshold_s`` and for twice its usual gaps: a slow camera is not silent."""
        return self.quiet_s >= max(threshold_s, 2.0 * self.usual_gap_s)

    def resubscribe_due(self, max_backoff_s: float) -> bool:
        """Whether a quiet camera is to be subscribed afresh now: at once, then after twice as long
        quiet, and again at least every ``max_backoff_s``; each true answer starts the next wait."""
        if self.quiet_s < self.resubscribe_after_s:
            return False
        self.resubscribe_after_s = min(2 * self.quiet_s, self.quiet_s + max_backoff_s)
        return True


class AppManager:
    """Apps of one configured node.

    :param node: the lifecycle node (entities are created on it).
    :param engine: the engine apps are registered with.
    :param registry: the registry (validation, ownership).
    :param store: the state file.
    :param image_qos_name: camera QoS (``params.image_qos``).
    :param on_image: ``(serialized, camera)``, the node's image callback.
    :param ingress: receiver processes (:class:`.ingress.IngressPool`) to subscribe through; ``None``:
        the node subscribes itself.
    :param outlet: the process that publishes results (:class:`.outlet.ResultOutlet`), whose
        publishers the result topics get; ``None``, or one that does not start: the node's own.
    :param held: the node's :class:`.held_requests.HeldRequests`; with ``settle_s`` > 0 a request is
        held up to that long while apps admitted just before it have had no frames served.
    """

    def __init__(self, node, *, engine, registry: Registry, store: StateStore, image_qos_name: str,
                 on_image: Callable[[Image, Camera], None], ingress=None, outlet=None, held=None,
                 settle_s: float = 0.0):
        self._node, self.engine, self.registry, self.store = node, engine, registry, store
        self._held, self._settle_s = held, settle_s
        self.closed = False
        self._ingress = ingress   # an ingress.IngressPool: receiver processes hold the subscriptions
        self.outlet = outlet      # an outlet.ResultOutlet until it fails to start or is given up on
        self.retired_outlet = None   # one given up on (its count of lost results stays in /diagnostics)
        self._outlet_checked = False
        self._qos_name, self._on_image = image_qos_name, on_image
        self.lock = threading.RLock()   # registry changes vs transitions
        self.cameras: dict[str, Camera] = {}
        self.result_pubs: dict[str, Any] = {}
        self.active = False
        self.rejections = RejectionLog(what='request(s) rejected')

    def log(self):
        return self._node.get_logger()

    def _resolve(self, config: AppConfig) -> AppConfig:
        """``config`` with absolute topic names (remappings applied); ``ValueError`` for invalid names."""
        resolved = {}
        for field, name in (('image_topic', config.image_topic),
                            ('result_topic', config.result_topic or f'~/{config.app_id}/result')):
            try:
                resolved[field] = self._node.resolve_topic_name(name)
            except Exception as exc:  # noqa: BLE001 - rclpy raises RCLError for invalid names
                raise Rejected(f'{field} {name!r} is not a valid topic name: {clean_message(exc)}',
                               kind='topic name') from None
        return dataclasses.replace(config, **resolved)

    def _foreign_publishers(self, topic: str) -> int:
        """Publishers of ``topic`` that are neither this node's nor its outlet's."""
        mine = {(self._node.get_name(), self._node.get_namespace())}
        if self.outlet is not None:
            mine.add((self.outlet.node_name, '/'))
        return sum((i.node_name, i.node_namespace) not in mine for i in self._node.get_publishers_info_by_topic(topic))

    def _create_publisher(self, topic: str) -> Any:
        """A result publisher of ``topic``, inactive: in the outlet while it runs (advertised by the caller once
        the request is admitted), else the node's own."""
        if self.outlet is not None and not self._outlet_checked:   # once: later deaths it restarts itself
            self._outlet_checked = True
            if not self.outlet.ready():
                self._node.get_logger().error('the result outlet did not start: the node publishes the results itself')
                self.outlet.close()
                self.outlet = None
        if self.outlet is not None:
            return self.outlet.publisher(topic, RESULT_QOS.depth)   # advertised once admitted (_apply)
        return self._own_publisher(topic)

    def _own_publisher(self, topic: str) -> Any:
        """The node's own result publisher of ``topic`` (a lifecycle publisher: inactive until activated)."""
        return self._node.create_lifecycle_publisher(InferenceResult, topic, RESULT_QOS)

    def publication_lag_ms(self) -> float:
        """The outlet's lag from the worker's hand-over of a turn's results to their publication, p99 over
        the last seconds, ms (:meth:`.outlet.ResultOutlet.lag_p99_ms`); 0 where the node publishes, none
        is measured yet, or ``DELEN_OUTLET_LAG=0`` (an A/B: the lag not kept, as before session 38)."""
        outlet = self.outlet
        if outlet is None or os.environ.get('DELEN_OUTLET_LAG') == '0':
            return 0.0
        return outlet.lag_p99_ms() or 0.0

    def fall_back_from_outlet(self) -> bool:
        """If the outlet was given up on (it kept dying), give every result topic the node's own
        publisher; true when it did. From the status tick: results in between are counted lost."""
        outlet = self.outlet
        if outlet is None or not outlet.given_up:
            return False
        with self.lock:
            self._node.get_logger().error('the result outlet was given up on: the node publishes the results itself')
            for topic, pub in list(self.result_pubs.items()):
                if isinstance(pub, OutletPublisher):
                    own = self._own_publisher(topic)
                    if self.active:
                        own.on_activate(None)
                    self.result_pubs[topic] = own
            self.outlet, self.retired_outlet = None, outlet
        outlet.close()
        return True

    def _destroy_publisher(self, pub: Any) -> None:
        if isinstance(pub, OutletPublisher):
            pub.withdraw()
        else:
            self._node.destroy_lifecycle_publisher(pub)

    def _check(self, config: AppConfig, *, token: str = '', restore: bool = False):
        return self.registry.check(self._resolve(config), token=token, restore=restore,
                                    topic_types=dict(self._node.get_topic_names_and_types()),
                                    foreign_publishers=self._foreign_publishers)

    def _apply(self, change) -> Any:
        """Create what ``change`` needs, register it with the engine, commit; undo all on a failure."""
        config, new_pub, new_cam = change.config, None, None
        try:
            if change.new_result_topic:
                new_pub = self._create_publisher(config.result_topic)
                if self.active:   # lifecycle publishers start disabled; the node is already past activate
                    new_pub.on_activate(None)
            if change.new_image_topic:
                new_cam = Camera(config.image_topic)
                if self.active:
                    self.subscribe(new_cam)
            plan = self.engine.set_app(config.app_id, config.bounds, late_policy=config.late_policy,
                                               source=config.image_topic)
            if isinstance(new_pub, OutletPublisher):
                new_pub.advertise()
        except BaseException:
            if new_cam is not None:
                self.unsubscribe(new_cam)
            if new_pub is not None:
                self._destroy_publisher(new_pub)
            raise
        if new_pub is not None:
            self.result_pubs[config.result_topic] = new_pub
        if new_cam is not None:
            self.cameras[config.image_topic] = new_cam
        self.registry.commit(change)
        self._drop_unused(change.unused_result_topic, change.unused_image_topic)
        return plan

    def _drop_unused(self, result_topic: str | None, image_topic: str | None) -> None:
        if result_topic and result_topic in self.result_pubs:
            self._destroy_publisher(self.result_pubs.pop(result_topic))
        if image_topic and image_topic in self.cameras:
            self.unsubscribe(self.cameras.pop(image_topic))
            self._node.get_logger().info(f'unsubscribed from {image_topic}: no app uses it any more')
        for topic, app_ids in self.registry.cameras().items():
            if topic in self.cameras:
                self.cameras[topic].app_ids = app_ids

    def subscribe(self, camera: Camera, *, avoid_receiver: int | None = None) -> None:
        # A few frames of DDS history: a short stall of the executor then loses no frame unseen; the
        # engine keeps the newest (queue_depth) and counts the rest as dropped, with their reason.
        if camera.subscription is None and self._ingress is not None:
            camera.subscription = self._ingress.subscribe(camera, avoid=avoid_receiver)
        elif camera.subscription is None:
            # raw: the callback gets the serialized bytes and views the pixels in place (no Python
            # message to build: ~0.6 ms of the GIL saved per 640x480 frame).
            camera.subscription = self._node.create_subscription(
                Image, camera.topic, lambda msg, c=camera: self._on_image(msg, c),
                image_qos(self._qos_name, depth=SUBSCRIPTION_DEPTH), raw=True)

    def unsubscribe(self, camera: Camera) -> None:
        if camera.subscription is not None and self._ingress is not None:
            self._ingress.unsubscribe(camera.subscription)
        elif camera.subscription is not None:
            self._node.destroy_subscription(camera.subscription)
        camera.subscription = None

    def resubscribe(self, camera: Camera) -> str:
        """Subscribe ``camera`` afresh, through another receiver process where there are several:
        its publishers are there but none of its frames came (a DDS match that failed in one
        receiver -- Fast DDS's type lookup has refused one -- or a receiver that hangs). Returns
        where it went, for the log."""
        before = getattr(camera.subscription, 'process', None)
        self.unsubscribe(camera)
        self.subscribe(camera, avoid_receiver=before)
        after = getattr(camera.subscription, 'process', None)
        return 'in the node' if after is None else f'through receiver {after} (was {before})'

    def restore(self, initial: Sequence[AppConfig]) -> None:
        """The ``apps`` parameter's apps, then the state file's (which win on the same id)."""
        read = self.store.read()
        for error in read.errors:
            self._node.get_logger().error(error)
        if read.backup is not None:
            self._node.get_logger().error(f'state file kept as {read.backup}; its valid entries are restored')
        by_id = {a.app_id: a for a in [*initial, *read.apps]}
        with self.lock:
            for config in by_id.values():
                try:
                    self._apply(self._check(config, restore=True))
                except Exception as exc:  # noqa: BLE001 - one app that cannot be restored must not stop the others
                    self.store.restore_error = (self.store.restore_error + '; ' if self.store.restore_error
                                                 else '') + f'app {config.app_id} not restored: {clean_message(exc)}'
                    self._node.get_logger().error(f'app {config.app_id} not restored: {clean_message(exc)}')
            if self.store.path is not None and (by_id or read.errors) and not self.store.write(
                    self.registry.apps().values()):
                self._node.get_logger().error(self.store.error)

    def _reject(self, kind: str, message: str) -> None:
        line = self.rejections.add(kind, message)
        if line:
            self._node.get_logger().warning(line)

    @staticmethod
    def _fill_feasible(response, feasible) -> None:
        response.feasible_latency_ms = [float(v) for v in feasible.latency_ms]
        response.feasible_accuracy = [float(v) for v in feasible.accuracy]
        response.feasible_energy_mj = [float(v) for v in feasible.energy_mj]

    async def set_bounds(self, request: SetBounds.Request, response: SetBounds.Response) -> SetBounds.Response:
        """``~/set_bounds``, judged (:meth:`judge_bounds`) once the apps admitted just before it whose cameras
        publish have had frames served (:meth:`_unmeasured`): their load is then in the costs it is judged
        on. Held for that up to ``settle_s``, without holding the executor; judged on what is known then."""
        unmeasured, held = self._unmeasured(request.app_id), ''
        if unmeasured:
            # said at the start too: a caller whose answer is slow can see why (and a test, that it is held)
            self._node.get_logger().info(f'set_bounds({request.app_id[:64]!r}) holding for the first frames of '
                                         f'{", ".join(unmeasured[:4])} (at most {self._settle_s:g} s)')
            # a cleanup ends the wait too: _unmeasured is empty once inactive, and HeldRequests.cancel
            held_s = await self._held.until(lambda: not self._unmeasured(request.app_id), self._settle_s)
            unserved = set(self.engine.unmeasured_apps(request.app_id, within_ns=None)) & set(unmeasured)
            held = (f'held {held_s * 1e3:.0f} ms for the first frames of {", ".join(unmeasured[:4])}'
                    + (f' ({len(unserved)} of them not served: judged on the costs known now)' if unserved else ''))
            self._node.get_logger().info(f'set_bounds({request.app_id[:64]!r}) {held}')
        if self.closed:
            response.accepted, response.planned_exit = False, -1
            response.message = ('the node was cleaned up or shut down while the request was held; ask again once '
                                'it is active')
            return response
        response = self.judge_bounds(request, response)
        if held:   # why the answer took that long, in the answer itself
            response.message = f'{response.message} ({held})' if response.message else held
        return response

    def _unmeasured(self, app_id: str) -> list[str]:
        """``Engine.unmeasured_apps`` whose camera has a publisher (one that sends nothing yet is not waited
        for); none while inactive (no frame is served) or with ``settle_s`` 0."""
        if not self.active or self._held is None or self._settle_s <= 0:
            return []
        out = []
        for other in self.engine.unmeasured_apps(app_id):
            config = self.registry.get(other)
            if config is not None and self._node.count_publishers(config.image_topic) > 0:
                out.append(other)
        return out

    def judge_bounds(self, request: SetBounds.Request, response: SetBounds.Response) -> SetBounds.Response:
        from delen_ros.core.bounds import InfeasibleBounds
        response.accepted, response.planned_exit, kind = False, -1, 'invalid'
        try:
            self._fill_feasible(response, self.engine.feasible_range())
            if request.late_policy not in LATE_POLICIES:
                raise Rejected(f'unknown late_policy {request.late_policy}; known: {sorted(LATE_POLICIES)}',
                               kind='invalid')
            config = AppConfig(app_id=request.app_id, image_topic=request.image_topic,
                               max_latency_ms=request.max_latency_ms, min_accuracy=request.min_accuracy,
                               max_energy_mj=request.max_energy_mj, objective=int(request.objective),
                               result_topic=request.result_topic, late_policy=LATE_POLICIES[request.late_policy])
            with self.lock:
                change = self._check(config, token=request.token)
                plan = self._apply(change)
                persisted = self.store.write(self.registry.apps().values())
        except InfeasibleBounds as exc:
            self._fill_feasible(response, exc.feasible)
            response.would_fit_max_latency_ms = float(getattr(exc, 'min_latency_ms', None) or 0.0)   # Unschedulable
            kind, response.message = type(exc).__name__, clean_message(exc, limit=1000)
        except Rejected as exc:
            kind, response.message = exc.kind, str(exc)
        except ValueError as exc:
            response.message = clean_message(exc, limit=1000)
        except Exception as exc:  # noqa: BLE001 - answer (rejected, with the reason): never leave the caller hanging
            kind, response.message = 'internal error', f'internal error: {type(exc).__name__}: {clean_message(exc)}'
        else:
            config = change.config
            response.accepted, response.persisted, response.token = True, persisted, change.token or request.token
            response.result_topic, response.planned_exit = config.result_topic, int(plan.exit_index)
            response.expected_latency_ms, response.expected_accuracy = float(plan.latency_ms), float(plan.accuracy)
            response.expected_energy_mj = float(plan.energy_mj)
            if not persisted:
                response.message = f'accepted, but NOT persisted (lost at a restart): {self.store.error}'
                self._node.get_logger().error(response.message, throttle_duration_sec=10.0)
            self._node.get_logger().info(f'app {config.app_id} on {config.image_topic}: {config.describe()} -> exit '
                                   f'{plan.exit_index} (~{plan.latency_ms:.2f} ms); results on {config.result_topic}')
            return response
        self._reject(kind, f'set_bounds({request.app_id[:64]!r}) rejected: {response.message}')
        return response

    def remove_app(self, request: RemoveApp.Request, response: RemoveApp.Response) -> RemoveApp.Response:
        try:
            with self.lock:
                old = self.registry.check_remove(request.app_id, token=request.token)
                self.engine.remove_app(old.app_id)
                self.registry.remove(old.app_id)
                others = self.registry.apps().values()
                self._drop_unused(old.result_topic if all(a.result_topic != old.result_topic for a in others) else None,
                                  old.image_topic if all(a.image_topic != old.image_topic for a in others) else None)
                persisted = self.store.write(others)
        except Rejected as exc:
            response.removed, response.message = False, str(exc)
            self._reject(exc.kind, f'remove_app({request.app_id[:64]!r}) rejected: {exc}')
            return response
        except Exception as exc:  # noqa: BLE001
            response.removed, response.message = False, f'internal error: {type(exc).__name__}: {clean_message(exc)}'
            self._reject('internal error', f'remove_app({request.app_id[:64]!r}): {response.message}')
            return response
        response.removed = True
        response.message = f'removed {old.app_id}' + ('' if persisted else f' (NOT persisted: {self.store.error})')
        self._node.get_logger().info(response.message)
        return response

    def activate(self) -> None:
        with self.lock:
            self.active = True
            for pub in self.result_pubs.values():   # the node's own: enabled by the lifecycle transition
                if isinstance(pub, OutletPublisher):
                    pub.on_activate()
            for camera in self.cameras.values():
                self.subscribe(camera)

    def deactivate(self) -> None:
        with self.lock:
            self.active = False
            for pub in self.result_pubs.values():
                if isinstance(pub, OutletPublisher):
                    pub.on_deactivate()
            for camera in self.cameras.values():
                self.unsubscribe(camera)

    def close(self) -> None:
        """Destroy every subscription and result publisher, and end the outlet (the engine is the node's to stop)."""
        with self.lock:
            self.closed = True
            self.deactivate()
            for pub in self.result_pubs.values():
                self._destroy_publisher(pub)
            self.result_pubs.clear()
            self.cameras.clear()
            self.registry.clear()
            outlet, self.outlet = self.outlet, None
        if outlet is not None:
            outlet.close()

    def publisher(self, app_id: str) -> Any:
        """The result publisher of ``app_id`` (``None``: not registered now)."""
        config = self.registry.get(app_id)
        return self.result_pubs.get(config.result_topic) if config is not None else None
