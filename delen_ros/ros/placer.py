"""``delen_placer``: one ``set_bounds`` in front of several delen nodes (hosts), over ROS 2 itself.

Applications call ``/delen_placer/set_bounds`` and ``/delen_placer/remove_app`` (the node's own
``SetBounds`` / ``RemoveApp`` types); the placer forwards each registration to one of the delen nodes
it knows (parameter ``nodes``: their namespaces, each node's services at ``<ns>/<node_name>/...``):

* **where**: an update goes to the node that serves the app; a new app goes first to a node already
  serving its camera (the frame crosses the network once and is preprocessed once), then to the
  live nodes by load (the frame rates in their ``~/status``, then their app counts). Each node's own
  admission decides; the first that accepts serves the app. When every node refuses, the answer is
  the first refusal (with that node's feasible ranges).
* **result topic**: the placer always passes ``result_topic`` explicitly (the caller's, or
  ``/<placer>/<app_id>/result``), so results keep one topic whichever node serves.
* **ownership**: the placer hands the caller a token of its own (as a node does) and keeps each
  node's token to itself.
* **liveness**: a node is alive while its ``set_bounds`` service is on the graph and, when it
  serves apps of the placer, its ``~/status`` keeps coming (at most ``liveness_timeout_s`` apart;
  give the nodes a ``status_period_s`` well below that). When a node dies, its apps are re-registered
  on the other live nodes, retried every ``check_period_s`` until one accepts. A node's result
  publishers leave the graph only when DDS drops the dead participant (its lease), and a node refuses
  a result topic that another node still publishes, so the recovery time is bounded by the DDS lease
  (``config/fastdds_placement.xml``: 1 s).

The placer persists nothing: each node persists what it serves (its ``state_file``).
"""
from __future__ import annotations

import dataclasses
import hmac
import sys
import time
from typing import Any, Sequence

import rclpy
import rclpy.exceptions
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from delen_ros.msg import AppStatus
from delen_ros.srv import RemoveApp, SetBounds

from .apps import new_token, token_hash, validate_app_id
from .rejections import clean_message

__all__ = ['PLACER_NAME', 'NodeView', 'Placed', 'PlacerNode', 'main']

PLACER_NAME = 'delen_placer'
_STATUS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=256, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
_SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=256, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
_FIELDS = ('app_id', 'image_topic', 'max_latency_ms', 'min_accuracy', 'max_energy_mj', 'objective',
           'result_topic', 'late_policy')


@dataclasses.dataclass
class NodeView:
    """What the placer knows of one delen node."""

    prefix: str                       # fully qualified node name, e.g. '/host_a/delen'
    set_bounds: Any
    remove_app: Any
    last_seen_ns: int = 0             # last status message or answered call (monotonic)
    alive: bool = False
    dead_ns: int = 0                  # when it was found dead (0: never, or seen again since)
    restarted: bool = False           # its service left the graph after it was found dead
    rates_hz: dict[str, float] = dataclasses.field(default_factory=dict)   # app -> rate_in from ~/status

    def load_hz(self) -> float:
        return sum(self.rates_hz.values())


@dataclasses.dataclass
class Placed:
    """One app the placer registered: the request it forwards, who owns it, where it runs."""

    request: dict[str, Any]           # SetBounds fields (topics absolute, result_topic explicit)
    owner: str                        # hash of the caller's token
    node: str | None                  # prefix of the node serving it; None: being re-placed
    node_token: str = ''
    orphaned_ns: int = 0              # when its node was found dead (monotonic)
    busy: bool = False                # a call for it is in flight


def _ns_prefix(namespace: str, node_name: str) -> str:
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return f'{ns}/{node_name}'


class PlacerNode(Node):
    """The placement service (see the module docstring)."""

    def __init__(self, node_name: str = PLACER_NAME, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        describe = ParameterDescriptor
        self.declare_parameter('nodes', [''], describe(
            description="Namespaces of the delen nodes, e.g. ['/host_a', '/host_b'] ('' = the root namespace).",
            read_only=True))
        self.declare_parameter('node_name', 'delen', describe(description='Name of each delen node.', read_only=True))
        self.declare_parameter('liveness_timeout_s', 1.0, describe(
            description="A node serving apps is dead when its ~/status is silent this long, s.",
            floating_point_range=[FloatingPointRange(from_value=0.1, to_value=60.0, step=0.0)], read_only=True))
        self.declare_parameter('check_period_s', 0.1, describe(
            description='Period of the liveness check and of re-placement retries, s.',
            floating_point_range=[FloatingPointRange(from_value=0.01, to_value=10.0, step=0.0)], read_only=True))
        self.declare_parameter('call_timeout_s', 5.0, describe(
            description="Longest wait for a node's answer, s.",
            floating_point_range=[FloatingPointRange(from_value=0.1, to_value=60.0, step=0.0)], read_only=True))
        self.declare_parameter('allow_takeover', False, describe(
            description='Any client may update or remove any app (no token needed).', read_only=True))
        namespaces = [str(n) for n in self.get_parameter('nodes').value]
        name = str(self.get_parameter('node_name').value)
        self.liveness_timeout_s = float(self.get_parameter('liveness_timeout_s').value)
        self.call_timeout_s = float(self.get_parameter('call_timeout_s').value)
        self.allow_takeover = bool(self.get_parameter('allow_takeover').value)
        # One reentrant group: a service handler awaits the nodes' answers, which a mutually exclusive
        # group (the default) would hold back until the handler returned. One thread runs them all.
        self._group = group = ReentrantCallbackGroup()
        prefixes = list(dict.fromkeys(_ns_prefix(ns, name) for ns in namespaces))
        if not prefixes:
            raise ValueError("parameter nodes: name at least one delen node's namespace")
        self.nodes: dict[str, NodeView] = {}
        for prefix in prefixes:
            self.nodes[prefix] = NodeView(
                prefix, self.create_client(SetBounds, f'{prefix}/set_bounds', callback_group=group),
                self.create_client(RemoveApp, f'{prefix}/remove_app', callback_group=group))
            self.create_subscription(AppStatus, f'{prefix}/status', lambda msg, p=prefix: self._on_status(p, msg),
                                     _STATUS_QOS, callback_group=group)
        self.apps: dict[str, Placed] = {}
        self.recoveries: list[tuple[str, str, str, float]] = []   # (app, from, to, seconds since found dead)
        self.create_service(SetBounds, '~/set_bounds', self._on_set_bounds, qos_profile=_SERVICE_QOS,
                            callback_group=group)
        self.create_service(RemoveApp, '~/remove_app', self._on_remove_app, qos_profile=_SERVICE_QOS,
                            callback_group=group)
        self._timer = self.create_timer(float(self.get_parameter('check_period_s').value), self._check,
                                        callback_group=group)
        self.get_logger().info(f'placing apps on {", ".join(prefixes)}')

    # --- liveness ------------------------------------------------------------------------------------------
    def _on_status(self, prefix: str, msg: AppStatus) -> None:
        view = self.nodes[prefix]
        view.last_seen_ns = time.monotonic_ns()
        view.rates_hz[msg.app_id] = float(msg.rate_in_hz) if msg.rate_in_hz == msg.rate_in_hz else 0.0

    def _serves(self, prefix: str) -> list[str]:
        return [a for a, p in self.apps.items() if p.node == prefix]

    def _is_alive(self, view: NodeView, now_ns: int) -> bool:
        if not view.set_bounds.service_is_ready():
            view.restarted = view.dead_ns > 0
            return False
        if view.dead_ns:   # found dead: alive again once it speaks, or once its service came back
            if view.last_seen_ns <= view.dead_ns and not view.restarted:
                return False
            view.dead_ns, view.restarted = 0, False
        if not self._serves(view.prefix):
            return True
        return (now_ns - view.last_seen_ns) / 1e9 <= self.liveness_timeout_s

    def _check(self) -> None:
        now = time.monotonic_ns()
        for view in self.nodes.values():
            alive = self._is_alive(view, now)
            if view.alive and not alive:
                orphans = self._serves(view.prefix)
                self.get_logger().error(f'{view.prefix} is gone (status silent {(now - view.last_seen_ns) / 1e9:.2f} s, '
                                        f'service {"up" if view.set_bounds.service_is_ready() else "down"}); '
                                        f're-placing {len(orphans)} app(s): {", ".join(orphans) or "none"}')
                for app_id in orphans:
                    placed = self.apps[app_id]
                    placed.request['_from'] = view.prefix
                    placed.node, placed.node_token, placed.orphaned_ns = None, '', now
                view.rates_hz.clear()
                view.dead_ns = now
            elif alive and not view.alive:
                self.get_logger().info(f'{view.prefix} is up')
            view.alive = alive
        for app_id, placed in list(self.apps.items()):
            if placed.node is None and not placed.busy:
                placed.busy = True
                self.executor.create_task(self._replace(app_id, placed))

    async def _replace(self, app_id: str, placed: Placed) -> None:
        try:
            request = self._node_request(placed.request, token='')
            for prefix in self._candidates(placed.request['image_topic'], exclude=placed.request.get('_from')):
                response = await self._call(self.nodes[prefix].set_bounds, request)
                if self.apps.get(app_id) is not placed:   # removed meanwhile
                    if response is not None and response.accepted:
                        await self._call(self.nodes[prefix].remove_app, RemoveApp.Request(app_id=app_id,
                                                                                          token=response.token))
                    return
                if response is not None and response.accepted:
                    placed.node, placed.node_token = prefix, response.token
                    self.nodes[prefix].last_seen_ns = time.monotonic_ns()
                    took = (time.monotonic_ns() - placed.orphaned_ns) / 1e9
                    self.recoveries.append((app_id, placed.request.get('_from') or '', prefix, took))
                    self.get_logger().info(f're-placed {app_id} on {prefix} {took * 1000:.0f} ms after its node '
                                           'was found dead')
                    return
                if response is not None:
                    self.get_logger().warning(f'{prefix} refused {app_id}: {response.message}',
                                              throttle_duration_sec=2.0)
        finally:
            placed.busy = False

    # --- calls -------------------------------------------------------------------------------------------------
    async def _call(self, client: Any, request: Any) -> Any:
        """A node's answer, or ``None`` when it is not there or did not answer within ``call_timeout_s``."""
        if not client.service_is_ready():
            return None
        future = client.call_async(request)
        timer = self.create_timer(self.call_timeout_s, lambda: future.done() or future.cancel(),
                                  callback_group=self._group)
        try:
            await future
        finally:
            self.destroy_timer(timer)
        if future.cancelled():
            client.remove_pending_request(future)
            return None
        return future.result()

    def _candidates(self, image_topic: str, *, exclude: str | None = None) -> list[str]:
        """Live nodes to try: those serving this camera first, then by load, then by app count."""
        live = [p for p, v in self.nodes.items() if v.alive and p != exclude]
        same_camera = {p.node for p in self.apps.values() if p.node and p.request['image_topic'] == image_topic}
        return sorted(live, key=lambda p: (p not in same_camera, self.nodes[p].load_hz(), len(self._serves(p)),
                                           list(self.nodes).index(p)))

    def _node_request(self, fields: dict[str, Any], *, token: str) -> SetBounds.Request:
        request = SetBounds.Request()
        for name in _FIELDS:
            setattr(request, name, fields[name])
        request.token = token
        return request

    # --- services --------------------------------------------------------------------------------------------
    def _authorise(self, placed: Placed, token: str, action: str) -> str:
        if self.allow_takeover or (token and hmac.compare_digest(token_hash(token), placed.owner)):
            return ''
        return (f"app {placed.request['app_id']!r} belongs to another client: {action} it needs the token returned "
                'at its registration')

    async def _on_set_bounds(self, request: SetBounds.Request, response: SetBounds.Response) -> SetBounds.Response:
        response.accepted, response.planned_exit = False, -1
        try:
            app_id = validate_app_id(request.app_id)
            fields = {name: getattr(request, name) for name in _FIELDS}
            fields['image_topic'] = self.resolve_topic_name(request.image_topic)
            fields['result_topic'] = self.resolve_topic_name(request.result_topic or f'~/{app_id}/result')
        except Exception as exc:  # noqa: BLE001 - rclpy raises its own errors for bad names
            response.message = clean_message(exc, limit=1000)
            return response
        placed = self.apps.get(app_id)
        if placed is not None:
            why = self._authorise(placed, request.token, 'updating')
            if why:
                response.message = why
                return response
            if placed.busy or placed.node is None:
                response.message = f'app {app_id!r} is being re-placed after its node failed; try again'
                return response
            candidates = [placed.node]
        else:
            candidates = self._candidates(fields['image_topic'])
            if not candidates:
                response.message = 'no delen node is alive: ' + ', '.join(self.nodes)
                return response
        if placed is not None:
            placed.busy = True
        refusals: list[tuple[str, Any]] = []
        try:
            for prefix in candidates:
                node_token = placed.node_token if placed is not None else ''
                answer = await self._call(self.nodes[prefix].set_bounds, self._node_request(fields, token=node_token))
                if answer is None:
                    refusals.append((prefix, None))
                    continue
                self.nodes[prefix].last_seen_ns = time.monotonic_ns()
                if not answer.accepted:
                    refusals.append((prefix, answer))
                    continue
                if app_id in self.apps and self.apps[app_id] is not placed:   # a concurrent registration won
                    await self._call(self.nodes[prefix].remove_app, RemoveApp.Request(app_id=app_id, token=answer.token))
                    response.message = f'app {app_id!r} was registered concurrently by another client'
                    return response
                token = request.token if placed is not None else new_token()
                if placed is None:
                    placed = self.apps[app_id] = Placed(fields, token_hash(token), prefix, answer.token)
                else:
                    placed.request, placed.node, placed.node_token = fields, prefix, answer.token
                for name in ('accepted', 'message', 'persisted', 'result_topic', 'planned_exit', 'expected_latency_ms',
                             'expected_accuracy', 'expected_energy_mj', 'feasible_latency_ms', 'feasible_accuracy',
                             'feasible_energy_mj'):
                    setattr(response, name, getattr(answer, name))
                response.token = token
                self.get_logger().info(f'{app_id} on {fields["image_topic"]} placed on {prefix}; results on '
                                       f'{answer.result_topic}')
                return response
        finally:
            if placed is not None:
                placed.busy = False
        first = next((a for _, a in refusals if a is not None), None)
        if first is not None:
            for name in ('feasible_latency_ms', 'feasible_accuracy', 'feasible_energy_mj'):
                setattr(response, name, getattr(first, name))
        response.message = '; '.join(f'{p}: {a.message if a is not None else "no answer"}' for p, a in refusals)
        return response

    async def _on_remove_app(self, request: RemoveApp.Request, response: RemoveApp.Response) -> RemoveApp.Response:
        placed = self.apps.get(request.app_id)
        if placed is None:
            response.removed, response.message = False, f'no app {request.app_id!r}'
            return response
        why = self._authorise(placed, request.token, 'removing')
        if why:
            response.removed, response.message = False, why
            return response
        del self.apps[request.app_id]
        if placed.node is not None:
            answer = await self._call(self.nodes[placed.node].remove_app,
                                      RemoveApp.Request(app_id=request.app_id, token=placed.node_token))
            if answer is not None and not answer.removed:
                self.get_logger().warning(f'{placed.node} did not remove {request.app_id}: {answer.message}')
        response.removed, response.message = True, f'removed {request.app_id}'
        return response


def main(argv: Sequence[str] | None = None) -> int:
    """Run the placer (``delen_placer``) until Ctrl-C / SIGTERM."""
    rclpy.init(args=list(sys.argv if argv is None else argv))
    try:
        node = PlacerNode()
    except (ValueError, rclpy.exceptions.ParameterException) as exc:
        print(f'delen_placer: {clean_message(exc)}', file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
