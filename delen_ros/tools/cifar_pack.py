"""CIFAR-10's JPEG file packed for a device machine, and unpacked there byte for byte.

Every CIFAR photo's JPEG starts with the same few hundred header bytes; stored once, the file is a
third of its size, so that the training and test photos fit a device call's 64 MiB working tree
(``scripts/device/train_cifar_sweep.sh pack``). The unpacked file is checked against the original's
SHA-256 per split.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

__all__ = ['PACKED_FORMAT', 'pack_jpeg_npz', 'is_packed_npz', 'unpack_jpeg_npz']

PACKED_FORMAT = 'delen-cifar10-jpeg-packed-1'


def _split_jpeg(blob: bytes) -> tuple[bytes, bytes]:
    """``blob`` cut after its first start-of-scan segment header: (header, entropy-coded rest);
    (b'', blob) if it has none. Lossless for any bytes: header + rest == blob."""
    k = blob.find(b'\xff\xda')
    if k < 0 or k + 4 > len(blob):
        return b'', blob
    cut = min(len(blob), k + 2 + int.from_bytes(blob[k + 2:k + 4], 'big'))
    return blob[:cut], blob[cut:]


def _sha256(*arrays: np.ndarray) -> str:
    import hashlib
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def pack_jpeg_npz(src: str | pathlib.Path, dst: str | pathlib.Path, *,
                  parts: Sequence[str] = ('train', 'test')) -> dict[str, int]:
    """Write the CIFAR-10 JPEG file ``src`` (``../shared/data/README.md`` format) to ``dst`` about three
    times smaller and losslessly, for carrying to a device machine (whose working tree is size-capped).

    Every CIFAR-10 photo's JPEG carries the same 623-byte header (quantisation and Huffman tables) in
    about 920 bytes: each distinct header is stored once, and per photo only the entropy-coded rest
    and an index into the headers. :func:`unpack_jpeg_npz` restores the very same bytes (checked
    against a SHA-256 of the original arrays).

    :param parts: the splits to keep (``'train'``, ``'test'``); the others are left out (e.g. a
        training file's partial test split).
    :returns: bytes per part before and after, e.g. ``{'train': 46041251, 'train_packed': 14893251}``.
    :raises KeyError: a part that ``src`` lacks.
    """
    sizes: dict[str, int] = {}
    with np.load(src) as z:
        out: dict[str, np.ndarray] = {'format': np.array(PACKED_FORMAT)}
        if 'classes' in z.files:
            out['classes'] = z['classes']
        for part in parts:
            jpeg, offsets, labels = z[f'{part}_jpeg'], z[f'{part}_offsets'], z[f'{part}_labels']
            raw = jpeg.tobytes()
            headers: dict[bytes, int] = {}
            index, rests = [], []
            for i in range(len(offsets) - 1):
                header, rest = _split_jpeg(raw[offsets[i]:offsets[i + 1]])
                index.append(headers.setdefault(header, len(headers)))
                rests.append(rest)
            header_list = list(headers)
            out[f'{part}_headers'] = np.frombuffer(b''.join(header_list), np.uint8)
            out[f'{part}_header_offsets'] = np.cumsum([0] + [len(h) for h in header_list]).astype(np.int64)
            out[f'{part}_header_index'] = np.array(index, np.uint32)
            out[f'{part}_rest'] = np.frombuffer(b''.join(rests), np.uint8)
            out[f'{part}_rest_offsets'] = np.cumsum([0] + [len(r) for r in rests]).astype(np.int64)
            out[f'{part}_labels'] = labels
            out[f'{part}_sha256'] = np.array(_sha256(jpeg, offsets, labels))
            sizes[part] = int(jpeg.nbytes)
            sizes[f'{part}_packed'] = int(out[f'{part}_rest'].nbytes + out[f'{part}_headers'].nbytes)
    np.savez_compressed(dst, **out)
    return sizes


def is_packed_npz(path: str | pathlib.Path) -> bool:
    """Whether ``path`` is a :func:`pack_jpeg_npz` file."""
    with np.load(path) as z:
        return 'format' in z.files and str(z['format']) == PACKED_FORMAT


def unpack_jpeg_npz(src: str | pathlib.Path, dst: str | pathlib.Path) -> dict[str, int]:
    """Restore a :func:`pack_jpeg_npz` file as a plain CIFAR-10 JPEG file (byte for byte).

    :returns: photos per part.
    :raises ValueError: not a packed file, or a part whose restored bytes differ from the original's.
    """
    counts: dict[str, int] = {}
    with np.load(src) as z:
        if 'format' not in z.files or str(z['format']) != PACKED_FORMAT:
            raise ValueError(f'{src} is not a {PACKED_FORMAT} file')
        out: dict[str, np.ndarray] = {}
        if 'classes' in z.files:
            out['classes'] = z['classes']
        for part in ('train', 'test'):
            if f'{part}_rest' not in z.files:
                continue
            hraw, hoff = z[f'{part}_headers'].tobytes(), z[f'{part}_header_offsets']
            headers = [hraw[hoff[j]:hoff[j + 1]] for j in range(len(hoff) - 1)]
            rraw, roff, index = z[f'{part}_rest'].tobytes(), z[f'{part}_rest_offsets'], z[f'{part}_header_index']
            blobs = [headers[index[i]] + rraw[roff[i]:roff[i + 1]] for i in range(len(index))]
            jpeg = np.frombuffer(b''.join(blobs), np.uint8)
            offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
            labels = z[f'{part}_labels']
            if _sha256(jpeg, offsets, labels) != str(z[f'{part}_sha256']):
                raise ValueError(f'{src}: the {part} photos restored differ from the packed original')
            out.update({f'{part}_jpeg': jpeg, f'{part}_offsets': offsets, f'{part}_labels': labels})
            counts[part] = len(labels)
    np.savez(dst, **out)
    return counts
