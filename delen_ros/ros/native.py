"""The node's helper programs in C on rcl (``src/``): where the build put them, and how to start them.

``delen_receiver`` takes camera frames (:mod:`.ingress`), ``delen_outlet`` publishes results
(:mod:`.outlet`). Both are optional: where one was not built, the node does its job in Python.
"""
from __future__ import annotations

import os
import sys

__all__ = ['native_program', 'native_env']

_LIBRARY_HINTS = ('rcl', 'rmw', 'rcutils', 'rosidl', 'fastdds', 'fastcdr', 'tracetools', 'tinyxml2', 'lttng',
                  'yaml', 'spdlog', 'fmt', 'ssl', 'crypto', '_msgs', 'interfaces')


def native_program(name: str) -> str | None:
    """The built program ``<prefix>/lib/delen_ros/<name>`` (the venv first, then the ament prefixes), or ``None``."""
    prefixes = [sys.prefix, *os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)]
    for prefix in filter(None, prefixes):
        path = os.path.join(prefix, 'lib', 'delen_ros', name)
        if os.access(path, os.X_OK):
            return path
    return None


def native_env() -> dict:
    """The environment for a C program: the folders of the ROS libraries this process loaded first
    on the library path (PyPI wheels keep their dependencies where only their own RPATHs look; on an
    apt install this changes nothing)."""
    folders: list[str] = []
    try:
        with open('/proc/self/maps') as maps:
            for line in maps:
                path = line.split()[-1] if line.count(' ') >= 5 else ''
                name = os.path.basename(path)
                if '.so' in name and any(h in name for h in _LIBRARY_HINTS):
                    folder = os.path.dirname(path)
                    if folder not in folders:
                        folders.append(folder)
    except OSError:
        pass
    env = dict(os.environ)
    env['LD_LIBRARY_PATH'] = os.pathsep.join(folders + ([env['LD_LIBRARY_PATH']] if env.get('LD_LIBRARY_PATH') else []))
    return env
