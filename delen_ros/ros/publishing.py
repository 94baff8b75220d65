"""The node's messages, built by pure functions from the engine's ledger (no node, no clock reads).

* :func:`result_message`: one :class:`~delen_ros.core.results.Result`, already delivered
  (:meth:`Engine.deliver <delen_ros.core.engine.Engine.deliver>` is the one definition of latency
  and ``bounds_met``), as ``delen_ros/msg/InferenceResult``; :func:`result_cdr`: the same message
  serialized, byte for byte what rclpy would send for it, which the node publishes (a fifth of the
  GIL time of building the Python message and having rclpy convert it, once per result).
* :func:`status_message`: one app's :class:`~delen_ros.core.results.AppStats` as ``AppStatus``;
  :func:`status_cdr`: the same serialized, which the node publishes.
* :func:`diagnostics_array`: per camera and for the engine, ``diagnostic_msgs/DiagnosticArray``, from
  :func:`diagnostic_rows`; :func:`diagnostics_cdr`: the same serialized, which the node publishes.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import struct
from typing import Any, Mapping, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from delen_ros.msg import AppStatus, InferenceResult

__all__ = ['CameraReport', 'result_message', 'result_cdr', 'status_message', 'status_cdr', 'diagnostic_rows',
           'diagnostics_array', 'diagnostics_cdr']


def result_message(result: Any, *, header: Any, image_topic: str, now_ns: int) -> InferenceResult:
    """``InferenceResult`` for a delivered result.

    :param header: the image's header (copied: stamp and frame_id travel with the result).
    :param now_ns: the ROS clock now, ns (``stamp_latency_ms`` = now - header.stamp).
    """
    stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
    return InferenceResult(
        header=header, app_id=result.app_id, image_topic=image_topic, class_id=int(result.class_id),
        label=str(result.label), confidence=float(result.confidence), exit_index=int(result.exit_index),
        num_exits=int(result.num_exits), expected_accuracy=float(result.expected_accuracy),
        latency_ms=float(result.latency_ms), stamp_latency_ms=(now_ns - stamp_ns) / 1e6,
        queue_ms=float(result.queue_ms), compute_ms=float(result.compute_ms), energy_mj=float(result.energy_mj),
        energy_measured=bool(result.energy_measured), energy_source=str(result.energy_source),
        bounds_met=bool(result.bounds_met))


# CDR (XCDR1, little endian) pieces of InferenceResult; alignment counts from after the 4-byte
# encapsulation header. Field order and types: msg/InferenceResult.msg.
_ENCAPSULATION = b'\x00\x01\x00\x00'
_STAMP = struct.Struct('<iI')                 # header.stamp: int32 sec, uint32 nanosec
_INT32 = struct.Struct('<i')                  # class_id
_EXIT = struct.Struct('<fBB2x6f?')           # confidence .. energy_mj (2x: expected_accuracy's alignment), energy_measured
_PAD = (b'', b'\x00\x00\x00', b'\x00\x00', b'\x00')   # by length % 4: up to the next 4-byte boundary


@functools.lru_cache(maxsize=4096)
def _cdr_string(text: str) -> bytes:
    """A CDR string at a 4-byte boundary: uint32 length (with its NUL), UTF-8 bytes, NUL. Topics,
    ids, labels and frame ids repeat: each is encoded once."""
    data = text.encode() + b'\x00'
    return struct.pack('<I', len(data)) + data


def result_cdr(result: Any, *, stamp_sec: int, stamp_nanosec: int, frame_id: str, image_topic: str,
               now_ns: int) -> bytes:
    """:func:`result_message` serialized (``rclpy.serialization.serialize_message`` gives the same
    bytes), for ``publish``; the header is given by its fields (the image's stamp and frame id).

    :param now_ns: the ROS clock now, ns (``stamp_latency_ms`` = now - stamp).
    :raises struct.error: a value outside its field's type (``exit_index`` above 255, ...).
    """
    out = bytearray(_ENCAPSULATION)
    out += _STAMP.pack(stamp_sec, stamp_nanosec)
    for text in (frame_id, result.app_id, image_topic):
        out += _PAD[len(out) % 4]
        out += _cdr_string(text)
    out += _PAD[len(out) % 4]
    out += _INT32.pack(int(result.class_id))
    out += _cdr_string(str(result.label))
    out += _PAD[len(out) % 4]
    stamp_ns = stamp_sec * 1_000_000_000 + stamp_nanosec
    out += _EXIT.pack(float(result.confidence), int(result.exit_index), int(result.num_exits),
                      float(result.expected_accuracy), float(result.latency_ms), (now_ns - stamp_ns) / 1e6,
                      float(result.queue_ms), float(result.compute_ms), float(result.energy_mj),
                      bool(result.energy_measured))
    out += _PAD[len(out) % 4]
    out += _cdr_string(str(result.energy_source))
    out.append(1 if result.bounds_met else 0)
    return bytes(out)


@dataclasses.dataclass(frozen=True)
class CameraReport:
    """What the node itself knows of one camera topic over a period (the engine knows the rest)."""

    topic: str
    app_ids: tuple[str, ...]
    frames: int               # this period
    frames_total: int
    malformed: int            # this period
    malformed_total: int
    missed_total: int         # frames sent (header.stamp gaps) that never arrived
    warning: str = ''


def status_message(config: Any, stats: Any, *, stamp: Any, camera: CameraReport | None = None,
                   state_error: str = '') -> AppStatus:
    """``AppStatus`` of one app from its config (``AppConfig``) and the engine's ledger (``AppStats``)."""
    return AppStatus(
        stamp=stamp, app_id=config.app_id, image_topic=config.image_topic, result_topic=config.result_topic,
        max_latency_ms=config.max_latency_ms, min_accuracy=config.min_accuracy, max_energy_mj=config.max_energy_mj,
        objective=config.objective.value, late_policy=config.late_policy.value,
        rate_in_hz=float(stats.rate_in_hz), rate_out_hz=float(stats.rate_out_hz),
        frames_in=int(stats.frames_in), results_out=int(stats.results_out),
        dropped=int(stats.dropped), dropped_overflow=int(stats.dropped_overflow),
        dropped_late=int(stats.dropped_late), malformed=int(stats.dropped_malformed),
        served_late=int(stats.served_late), frames_missed=camera.missed_total if camera is not None else 0,
        attainment=float(stats.attainment), frame_attainment=float(stats.frame_attainment),
        latency_p50_ms=float(stats.latency_p50_ms), latency_p99_ms=float(stats.latency_p99_ms),
        mean_energy_mj=float(stats.mean_energy_mj), mean_expected_accuracy=float(stats.mean_expected_accuracy),
        exit_counts=[int(c) for c in stats.exit_counts], unschedulable_reason=str(stats.unschedulable_reason),
        warning=camera.warning if camera is not None else '', state_error=state_error)


# CDR pieces of AppStatus (msg/AppStatus.msg), as for InferenceResult above.
_BOUNDS = struct.Struct('<3f')       # max_latency_ms, min_accuracy, max_energy_mj
_RATES = struct.Struct('<2f')        # rate_in_hz, rate_out_hz
_COUNTERS = struct.Struct('<8Q')     # frames_in .. frames_missed (8-byte aligned)
_FIGURES = struct.Struct('<6f')      # attainment .. mean_expected_accuracy
_UINT32 = struct.Struct('<I')


def _align8(out: bytearray) -> None:
    out += b'\x00' * ((-(len(out) - len(_ENCAPSULATION))) % 8)


def status_cdr(config: Any, stats: Any, *, stamp_sec: int, stamp_nanosec: int, camera: CameraReport | None = None,
               state_error: str = '') -> bytes:
    """:func:`status_message` serialized, for ``publish``: the node publishes one per app each status
    period, in one burst while the worker waits for the GIL (building the Python message and having
    rclpy convert it took ~0.2 ms each on a 2-core VM, about ten times this).

    :raises struct.error: a value outside its field's type (a negative counter, ...).
    """
    out = bytearray(_ENCAPSULATION)
    out += _STAMP.pack(stamp_sec, stamp_nanosec)
    for text in (config.app_id, config.image_topic, config.result_topic):
        out += _PAD[len(out) % 4]
        out += _cdr_string(text)
    out += _PAD[len(out) % 4]
    out += _BOUNDS.pack(config.max_latency_ms, config.min_accuracy, config.max_energy_mj)
    for text in (config.objective.value, config.late_policy.value):
        out += _PAD[len(out) % 4]
        out += _cdr_string(text)
    out += _PAD[len(out) % 4]
    out += _RATES.pack(float(stats.rate_in_hz), float(stats.rate_out_hz))
    _align8(out)
    out += _COUNTERS.pack(int(stats.frames_in), int(stats.results_out), int(stats.dropped),
                          int(stats.dropped_overflow), int(stats.dropped_late), int(stats.dropped_malformed),
                          int(stats.served_late), camera.missed_total if camera is not None else 0)
    out += _FIGURES.pack(float(stats.attainment), float(stats.frame_attainment), float(stats.latency_p50_ms),
                         float(stats.latency_p99_ms), float(stats.mean_energy_mj), float(stats.mean_expected_accuracy))
    counts = [int(c) for c in stats.exit_counts]
    out += _UINT32.pack(len(counts)) + struct.pack(f'<{len(counts)}I', *counts)
    for text in (str(stats.unschedulable_reason), camera.warning if camera is not None else '', state_error):
        out += _PAD[len(out) % 4]
        out += _cdr_string(text)
    return bytes(out)


def _fmt(value: float, spec: str = '.3f') -> str:
    return 'n/a' if value is None or math.isnan(value) else format(value, spec)


def diagnostic_rows(*, prefix: str, hardware_id: str, cameras: Sequence[CameraReport], stats: Mapping[str, Any],
                    period_s: float, engine: Mapping[str, Any]) -> list[tuple[int, str, str, str, list[tuple[str, str]]]]:
    """``/diagnostics``' statuses as ``(level, name, message, hardware_id, [(key, value), ...])``, the level
    as an int (``DiagnosticStatus``'s constants are one byte each): one per camera (its apps' period figures summed) and one for the engine.

    :param stats: app id -> the period's ``AppStats`` (apps missing from it are skipped).
    :param engine: key -> value of the engine's entry (``active`` decides its message).
    """
    rows = []
    for cam in cameras:
        apps = [stats[a] for a in cam.app_ids if a in stats]
        results = sum(s.window_results for s in apps)
        met = sum(0 if math.isnan(s.attainment) else round(s.attainment * s.window_results) for s in apps)
        dropped = sum(s.window_dropped for s in apps)
        energy_mj = sum(s.window_energy_mj for s in apps)
        reasons = sorted({s.unschedulable_reason for s in apps if s.unschedulable_reason})
        attainment = met / results if results else math.nan
        level, summary = DiagnosticStatus.OK, 'serving'
        if cam.warning:
            level, summary = DiagnosticStatus.WARN, cam.warning
        elif cam.malformed:
            level, summary = DiagnosticStatus.WARN, f'{cam.malformed} malformed image(s) this period'
        elif reasons:
            level, summary = DiagnosticStatus.WARN, reasons[0]
        elif results and attainment < 0.9:
            level, summary = DiagnosticStatus.WARN, f'bounds met for {attainment:.0%} of results'
        elif cam.frames == 0:
            level, summary = DiagnosticStatus.WARN, 'no frames this period'
        values = [
            ('apps', ','.join(cam.app_ids)), ('rate_in_hz', f'{cam.frames / period_s:.2f}'),
            ('rate_out_hz', f'{results / period_s:.2f}'), ('dropped', str(dropped)), ('attainment', _fmt(attainment)),
            ('energy_per_result_mj', _fmt(energy_mj / results if results else math.nan, '.4f')),
            ('power_w', f'{energy_mj / 1000.0 / period_s:.4f}'), ('conversion_errors', str(cam.malformed)),
            ('conversion_errors_total', str(cam.malformed_total)), ('frames_total', str(cam.frames_total)),
            ('frames_missed_total', str(cam.missed_total)), ('unschedulable', '; '.join(reasons)),
            # what its apps' steps taken by choice keep free now, past the policy's choice_headroom
            ('choice_margin_ms', ','.join(f'{s.app_id}={s.choice_margin_ms:.2f}' for s in apps if s.choice_margin_ms > 0)),
        ]
        rows.append((level[0], f'{prefix}: {cam.topic}', summary, hardware_id, values))
    level = DiagnosticStatus.OK if not engine.get('state_error') else DiagnosticStatus.WARN
    rows.append((level[0], f'{prefix}: engine', engine.get('state_error') or ('active' if engine.get('active') else 'inactive'),
                 hardware_id, [(str(k), str(v)) for k, v in engine.items()]))
    return rows


def diagnostics_array(*, stamp: Any, **rows: Any) -> DiagnosticArray:
    """:func:`diagnostic_rows` (same keyword arguments) as a ``DiagnosticArray`` stamped ``stamp``."""
    array = DiagnosticArray()
    array.header.stamp = stamp
    for level, name, message, hardware_id, values in diagnostic_rows(**rows):
        array.status.append(DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
                                             values=[KeyValue(key=k, value=v) for k, v in values]))
    return array


def diagnostics_cdr(*, stamp_sec: int, stamp_nanosec: int, **rows: Any) -> bytes:
    """:func:`diagnostics_array` serialized, for ``publish``. The status tick that builds it once a second
    held the executor thread, and the GIL the worker waits for, for 2.6 ms on the H200 host (session 25,
    ``benchmarks/h200/recheck_session25``). For 16 cameras on the 2-core VM, this costs 0.19 ms; the
    messages and rclpy's serialization of them cost 0.63-0.68 ms.
    """
    out = bytearray(_ENCAPSULATION)
    out += _STAMP.pack(stamp_sec, stamp_nanosec)
    out += _cdr_string('')   # header.frame_id
    statuses = diagnostic_rows(**rows)
    out += _PAD[len(out) % 4]
    out += _UINT32.pack(len(statuses))
    for level, name, message, hardware_id, values in statuses:
        out.append(level)
        for text in (name, message, hardware_id):
            out += _PAD[len(out) % 4]
            out += _cdr_string(text)
        out += _PAD[len(out) % 4]
        out += _UINT32.pack(len(values))
        for key, value in values:
            for text in (key, value):
                out += _PAD[len(out) % 4]
                out += _cdr_string(text)
    return bytes(out)
