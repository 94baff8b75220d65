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
  (``config/fastdds_placement.xml``: 1 s). (Where a node's results go out through its result outlet,
  ``ros/outlet.py``, the outlet ends as soon as its node is gone and takes its publishers with it.)
* **overload**: a node's engine re-checks its apps at their measured rates and flags in ``~/status``
  (``unschedulable_reason``) those it can no longer serve within their bounds (it then serves them
  best-effort, after the others). An app the placer placed there that stays flagged for
  ``overload_grace_s`` (every status from that node flagged it; one status without the flag starts
  the count again, so a noisy re-check moves nothing; nor does one whose reason says its node measured
  no misses, ``QUIET_NOTE``: a move pauses its results) is moved: to the other live nodes, chosen as
  for a new app (by load), each asked with the same bounds and result topic, the first that accepts
  serves it. As the new node refuses a result topic the old node still publishes, the move first
  removes the app from the old node (its results pause), then tries the others every
  ``check_period_s`` for up to ``move_timeout_s``; when none accepts in that time, the app goes back
  to the old node (and, should that refuse too, to whichever live node accepts it, retried as after a
  failure: an acknowledged app is never dropped). An app is not considered again for
  ``move_cooldown_s`` after a move, successful or not (no app bounces between two busy nodes). At most
  one move per app runs at a time; no move starts while its node is not alive or while apps of a dead
  node still wait for a new node (they come first). Moves run as executor tasks started by the check
  timer, never in the status callback. ``overload_grace_s: 0`` turns moves off.

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

from delen_ros.core.fleet import OverloadWatch, move_targets, rank_candidates
from delen_ros.msg import AppStatus
from delen_ros.srv import RemoveApp, SetBounds

from .apps import new_token, token_hash, validate_app_id
from .params import asks_for_help, format_usage
from .rejections import clean_message

__all__ = ['PLACER_NAME', 'NodeView', 'Placed', 'Move', 'PlacerNode', 'main']

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
    move: Move | None = None          # being moved off an overloaded node (node is None meanwhile)
    orphan_cause: str = 'its node was found dead'   # why it waits for a node (node None, move None)


@dataclasses.dataclass
class Move:
    """One app's move off a node that flags it unschedulable (see the module docstring)."""

    from_node: str                    # prefix of the node it leaves
    from_token: str                   # that node's token for it
    reason: str                       # the node's unschedulable_reason
    started_ns: int                   # monotonic
    deadline_ns: int                  # after it: back to the old node
    removed: bool = False             # the old node has let it go (its result topic is free)
    refusals: dict[str, str] = dataclasses.field(default_factory=dict)   # node -> its last refusal


def _ns_prefix(namespace: str, node_name: str) -> str:
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return f'{ns}/{node_name}'


#: name -> (default, description, (low, high) for seconds); all read-only
_PARAMS: dict[str, tuple[Any, str, tuple[float, float] | None]] = {
    'nodes': ([''], "Namespaces of the delen nodes, e.g. ['/host_a', '/host_b'] ('' = the root namespace).", None),
    'node_name': ('delen', 'Name of each delen node.', None),
    'liveness_timeout_s': (1.0, 'A node serving apps is dead when its ~/status is silent this long, s.', (0.1, 60.0)),
    'check_period_s': (0.1, 'Period of the liveness check and of re-placement retries, s.', (0.01, 10.0)),
    'call_timeout_s': (5.0, "Longest wait for a node's answer, s.", (0.1, 60.0)),
    'allow_takeover': (False, 'Any client may update or remove any app (no token needed).', None),
    'overload_grace_s': (2.0, "Move an app off a node whose ~/status has flagged it unschedulable this long, s "
                              '(0 = never move apps for overload).', (0.0, 3600.0)),
    'move_timeout_s': (3.0, 'Longest a move tries the other nodes before the app goes back to its old node, s.',
                       (0.1, 60.0)),
    'move_cooldown_s': (30.0, 'After a move (successful or not), the app is not moved again for this long, s.',
                        (0.0, 3600.0)),
}


def usage() -> str:
    """``delen_placer --help``: how to set a parameter, then each one's default, range and meaning."""
    return format_usage('delen_placer', [
        "Places apps on delen nodes: register them with /delen_placer/set_bounds instead of a node's.",
        'Parameters (read-only):'], ((name, default, description, limits, False)   # all read-only: said once
                                     for name, (default, description, limits) in _PARAMS.items()))


class PlacerNode(Node):
    """The placement service (see the module docstring)."""

    def __init__(self, node_name: str = PLACER_NAME, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        for name, (default, description, limits) in _PARAMS.items():   # all read-only
            descriptor = ParameterDescriptor(description=description, read_only=True)
            if limits is not None:
                descriptor.floating_point_range = [FloatingPointRange(from_value=limits[0], to_value=limits[1],
                                                                      step=0.0)]
            self.declare_parameter(name, default, descriptor)
        namespaces = [str(n) for n in self.get_parameter('nodes').value]
        name = str(self.get_parameter('node_name').value)
        self.liveness_timeout_s = float(self.get_parameter('liveness_timeout_s').value)
        self.call_timeout_s = float(self.get_parameter('call_timeout_s').value)
        self.allow_takeover = bool(self.get_parameter('allow_takeover').value)
        self.overload_grace_s = float(self.get_parameter('overload_grace_s').value)
        self.move_timeout_s = float(self.get_parameter('move_timeout_s').value)
        self.overload = OverloadWatch(grace_s=self.overload_grace_s,
                                      cooldown_s=float(self.get_parameter('move_cooldown_s').value))
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
        self.moves: list[tuple[str, str, str, float]] = []   # (app, from, to ('' = back on from), seconds)
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
        placed = self.apps.get(msg.app_id)
        if placed is not None and placed.node == prefix:   # only noted here: the check timer moves apps
            self.overload.observe(msg.app_id, prefix, str(msg.unschedulable_reason), now_ns=view.last_seen_ns)

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
                    self._orphan(self.apps[app_id], view.prefix, 'its node was found dead', now_ns=now)
                    self.overload.forget(app_id)
                view.rates_hz.clear()
                view.dead_ns = now
            elif alive and not view.alive:
                self.get_logger().info(f'{view.prefix} is up')
            view.alive = alive
        self._start_moves(now)
        for app_id, placed in list(self.apps.items()):
            if placed.node is None and not placed.busy:
                placed.busy = True
                self.executor.create_task(self._move_step(app_id, placed) if placed.move is not None
                                          else self._replace(app_id, placed))

    async def _offer(self, app_id: str, placed: Placed, prefix: str, request: SetBounds.Request) -> tuple[bool, Any]:
        """Ask node ``prefix`` to serve ``placed``: ``(still wanted, its answer)``. If the client removed
        the app meanwhile, a node that took it is asked at once to let it go again (``still wanted`` false)."""
        response = await self._call(self.nodes[prefix].set_bounds, request)
        if self.apps.get(app_id) is not placed:
            if response is not None and response.accepted:
                await self._call(self.nodes[prefix].remove_app, RemoveApp.Request(app_id=app_id, token=response.token))
            return False, response
        return True, response

    async def _replace(self, app_id: str, placed: Placed) -> None:
        try:
            request = self._node_request(placed.request, token='')
            for prefix in self._candidates(placed.request['image_topic'], exclude=placed.request.get('_from')):
                wanted, response = await self._offer(app_id, placed, prefix, request)
                if not wanted:
                    return
                if response is not None and response.accepted:
                    placed.node, placed.node_token = prefix, response.token
                    self.nodes[prefix].last_seen_ns = time.monotonic_ns()
                    took = (time.monotonic_ns() - placed.orphaned_ns) / 1e9
                    self.recoveries.append((app_id, placed.request.get('_from') or '', prefix, took))
                    self.get_logger().info(f're-placed {app_id} on {prefix} {took * 1000:.0f} ms after '
                                           f'{placed.orphan_cause}')
                    return
                if response is not None:
                    self.get_logger().warning(f'{prefix} refused {app_id}: {response.message}',
                                              throttle_duration_sec=2.0)
        finally:
            placed.busy = False

    # --- overload moves ----------------------------------------------------------------------------------
    def _start_moves(self, now: int) -> None:
        """Start a move for each app its node has flagged for ``overload_grace_s`` (see the module docstring)."""
        if self.overload_grace_s <= 0:
            return
        if any(p.node is None and p.move is None for p in self.apps.values()):
            return   # a dead node's apps wait for a node: they come first
        serving = {a: p.node for a, p in self.apps.items() if p.node is not None and not p.busy and p.move is None}
        for app_id, prefix, reason, flagged_s in self.overload.due(serving, now_ns=now):
            view = self.nodes[prefix]
            if not view.alive or view.dead_ns:
                continue
            if not any(v.alive for p, v in self.nodes.items() if p != prefix):
                continue   # nowhere to go: it stays flagged, and is moved once another node is up
            placed = self.apps[app_id]
            self.overload.attempted(app_id, now_ns=now)
            placed.move = Move(prefix, placed.node_token, reason, now, now + int(self.move_timeout_s * 1e9))
            placed.node, placed.node_token = None, ''
            self.get_logger().warning(f'moving {app_id} off {prefix}: flagged unschedulable there for '
                                      f'{flagged_s:.1f} s ({reason})')

    async def _move_step(self, app_id: str, placed: Placed) -> None:
        """One step of a move: let the old node go of the app (once), then try the other nodes; past
        the move's deadline, the old node; should that fail too, any live node (as after a failure)."""
        move = placed.move
        try:
            if self.apps.get(app_id) is not placed or move is None:
                return
            old = self.nodes[move.from_node]
            if not move.removed:
                answer = await self._call(old.remove_app, RemoveApp.Request(app_id=app_id, token=move.from_token))
                if self.apps.get(app_id) is not placed:   # removed by its client meanwhile (and from the old node)
                    return
                if answer is None or not answer.removed:
                    why = 'no answer' if answer is None else answer.message
                    placed.move = None
                    if old.alive and not old.dead_ns:
                        placed.node, placed.node_token = move.from_node, move.from_token
                        self.get_logger().error(f'move of {app_id} off {move.from_node} abandoned: the node did not '
                                                f'let it go ({why}); it stays there')
                    else:
                        self._orphan(placed, move.from_node, 'its node was found dead during a move')
                    return
                move.removed = True
                old.rates_hz.pop(app_id, None)   # its load leaves with it
            request = self._node_request(placed.request, token='')
            ranked = self._candidates(placed.request['image_topic'])
            now = time.monotonic_ns()
            targets, fallback = move_targets(ranked, old=move.from_node, old_alive=old.alive and not old.dead_ns,
                                             now_ns=now, deadline_ns=move.deadline_ns)
            for prefix in targets:
                wanted, response = await self._offer(app_id, placed, prefix, request)
                if not wanted:
                    return
                if response is not None and response.accepted:
                    placed.node, placed.node_token, placed.move = prefix, response.token, None
                    self.nodes[prefix].last_seen_ns = time.monotonic_ns()
                    self.overload.forget(app_id)
                    took = (time.monotonic_ns() - move.started_ns) / 1e9
                    if prefix == move.from_node:
                        self.moves.append((app_id, move.from_node, '', took))
                        self.get_logger().warning(
                            f'could not move {app_id} off {move.from_node} within {self.move_timeout_s:g} s; back '
                            f'there after {took * 1000:.0f} ms. Refusals: ' + self._refusal_text(move))
                    else:
                        self.moves.append((app_id, move.from_node, prefix, took))
                        self.get_logger().info(f'moved {app_id} from {move.from_node} to {prefix} in '
                                               f'{took * 1000:.0f} ms (it was flagged there: {move.reason})')
                    return
                move.refusals[prefix] = 'no answer' if response is None else response.message
                if response is not None:
                    self.get_logger().warning(f'move of {app_id}: {prefix} refused it: {response.message}',
                                              throttle_duration_sec=2.0)
            if fallback:
                placed.move = None
                self._orphan(placed, '', f'it could not go back to {move.from_node}')
                self.get_logger().error(
                    f'could not move {app_id} off {move.from_node}, nor put it back there: re-placing it on any live '
                    'node. Refusals: ' + self._refusal_text(move))
        finally:
            placed.busy = False

    def _orphan(self, placed: Placed, exclude: str, cause: str, *, now_ns: int | None = None) -> None:
        """Leave ``placed`` to the re-placement of apps without a node (every ``check_period_s``), not
        on node ``exclude`` ('' = any); ``cause`` ends the log line of its re-placement."""
        placed.request['_from'] = exclude or None
        placed.node, placed.node_token, placed.orphan_cause = None, '', cause
        placed.orphaned_ns = time.monotonic_ns() if now_ns is None else now_ns

    @staticmethod
    def _refusal_text(move: Move) -> str:
        return '; '.join(f'{p}: {m}' for p, m in move.refusals.items()) or 'none (no other live node)'

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
        return rank_candidates(live, same_camera=same_camera, load_hz={p: self.nodes[p].load_hz() for p in live},
                               app_counts={p: len(self._serves(p)) for p in live})

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
            if placed.move is not None:
                response.message = f'app {app_id!r} is being moved off an overloaded node; try again'
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
                self.overload.forget(app_id)   # new bounds: the node's flag, if any, was for the old ones
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
        fits = [a.would_fit_max_latency_ms for _, a in refusals if a is not None and a.would_fit_max_latency_ms > 0]
        response.would_fit_max_latency_ms = min(fits, default=0.0)   # the tightest bound some node would take
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
        self.overload.forget(request.app_id)
        node, node_token = placed.node, placed.node_token
        if node is None and placed.move is not None and not placed.move.removed:   # its move has not let it go yet
            node, node_token = placed.move.from_node, placed.move.from_token
        if node is not None:
            answer = await self._call(self.nodes[node].remove_app,
                                      RemoveApp.Request(app_id=request.app_id, token=node_token))
            if answer is not None and not answer.removed:
                self.get_logger().warning(f'{node} did not remove {request.app_id}: {answer.message}')
        response.removed, response.message = True, f'removed {request.app_id}'
        return response


def main(argv: Sequence[str] | None = None) -> int:
    """Run the placer (``delen_placer``) until Ctrl-C / SIGTERM."""
    args = list(sys.argv if argv is None else argv)
    if asks_for_help(args):
        print(usage(), end='')
        return 0
    rclpy.init(args=args)
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
