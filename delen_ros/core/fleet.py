"""The placer's decisions across delen nodes, without ROS: which apps to move off an overloaded
node (:class:`OverloadWatch`), where to try an app (:func:`rank_candidates`), and where a moving app
goes next (:func:`move_targets`). ``delen_ros.ros.placer`` acts on them; the caller passes the clock
(monotonic ns) in.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .app_ledger import QUIET_NOTE

__all__ = ['OverloadWatch', 'rank_candidates', 'move_targets']


@dataclasses.dataclass
class _Flag:
    node: str
    since_ns: int
    reason: str


class OverloadWatch:
    """Which apps to move off their node: flagged unschedulable in every status of the node serving
    them for at least ``grace_s``, and not moved (or tried) in the last ``cooldown_s``. Pure: the
    caller passes the clock (monotonic ns) in.

    A flag counts only while its node measures misses: a reason that ends in
    :data:`~delen_ros.core.app_ledger.QUIET_NOTE` (at risk by the node's prediction, but every app
    served met its bounds since its last re-check) clears it. A move pauses the app's results, and
    on a slow H200 host (session 32) the prediction flagged apps that met their bounds all along.

    >>> watch = OverloadWatch(grace_s=2.0, cooldown_s=30.0)
    >>> watch.observe('nav', '/a/delen', 'busy', now_ns=0)
    >>> watch.due({'nav': '/a/delen'}, now_ns=1_000_000_000)
    []
    >>> watch.due({'nav': '/a/delen'}, now_ns=2_000_000_000)
    [('nav', '/a/delen', 'busy', 2.0)]
    """

    def __init__(self, *, grace_s: float, cooldown_s: float):
        if not grace_s >= 0 or not cooldown_s >= 0:
            raise ValueError(f'grace_s and cooldown_s must be >= 0, got {grace_s!r}, {cooldown_s!r}')
        self.grace_ns = int(grace_s * 1e9)
        self.cooldown_ns = int(cooldown_s * 1e9)
        self._flags: dict[str, _Flag] = {}
        self._cool_until_ns: dict[str, int] = {}

    def observe(self, app_id: str, node: str, reason: str, *, now_ns: int) -> None:
        """A status of ``app_id`` from ``node`` (the node serving it): ``reason`` '' (or one that
        ends in ``QUIET_NOTE``) clears its flag."""
        flag = self._flags.get(app_id)
        if not reason or reason.endswith(QUIET_NOTE):
            self._flags.pop(app_id, None)
        elif flag is None or flag.node != node:
            self._flags[app_id] = _Flag(node, now_ns, reason)
        else:
            flag.reason = reason

    def forget(self, app_id: str) -> None:
        """Drop its flag (removed, updated by its client, or placed anew)."""
        self._flags.pop(app_id, None)

    def cooling(self, app_id: str, *, now_ns: int) -> bool:
        until = self._cool_until_ns.get(app_id)
        if until is not None and now_ns >= until:
            del self._cool_until_ns[app_id]
            return False
        return until is not None

    def attempted(self, app_id: str, *, now_ns: int) -> None:
        """A move of ``app_id`` starts: its flag goes, and it rests for ``cooldown_s``."""
        self._flags.pop(app_id, None)
        self._cool_until_ns[app_id] = now_ns + self.cooldown_ns

    def due(self, serving: dict[str, str], *, now_ns: int) -> list[tuple[str, str, str, float]]:
        """``(app, node, reason, flagged_s)`` of each app to move now, oldest flag first.

        :param serving: app -> the node serving it now, for the apps that may move (a flag from
            another node, e.g. a status of the old node after a move, counts for nothing).
        """
        out = []
        for app_id, flag in self._flags.items():
            if serving.get(app_id) != flag.node or now_ns - flag.since_ns < self.grace_ns:
                continue
            if self.cooling(app_id, now_ns=now_ns):
                continue
            out.append((app_id, flag.node, flag.reason, (now_ns - flag.since_ns) / 1e9))
        return sorted(out, key=lambda d: -d[3])


def rank_candidates(live: Sequence[str], *, same_camera: set[str], load_hz: dict[str, float],
                    app_counts: dict[str, int]) -> list[str]:
    """Nodes to try for an app, best first: those already serving its camera, then by load (Hz),
    then by app count, then in ``live``'s order.

    >>> rank_candidates(['/a', '/b', '/c'], same_camera=set(), load_hz={'/a': 30.0, '/b': 0.0, '/c': 0.0},
    ...                 app_counts={'/b': 1})
    ['/c', '/b', '/a']
    """
    order = {p: i for i, p in enumerate(live)}
    return sorted(live, key=lambda p: (p not in same_camera, load_hz.get(p, 0.0), app_counts.get(p, 0), order[p]))


def move_targets(ranked: Sequence[str], *, old: str, old_alive: bool, now_ns: int,
                 deadline_ns: int) -> tuple[list[str], bool]:
    """Where a moving app is tried next, and whether that is the fallback: the ranked live nodes
    other than ``old`` until ``deadline_ns`` (or until none is left), then ``old`` alone
    (nothing when it is dead: the app then waits for any live node, as after a failure).

    >>> move_targets(['/a', '/b'], old='/a', old_alive=True, now_ns=0, deadline_ns=1)
    (['/b'], False)
    >>> move_targets(['/a', '/b'], old='/a', old_alive=True, now_ns=1, deadline_ns=1)
    (['/a'], True)
    """
    others = [p for p in ranked if p != old]
    if now_ns < deadline_ns and others:
        return others, False
    return ([old] if old_alive else []), True
