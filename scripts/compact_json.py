#!/usr/bin/env python3
"""Rewrite committed benchmark results (JSON) without indentation, in place, where that is smaller.

Why: a device call carries the whole working tree and its carried paths within 64 MiB, and by
session 15 the tracked tree (42.5 MB) with the ROS wheels (22.4 MB) left half a megabyte for the data
a call needs. The results' JSON was 9.9 MB, a third of it indentation. The values are kept exactly
(read back, they dump the same); the reports (`e2e.md`, READMEs) are what people read. Run it on
new results before committing them, as `scripts/compact_pngs.py` on their plots:

    python3 scripts/compact_json.py                 # every tracked JSON under benchmarks/
    python3 scripts/compact_json.py a.json b.json   # these files
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys


def compact(path: pathlib.Path) -> tuple[int, int]:
    """Rewrite ``path`` as compact JSON if that is smaller and reads back equal; (bytes before, after)."""
    before = path.read_bytes()
    data = json.loads(before)
    after = (json.dumps(data, separators=(',', ':'), ensure_ascii=False) + '\n').encode()
    # compared as text: NaN (which the reports write for "none measured") never equals itself
    if len(after) >= len(before) or json.dumps(json.loads(after)) != json.dumps(data):
        return len(before), len(before)
    path.write_bytes(after)
    return len(before), len(after)


def main(argv: list[str]) -> int:
    paths = [pathlib.Path(a) for a in argv] or [
        pathlib.Path(p) for p in subprocess.check_output(['git', 'ls-files', 'benchmarks/*.json'], text=True).split()]
    total_before = total_after = 0
    for path in paths:
        before, after = compact(path)
        total_before += before
        total_after += after
    print(f'{len(paths)} JSON files: {total_before / 2**20:.1f} -> {total_after / 2**20:.1f} MiB')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
