"""Python's collections are timed for the diagnostics, and what the node froze is skipped by them."""
from __future__ import annotations

import gc

from delen_ros.core.gc_pauses import PauseRecorder, freeze_long_lived, pause_recorder, thaw


class Node:   # a reference cycle: only the collector frees it
    def __init__(self):
        self.me = self


def test_the_recorder_counts_each_generation_and_resets_on_read():
    recorder = PauseRecorder().install()
    try:
        recorder.read()
        gc.collect(0)
        gc.collect(2)
        first = recorder.read()
        assert first['collections_gen0'] >= 1 and first['collections_gen2'] >= 1
        assert first['pause_max_ms_gen2'] > 0 and first['pause_total_ms'] >= first['pause_max_ms_gen2']
        assert recorder.read()['collections_gen2'] == 0   # reset by the first read
    finally:
        recorder.uninstall()
    gc.collect(2)
    assert recorder.read()['collections_gen2'] == 0   # uninstalled: nothing counted


def test_the_process_recorder_is_installed_once():
    assert pause_recorder() is pause_recorder()
    assert sum(cb == pause_recorder()._callback for cb in gc.callbacks) == 1


def test_frozen_objects_are_skipped_until_thawed(monkeypatch):
    monkeypatch.delenv('DELEN_GC_FREEZE', raising=False)
    try:
        assert freeze_long_lived() > 0
        walked = len(gc.get_objects())   # frozen objects are not in any generation
        thaw()
        assert gc.get_freeze_count() == 0 and len(gc.get_objects()) > walked
    finally:
        thaw()


def test_freezing_can_be_switched_off(monkeypatch):
    monkeypatch.setenv('DELEN_GC_FREEZE', '0')
    assert freeze_long_lived() == 0 and gc.get_freeze_count() == 0


def test_garbage_made_after_the_freeze_is_still_collected(monkeypatch):
    monkeypatch.delenv('DELEN_GC_FREEZE', raising=False)
    try:
        freeze_long_lived()
        import weakref
        cycle = Node()
        alive = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert alive() is None
    finally:
        thaw()
