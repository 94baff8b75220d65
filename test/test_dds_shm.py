"""Fast DDS segments that dead processes left in /dev/shm (ros/dds_shm.py), on a folder of fake files."""
import fcntl
import os
import subprocess
import sys
import time

import pytest

from delen_ros.ros.dds_shm import Reclaimed, reclaim_zombie_segments, uses_fast_dds, zombie_segments

OLD = time.time() - 60


def _segment(folder, name, *, size=4096, lock='_el', mtime=OLD):
    seg = folder / name
    seg.write_bytes(b'\1' * size)
    (folder / (name + lock)).write_bytes(b'')
    os.utime(folder / (name + lock), (mtime, mtime))
    return seg


def test_only_unheld_old_segments_go(tmp_path):
    dead = _segment(tmp_path, 'fastdds_0123456789abcdef', size=8192)
    dead_v2 = _segment(tmp_path, 'fastrtps_00000000000000aa', lock='_sl')   # Fast DDS 2 names (Humble)
    alive = _segment(tmp_path, 'fastdds_fedcba9876543210')
    young = _segment(tmp_path, 'fastdds_1111111111111111', mtime=time.time())   # being created
    port = tmp_path / 'fastdds_port7411'   # shared by a domain's participants: never touched
    port.write_bytes(b'x')
    (tmp_path / 'fastdds_port7411_el').write_bytes(b'')
    other = tmp_path / 'fastdds_notahexname_el'
    other.write_bytes(b'')
    holder = open(tmp_path / 'fastdds_fedcba9876543210_el', 'rb')   # its owner lives: holds the lock
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        assert sorted(zombie_segments(str(tmp_path))) == sorted([str(dead), str(dead_v2)])
        reclaimed = reclaim_zombie_segments(str(tmp_path))
    finally:
        holder.close()
    assert reclaimed.segments == 2 and reclaimed.bytes >= 8192
    assert not dead.exists() and not (tmp_path / 'fastdds_0123456789abcdef_el').exists() and not dead_v2.exists()
    assert alive.exists() and young.exists() and port.exists() and other.exists()
    assert '2 Fast DDS shared-memory segment(s)' in str(reclaimed)


def test_a_lock_held_by_another_process_keeps_its_segment(tmp_path):
    seg = _segment(tmp_path, 'fastdds_abcdefabcdefabcd')
    holder = subprocess.Popen([sys.executable, '-c', (
        'import fcntl, sys, time; f = open(sys.argv[1], "rb"); fcntl.flock(f, fcntl.LOCK_SH); '
        'print("held", flush=True); time.sleep(30)'), str(seg) + '_el'], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        assert reclaim_zombie_segments(str(tmp_path)) == Reclaimed() and seg.exists()
    finally:
        holder.kill()
        holder.wait()
    assert reclaim_zombie_segments(str(tmp_path)).segments == 1 and not seg.exists()   # its owner died


def test_a_missing_folder_or_segment_is_no_error(tmp_path):
    assert reclaim_zombie_segments(str(tmp_path / 'absent')) == Reclaimed()
    (tmp_path / 'fastdds_2222222222222222_el').write_bytes(b'')   # the segment itself already gone
    os.utime(tmp_path / 'fastdds_2222222222222222_el', (OLD, OLD))
    assert reclaim_zombie_segments(str(tmp_path)) == Reclaimed(1, 0)


@pytest.mark.parametrize('rmw, expected', [(None, True), ('rmw_fastrtps_cpp', True),
                                           ('rmw_fastrtps_dynamic_cpp', True), ('rmw_cyclonedds_cpp', False)])
def test_only_fast_dds_is_cleaned_after(monkeypatch, rmw, expected):
    if rmw is None:
        monkeypatch.delenv('RMW_IMPLEMENTATION', raising=False)
    else:
        monkeypatch.setenv('RMW_IMPLEMENTATION', rmw)
    assert uses_fast_dds() is expected
