"""The numbers of one ``delen_e2e_bench`` configuration, from what it gathered (:func:`analyze`).

Per app and in total: frames sent against results (a result matched to its frame by camera and
``header.stamp``; unanswered frames are misses), attainment at the result topic, latency stamp->receive,
exit mix, energy and accuracy (per app too, with its standard error), where a frame's time goes, the
node's own counters (``~/status``) and collections (``/diagnostics``), its CPU by class of thread and
memory, and the failover figures with ``--kill-node-at``. Pure: files in, dicts out.
"""
from __future__ import annotations

import json
import math
import pathlib
import statistics
from typing import Any, Sequence

import numpy as np

from ..core.app_ledger import DEMOTED_NOTE
from .e2e_children import STATUS_TOPIC, camera_app
from .e2e_failover import failover_section
from .thread_cpu import THREAD_CLASSES, cpu_by_thread_class

__all__ = ['analyze', 'over_time', 'engine_reference', 'accuracy_se', 'OVER_TIME_BIN_MS']


def _pct(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


OVER_TIME_BIN_MS = 100


def over_time(by_app: dict[str, dict[str, Any]], t0: int, t1: int, *, bin_ms: int = OVER_TIME_BIN_MS
              ) -> dict[str, Any]:
    """Every frame sent in the window, by when it was sent (``bin_ms`` bins from the window's start):
    how many were answered within their bound, late, or not at all, and the slowest answer. Misses in
    a few bins are stalls; misses spread over the window are a capacity limit.

    >>> by_app = {'cam00': {'sent_ns': [0, 100_000_000, 150_000_000], 'bound_ms': 33.0,
    ...                     'results': [(0, 10_000_000), (100_000_000, 160_000_000)]}}
    >>> bins = over_time(by_app, 0, 200_000_000)
    >>> bins['within'], bins['late'], bins['unanswered'], bins['max_ms']
    ([1, 0], [0, 1], [0, 1], [10.0, 60.0])
    """
    bin_ns = bin_ms * 1_000_000
    n = max(1, -(-(t1 - t0) // bin_ns))
    within, late, unanswered, slowest = [0] * n, [0] * n, [0] * n, [0.0] * n
    for app in by_app.values():
        answered = dict(app['results'])
        for stamp in app['sent_ns']:
            i = min(n - 1, max(0, (stamp - t0) // bin_ns))
            received = answered.get(stamp)
            if received is None:
                unanswered[i] += 1
                continue
            ms = (received - stamp) / 1e6
            slowest[i] = max(slowest[i], ms)
            if app['bound_ms'] <= 0 or ms <= app['bound_ms']:
                within[i] += 1
            else:
                late[i] += 1
    return {'bin_ms': bin_ms, 'within': within, 'late': late, 'unanswered': unanswered,
            'max_ms': [round(v, 2) for v in slowest]}


def _counted_in(samples: Sequence[Sequence[Any]], name: str, t0: int, t1: int) -> int:
    """How much the counter ``name`` reported in ``samples`` (``(t_ns, name, value)``) rose within ``t0..t1``:
    its last value in the window less its last before it (0 before the first report).

    >>> _counted_in([(1, 'n', 5), (3, 'n', 9), (5, 'n', 12), (9, 'n', 20)], 'n', 2, 6)
    7
    """
    before = [g[2] for g in samples if g[1] == name and g[0] <= t0]
    within = [g[2] for g in samples if g[1] == name and t0 < g[0] <= t1]
    return (within[-1] - (before[-1] if before else 0)) if within else 0


def accuracy_se(accuracy: float, n: int) -> float:
    """One standard error of an accuracy measured on ``n`` frames (binomial)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n)


def _served(rows: Sequence[Sequence[Any]], col: dict[str, int]) -> dict[str, Any]:
    """What one app was served: its exit mix and energy per result, and, over the results of labelled
    frames, their accuracy with its standard error (empty without results)."""
    if not rows:
        return {}
    exits = np.array([int(r[col['exit_index']]) for r in rows])
    num_exits = max(int(max(r[col['num_exits']] for r in rows)), int(exits.max()) + 1)
    out: dict[str, Any] = {'exit_mix': (np.bincount(exits, minlength=num_exits) / len(rows)).tolist(),
                           'energy_mj_per_result': float(np.mean([float(r[col['energy_mj']]) for r in rows]))}
    right = [int(r[col['class_id']]) == int(r[col['label']]) for r in rows if int(r[col['label']]) >= 0]
    if right:
        accuracy = float(np.mean(right))
        out.update(scored=len(right), accuracy=accuracy,
                   accuracy_se=accuracy_se(accuracy, len(right)))
    return out


def analyze(raw: dict[str, Any], *, duration_s: float) -> dict[str, Any]:
    """Per-app and total figures of one configuration from what :func:`run_config` gathered."""
    out: dict[str, Any] = {k: raw.get(k) for k in ('name', 'config', 'domain_id', 'bounds_ms', 'startup_s', 'wall_s',
                                                   'error', 'log_tails', 'exit_codes', 'target_alive_at_end', 'gpu')}
    for key in ('echo', 'node_params', 'node_param_overrides', 'node_configure_s', 'node_graphs_settled_s', 'refused',
                'refused_by', 'register_order', 'register_gap_s', 'register_answers', 'held_requests'):
        if key in raw:
            out[key] = raw[key]
    if 'recorder' not in raw:
        return out
    seen = raw['recorder'].get('node_params_seen')
    if seen:
        out['node_params_seen'] = seen
        unknown = sorted({name for values in seen.values() if values for name, v in values.items() if v is None})
        if unknown:
            out['node_params_unknown'] = unknown
    t0, t1 = raw['window_ns']
    span_s = (t1 - t0) / 1e9 or duration_s
    n = raw['config']['cameras']
    sent: dict[int, np.ndarray] = {}
    lags, skipped, pub_cpu = [], 0, 0.0
    for pub in raw['publishers']:
        for cam, stamps in zip(pub['cameras'], pub['stamps_ns']):
            s = np.asarray(stamps, dtype=np.int64)
            sent[cam] = s[(s >= t0) & (s < t1)]
        lags.append(pub['publish_lag_p99_ms'])
        skipped += sum(pub['skipped_ticks'])
        pub_cpu += pub['cpu_s']
    fields = raw['recorder']['fields']
    col = {f: i for i, f in enumerate(fields)}
    apps: dict[str, Any] = {}
    answered_by_app: dict[str, dict[str, Any]] = {}   # for the failover figures
    all_rows: list[tuple] = []
    totals = dict(sent=0, answered=0, within=0, node_met=0, unmatched=0, duplicates=0)
    for cam in range(n):
        bound = raw['bounds_ms'][cam]
        rows = raw['recorder']['rows'][cam] if cam < len(raw['recorder']['rows']) else []
        sent_set = set(int(s) for s in sent.get(cam, ()))
        seen: set[int] = set()
        matched = []
        unmatched = duplicates = 0
        for r in rows:
            stamp = int(r[col['stamp_ns']])
            if stamp in seen:
                duplicates += 1
                continue
            seen.add(stamp)
            if stamp in sent_set:
                matched.append(r)
            elif t0 <= stamp < t1:
                unmatched += 1
        e2e = np.array([(r[col['cb_ns']] - r[col['stamp_ns']]) / 1e6 for r in matched])
        within = int(np.sum(e2e <= bound)) if bound > 0 else len(matched)
        node_met = int(sum(bool(r[col['bounds_met']]) for r in matched))
        num_sent = len(sent_set)
        apps[camera_app(cam)] = {
            'bound_ms': bound, 'sent': num_sent, 'answered': len(matched),
            'sent_hz': num_sent / span_s, 'results_hz': len(matched) / span_s,
            'answered_share': _ratio(len(matched), num_sent), 'attainment': _ratio(within, num_sent),
            'node_bounds_met_share': _ratio(node_met, num_sent),
            'e2e_p50_ms': _pct(e2e, 50), 'e2e_p99_ms': _pct(e2e, 99),
            'unmatched': unmatched, 'duplicates': duplicates}
        accuracy_bound = (raw.get('min_accuracy') or [])[cam:cam + 1]
        if raw['config']['kind'] == 'node':   # the echo answers with no class, exit or energy
            apps[camera_app(cam)].update(_served(matched, col))
            # within the latency bound here and every bound by the node's judgement (accuracy, energy)
            met_all = sum(1 for r, ms in zip(matched, e2e) if (bound <= 0 or ms <= bound) and bool(r[col['bounds_met']]))
            apps[camera_app(cam)]['within_all_bounds'] = _ratio(met_all, num_sent)
            if accuracy_bound and accuracy_bound[0] > 0:
                apps[camera_app(cam)]['min_accuracy'] = accuracy_bound[0]
        for key, value in (('sent', num_sent), ('answered', len(matched)), ('within', within),
                           ('node_met', node_met), ('unmatched', unmatched), ('duplicates', duplicates)):
            totals[key] += value
        all_rows.extend(matched)
        answered_by_app[camera_app(cam)] = {'sent_ns': sorted(sent_set), 'bound_ms': bound,
                                      'results': [(int(r[col['stamp_ns']]), int(r[col['cb_ns']])) for r in matched]}
    # the node's own word on each app in the window: ~/status unschedulable_reason (its admission re-check)
    for entry in raw['recorder'].get('status') or []:
        if len(entry) > 6 and entry[1] in apps and t0 <= entry[0] < t1:
            a = apps[entry[1]]
            a['status_seen'] = a.get('status_seen', 0) + 1
            if entry[6]:
                a['node_flagged'] = a.get('node_flagged', 0) + 1
                a['node_flagged_reason'] = entry[6]
                if entry[6].endswith(DEMOTED_NOTE):   # its guarantee withdrawn (not 'at risk, not demoted')
                    a['node_demoted'] = a.get('node_demoted', 0) + 1
            if len(entry) > 7 and entry[7]:   # its camera's warning (e.g. publishers, but no frame arrives)
                a['node_warning'] = entry[7]
    for a in apps.values():
        if a.get('status_seen'):
            a['node_flagged_share'] = a.pop('node_flagged', 0) / a['status_seen']
            a['node_demoted_share'] = a.pop('node_demoted', 0) / a['status_seen']
    out['apps'] = apps
    refused = raw.get('refused') or {}
    out['apps_without_results_or_reason'] = sorted(
        app for app, a in apps.items() if a['sent'] and not a['answered'] and app not in refused
        and not a.get('node_flagged_reason') and not a.get('node_warning'))
    if raw.get('kill'):
        out['failover'] = failover_section(raw, answered_by_app, status_topic=STATUS_TOPIC)
    tot: dict[str, Any] = {
        'cameras': n, 'sent': totals['sent'], 'answered': totals['answered'],
        'sent_hz': totals['sent'] / span_s, 'results_hz': totals['answered'] / span_s,
        'answered_share': _ratio(totals['answered'], totals['sent']),
        'attainment': _ratio(totals['within'], totals['sent']),
        'node_bounds_met_share': _ratio(totals['node_met'], totals['sent']),
        'answered_share_min_app': min((a['answered_share'] for a in apps.values() if a['answered_share'] is not None),
                                      default=None),
        'attainment_min_app': min((a['attainment'] for a in apps.values() if a['attainment'] is not None), default=None),
        # the apps whose guarantee the node kept all along (never demoted in the window: issue 10's "admitted")
        'attainment_min_app_kept': min((a['attainment'] for a in apps.values() if a['attainment'] is not None
                                        and not a.get('node_demoted_share')), default=None),
        'apps_demoted': sorted(app for app, a in apps.items() if a.get('node_demoted_share')),
        'unmatched_results': totals['unmatched'], 'duplicate_results': totals['duplicates'],
        'window_s': span_s}
    if totals['sent']:
        tot['over_time'] = over_time(answered_by_app, t0, t1)
    if all_rows:
        a = np.array([[float(v) for v in r] for r in all_rows])
        c = {f: a[:, i] for f, i in col.items()}
        e2e = (c['cb_ns'] - c['stamp_ns']) / 1e6
        tot['e2e_p50_ms'], tot['e2e_p99_ms'], tot['e2e_max_ms'] = _pct(e2e, 50), _pct(e2e, 99), float(e2e.max())
        rx = c['rx_ns']
        if np.all(rx > 0):
            rx_lat = (rx - c['stamp_ns']) / 1e6
            tot['rx_p50_ms'], tot['rx_p99_ms'] = _pct(rx_lat, 50), _pct(rx_lat, 99)
        minus_compute = e2e - c['compute_ms']
        tot['e2e_minus_compute_p50_ms'], tot['e2e_minus_compute_p99_ms'] = _pct(minus_compute, 50), _pct(minus_compute, 99)
        if raw['config']['kind'] == 'node':
            num_exits = int(c['num_exits'].max()) or 1
            counts = np.bincount(c['exit_index'].astype(int), minlength=num_exits)
            tot['exit_mix'] = [float(x) / len(all_rows) for x in counts]
            tot['energy_mj_per_result'] = float(np.mean(c['energy_mj']))
            tot['energy_measured'] = bool(np.all(c['energy_measured'] > 0))
            labelled = c['label'] >= 0
            tot['scored'] = int(labelled.sum())
            tot['accuracy'] = float(np.mean(c['class_id'][labelled] == c['label'][labelled])) if labelled.any() else None
            # Where a frame's time goes (p50 of each part; they need not add up to the p50 of the whole).
            parts = {
                'stamp_to_arrival': c['stamp_latency_ms'] - c['latency_ms'],
                'queue': c['queue_ms'], 'compute': c['compute_ms'],
                'node_other': c['latency_ms'] - c['queue_ms'] - c['compute_ms'],
                'delivery': e2e - c['stamp_latency_ms']}
            tot['timeline_p50_ms'] = {k: _pct(v, 50) for k, v in parts.items()}
            tot['timeline_p99_ms'] = {k: _pct(v, 99) for k, v in parts.items()}
            src = c.get('src_ns')
            if src is not None and np.all(src > 0) and np.all(rx > 0):
                # the result's way out, split where DDS stamps it: the node's publish call -> its writer's
                # write -> the recorder's DDS reception -> its callback (one host, one clock)
                way_out = {'write': (src - c['stamp_ns']) / 1e6 - c['stamp_latency_ms'],
                           'transport': (rx - src) / 1e6, 'callback': (c['cb_ns'] - rx) / 1e6}
                tot['delivery_split_ms'] = {k: (_pct(v, 50), _pct(v, 99), float(v.max())) for k, v in way_out.items()}
            tot['node_latency_p50_ms'], tot['node_latency_p99_ms'] = _pct(c['latency_ms'], 50), _pct(c['latency_ms'], 99)
    # Node-side rates from ~/status (cumulative counters, one message per app per status period): from each
    # app's last status before the window to its last before the window's end, so within one period of it.
    status = raw['recorder'].get('status') or []
    if status:
        first: dict[tuple, tuple] = {}
        last: dict[tuple, tuple] = {}
        for entry in status:   # by (status topic, app): an app that moved to another node counts afresh there
            ts, app = entry[0], (entry[5] if len(entry) > 5 else 0, entry[1])
            if ts <= t0:
                first[app] = entry
            if ts <= t1:
                last[app] = entry
        rates, counted = [], set()
        for app, b in last.items():
            a = first.get(app)
            if a is not None and b[0] > a[0]:
                rates.append([(b[k] - a[k]) / ((b[0] - a[0]) / 1e9) for k in (2, 3, 4)])
                counted.add(app[1])
        if rates:
            fin, rout, drop = (sum(r[k] for r in rates) for k in range(3))
            # against what was sent to the same apps: an app whose status the recorder missed on either
            # side of the window is in neither (counting all apps' frames sent read as frames lost)
            sent_hz = sum(a['sent_hz'] for app, a in apps.items() if app in counted)
            tot['node_status'] = {
                'apps': len(rates), 'apps_sent_hz': sent_hz, 'frames_in_hz': fin, 'results_out_hz': rout,
                'dropped_hz': drop, 'received_share_of_sent': _ratio(fin, sent_hz),
                'dropped_share_of_received': _ratio(drop, fin),
                'note': 'rates of the ~/status counters (frames_in, results_out, dropped) between each app\'s last '
                        'status before the window and its last before the window\'s end, over the frames sent '
                        'to those apps'}
    # Python's collections in the node(s) over the window (each /diagnostics period's count, longest, sum)
    pauses = [g for g in raw['recorder'].get('gc_pauses') or [] if t0 < g[0] <= t1]
    if pauses:
        ticks = [g[5] for g in pauses if len(g) > 5 and math.isfinite(g[5])]
        tot['node_gc'] = {'full_collections': sum(g[2] for g in pauses), 'pause_max_ms': max(g[3] for g in pauses),
                          'pause_total_ms': sum(g[4] for g in pauses), 'periods': len(pauses),
                          'status_tick_max_ms': max(ticks) if ticks else None,
                          'note': 'from the nodes\' /diagnostics in the window: collections of generation 2, the '
                                  'longest collection of any generation, the time all collections took'}
    # the learnt choice margins (delen) the nodes' cameras reported in the window (/diagnostics)
    margins = [m for m in raw['recorder'].get('choice_margins') or [] if t0 < m[0] <= t1]
    if margins:
        tot['node_choice_margin'] = {'max_ms': max(m[3] for m in margins), 'reports': len(margins),
                                     'apps_max': max(m[2] for m in margins),
                                     'note': "from the nodes' /diagnostics in the window, per camera and period: the "
                                             'largest margin any app kept for its steps taken by choice, and how many apps kept one'}
    # the result outlet's publication lag the nodes kept in their bounds in the window (/diagnostics, p99 each period)
    lags = [g[2] for g in raw['recorder'].get('outlet_lags') or [] if t0 < g[0] <= t1]
    if lags:
        tot['node_outlet_lag_p99_ms'] = {'median': statistics.median(lags), 'max': max(lags), 'periods': len(lags),
                                         'note': "the result outlet's write -> published lag (p99 over the last "
                                                 'seconds) each node reported and kept in its latency bounds'}
    # the host's CPU theft as the nodes saw it in the window (/diagnostics, one share per round): the recorder's
    # own reading of the machine is host_cpu_steal_share; this one shows what a user of the node would see
    rounds = [g for g in raw['recorder'].get('stolen_pcts') or [] if t0 < g[0] <= t1]
    if rounds:
        stolen = [g[2] for g in rounds]
        worst = [g[3] for g in rounds if len(g) > 3 and g[3] is not None]
        tot['node_host_cpu_stolen_pct'] = {'median': statistics.median(stolen), 'max': max(stolen),
                                           'rounds': len(stolen),
                                           'worst_core_max': max(worst) if worst else None,
                                           'note': "host_cpu_stolen_pct in the nodes' /diagnostics over the window: "
                                                   'the share of the machine the hypervisor took, each round; '
                                                   'worst_core_max: the most any one core lost in a round'}
    # frames that stopped at the first exit meeting their bounds, in the window, their app behind or others'
    # waiting work pressed (/diagnostics: counters per node since it started; Engine.choice_steps_when_behind,
    # Engine.choice_yields)
    for counter in ('stops_behind', 'stops_yielded'):
        stops = raw['recorder'].get(counter) or []
        if stops:
            tot[f'node_{counter}'] = sum(_counted_in(stops, name, t0, t1) for name in {g[1] for g in stops})
    # resources of the node (or echo) over the window
    s0, s1 = raw.get('target_start'), raw.get('target_end')
    if s0 and s1:
        # CPU of the node and its processes (ingress receivers), so that work moved out of it still counts
        main_cpu = s1['cpu_s'] - s0['cpu_s']
        cpu = s1['tree_cpu_s'] - s0['tree_cpu_s'] if 'tree_cpu_s' in s0 and 'tree_cpu_s' in s1 else main_cpu
        res = {'cpu_share': cpu / span_s, 'cpu_ms_per_frame': _ratio(cpu * 1e3, totals['sent']),
               'cpu_ms_per_result': _ratio(cpu * 1e3, totals['answered']), 'threads': s1.get('threads'),
               'processes': s1.get('tree_procs', 1)}
        if res['processes'] > 1:
            res['cpu_ms_per_frame_main_process'] = _ratio(main_cpu * 1e3, totals['sent'])
            res['tree_pss_mb_end'] = s1.get('tree_pss_mb')
        for key in ('rss_mb', 'pss_mb', 'pss_anon_mb', 'pss_shmem_mb', 'shm_rss_mb', 'shm_pss_mb'):
            if key in s0 and key in s1:
                res[f'{key}_start'], res[f'{key}_end'] = s0[key], s1[key]
        if 'rss_mb' in s0:
            res['rss_growth_in_window'] = _ratio(s1['rss_mb'] - s0['rss_mb'], s0['rss_mb'])
        res.update(_cpu_by_thread(raw.get('target_threads_start'), raw.get('target_threads_end'), totals['sent']))
        tot['resources'] = res
    h0, h1 = raw.get('host_cpu_start'), raw.get('host_cpu_end')
    if h0 and h1 and h1[1] > h0[1]:
        tot['host_cpu_busy_share'] = (h1[0] - h0[0]) / (h1[1] - h0[1])
        if len(h0) > 2 and len(h1) > 2:   # recorded since session 39
            tot['host_cpu_steal_share'] = (h1[2] - h0[2]) / (h1[1] - h0[1])
    p0, p1 = raw.get('procs_start') or {}, raw.get('procs_end') or {}
    tot['cpu_share_by_process'] = {k: (p1[k]['cpu_s'] - p0[k]['cpu_s']) / span_s for k in p0
                                   if p0.get(k) and p1.get(k)}
    tot['publishers'] = {'processes': len(raw['publishers']), 'publish_lag_p99_ms_max': max(lags, default=None),
                         'skipped_ticks': skipped}
    out['total'] = tot
    return out


def _cpu_by_thread(start: dict[str, Any] | None, end: dict[str, Any] | None, sent: int) -> dict[str, Any]:
    """The node's CPU per frame sent by class of thread (:mod:`~delen_ros.tools.thread_cpu`; ``receivers``: the
    processes under it) and how many threads each class had at the end; nothing without both samples."""
    if not (start and end):
        return {}
    by_class = cpu_by_thread_class(start, end)
    return {'cpu_ms_per_frame_by_thread': {c: _ratio(by_class['cpu_s'][c] * 1e3, sent) for c in THREAD_CLASSES},
            'threads_by_class': by_class['count']}


def engine_reference(path: str | None) -> dict[str, Any] | None:
    """The engine-only figures of a ``delen_bench`` report (``bench.json``): the physical reference."""
    if not path:
        return None
    try:
        bench = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as exc:
        return {'path': str(path), 'error': str(exc)}
    ref: dict[str, Any] = {'path': str(path), 'model': bench.get('model'), 'device_name': bench.get('device_name'),
                           'runner_options': bench.get('runner_options'),
                           'half': bench.get('args', {}).get('half'), 'cuda_graphs': bench.get('args', {}).get('cuda_graphs')}
    over = bench.get('scenarios', {}).get('overload')
    if over:
        ref['overload_offered_hz'] = over.get('offered_hz')
        ref['batched_served_hz'] = over['batched']['served_hz']
        ref['batched_mean_batch'] = over['batched'].get('mean_batch')
        ref['per_frame_served_hz'] = over['per_frame']['served_hz']
        ref['policy'] = over.get('policy')
    steady = bench.get('scenarios', {}).get('steady', {})
    if 'always_final' in steady:
        ref['steady_always_final_hz'] = sum(a['throughput_hz'] for a in steady['always_final']['apps'].values())
    return ref
