"""The failover figures of ``delen_e2e_bench --nodes K --kill-node-at S`` (issue 12), from what a run
gathered: the placer's log (who was placed where, found dead, re-placed), the nodes' ``~/status``
(who served what before and after the kill), and every frame's send and result times. Pure: no
processes, no ROS; ``e2e_bench`` runs the configuration and calls :func:`failover_section`.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

__all__ = ['FAILOVER_DDS_PROFILE', 'FAILOVER_STATUS_PERIOD_S', 'FAILOVER_BIN_S', 'FAILOVER_PHASES',
           'parse_placer_log', 'recovery_s', 'longest_gap', 'failover_figures', 'serving_nodes', 'failover_section']

#: ``--kill-node-at``: every process's Fast DDS profile (a 1 s participant lease, as the placer test uses)
FAILOVER_DDS_PROFILE = 'fastdds_placement.xml'
#: ``--nodes``: the nodes' ``status_period_s``, well below the placer's liveness timeout (1 s by default)
FAILOVER_STATUS_PERIOD_S = 0.2
#: ``--kill-node-at``: the width of the results-per-second bins of the failover timeline
FAILOVER_BIN_S = 0.25


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


_PLACER_LINE = re.compile(r'^\[(\w+)\] \[(\d+)\.(\d+)\] \[[^\]]*\]: (.*)$')
_PLACED = re.compile(r'^(\S+) on \S+ placed on (\S+);')
_GONE = re.compile(r'^(\S+) is gone\b')
_RE_PLACED = re.compile(r'^re-placed (\S+) on (\S+) (\d+) ms after')
_REFUSED = re.compile(r'^(\S+) refused (\S+): (.*)$')


def parse_placer_log(text: str) -> dict[str, Any]:
    """What the placer's log says of placements (system-clock ns from its console lines): ``placed``
    (app -> node prefix, first placement), ``gone`` (node prefix -> when found dead), ``re_placed`` (app ->
    ``{node, t_ns, after_found_dead_ms}``), ``refusals`` (app -> count, the last message).

    >>> parse_placer_log('[ERROR] [1.5] [delen_placer]: /n0/delen is gone (status silent 1.02 s)')['gone']
    {'/n0/delen': 1500000000}
    """
    out: dict[str, Any] = {'placed': {}, 'gone': {}, 're_placed': {}, 'refusals': {}}
    for line in text.splitlines():
        m = _PLACER_LINE.match(line.strip())
        if not m:
            continue
        t_ns = int(m.group(2)) * 1_000_000_000 + int(m.group(3).ljust(9, '0')[:9])
        message = m.group(4)
        if (hit := _PLACED.match(message)):
            out['placed'].setdefault(hit.group(1), hit.group(2))
        elif (hit := _GONE.match(message)):
            out['gone'].setdefault(hit.group(1), t_ns)
        elif (hit := _RE_PLACED.match(message)):
            out['re_placed'][hit.group(1)] = {'node': hit.group(2), 't_ns': t_ns,
                                              'after_found_dead_ms': int(hit.group(3))}
        elif (hit := _REFUSED.match(message)):
            entry = out['refusals'].setdefault(hit.group(2), {'count': 0})
            entry['count'] += 1
            entry['last'] = f'{hit.group(1)}: {hit.group(3)}'
    return out


def recovery_s(kill_ns: int, results: Sequence[tuple[int, int]]) -> float | None:
    """Seconds from ``kill_ns`` to the first result received of a frame sent at or after it.

    :param results: ``(stamp_ns, received_ns)`` per result (the frame's ``header.stamp``, when the result
        reached the result topic's subscriber), system clock.
    :returns: ``None`` when no frame sent since the kill was answered.
    """
    after = [received for stamp, received in results if stamp >= kill_ns]
    return (min(after) - kill_ns) / 1e9 if after else None


def longest_gap(received_ns: Sequence[int], *, start_ns: int, end_ns: int) -> tuple[float, int]:
    """The longest time without a result within ``[start_ns, end_ns]``, in seconds, and when it began (ns).

    The span's edges count as ends of a gap: an app with no result at all has one gap, the whole span.
    """
    if end_ns <= start_ns:
        raise ValueError(f'empty span: start_ns {start_ns} >= end_ns {end_ns}')
    edges = np.array([start_ns, *sorted(t for t in received_ns if start_ns <= t <= end_ns), end_ns], dtype=np.int64)
    gaps = np.diff(edges)
    k = int(np.argmax(gaps))
    return float(gaps[k]) / 1e9, int(edges[k])


def _phase(sent_ns: np.ndarray, received: dict[int, int], bound_ms: float, lo_ns: int, hi_ns: int) -> dict[str, Any]:
    """Frames sent in ``[lo_ns, hi_ns)``, those answered, those answered within the bound, and the shares."""
    stamps = [int(s) for s in sent_ns if lo_ns <= s < hi_ns]
    latencies_ns = [received[s] - s for s in stamps if s in received]
    within = sum(1 for x in latencies_ns if bound_ms <= 0 or x <= bound_ms * 1e6)
    return _shares({'sent': len(stamps), 'answered': len(latencies_ns), 'within': within})


def _shares(counts: dict[str, Any]) -> dict[str, Any]:
    return dict(counts, answered_share=_ratio(counts['answered'], counts['sent']),
                attainment=_ratio(counts['within'], counts['sent']))


FAILOVER_PHASES = ('before', 'outage', 'after')


def failover_figures(*, kill_ns: int, window_ns: tuple[int, int], apps: dict[str, dict[str, Any]],
                     moved: Sequence[str], bin_s: float = FAILOVER_BIN_S) -> dict[str, Any]:
    """Recovery, gaps and attainment around a node's kill, per app and for the moved / untouched apps.

    :param kill_ns: when the node was killed (system clock, as the stamps).
    :param window_ns: the measured window; frames sent in it count.
    :param apps: app -> ``sent_ns`` (stamps of the frames sent in the window), ``results`` (``(stamp_ns,
        received_ns)``, one per answered frame), ``bound_ms`` (0: unbounded).
    :param moved: the apps the killed node served (the others are untouched).
    :returns: per app ``recovery_s`` (:func:`recovery_s`; ``None`` for an untouched app's as for a moved
        app never served again), ``max_gap_s`` and ``max_gap_at_s`` (:func:`longest_gap` over the window,
        from the kill), ``phases``; per group (``moved``, ``untouched``) the summed phases. Phases split
        the frames sent by their stamps: ``before`` the kill, ``outage`` (from the kill until the last moved
        app's recovery: ``recovered_s``; to the window's end if one never recovered), ``after``. Unanswered
        frames are misses, so a moved app's outage frames are mostly misses. ``timeline``: results/s per
        app in ``bin_s`` bins of receive time over the window, from ``start_s`` (relative to the kill), and
        ``attainment`` per group: the share of the frames sent in each bin (by stamp) answered within the
        bound (``None``: none sent).
    """
    t0, t1 = window_ns
    if not t0 <= kill_ns < t1:
        raise ValueError(f'kill_ns {kill_ns} is outside the window {t0}..{t1}')
    unknown = sorted(set(moved) - set(apps))
    if unknown:
        raise ValueError(f'moved apps {unknown} are not among the apps {sorted(apps)}')
    recoveries = {app: recovery_s(kill_ns, apps[app]['results']) for app in moved}
    if any(v is None for v in recoveries.values()):
        recovered_ns = t1
    else:
        recovered_ns = min(t1, kill_ns + int(max(recoveries.values(), default=0.0) * 1e9))
    edges = (t0, kill_ns, recovered_ns, t1)
    bins = np.arange(t0, t1 + 1, int(bin_s * 1e9), dtype=np.int64)
    per_app: dict[str, Any] = {}
    groups = {g: {p: {'sent': 0, 'answered': 0, 'within': 0} for p in FAILOVER_PHASES} for g in ('moved', 'untouched')}
    timeline: dict[str, list[float]] = {}
    by_bin = {g: np.zeros((2, len(bins) - 1), dtype=np.int64) for g in groups}   # frames sent, within bound
    for app, a in apps.items():
        sent_ns = np.asarray(a['sent_ns'], dtype=np.int64)
        received = {int(s): int(r) for s, r in a['results']}
        phases = {p: _phase(sent_ns, received, float(a['bound_ms']), edges[k], edges[k + 1])
                  for k, p in enumerate(FAILOVER_PHASES)}
        gap_s, gap_at_ns = longest_gap(list(received.values()), start_ns=t0, end_ns=t1)
        per_app[app] = {'moved': app in recoveries, 'recovery_s': recoveries.get(app), 'max_gap_s': gap_s,
                        'max_gap_at_s': (gap_at_ns - kill_ns) / 1e9, 'phases': phases}
        group = groups['moved' if app in recoveries else 'untouched']
        for p in FAILOVER_PHASES:
            for key in ('sent', 'answered', 'within'):
                group[p][key] += phases[p][key]
        counts, _ = np.histogram(np.fromiter(received.values(), dtype=np.int64, count=len(received)), bins=bins)
        timeline[app] = [float(c) / bin_s for c in counts]
        bound_ns = float(a['bound_ms']) * 1e6
        ok = [s for s in sent_ns if s in received and (bound_ns <= 0 or received[s] - s <= bound_ns)]
        grid = by_bin['moved' if app in recoveries else 'untouched']
        grid[0] += np.histogram(sent_ns, bins=bins)[0]
        grid[1] += np.histogram(np.asarray(ok, dtype=np.int64), bins=bins)[0]
    known = [v for v in recoveries.values() if v is not None]
    return {
        'kill_s_into_window': (kill_ns - t0) / 1e9, 'window_s': (t1 - t0) / 1e9,
        'moved_apps': sorted(recoveries), 'untouched_apps': sorted(set(apps) - set(recoveries)),
        'recovery_s_max': max(known) if known and len(known) == len(recoveries) else None,
        'recovered_all': all(v is not None for v in recoveries.values()),
        'recovered_s': (recovered_ns - kill_ns) / 1e9,
        'apps': per_app,
        'groups': {g: {p: _shares(c) for p, c in phases.items()} for g, phases in groups.items()},
        'timeline': {'bin_s': bin_s, 'start_s': (t0 - kill_ns) / 1e9, 'results_hz': timeline,
                     'attainment': {g: [_ratio(w, n) for n, w in zip(*grid)] for g, grid in by_bin.items()}}}


def serving_nodes(status: Sequence[Sequence[Any]], status_topics: Sequence[str], kill_ns: int, *,
                  status_topic: str = '/delen/status') -> dict[str, list]:
    """Which node served each app before and after ``kill_ns``, from ``~/status`` entries (receive time ns,
    app, ..., index of the status topic): app -> ``[before, after]``, each the namespace of the node whose
    last status before (after) the kill named the app, ``None`` when none did."""
    names = [t[:-len(status_topic)] or '/' if t.endswith(status_topic) else t for t in status_topics]
    out: dict[str, list] = {}
    for entry in sorted(status, key=lambda e: e[0]):
        if len(entry) < 6 or not 0 <= int(entry[5]) < len(names):
            continue
        where = out.setdefault(entry[1], [None, None])
        where[0 if entry[0] < kill_ns else 1] = names[int(entry[5])]
    return out


def failover_section(raw: dict[str, Any], apps: dict[str, dict[str, Any]], *, status_topic: str) -> dict[str, Any]:
    """:func:`failover_figures` of one configuration, with who served what (``~/status``, else the placer's
    log) and the placer's own timeline (found dead, re-placed), in seconds from the kill."""
    kill = raw['kill']
    kill_ns, killed = int(kill['t_ns']), kill['node']
    recorder = raw['recorder']
    nodes = serving_nodes(recorder.get('status') or [], recorder.get('status_topics') or [], kill_ns,
                          status_topic=status_topic)
    events = raw.get('placer_events') or {}
    placed = {app: prefix.rsplit('/', 1)[0] or '/' for app, prefix in (events.get('placed') or {}).items()}
    before = {app: (nodes.get(app) or [None])[0] or placed.get(app) for app in apps}
    moved = sorted(app for app in apps if before[app] == killed)
    rate = raw.get('rate_hz')   # bins of a whole number of frame periods: a steady camera gives a flat line
    bin_s = math.ceil(FAILOVER_BIN_S * rate - 1e-9) / rate if rate else FAILOVER_BIN_S
    out = failover_figures(kill_ns=kill_ns, window_ns=tuple(raw['window_ns']), apps=apps, moved=moved, bin_s=bin_s)
    re_placed = events.get('re_placed') or {}
    for app, a in out['apps'].items():
        a['node_before'] = before[app]
        a['node_after'] = (nodes.get(app) or [None, None])[1]
        if app in re_placed:
            a['re_placed_s'] = (re_placed[app]['t_ns'] - kill_ns) / 1e9
            a['re_placed_on'] = re_placed[app]['node']
            if a['recovery_s'] is not None:
                a['first_result_after_re_placed_s'] = a['recovery_s'] - a['re_placed_s']
        if app in (events.get('refusals') or {}):
            a['placer_refusals_logged'] = events['refusals'][app]
    gone = (events.get('gone') or {}).get(f'{killed}/delen')
    period = (raw.get('node_param_overrides') or {}).get('status_period_s',
                                                         (raw.get('node_params') or {}).get('status_period_s'))
    out.update(killed_node=killed, kill_signal=kill.get('signal'), placer_params=raw.get('placer_params') or {},
               dds_profile=FAILOVER_DDS_PROFILE, node_status_period_s=float(period) if period is not None else None,
               placer_found_dead_s=(gone - kill_ns) / 1e9 if gone else None,
               node_status_seen=bool(recorder.get('status')))
    return out
