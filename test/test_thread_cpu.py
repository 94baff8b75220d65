"""Per-thread CPU from /proc, grouped by thread name (the e2e bench's node CPU by thread, issue 8):
the stat line parsed on synthetic lines, the classes, the deltas between two samples, and a real
thread that names itself and burns CPU."""
from __future__ import annotations

import doctest
import os
import pathlib
import threading
import time

import pytest

from delen_ros.tools import thread_cpu
from delen_ros.tools.thread_cpu import (THREAD_CLASSES, cpu_by_thread_class, parse_stat, sample_threads,
                                        thread_class)

TCK = os.sysconf('SC_CLK_TCK')


def _stat(pid: int, comm: str, utime: int, stime: int) -> str:
    """A /proc/<pid>/stat line (52 fields as in Linux 6.x) with the given name and CPU ticks."""
    after = ['S', '1', str(pid), str(pid), '0', '-1', '4194560', '100', '0', '0', '0', str(utime), str(stime),
             '0', '0', '20', '0', '12', '0', '123456', '1000', '200'] + ['0'] * 28
    return f'{pid} ({comm}) ' + ' '.join(after) + '\n'


@pytest.mark.parametrize('comm', ['python3', 'dds.udp.7001', 'a b', 'x) S 1 2 (y', ') )', ''])
def test_the_name_may_hold_spaces_and_parentheses(comm):
    assert parse_stat(_stat(4242, comm, 150, 50)) == (comm, pytest.approx(200 / TCK))


def test_doctests_hold():
    assert doctest.testmod(thread_cpu).failed == 0


@pytest.mark.parametrize('comm, is_main, cls', [
    ('delen-engine', False, 'engine'),
    ('delen-ingress', False, 'ingress'),
    ('delen-energy', False, 'energy'),
    ('jetson-power-sa', False, 'energy'),     # 'jetson-power-sampler' as the OS keeps it
    ('rapl-wrap-guard', False, 'energy'),
    ('delen-pre', False, 'delen_other'),
    ('delen-placement', False, 'delen_other'),
    ('dds.ev.0', False, 'dds'),
    ('dds.shm.wdog', False, 'dds'),
    ('cuda-EvtHandlr', False, 'cuda'),
    ('python3', True, 'main'),
    ('python3', False, 'other'),
    ('delen-engine', True, 'engine'),         # a name wins over being the first thread
])
def test_thread_classes(comm, is_main, cls):
    assert thread_class(comm, is_main=is_main) == cls


def _sample(cpu_s: float, threads: dict[str, tuple[str, float]], children: dict[str, tuple[str, float]]) -> dict:
    return {'pid': 100, 'cpu_s': cpu_s, 'threads': {t: list(v) for t, v in threads.items()},
            'children': {c: list(v) for c, v in children.items()}}


def test_cpu_by_class_between_two_samples():
    start = _sample(10.0, {'100': ('python3', 4.0), '101': ('delen-engine', 3.0), '102': ('dds.ev.0', 1.0),
                           '103': ('dds.udp.7001', 0.5), '104': ('python3', 0.5), '105': ('short one', 1.0)},
                    {'200': ('delen_receiver', 2.0)})
    end = _sample(16.0, {'100': ('python3', 5.0), '101': ('delen-engine', 5.5), '102': ('dds.ev.0', 1.25),
                         '103': ('dds.udp.7001', 0.75), '104': ('python3', 0.5), '106': ('delen-ingress', 0.5)},
                  {'200': ('delen_receiver', 2.5), '201': ('python3', 0.25)})
    got = cpu_by_thread_class(start, end)
    cpu, count = got['cpu_s'], got['count']
    assert list(cpu) == list(THREAD_CLASSES) and list(count) == list(THREAD_CLASSES)
    assert cpu['main'] == pytest.approx(1.0) and count['main'] == 1
    assert cpu['engine'] == pytest.approx(2.5)
    assert cpu['dds'] == pytest.approx(0.5) and count['dds'] == 2
    assert cpu['ingress'] == pytest.approx(0.5)           # started between the samples: all of it
    assert cpu['other'] == 0.0 and count['other'] == 1
    assert cpu['receivers'] == pytest.approx(0.75) and count['receivers'] == 2   # one restarted meanwhile
    # the process spent 6 s; its live threads account for 4.5: 1.5 s went to threads that ended
    assert cpu['exited'] == pytest.approx(1.5)
    assert sum(cpu[c] for c in THREAD_CLASSES if c != 'receivers') == pytest.approx(16.0 - 10.0)


@pytest.mark.skipif(not pathlib.Path('/proc/self/task').is_dir(), reason='no /proc (not Linux)')
def test_a_named_thread_is_charged_for_its_own_cpu():
    from delen_ros.core.thread_names import name_os_thread
    named, go, done, leave = (threading.Event() for _ in range(4))

    def burn() -> None:
        name_os_thread('delen-engine')
        named.set()
        go.wait()
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        done.set()
        leave.wait()   # alive at the second sample, else its CPU counts as 'exited'
    thread = threading.Thread(target=burn)
    thread.start()
    named.wait(10)
    start = sample_threads(os.getpid())
    go.set()
    done.wait(10)
    end = sample_threads(os.getpid())
    leave.set()
    thread.join()
    got = cpu_by_thread_class(start, end)
    assert got['count']['engine'] == 1
    assert 0.2 <= got['cpu_s']['engine'] <= 0.5
    assert got['cpu_s']['main'] < 0.2


@pytest.mark.skipif(not pathlib.Path('/proc/self/task').is_dir(), reason='no /proc (not Linux)')
def test_a_name_that_is_not_utf8_is_still_read():
    named, leave = threading.Event(), threading.Event()

    def run() -> None:   # any bytes make a name: here 'é' cut in two after a whole one
        pathlib.Path(f'/proc/self/task/{threading.get_native_id()}/comm').write_bytes('éé'.encode()[:3])
        named.set()
        leave.wait()
    thread = threading.Thread(target=run)
    thread.start()
    named.wait(10)
    try:
        sample = sample_threads(os.getpid())
        assert str(thread.native_id) in sample['threads']
        assert sample['threads'][str(thread.native_id)][0] == 'é\ufffd'
    finally:
        leave.set()
        thread.join()


def test_a_process_that_is_gone_has_no_sample():
    assert sample_threads(2 ** 22 + 1) is None   # above Linux's largest pid
