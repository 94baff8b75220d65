"""Rewrite the ROS wheels' exported CMake files to name this venv's Python and numpy include dirs.

The `ros-*` wheels are built under /opt/python/cpXY-cpXY/ and their `share/**/*.cmake` files keep
that builder's include paths; CMake refuses a target whose include dir does not exist.
"""
import pathlib
import re
import sys
import sysconfig

import numpy


def main(prefix: str) -> int:
    python_include = sysconfig.get_paths()['include']
    numpy_include = numpy.get_include()
    builder_numpy = re.compile(r'/opt/python/cp\d+-cp\d+t?/lib/python[\d.]+t?/site-packages/numpy/_core/include')
    builder_python = re.compile(r'/opt/python/cp\d+-cp\d+t?/include/python[\d.]+t?')
    patched = 0
    for path in pathlib.Path(prefix).glob('share/**/*.cmake'):
        text = path.read_text()
        if '/opt/python/' not in text:
            continue
        new = builder_python.sub(python_include, builder_numpy.sub(numpy_include, text))
        if new != text:
            path.write_text(new)
            patched += 1
    print(f'patched {patched} CMake files (python: {python_include}, numpy: {numpy_include})')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
