"""Child processes for the tools that run the real node over DDS (demo, end-to-end benchmark).

Each child runs in its own session (a Ctrl-C reaches only the parent, which stops the children in
order), speaks DDS on loopback only with the shipped Fast DDS profile, and logs to a file of its own.
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from typing import Iterable, Sequence

from .thread_cpu import stat_fields

__all__ = ['package_root', 'config_file', 'ros_child_env', 'descendants', 'Children']


def package_root() -> pathlib.Path:
    """The folder holding the ``delen_ros`` package that this module was imported from."""
    return pathlib.Path(__file__).resolve().parents[2]


def config_file(name: str) -> pathlib.Path:
    """``config/<name>``: from the source tree if present, else the installed share folder."""
    source = package_root() / 'config' / name
    if source.is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory
        return pathlib.Path(get_package_share_directory('delen_ros')) / 'config' / name
    except Exception:  # noqa: BLE001 - fall back to the source-tree path (may not exist)
        return source


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (children, grandchildren, ...), from ``/proc/*/stat``: e.g. the
    node's ingress receivers, which run in sessions of their own."""
    parent: dict[int, int] = {}
    for entry in pathlib.Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(stat_fields((entry / 'stat').read_text())[1][1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [pid]
    while todo:
        children = [c for c, p in parent.items() if p == todo[-1]]
        todo.pop()
        found += children
        todo += children
    return found


def ros_child_env(domain_id: int) -> dict[str, str]:
    """This process's environment for a child on ``domain_id``: loopback discovery, the shipped Fast
    DDS profile, this package first on the path, unbuffered output."""
    env = dict(os.environ)
    env.update({
        'ROS_DOMAIN_ID': str(domain_id), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'FASTDDS_DEFAULT_PROFILES_FILE': str(config_file('fastdds_loopback.xml')),
        'RMW_IMPLEMENTATION': env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp'),
        'PYTHONPATH': os.pathsep.join([str(package_root()), *filter(None, [env.get('PYTHONPATH')])]),
        'PYTHONUNBUFFERED': '1', 'RCUTILS_LOGGING_BUFFERED_STREAM': '0',
    })
    return env


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f'signal {signum}')


def sigterm_as_interrupt():
    """From now on a SIGTERM (a kill, a CI job's timeout) raises ``KeyboardInterrupt`` in the main thread, so
    that a tool's cleanup, stopping its :class:`Children`, runs as on Ctrl-C: Python's default ends the process
    at once and the children run on, orphaned. Returns the previous handler, to put back with
    ``signal.signal(signal.SIGTERM, previous)``."""
    return signal.signal(signal.SIGTERM, _interrupt)


class Children:
    """Python child processes by name, each logging to ``<log_dir>/<name>.log``.

    :param cwd: the children's working folder (``None``: this process's).
    :param log_command: write the command line at the top of each log.
    """

    def __init__(self, log_dir: pathlib.Path, env: dict[str, str], *, cwd: pathlib.Path | None = None,
                 log_command: bool = False):
        self.log_dir, self.env, self.cwd, self.log_command = pathlib.Path(log_dir), env, cwd, log_command
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen:
        log = open(self.log_path(name), 'w')
        if self.log_command:
            log.write(' '.join(map(str, args)) + '\n')
            log.flush()
        proc = subprocess.Popen([sys.executable, *map(str, args)], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.cwd)
        log.close()
        self.procs[name] = proc
        return proc

    def dead(self, *, done: Iterable[str] = ()) -> list[str]:
        """Children that exited, except those in ``done`` that finished their job with status 0."""
        done = set(done)
        return [n for n, p in self.procs.items() if p.poll() is not None and not (n in done and p.returncode == 0)]

    def stop(self, names: Iterable[str] | None = None, *, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGINT, then SIGTERM, then SIGKILL; returns the exit codes."""
        names = list(self.procs) if names is None else [n for n in names if n in self.procs]
        for name in names:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGINT)
        codes: dict[str, int | None] = {}
        for name in names:
            p = self.procs[name]
            for sig, wait_s in ((None, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
                if sig is not None and p.poll() is None:
                    p.send_signal(sig)
                try:
                    p.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
            codes[name] = p.returncode
        return codes

    def log_path(self, name: str) -> pathlib.Path:
        """Where child ``name`` logs (its stdout and stderr)."""
        return self.log_dir / f'{name}.log'

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_path(name)
        return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:]) if path.exists() else ''
