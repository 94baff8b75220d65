"""Drop byte-identical duplicate shared libraries from a folder of wheels, so they fit in one device call.

The ``ros-*`` wheels store ``libfastdds.so`` three times and libcrypto/libssl in eight wheels. Each
duplicate ``.so`` (over 20 kB) after its first copy is left out of the repacked wheel, and a line
``<install path> <path of the kept copy>`` (``PREFIX/...`` or ``SITE/...``) goes to
``dedup_manifest.txt``; ``setup_offline.sh`` recreates the dropped files as symlinks after installing.

    python3 scripts/device/repack_wheels.py IN_DIR OUT_DIR
"""
import hashlib
import pathlib
import sys
import zipfile


def install_path(arcname: str) -> str:
    """Where a wheel member lands: ``<name>.data/data/X`` -> ``PREFIX/X``, anything else -> ``SITE/<arcname>``."""
    parts = arcname.split('/')
    if len(parts) > 2 and parts[0].endswith('.data') and parts[1] == 'data':
        return 'PREFIX/' + '/'.join(parts[2:])
    return 'SITE/' + arcname


def main(src: pathlib.Path, dst: pathlib.Path) -> int:
    dst.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}            # sha256 -> install path of the kept copy
    manifest: list[tuple[str, str]] = []
    for whl in sorted(src.glob('*.whl')):
        with zipfile.ZipFile(whl) as zin:
            drop = set()
            for info in zin.infolist():
                name = info.filename
                if '.so' not in name.rsplit('/', 1)[-1] or info.file_size < 20000:
                    continue
                digest = hashlib.sha256(zin.read(name)).hexdigest()
                path = install_path(name)
                if digest in seen:
                    drop.add(name)
                    manifest.append((path, seen[digest]))
                else:
                    seen[digest] = path
            if not drop:
                (dst / whl.name).write_bytes(whl.read_bytes())
                continue
            # RECORD still lists the dropped files with their hashes; pip does not verify them on install.
            with zipfile.ZipFile(dst / whl.name, 'w', zipfile.ZIP_DEFLATED) as zout:
                for info in zin.infolist():
                    if info.filename not in drop:
                        zout.writestr(info, zin.read(info.filename))
    (dst / 'dedup_manifest.txt').write_text(''.join(f'{p} {k}\n' for p, k in manifest))
    print(f'{len(manifest)} duplicate libraries dropped')
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])))
