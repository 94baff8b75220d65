"""Fast DDS shared-memory segments that dead processes left in ``/dev/shm``, reclaimed.

Every participant of Fast DDS's shared-memory transport maps a segment ``/dev/shm/fastdds_<16 hex>``
(``fastrtps_`` before Fast DDS 3) and, while it lives, holds a lock on its companion ``…_el`` file. A
process that dies without closing DDS (SIGKILL, a crash, the OOM killer) leaves both behind, and
nothing in Fast DDS removes them: /dev/shm is memory, so a robot whose node crashes and restarts
loses some each time (here: 31 segments, 102 MB, after one run of this package's tests; 2.7 GB on a
developer machine after some days of benchmarks). Fast DDS's ``fastdds shm clean`` tells the dead
from the living the same way: a lock file that nobody holds. The node reclaims them as it starts.

Only segments are touched, never the ``fastdds_port*`` files that every participant of a domain
shares; a lock file younger than ``min_age_s`` (1 s) is left alone, since a participant creates it
just before it takes the lock.
"""
from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass

__all__ = ['Reclaimed', 'reclaim_zombie_segments', 'zombie_segments', 'uses_fast_dds', 'SHM_DIR']

SHM_DIR = '/dev/shm'
_LOCK_FILE = re.compile(r'^(fastdds|fastrtps)_[0-9a-f]{16}_(el|sl)$')


@dataclass(frozen=True)
class Reclaimed:
    """What :func:`reclaim_zombie_segments` removed: segments and the memory they held."""
    segments: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f'{self.segments} Fast DDS shared-memory segment(s), {self.bytes / 1e6:.1f} MB'


def uses_fast_dds() -> bool:
    """Whether this process's ROS middleware is Fast DDS (the default RMW)."""
    return os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp').startswith('rmw_fastrtps')


def _held(path: str) -> bool:
    """Whether some process holds a lock on ``path`` (or it cannot be checked: then it counts as held)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)   # closing releases the probe's own lock


def _zombies(shm_dir: str, min_age_s: float, now: float | None) -> list[tuple[str, str]]:
    """(segment, lock file) of every segment in ``shm_dir`` whose lock file nobody holds and is older
    than ``min_age_s``."""
    now = time.time() if now is None else now
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return []
    found = []
    for name in names:
        lock = os.path.join(shm_dir, name)
        try:
            if _LOCK_FILE.match(name) and now - os.stat(lock).st_mtime >= min_age_s and not _held(lock):
                found.append((lock[:-3], lock))
        except OSError:   # gone meanwhile
            continue
    return found


def zombie_segments(shm_dir: str = SHM_DIR, *, min_age_s: float = 1.0, now: float | None = None) -> list[str]:
    """The segments in ``shm_dir`` (paths) whose lock file nobody holds and is older than ``min_age_s``."""
    return [segment for segment, _ in _zombies(shm_dir, min_age_s, now)]


def reclaim_zombie_segments(shm_dir: str = SHM_DIR, *, min_age_s: float = 1.0,
                            now: float | None = None) -> Reclaimed:
    """Remove :func:`zombie_segments` with their lock files. Files this process may not remove are
    skipped; never raises ``OSError``."""
    segments = size = 0
    for segment, lock in _zombies(shm_dir, min_age_s, now):
        held_bytes = 0
        try:
            held_bytes = os.stat(segment).st_blocks * 512
            os.remove(segment)
        except FileNotFoundError:   # its lock file outlived it
            pass
        except OSError:   # another user's
            continue
        try:
            os.remove(lock)
        except OSError:
            continue
        segments += 1
        size += held_bytes
    return Reclaimed(segments, size)
