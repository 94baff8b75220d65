#!/usr/bin/env python3
"""Rewrite committed results smaller, in place: plots (PNG) as 256-colour palette PNGs, results
(JSON) without indentation; each only where that is smaller.

Why: a device call carries the whole working tree and its carried paths within 64 MiB.
- The benchmark plots were a third of the tracked bytes: 14 MiB as matplotlib's RGBA PNGs, 5.4 MiB
  as palettes. Line plots have few colours, so median-cut quantisation without dithering changes
  nothing visible.
- By session 15 the tracked tree (42.5 MB) with the ROS wheels (22.4 MB) left half a megabyte for the
  data a call needs. The results' JSON was 9.4 MiB, a quarter of it indentation. Its values are kept
  exactly (read back, they dump the same); the reports (`e2e.md`, READMEs) are what people read.

Run it on new results before committing them:

    python3 scripts/compact_results.py                   # every tracked PNG, every JSON under benchmarks/ and
                                                         # every profile
    python3 scripts/compact_results.py a.png b.json      # these files
"""
from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys


def compact_png(path: pathlib.Path) -> tuple[int, int]:
    """Quantise ``path`` to 256 colours if that makes it smaller; returns (bytes before, after)."""
    from PIL import Image   # only for plots: results in JSON need nothing beyond Python
    before = path.read_bytes()
    with Image.open(io.BytesIO(before)) as im:
        if im.mode == 'P':
            return len(before), len(before)
        palette = im.convert('RGB').quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    palette.save(buf, format='PNG', optimize=True)
    if buf.tell() >= len(before):
        return len(before), len(before)
    path.write_bytes(buf.getvalue())
    return len(before), buf.tell()


def compact_json(path: pathlib.Path) -> tuple[int, int]:
    """Rewrite ``path`` as compact JSON if that is smaller and reads back the same; (bytes before, after).

    :raises ValueError: not JSON (the file is left as it was).
    """
    before = path.read_bytes()
    data = json.loads(before)
    after = (json.dumps(data, separators=(',', ':'), ensure_ascii=False) + '\n').encode()
    # compared as text: NaN (which the reports write for "none measured") never equals itself
    if len(after) >= len(before) or json.dumps(json.loads(after)) != json.dumps(data):
        return len(before), len(before)
    path.write_bytes(after)
    return len(before), len(after)


def main(argv: list[str]) -> int:
    paths = [pathlib.Path(a) for a in argv] or [pathlib.Path(p) for p in subprocess.check_output(
        ['git', 'ls-files', '*.png', 'benchmarks/*.json', 'models/profiles/*.json'], text=True).split()]
    compact = {'.json': compact_json, '.png': compact_png}
    others = [p for p in paths if p.suffix not in compact]
    if others:   # nothing is rewritten: a glob that caught a report must not half-run
        print(f'neither a plot (.png) nor results (.json): {", ".join(map(str, others))}', file=sys.stderr)
        return 2
    total_before = total_after = 0
    for path in paths:
        before, after = compact[path.suffix](path)
        total_before += before
        total_after += after
    print(f'{len(paths)} files: {total_before / 2**20:.1f} -> {total_after / 2**20:.1f} MiB')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
