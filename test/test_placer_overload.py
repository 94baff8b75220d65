"""The placer's overload moves, without DDS: the decision (:class:`OverloadWatch`: sustained vs
flapping flags, cool-down; :func:`rank_candidates`; :func:`move_targets`: ``core/fleet.py``, pure), then a
``PlacerNode`` in this process whose calls to the nodes are scripted (``_call`` replaced), driving
``_start_moves`` / ``_move_step`` by hand: a move to the other node, retries then the fallback to the
old node, the fallback refused (the app waits for any node, never dropped), a removal mid-move."""
from __future__ import annotations

import asyncio
import types

import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')

import ros_helpers  # noqa: E402
from delen_ros.core.app_ledger import QUIET_NOTE  # noqa: E402
from delen_ros.core.fleet import OverloadWatch, move_targets, rank_candidates  # noqa: E402
from delen_ros.ros.placer import PlacerNode, Placed  # noqa: E402
from delen_ros.srv import RemoveApp, SetBounds  # noqa: E402

S = 1_000_000_000   # ns per s
A, B, C = '/a/delen', '/b/delen', '/c/delen'


# --- OverloadWatch ---------------------------------------------------------------------------------------
def test_a_flag_sustained_for_the_grace_is_due_once_then_cools_down():
    watch = OverloadWatch(grace_s=2.0, cooldown_s=10.0)
    for t in (0.0, 0.5, 1.0, 1.5):
        watch.observe('nav', A, 'device 95% busy', now_ns=int(t * S))
        assert watch.due({'nav': A}, now_ns=int(t * S)) == []
    watch.observe('nav', A, 'device 96% busy', now_ns=2 * S)
    assert watch.due({'nav': A}, now_ns=2 * S) == [('nav', A, 'device 96% busy', 2.0)]   # the latest reason
    watch.attempted('nav', now_ns=2 * S)
    assert watch.due({'nav': A}, now_ns=2 * S) == []
    # flagged again at once: not before the cool-down has passed, though sustained long enough
    for t in range(3, 13):
        watch.observe('nav', A, 'busy', now_ns=t * S)
        assert watch.due({'nav': A}, now_ns=t * S) == ([] if t < 12 else [('nav', A, 'busy', 9.0)])


@pytest.mark.parametrize('statuses', [
    ['x', '', 'x', '', 'x', '', 'x'],            # flapping every status
    ['x', 'x', 'x', '', 'x', 'x', 'x'],          # one clean status in the middle restarts the count
])
def test_a_flag_that_clears_in_between_is_never_due(statuses):
    watch = OverloadWatch(grace_s=2.0, cooldown_s=0.0)
    for i, reason in enumerate(statuses):   # every 0.5 s, 3 s in all
        watch.observe('nav', A, reason, now_ns=i * S // 2)
        assert watch.due({'nav': A}, now_ns=i * S // 2) == []


def test_an_app_only_predicted_at_risk_is_not_moved_until_its_node_measures_misses():
    """A reason ending in QUIET_NOTE (the node's prediction says at risk, its apps met their bounds)
    never makes an app due, however long it lasts; the same risk with misses measured does."""
    watch = OverloadWatch(grace_s=1.0, cooldown_s=0.0)
    quiet = f'frames due within 6 ms need 6.1 ms of device time (EDF demand test); {QUIET_NOTE}'
    for t in range(6):
        watch.observe('nav', A, quiet, now_ns=t * S)
        assert watch.due({'nav': A}, now_ns=t * S) == []
    missing = 'frames due within 6 ms need 6.1 ms of device time (EDF demand test); at risk: served after the others'
    watch.observe('nav', A, missing, now_ns=6 * S)
    watch.observe('nav', A, quiet, now_ns=int(6.5 * S))        # a quiet re-check in between starts the count anew
    watch.observe('nav', A, missing, now_ns=7 * S)
    assert watch.due({'nav': A}, now_ns=int(7.5 * S)) == []
    watch.observe('nav', A, missing, now_ns=8 * S)
    assert watch.due({'nav': A}, now_ns=8 * S) == [('nav', A, missing, 1.0)]


def test_only_a_flag_from_the_node_serving_the_app_counts():
    watch = OverloadWatch(grace_s=1.0, cooldown_s=0.0)
    watch.observe('nav', A, 'x', now_ns=0)
    assert watch.due({'nav': B}, now_ns=5 * S) == []          # it has moved to B since
    assert watch.due({}, now_ns=5 * S) == []                  # busy, moving or gone
    watch.observe('nav', B, 'y', now_ns=5 * S)                # a flag from another node starts afresh
    assert watch.due({'nav': B}, now_ns=int(5.5 * S)) == []
    assert watch.due({'nav': B}, now_ns=6 * S) == [('nav', B, 'y', 1.0)]
    watch.forget('nav')
    assert watch.due({'nav': B}, now_ns=60 * S) == []


def test_due_apps_come_oldest_flag_first():
    watch = OverloadWatch(grace_s=1.0, cooldown_s=0.0)
    watch.observe('late', A, 'x', now_ns=2 * S)
    watch.observe('early', A, 'x', now_ns=0)
    assert [d[0] for d in watch.due({'late': A, 'early': A}, now_ns=4 * S)] == ['early', 'late']


def test_bad_watch_settings_are_refused():
    with pytest.raises(ValueError, match='-1'):
        OverloadWatch(grace_s=-1.0, cooldown_s=0.0)


# --- where to ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('same_camera, load_hz, counts, expected', [
    (set(), {}, {}, [A, B, C]),                                  # idle: in the nodes' order
    (set(), {A: 30.0, B: 10.0}, {}, [C, B, A]),                   # by load
    (set(), {A: 10.0, B: 10.0, C: 10.0}, {A: 2, B: 1}, [C, B, A]),  # then by app count
    ({C}, {C: 90.0}, {}, [C, A, B]),                             # its camera's node first
])
def test_rank_candidates(same_camera, load_hz, counts, expected):
    assert rank_candidates([A, B, C], same_camera=same_camera, load_hz=load_hz, app_counts=counts) == expected


@pytest.mark.parametrize('ranked, now, old_alive, expected', [
    ([B, A, C], 0, True, ([B, C], False)),     # before the deadline: every other node, best first
    ([A], 0, True, ([A], True)),               # no other node: back to the old one at once
    ([B, A], 5, True, ([A], True)),            # past the deadline: the old node
    ([B], 5, False, ([], True)),               # ... unless it is dead: any node, as after a failure
])
def test_move_targets(ranked, now, old_alive, expected):
    assert move_targets(ranked, old=A, old_alive=old_alive, now_ns=now * S, deadline_ns=5 * S) == expected


# --- the node, with scripted calls ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def context():
    import rclpy
    ros_helpers.use_ros_env(ros_helpers.unique_domain_id())
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


class Script:
    """Stands in for ``PlacerNode._call``: answers by (node prefix, service) from queues of answers."""

    def __init__(self, placer: PlacerNode):
        self.placer = placer
        self.calls: list[tuple[str, str, str]] = []    # (node, 'set_bounds' | 'remove_app', app)
        self.accept: dict[str, bool] = {}               # node -> accepts set_bounds
        self.would_fit: dict[str, float] = {}           # node -> the tightest latency bound it says would fit
        self.on_call = None                             # run before answering (e.g. a client's removal)

    async def __call__(self, client, request):
        node, service = next((p, s) for p, v in self.placer.nodes.items() for s in ('set_bounds', 'remove_app')
                             if getattr(v, s) is client)
        self.calls.append((node, service, request.app_id))
        if self.on_call is not None:
            self.on_call(node, service)
        if service == 'remove_app':
            return RemoveApp.Response(removed=True, message='removed')
        ok = self.accept.get(node, False)
        return SetBounds.Response(accepted=ok, token=f'tok-{node}' if ok else '',
                                  message='' if ok else f'{node} is full',
                                  would_fit_max_latency_ms=0.0 if ok else self.would_fit.get(node, 0.0))


def run(coro):
    """Run a coroutine whose awaits never suspend (the scripted calls answer at once)."""
    return asyncio.run(coro)


@pytest.fixture
def placer(context, monkeypatch):
    from rclpy.parameter import Parameter
    node = PlacerNode(context=context, parameter_overrides=[
        Parameter('nodes', Parameter.Type.STRING_ARRAY, ['/a', '/b', '/c']),
        Parameter('overload_grace_s', Parameter.Type.DOUBLE, 1.0),
        Parameter('move_timeout_s', Parameter.Type.DOUBLE, 2.0),
        Parameter('move_cooldown_s', Parameter.Type.DOUBLE, 30.0)])
    for view in node.nodes.values():
        view.alive = True
    script = Script(node)
    monkeypatch.setattr(node, '_call', script)
    node.apps['nav'] = Placed({'app_id': 'nav', 'image_topic': '/cam', 'max_latency_ms': 30.0, 'min_accuracy': 0.0,
                               'max_energy_mj': 0.0, 'objective': 0, 'result_topic': '/delen_placer/nav/result',
                               'late_policy': 0}, owner='h', node=A, node_token='tok-old')
    yield types.SimpleNamespace(node=node, script=script, placed=node.apps['nav'])
    node.destroy_node()


def flag(p, *, seconds: float, node: str = A, reason: str = 'device 97% busy'):
    """``nav`` flagged in every status of ``node`` for ``seconds``, statuses 0.2 s apart, ending now."""
    import time
    now = time.monotonic_ns()
    p.node.overload.forget('nav')
    for i in range(int(seconds / 0.2) + 1):
        p.node.overload.observe('nav', node, reason, now_ns=now - int((seconds - 0.2 * i) * S))
    return now


def test_a_sustained_flag_moves_the_app_to_the_least_loaded_other_node(placer):
    p = placer
    p.node.nodes[B].rates_hz['x'] = 60.0            # B busier than C
    p.script.accept = {B: True, C: True}
    p.node._start_moves(flag(p, seconds=0.5))
    assert p.placed.move is None and p.placed.node == A   # not sustained yet
    p.node._start_moves(flag(p, seconds=1.2))
    assert p.placed.node is None and p.placed.move.from_node == A and p.placed.move.from_token == 'tok-old'
    run(p.node._move_step('nav', p.placed))
    # the old node lets it go first (its result topic), then the best other node takes it
    assert p.script.calls == [(A, 'remove_app', 'nav'), (C, 'set_bounds', 'nav')]
    assert p.placed.node == C and p.placed.node_token == f'tok-{C}' and p.placed.move is None
    assert [m[:3] for m in p.node.moves] == [('nav', A, C)]
    # cooling down: flagged on C at once, it stays there
    p.node._start_moves(flag(p, seconds=5.0, node=C))
    assert p.placed.node == C and p.placed.move is None


def test_no_move_while_the_node_is_dead_or_a_dead_nodes_apps_wait(placer):
    p = placer
    now = flag(p, seconds=2.0)
    p.node.nodes[A].alive = False
    p.node._start_moves(now)
    assert p.placed.move is None
    p.node.nodes[A].alive = True
    p.node.apps['orphan'] = Placed(dict(p.placed.request, app_id='orphan'), owner='h', node=None)
    p.node._start_moves(now)
    assert p.placed.move is None
    del p.node.apps['orphan']
    for prefix in (B, C):
        p.node.nodes[prefix].alive = False
    p.node._start_moves(now)                       # nowhere to go
    assert p.placed.move is None
    p.node.nodes[B].alive = True
    p.node._start_moves(now)
    assert p.placed.move is not None


def test_refused_everywhere_it_goes_back_to_the_old_node_after_the_timeout(placer):
    p = placer
    p.script.accept = {A: True}                     # only the old node takes it (again)
    p.node._start_moves(flag(p, seconds=1.2))
    run(p.node._move_step('nav', p.placed))        # removed from A; B and C refuse
    assert p.script.calls == [(A, 'remove_app', 'nav'), (B, 'set_bounds', 'nav'), (C, 'set_bounds', 'nav')]
    assert p.placed.node is None and p.placed.move.removed
    run(p.node._move_step('nav', p.placed))        # retried (every check_period_s) until the deadline
    assert p.script.calls[3:] == [(B, 'set_bounds', 'nav'), (C, 'set_bounds', 'nav')]
    p.placed.move.deadline_ns = 0                  # the move's time is up
    run(p.node._move_step('nav', p.placed))
    assert p.script.calls[5:] == [(A, 'set_bounds', 'nav')]
    assert p.placed.node == A and p.placed.move is None and p.placed.node_token == f'tok-{A}'
    assert p.node.moves[-1][:3] == ('nav', A, '')
    p.node._start_moves(flag(p, seconds=5.0))      # cooling down: not tried again
    assert p.placed.move is None


def test_the_old_node_refusing_it_back_leaves_it_to_any_live_node(placer):
    p = placer
    p.node._start_moves(flag(p, seconds=1.2))
    p.placed.move.deadline_ns = 0
    run(p.node._move_step('nav', p.placed))
    assert p.script.calls == [(A, 'remove_app', 'nav'), (A, 'set_bounds', 'nav')]
    assert p.placed.node is None and p.placed.move is None and p.placed.request['_from'] is None
    p.script.accept = {B: True}                    # the re-placement after failures takes over
    run(p.node._replace('nav', p.placed))
    assert p.placed.node == B and 'nav' in p.node.apps


def test_a_removal_before_the_old_node_let_it_go_removes_it_there(placer):
    p = placer
    p.node._start_moves(flag(p, seconds=1.2))
    answer = run(p.node._on_remove_app(RemoveApp.Request(app_id='nav', token=''), RemoveApp.Response()))
    assert not answer.removed   # the token is checked first
    p.node.allow_takeover = True
    answer = run(p.node._on_remove_app(RemoveApp.Request(app_id='nav'), RemoveApp.Response()))
    assert answer.removed and p.script.calls == [(A, 'remove_app', 'nav')]
    run(p.node._move_step('nav', p.placed))        # the move's step finds it gone and does nothing
    assert p.script.calls == [(A, 'remove_app', 'nav')]


def test_a_removal_mid_move_undoes_a_late_acceptance(placer):
    p = placer
    p.script.accept = {B: True}
    p.node.allow_takeover = True
    p.node._start_moves(flag(p, seconds=1.2))

    def client_removes(node, service):
        if service == 'set_bounds':
            p.node.apps.pop('nav', None)
    p.script.on_call = client_removes
    run(p.node._move_step('nav', p.placed))
    assert p.script.calls == [(A, 'remove_app', 'nav'), (B, 'set_bounds', 'nav'), (B, 'remove_app', 'nav')]


def test_an_update_mid_move_is_refused(placer):
    p = placer
    p.node.allow_takeover = True
    p.node._start_moves(flag(p, seconds=1.2))
    answer = run(p.node._on_set_bounds(SetBounds.Request(app_id='nav', image_topic='/cam', max_latency_ms=40.0),
                                       SetBounds.Response()))
    assert not answer.accepted and 'being moved' in answer.message


def test_refused_by_every_node_it_says_the_tightest_bound_one_of_them_would_take(placer):
    p = placer
    p.script.would_fit = {A: 40.0, B: 35.0}                  # C would take no latency bound now
    answer = run(p.node._on_set_bounds(SetBounds.Request(app_id='arm', image_topic='/arm', max_latency_ms=20.0),
                                       SetBounds.Response()))
    assert not answer.accepted and 'is full' in answer.message
    assert answer.would_fit_max_latency_ms == 35.0


# --- the fleet launch file passes overload_grace_s through ----------------------------------------------------
def test_the_fleet_launch_passes_overload_grace_s(monkeypatch):
    import test_fleet_launch
    fleet = test_fleet_launch.fleet.__wrapped__(monkeypatch)
    _, placer = test_fleet_launch._build(fleet)
    assert placer.kwargs['parameters'][0]['overload_grace_s'] == 2.0
    _, placer = test_fleet_launch._build(fleet, overload_grace_s='0')
    assert placer.kwargs['parameters'][0]['overload_grace_s'] == 0.0
    with pytest.raises(ValueError, match="overload_grace_s must be 0 or more, got '-1'"):
        test_fleet_launch._build(fleet, overload_grace_s='-1')


def test_an_app_missing_alone_its_node_will_not_demote_is_moved():
    """OWN_MISSES_NOTE (only the apps at risk missed: the node serves them with the others rather than
    last, session 43) makes the app due: another node may serve it within its bounds."""
    from delen_ros.core.app_ledger import OWN_MISSES_NOTE
    watch = OverloadWatch(grace_s=1.0, cooldown_s=0.0)
    reason = f'its end-to-end deadline leaves 0.5 ms of device time; {OWN_MISSES_NOTE}'
    watch.observe('nav', A, reason, now_ns=0)
    watch.observe('nav', A, reason, now_ns=S)
    assert watch.due({'nav': A}, now_ns=S) == [('nav', A, reason, 1.0)]
