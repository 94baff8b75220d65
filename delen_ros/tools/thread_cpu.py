"""Which threads of a process spend its CPU: per-thread user + system time from ``/proc``, grouped
into a few classes by the threads' OS names (issue 8, "node CPU per frame").

The node names its own threads (:func:`delen_ros.core.thread_names.name_os_thread`); Fast DDS names
its threads ``dds.*`` (``dds.ev.0``, ``dds.udp.<port>``, ``dds.shm.<port>``, ``dds.shm.wdog``,
``dds.asyn.*``, ``dds.tls.*``), the CUDA driver ``cuda*``. A thread inherits the name of the thread
that started it until it sets its own, so torch's intra-op threads count with the thread that made
them. Processes under the node (ingress receivers, C or Python) count as one class whatever their
threads. Linux only: elsewhere a sample is ``None``.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Iterable

__all__ = ['THREAD_CLASSES', 'stat_fields', 'stat_cpu_s', 'parse_stat', 'thread_class', 'sample_threads', 'cpu_by_thread_class']

_CLK_TCK = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100

#: the classes in report order; a thread falls in the first whose rule its name matches
THREAD_CLASSES = ('engine', 'ingress', 'energy', 'delen_other', 'main', 'dds', 'cuda', 'other',
                  'receivers', 'exited')

#: name prefixes of each class of threads (``main``, ``other``, ``receivers`` and ``exited`` are not names)
_PREFIXES = (
    ('engine', ('delen-engine',)),
    ('ingress', ('delen-ingress',)),
    ('energy', ('delen-energy', 'jetson-power', 'rapl-wrap-guard')),   # OS names keep 15 bytes
    ('delen_other', ('delen-',)),   # preprocessing pool, CUDA graph capture, placement, preloads
    ('dds', ('dds.',)),
    ('cuda', ('cuda',)),
)


def stat_fields(text: str) -> tuple[str, list[str]]:
    """``(comm, the fields after it)`` of a ``/proc/<pid>[/task/<tid>]/stat`` line: the name sits
    in parentheses and may itself hold spaces and parentheses, so the fields are counted from its
    last ``)`` (the state, field 3 of the line, comes first)."""
    close = text.rindex(')')
    return text[text.index('(') + 1:close], text[close + 2:].split()


def stat_cpu_s(fields: list[str]) -> float:
    """User + system CPU s from :func:`stat_fields`' fields: utime and stime, fields 14 and 15 of
    the line, the 12th and 13th after the name."""
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def parse_stat(text: str) -> tuple[str, float]:
    """``(comm, user + system CPU s)`` of a ``/proc/<pid>[/task/<tid>]/stat`` line.

    >>> parse_stat('42 (a (b) c) S 1 42 42 0 -1 4194560 10 0 0 0 150 50 0 0 20 0 3 0 9 0 0')
    ('a (b) c', 2.0)
    """
    comm, fields = stat_fields(text)
    return comm, stat_cpu_s(fields)


def thread_class(comm: str, *, is_main: bool) -> str:
    """The class of a thread of the node by its OS name; ``main``: the process's first thread,
    where the node spins rclpy's executor."""
    for name, prefixes in _PREFIXES:
        if comm.startswith(prefixes):
            return name
    return 'main' if is_main else 'other'


def _read_stat(path: pathlib.Path) -> tuple[str, float] | None:
    try:   # a name is any bytes: one cut inside a UTF-8 character must not lose the thread
        return parse_stat(path.read_bytes().decode('utf-8', 'replace'))
    except (OSError, ValueError, IndexError):   # gone meanwhile
        return None


def sample_threads(pid: int, children: Iterable[int] = ()) -> dict[str, Any] | None:
    """CPU s so far of process ``pid`` in all (``cpu_s``, threads that ended included), of each of
    its live threads (``threads``: ``{tid: [comm, cpu_s]}``) and of each process in ``children``
    (``children``: ``{pid: [comm, cpu_s]}``, all its threads); ``None`` if ``pid`` is gone."""
    process = _read_stat(pathlib.Path(f'/proc/{pid}/stat'))
    if process is None:
        return None
    threads: dict[str, list] = {}
    try:
        tasks = list(pathlib.Path(f'/proc/{pid}/task').iterdir())
    except OSError:
        return None
    for task in tasks:
        stat = _read_stat(task / 'stat')
        if stat is not None:
            threads[task.name] = list(stat)
    kids = {str(c): list(s) for c in children if (s := _read_stat(pathlib.Path(f'/proc/{c}/stat'))) is not None}
    return {'pid': pid, 'cpu_s': process[1], 'threads': threads, 'children': kids}


def _delta(start: dict[str, list], end: dict[str, list], key: str) -> float:
    """CPU s of thread (or process) ``key`` between the samples: all of it if it started since
    (or its id was reused: it has less than before)."""
    before, after = start.get(key, (None, 0.0))[1], end[key][1]
    return after - before if after >= before else after


def cpu_by_thread_class(start: dict[str, Any], end: dict[str, Any]) -> dict[str, dict[str, float]]:
    """CPU s per class between two :func:`sample_threads` of one process (``cpu_s``) and how many
    threads (processes, for ``receivers``) each class had at the end (``count``). ``exited``: the
    process's CPU that none of its live threads accounts for: threads that ended between the
    samples, and a tick or two of rounding (the kernel rounds each thread's time and the process's
    apart). A thread counts under its name at the end."""
    cpu = dict.fromkeys(THREAD_CLASSES, 0.0)
    count = dict.fromkeys(THREAD_CLASSES, 0)
    pid = str(end['pid'])
    for tid, (comm, _) in end['threads'].items():
        cls = thread_class(comm, is_main=tid == pid)
        cpu[cls] += _delta(start['threads'], end['threads'], tid)
        count[cls] += 1
    for child in end['children']:
        cpu['receivers'] += _delta(start['children'], end['children'], child)
        count['receivers'] += 1
    live = sum(cpu[c] for c in THREAD_CLASSES if c != 'receivers')
    cpu['exited'] = max(0.0, (end['cpu_s'] - start['cpu_s']) - live)   # ticks round per thread: never below 0
    return {'cpu_s': cpu, 'count': count}
