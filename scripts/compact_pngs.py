#!/usr/bin/env python3
"""Rewrite committed PNG plots as 256-colour palette PNGs, in place, where that is smaller.

Why: a device call carries the whole working tree and its carried paths within 64 MiB, and the
benchmark plots were a third of the tracked bytes (14 MiB as matplotlib's RGBA PNGs, 5.4 MiB as
palettes). Line plots have few colours, so median-cut quantisation without dithering changes
nothing visible. Run it on new plots before committing them:

    python3 scripts/compact_pngs.py                 # every tracked PNG (git ls-files)
    python3 scripts/compact_pngs.py a.png b.png     # these files
"""
from __future__ import annotations

import io
import pathlib
import subprocess
import sys

from PIL import Image


def compact(path: pathlib.Path) -> tuple[int, int]:
    """Quantise ``path`` to 256 colours if that makes it smaller; returns (bytes before, after)."""
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


def main(argv: list[str]) -> int:
    paths = [pathlib.Path(a) for a in argv] or [
        pathlib.Path(p) for p in subprocess.check_output(['git', 'ls-files', '*.png'], text=True).split()]
    total_before = total_after = 0
    for path in paths:
        before, after = compact(path)
        total_before += before
        total_after += after
    print(f'{len(paths)} PNGs: {total_before / 2**20:.1f} -> {total_after / 2**20:.1f} MiB')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
