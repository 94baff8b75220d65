"""The core's ``logging`` records in the node's ROS log.

The core is ROS-free and logs through Python's ``logging`` (``delen_ros.core.*``). With no handler, Python
drops its info lines and prints its warnings bare on stderr: no severity, no node name, no time, nothing in
``/rosout``. Lines such as "CUDA graphs settled after 2.1 s", "energy meter: nvml" or the admission re-check's
"every app fits" were never seen (session 39). While a node lives, :func:`attach` hands them to its logger.
"""
from __future__ import annotations

import logging

__all__ = ['CORE_LOGGER', 'RosLogHandler', 'attach', 'detach']

CORE_LOGGER = 'delen_ros.core'


class RosLogHandler(logging.Handler):
    """A ``logging`` handler writing to an rclpy logger at the record's severity (error, warning, else info)."""

    def __init__(self, ros_logger):
        super().__init__(level=logging.INFO)
        self.ros_logger = ros_logger
        self.setFormatter(logging.Formatter('%(message)s'))   # a traceback, where the record has one, follows

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            # One call site per severity: rclpy refuses a call site that changes its severity (see node.log_at).
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            else:
                self.ros_logger.info(text)
        except Exception:  # noqa: BLE001 -- logging never raises into the core (a context shut down, ...)
            self.handleError(record)


def attach(ros_logger, name: str = CORE_LOGGER) -> RosLogHandler:
    """Send ``name``'s records from info up to ``ros_logger`` until :func:`detach`; returns the handler."""
    handler = RosLogHandler(ros_logger)
    core = logging.getLogger(name)
    core.addHandler(handler)
    if core.level == logging.NOTSET or core.level > logging.INFO:   # else the root's WARNING drops info lines
        core.setLevel(logging.INFO)
    return handler


def detach(handler: RosLogHandler, name: str = CORE_LOGGER) -> None:
    """Stop :func:`attach`'s forwarding (idempotent)."""
    logging.getLogger(name).removeHandler(handler)
