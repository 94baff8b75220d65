"""QoS profiles of delen_ros topics, chosen on purpose rather than left to defaults.

Camera images: keep-last (the node subscribes with depth 4 and its engine keeps only the newest, counting the rest), best effort
(``sensor_data``, what camera drivers publish) or reliable, named by a string parameter. Results,
status and diagnostics: reliable, keep-last 10 (small messages that a consumer should not miss).
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ['IMAGE_QOS_NAMES', 'image_qos', 'RESULT_QOS', 'status_qos']

_RELIABILITY = {'sensor_data': ReliabilityPolicy.BEST_EFFORT, 'reliable': ReliabilityPolicy.RELIABLE}
IMAGE_QOS_NAMES: tuple[str, ...] = tuple(_RELIABILITY)

RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)


def image_qos(name: str, *, depth: int = 1) -> QoSProfile:
    """QoS for camera images: ``'sensor_data'`` (best effort) or ``'reliable'``, keep-last ``depth``.

    A best-effort subscriber also hears reliable publishers; a reliable one hears only reliable ones.
    """
    if name not in _RELIABILITY:
        raise ValueError(f'image QoS must be one of {sorted(_RELIABILITY)}, got {name!r}')
    if depth < 1:
        raise ValueError(f'depth must be >= 1, got {depth!r}')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=_RELIABILITY[name],
                      durability=DurabilityPolicy.VOLATILE)


def status_qos(max_apps: int) -> QoSProfile:
    """``~/status``: one message per app per period, all at once: keep-last ``max_apps`` so that a
    period's burst is not cut short (a subscriber wanting every app needs as deep a queue)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(10, max_apps), reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
