"""name_os_thread: the OS sees the name a thread gives itself (what top -H, py-spy and the e2e
bench's per-thread CPU read)."""
from __future__ import annotations

import pathlib
import threading

import pytest

from delen_ros.core.thread_names import name_os_thread

needs_proc = pytest.mark.skipif(not pathlib.Path('/proc/self/task').is_dir(), reason='no /proc (not Linux)')


def _name_in_a_thread(name: str) -> str:
    """What ``/proc`` says a fresh thread is called after it named itself ``name``."""
    seen: list[str] = []

    def run() -> None:
        name_os_thread(name)
        seen.append(pathlib.Path(f'/proc/self/task/{threading.get_native_id()}/comm').read_text().rstrip('\n'))
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


@needs_proc
@pytest.mark.parametrize('name, shown', [
    ('delen-ingress', 'delen-ingress'),
    ('jetson-power-sampler', 'jetson-power-sa'),   # Linux keeps 15 bytes: cut, not refused
    ('a b (c)', 'a b (c)'),
    ('é' * 20, 'é' * 7),                            # 14 bytes: never half a character
], ids=['plain', 'long', 'parentheses', 'utf8'])
def test_a_thread_names_itself(name, shown):
    assert _name_in_a_thread(name) == shown


@needs_proc
def test_the_process_keeps_its_name():
    before = pathlib.Path('/proc/self/comm').read_text()
    _name_in_a_thread('delen-other')
    assert pathlib.Path('/proc/self/comm').read_text() == before


def test_an_empty_name_does_not_raise():
    name_os_thread('')


@needs_proc
def test_without_a_name_the_os_gets_the_python_name():
    seen: list[str] = []

    def run() -> None:
        name_os_thread()
        seen.append(pathlib.Path(f'/proc/self/task/{threading.get_native_id()}/comm').read_text().rstrip('\n'))
    thread = threading.Thread(target=run, name='delen-pythonname')
    thread.start()
    thread.join()
    assert seen == ['delen-pythonnam']   # 15 bytes
