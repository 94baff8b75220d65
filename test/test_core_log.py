"""The ROS-free core's ``logging`` lines in the node's ROS log (delen_ros/ros/core_log.py): a unit test with a
stand-in logger, and the real node in its own process, whose log must carry a core info line with its name."""
from __future__ import annotations

import logging
import pathlib

import pytest

from delen_ros.ros import core_log


class _Logger:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, text):
        self.lines.append(('info', text))

    def warning(self, text):
        self.lines.append(('warning', text))

    def error(self, text):
        self.lines.append(('error', text))


def test_core_records_reach_the_ros_logger_at_their_severity_until_detached():
    ros = _Logger()
    handler = core_log.attach(ros)
    log = logging.getLogger('delen_ros.core.some_module')
    try:
        log.info('settled after %.1f s', 2.04)
        log.warning('a warning')
        try:
            raise ValueError('boom')
        except ValueError:
            log.exception('it failed')
        logging.getLogger('elsewhere').warning('not the core')
    finally:
        core_log.detach(handler)
    log.info('after detach')
    assert [level for level, _ in ros.lines] == ['info', 'warning', 'error']
    assert ros.lines[0][1] == 'settled after 2.0 s'
    assert 'it failed' in ros.lines[2][1] and 'ValueError: boom' in ros.lines[2][1]   # the traceback follows
    core_log.detach(handler)   # idempotent


def test_a_failing_ros_logger_does_not_raise_into_the_core(monkeypatch):
    class Broken(_Logger):
        def info(self, text):
            raise RuntimeError('context shut down')

    monkeypatch.setattr(logging, 'raiseExceptions', False)   # handleError stays quiet, as in production
    handler = core_log.attach(Broken())
    try:
        logging.getLogger('delen_ros.core.x').info('dropped, not raised')
    finally:
        core_log.detach(handler)


def test_the_real_node_logs_the_cores_lines_as_its_own(tmp_path: pathlib.Path):
    pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')
    from ros_helpers import node_and_peer, wait_until
    with node_and_peer(tmp_path) as (node, _peer):
        line = wait_until(lambda: next((x for x in node.log().splitlines() if 'energy meter: ' in x), ''),
                          timeout=10.0, what="the core's energy-meter line")
    assert line.startswith('[INFO]') and '[delen]: energy meter: estimate' in line, line
