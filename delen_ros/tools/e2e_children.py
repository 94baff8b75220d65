"""The processes ``delen_e2e_bench`` starts beside the node, each its own process on loopback DDS:

* **publishers** (``publish``): a few cameras each, ``sensor_msgs/Image`` at a fixed rate from a pool of
  ready messages (labelled frames carry their class in ``frame_id``), phases spread over the period;
  every stamp is recorded, with how late each publication was against its schedule;
* **the recorder** (``record``): every result with its receive time, the node's ``~/status`` and
  ``/diagnostics``, and the ``--node-param`` names read back from the node;
* **the registrar** (``register``): asks a ``SetBounds`` service for each app in turn and writes the answers.

Each writes its findings as JSON for the bench (:mod:`delen_ros.tools.e2e_bench`), which starts them as
``python -m delen_ros.tools.e2e_children publish|record|register ...``. Names shared with the bench
(topics, app ids, result prefixes, the recorder's fields) are defined here.
"""
from __future__ import annotations

import argparse
import heapq
import json
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from ..core.bounds import SRV_OBJECTIVES

__all__ = ['RESULT_PREFIX_NODE', 'RESULT_PREFIX_ECHO', 'STATUS_TOPIC', 'RESULT_FIELDS', 'camera_topic', 'camera_app',
           'write_json_whole', 'main']

RESULT_PREFIX_NODE = '/delen'
RESULT_PREFIX_ECHO = '/e2e_echo'
STATUS_TOPIC = '/delen/status'


def camera_topic(i: int) -> str:
    return f'/e2e/cam{i:02d}/image_raw'


def camera_app(i: int) -> str:
    return f'cam{i:02d}'


#: objective name -> ``SetBounds.srv`` constant
_SRV_OBJECTIVE = {name: value for value, name in SRV_OBJECTIVES.items()}


def write_json_whole(path: pathlib.Path, data: Any) -> None:
    """Write ``data`` to ``path`` as JSON, whole, then renamed: a reader never sees half a file."""
    tmp = pathlib.Path(str(path) + '.tmp')
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _refused(registrar_out: str) -> set[str]:
    """Apps the placer refused (``--nodes``: the registrar's answers, once written): nobody will
    subscribe to their cameras or publish their results, so start-up does not wait for them."""
    try:
        answers = json.loads(pathlib.Path(registrar_out).read_text()) if registrar_out else {}
    except (OSError, ValueError):   # not written yet, or being written
        return set()
    return {app for app, answer in answers.items() if not answer.get('accepted')}


# --- the publisher process ---------------------------------------------------------------------------------------
def _load_pool(source: str, *, size: tuple[int, int], encoding: str, count: int, seed: int) -> list[tuple[Any, int | None]]:
    """Up to ``count`` distinct frames of ``source`` as ready ``sensor_msgs/Image`` messages, with labels.

    ``source``: a camera-player source (``delen_camera list``) or path; ``synthetic``: smooth random
    colour frames (no file needed).
    """
    import cv2

    from delen_ros.ros.camera_player import open_source, scale_frame
    from delen_ros.ros.conversions import array_to_image
    rng = np.random.default_rng(seed)
    items: list[tuple[np.ndarray, int | None]] = []
    if source != 'synthetic':
        src = open_source(source)
        if src.kind == 'video':
            for image, label in src:
                items.append((image, label))
                if len(items) >= count:
                    break
        else:
            order = rng.permutation(len(src.files))
            for i in order:
                item = src.frame(int(i))
                if item is not None:
                    items.append(item)
                if len(items) >= count:
                    break
    if not items:
        for _ in range(max(1, count)):
            small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            items.append((cv2.resize(small, size, interpolation=cv2.INTER_CUBIC), None))
    pool = []
    for image, label in items:
        pool.append((array_to_image(np.ascontiguousarray(scale_frame(image, size)), encoding=encoding), label))
    return pool


#: camera phases: spread over the period, all at once, or spread and drifting (each camera's rate off by up to
#: ±DRIFT, as free-running cameras are: every phase between two of them comes by within a few hundred frames)
PHASES = ('spread', 'sync', 'drift')
DRIFT = 0.002


def camera_period_ns(rate_hz: float, camera: int, total: int, phase: str) -> int:
    """Camera ``camera``'s frame period of ``total``: ``1 / rate_hz``, or under ``'drift'`` that scaled by
    ``1 + d`` with ``d`` spread evenly over [-DRIFT, +DRIFT] across the cameras.

    >>> [camera_period_ns(10.0, i, 3, 'drift') for i in range(3)]
    [99800000, 100000000, 100200000]
    """
    period = 1e9 / rate_hz
    if phase == 'drift' and total > 1:
        period *= 1 + DRIFT * (2 * camera / (total - 1) - 1)
    return int(round(period))


def _publish_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog='e2e_children publish')
    p.add_argument('--first', type=int, required=True, help='index of this process\'s first camera')
    p.add_argument('--count', type=int, required=True, help='cameras in this process')
    p.add_argument('--total', type=int, required=True, help='cameras in the run (for the phases)')
    p.add_argument('--rate', type=float, required=True)
    p.add_argument('--size', required=True)
    p.add_argument('--encoding', default='rgb8')
    p.add_argument('--source', default='synthetic')
    p.add_argument('--pool', type=int, default=30)
    p.add_argument('--qos', default='sensor_data')
    p.add_argument('--phase', default='spread', choices=PHASES)
    p.add_argument('--ready', required=True, help='file written once every topic is matched')
    p.add_argument('--registrar', default='', help="the registrar's answers (--nodes): refused apps are not waited for")
    p.add_argument('--early', action='store_true', help='publish from the start (cameras that run while apps '
                   'register), not only once every topic is matched or refused; --ready is written then all the same')
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)

    import rclpy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    from delen_ros.ros.camera_player import labelled_frame_id, parse_size
    from delen_ros.ros.qos import image_qos

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    width, height = parse_size(args.size)
    pool = _load_pool(args.source, size=(width, height), encoding=args.encoding, count=args.pool, seed=args.first)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f'e2e_camera_{args.first:02d}')
    cams = list(range(args.first, args.first + args.count))
    pubs = [node.create_publisher(Image, camera_topic(i), image_qos(args.qos)) for i in cams]
    def matched() -> bool:
        refused = _refused(args.registrar)
        return all(pub.get_subscription_count() > 0 or camera_app(i) in refused for i, pub in zip(cams, pubs))

    ready = False
    while not args.early and not stop.is_set() and not matched():
        time.sleep(0.02)
    if not args.early:
        pathlib.Path(args.ready).write_text(str(time.time_ns()))
        ready = True
    next_check_ns = 0
    period_ns = int(1e9 / args.rate)
    periods = [camera_period_ns(args.rate, i, args.total, args.phase) for i in cams]
    t0 = time.time_ns() + 20_000_000
    heap = [(t0 + (period_ns * i // args.total if args.phase != 'sync' else 0), j) for j, i in enumerate(cams)]
    heapq.heapify(heap)
    stamps: list[list[int]] = [[] for _ in cams]
    lags_us: list[int] = []
    skipped = [0] * len(cams)
    seq = [0] * len(cams)
    cpu0 = time.process_time()
    while not stop.is_set():
        due, j = heap[0]
        now = time.time_ns()
        if not ready and now >= next_check_ns:   # --early: publishing already, ready once matched or refused
            next_check_ns = now + 50_000_000
            if matched():
                pathlib.Path(args.ready).write_text(str(now))
                ready = True
        if due > now:
            time.sleep(min(0.05, (due - now) / 1e9))
            continue
        msg, label = pool[(seq[j] + 7 * j) % len(pool)]
        frame_id = camera_app(cams[j])
        msg.header.frame_id = frame_id if label is None else labelled_frame_id(frame_id, label)
        stamp = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        pubs[j].publish(msg)
        stamps[j].append(stamp)
        lags_us.append((stamp - due) // 1000)
        seq[j] += 1
        nxt = due + periods[j]
        late = time.time_ns() - nxt
        if late > periods[j]:  # a camera does not catch up in bursts: skip the missed ticks, count them
            missed = late // periods[j]
            skipped[j] += int(missed)
            nxt += missed * periods[j]
        heapq.heapreplace(heap, (nxt, j))
    lag = np.array(lags_us or [0]) / 1000.0
    pathlib.Path(args.out).write_text(json.dumps({
        'cameras': cams, 'stamps_ns': stamps, 'skipped_ticks': skipped,
        'publish_lag_p50_ms': float(np.percentile(lag, 50)), 'publish_lag_p99_ms': float(np.percentile(lag, 99)),
        'cpu_s': time.process_time() - cpu0, 'pool_frames': len(pool),
        'labelled': any(label is not None for _, label in pool)}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# --- the recorder process ------------------------------------------------------------------------------------
# rx_ns / src_ns / pub_seq: from DDS's message info (0 where the middleware gives none): when the recorder's
# DDS layer received the sample, when the node's writer wrote it, and the writer's sequence number.
RESULT_FIELDS = ('stamp_ns', 'cb_ns', 'rx_ns', 'exit_index', 'num_exits', 'class_id', 'label', 'latency_ms',
                  'stamp_latency_ms', 'queue_ms', 'compute_ms', 'energy_mj', 'energy_measured', 'bounds_met',
                  'src_ns', 'pub_seq')


def _record_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog='e2e_children record')
    p.add_argument('--topics', required=True, help='comma-separated result topics')
    p.add_argument('--status', default='', help='comma-separated ~/status topics of the node(s), or empty; each '
                   'entry records the index of the topic it came from (which node served the app)')
    p.add_argument('--param-nodes', default='', help='comma-separated node names to ask for --param-names')
    p.add_argument('--param-names', default='', help='comma-separated parameters to read back once ready')
    p.add_argument('--ready', required=True)
    p.add_argument('--registrar', default='', help="the registrar's answers (--nodes): refused apps are not waited for")
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)

    import functools

    import rclpy
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import parameter_value_to_python
    from rclpy.signals import SignalHandlerOptions

    from delen_ros.msg import AppStatus, InferenceResult
    from delen_ros.ros.camera_player import label_from_frame_id
    from delen_ros.ros.qos import RESULT_QOS, status_qos

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    topics = [t for t in args.topics.split(',') if t]
    rows: list[list[tuple]] = [[] for _ in topics]
    status: list[tuple] = []
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('delen_e2e_recorder')

    def on_result(i: int, msg: Any, info: Any) -> None:
        cb_ns = time.time_ns()
        label = label_from_frame_id(msg.header.frame_id)
        info = info if isinstance(info, dict) else {}
        rows[i].append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, cb_ns,
                        int(info.get('received_timestamp', 0)),
                        msg.exit_index, msg.num_exits, msg.class_id, -1 if label is None else label,
                        msg.latency_ms, msg.stamp_latency_ms, msg.queue_ms, msg.compute_ms, msg.energy_mj,
                        msg.energy_measured, msg.bounds_met, int(info.get('source_timestamp', 0)),
                        int(info.get('publication_sequence_number', 0))))

    def on_status(source: int, msg: Any) -> None:
        status.append((time.time_ns(), msg.app_id, int(msg.frames_in), int(msg.results_out), int(msg.dropped),
                       source, msg.unschedulable_reason, msg.warning))

    gc_pauses: list[tuple] = []

    choice_margins: list[tuple] = []
    outlet_lags: list[tuple] = []   # (t_ns, diagnostics entry, outlet_lag_p99_ms)
    # (t_ns, diagnostics entry, host_cpu_stolen_pct, host_cpu_stolen_worst_core_pct or None): the node's view of the host
    stolen_pcts: list[tuple] = []
    # counter -> [(t_ns, diagnostics entry, frames stopped early so far)]: the engine's stops_behind, stops_yielded
    early_stops: dict[str, list[tuple]] = {'stops_behind': [], 'stops_yielded': []}

    def on_diagnostics(msg: Any) -> None:   # the engine's entry: Python's collections; a camera's: its apps' margins
        for entry in msg.status:
            values = {kv.key: kv.value for kv in entry.values}
            if values.get('choice_margin_ms'):   # 'app=ms,...', the apps keeping a learnt margin now
                try:
                    margins = [float(part.rpartition('=')[2]) for part in values['choice_margin_ms'].split(',')]
                except ValueError:   # not the node's format: not the recorder's to fail over
                    margins = []
                if margins:
                    choice_margins.append((time.time_ns(), entry.name, len(margins), max(margins)))
            if values.get('outlet_lag_p99_ms'):   # the result outlet's write -> published, kept in the bounds
                try:
                    outlet_lags.append((time.time_ns(), entry.name, float(values['outlet_lag_p99_ms'])))
                except ValueError:
                    pass
            if values.get('host_cpu_stolen_pct'):
                try:
                    worst = values.get('host_cpu_stolen_worst_core_pct')
                    stolen_pcts.append((time.time_ns(), entry.name, float(values['host_cpu_stolen_pct']),
                                        float(worst) if worst else None))
                except ValueError:
                    pass
            for counter in ('stops_behind', 'stops_yielded'):   # frames stopped early: their app behind, others pressed
                if values.get(counter, '').isdigit():
                    early_stops[counter].append((time.time_ns(), entry.name, int(values[counter])))
            if 'gc_pause_max_ms' in values:
                gc_pauses.append((time.time_ns(), entry.name, int(values.get('gc_full_collections', 0)),
                                  float(values['gc_pause_max_ms']), float(values.get('gc_pause_total_ms', 0.0)),
                                  float(values.get('status_tick_ms', 'nan'))))

    subs = [node.create_subscription(InferenceResult, t, functools.partial(on_result, i), RESULT_QOS)
            for i, t in enumerate(topics)]
    status_topics = [t for t in args.status.split(',') if t]
    # one message per app per period on one topic: a depth below the apps' count loses some of each burst
    subs += [node.create_subscription(AppStatus, t, functools.partial(on_status, k), status_qos(256))
             for k, t in enumerate(status_topics)]
    if status_topics:
        from diagnostic_msgs.msg import DiagnosticArray
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    # The node's own values of the --node-param names, asked once its results are matched (it is up):
    # rclpy ignores an override of a parameter the node never declares, and that would go unseen. One
    # name per request: rclpy answers a request naming any undeclared parameter with no values at all.
    param_names = [n for n in args.param_names.split(',') if n]
    param_clients = {name: node.create_client(GetParameters, f'{name.rstrip("/")}/get_parameters')
                     for name in args.param_nodes.split(',') if name and param_names}
    param_futures: dict[str, list[Any]] = {}
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    ready = False
    cpu0 = time.process_time()
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.05)
        refused = set() if ready else _refused(args.registrar)
        if not ready and all(s.get_publisher_count() > 0 or camera_app(i) in refused for i, s in enumerate(subs[:len(topics)])):
            pathlib.Path(args.ready).write_text(str(time.time_ns()))
            ready = True
        if ready and len(param_futures) < len(param_clients):
            for name, client in param_clients.items():
                if name not in param_futures and client.service_is_ready():
                    param_futures[name] = [client.call_async(GetParameters.Request(names=[n])) for n in param_names]
    params_seen: dict[str, Any] = {}
    for name in param_clients:
        answers = [f.result() if f.done() else None for f in param_futures.get(name, [])]
        if len(answers) != len(param_names) or any(a is None for a in answers):
            params_seen[name] = None   # not answered while the recorder ran
            continue
        params_seen[name] = {}
        for n, answer in zip(param_names, answers):   # no value, or NOT_SET: the node does not declare it
            value = answer.values[0] if len(answer.values) == 1 else None
            params_seen[name][n] = (None if value is None or value.type == ParameterType.PARAMETER_NOT_SET
                                    else parameter_value_to_python(value))
    pathlib.Path(args.out).write_text(json.dumps({
        'topics': topics, 'fields': RESULT_FIELDS, 'rows': rows, 'status': status, 'status_topics': status_topics,
        'gc_pauses': gc_pauses, 'choice_margins': choice_margins, 'outlet_lags': outlet_lags,
        'stolen_pcts': stolen_pcts, **early_stops,
        'node_params_seen': params_seen,
        'cpu_s': time.process_time() - cpu0}, default=list))
    executor.shutdown(timeout_sec=1.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# --- the registrar process -------------------------------------------------------------------------------------
def _register_main(argv: Sequence[str]) -> int:
    """Register apps through a ``SetBounds`` service (the placer's, or one node's) once it and the services
    named in ``--wait`` are up, in the order of the ``--apps`` file, ``--gap-s`` apart (the apps already
    admitted meanwhile run, so each request is judged beside their measured load); write every answer,
    with when it came (system clock), to ``--out``."""
    p = argparse.ArgumentParser(prog='e2e_children register')
    p.add_argument('--apps', required=True, help='JSON list of {app_id, image_topic, max_latency_ms[, min_accuracy, objective]}')
    p.add_argument('--via', required=True, help='the SetBounds service to register through')
    p.add_argument('--wait', default='', help='comma-separated services that must be up too (e.g. every node\'s)')
    p.add_argument('--gap-s', type=float, default=0.0, help='seconds between one answer and the next request')
    p.add_argument('--out', required=True)
    p.add_argument('--timeout', type=float, default=90.0)
    a = p.parse_args(argv)
    import rclpy

    from delen_ros.srv import SetBounds
    rclpy.init()
    node = rclpy.create_node('e2e_registrar')
    deadline = time.monotonic() + a.timeout
    for name in [*[w for w in a.wait.split(',') if w and w != a.via], a.via]:
        client = node.create_client(SetBounds, name)
        if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
            print(f'{name} not up within {a.timeout:g} s', file=sys.stderr)
            return 1
    answers = {}
    for k, app in enumerate(json.loads(pathlib.Path(a.apps).read_text())):
        if k and a.gap_s > 0:
            time.sleep(a.gap_s)
        request = SetBounds.Request(app_id=app['app_id'], image_topic=app['image_topic'],
                                    max_latency_ms=float(app['max_latency_ms']),
                                    min_accuracy=float(app.get('min_accuracy', 0.0)),
                                    objective=_SRV_OBJECTIVE[app.get('objective', 'default')],
                                    result_topic=f'{RESULT_PREFIX_NODE}/{app["app_id"]}/result')
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=30.0)
        answer = future.result()
        answers[app['app_id']] = {'accepted': bool(answer and answer.accepted),
                                  'message': answer.message if answer else 'no answer', 't_ns': time.time_ns(),
                                  'max_latency_ms': float(app['max_latency_ms'])}
        print(f'{app["app_id"]}: {answers[app["app_id"]]}', flush=True)
    write_json_whole(pathlib.Path(a.out), answers)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parts = {'publish': _publish_main, 'record': _record_main, 'register': _register_main}
    if not argv or argv[0] not in parts:
        print(f'usage: python -m delen_ros.tools.e2e_children {{{"|".join(parts)}}} ...', file=sys.stderr)
        return 2
    return parts[argv[0]](argv[1:])


if __name__ == '__main__':
    sys.exit(main())
