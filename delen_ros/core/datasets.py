"""Offline data sets: Fashion-MNIST, unlabelled real images for distillation, held-out eval sets.

Everything is read from Debian / PyPI packages already on disk; nothing downloads.

* Fashion-MNIST (Debian ``dataset-fashion-mnist``): IDX files, 60 000 train / 10 000 test.
* CIFAR-10 (``../shared/data/cifar10/cifar10_jpeg.npz`` beside the checkout, or ``$DELEN_CIFAR10``):
  JPEG bytes of 50 000 train / 10 000 test 32x32 photos; a fixed, class-balanced 5 000 of the
  training photos are the validation split (calibration, thresholds), never trained on.
* Unlabelled real images (for distilling EfficientNet-Lite0's early exits, and as camera streams):
  opencv-doc's videos (``vtest.avi`` pedestrians, ``Megamind.avi``, ``tree.avi``), sample photos
  and tutorial pictures, the ViSP robot-camera sequences (``visp-images-data``), scikit-image's
  sample photos.

Distillation sources are split by whole sequence (a held-out sequence has no frame in training) and,
for still photos, by a fixed hash of the file name; :func:`eval_set` serves the held-out part.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import pathlib
import shutil
import tempfile
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

__all__ = [
    'EvalSet', 'ImageSource', 'FASHION_MNIST_DIR', 'OPENCV_DATA_DIR', 'OPENCV_HTML_DIR', 'VISP_DIR',
    'read_idx', 'load_fashion_mnist', 'imagenet_labels', 'find_file', 'read_video', 'read_image',
    'image_sources', 'distillation_sources', 'eval_set', 'camera_sources', 'fashion_mnist_frames_dir',
    'CIFAR10_ENV', 'CIFAR10_SPLITS', 'cifar10_path', 'load_cifar10', 'cifar10_split_indices', 'calibration_set',
    'cifar10_frames_dir',
]

FASHION_MNIST_DIR = pathlib.Path(os.environ.get('DELEN_FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist'))
OPENCV_DATA_DIR = pathlib.Path('/usr/share/doc/opencv-doc/examples/data')
VISP_DIR = pathlib.Path('/usr/share/visp-images-data/ViSP-images')
OPENCV_HTML_DIR = pathlib.Path('/usr/share/doc/opencv-doc/opencv4/html')

_SPLITS = {'train': 'train', 'test': 't10k'}


# --- Fashion-MNIST -----------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic ``0 0 dtype ndim``, big-endian dims, data."""
    path = pathlib.Path(path)
    with (gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f'{path}: not an IDX file (magic {data[:4].hex()!r})')
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}
    if data[2] not in dtypes:
        raise ValueError(f'{path}: unknown IDX data type 0x{data[2]:02x}')
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f'{path}: header says {shape} but holds {array.size} values')
    return array.reshape(shape)


@functools.lru_cache(maxsize=2)
def _fashion_mnist(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = pathlib.Path(root) / _SPLITS[split]
    images = read_idx(f'{prefix}-images-idx3-ubyte.gz')
    labels = read_idx(f'{prefix}-labels-idx1-ubyte.gz').astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f'{prefix}: unexpected shapes {images.shape} / {labels.shape}')
    images.flags.writeable = False  # cached and shared: callers copy before modifying
    labels.flags.writeable = False
    return images, labels


def load_fashion_mnist(split: str, *, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (uint8 ``N x 28 x 28``, read-only) and labels (int64 ``N``, 0-9).

    :param split: ``'train'`` (60 000) or ``'test'`` (10 000).
    :param root: folder with the ``*-ubyte.gz`` files; ``None``: ``$DELEN_FASHION_MNIST_DIR`` or
        Debian's ``/usr/share/datasets/fashion-mnist``.
    """
    if split not in _SPLITS:
        raise ValueError(f'split must be one of {sorted(_SPLITS)}, got {split!r}')
    root = pathlib.Path(root) if root is not None else FASHION_MNIST_DIR
    if not (root / f'{_SPLITS[split]}-images-idx3-ubyte.gz').exists():
        raise FileNotFoundError(f'Fashion-MNIST not found in {root} (Debian package dataset-fashion-mnist)')
    return _fashion_mnist(split, str(root))


# --- CIFAR-10 -------------------------------------------------------------------------------------------
CIFAR10_ENV = 'DELEN_CIFAR10'
#: 'train' is the 50 000 training photos minus 'val'; 'train_all' all of them
CIFAR10_SPLITS = ('train', 'val', 'test', 'train_all')
CIFAR10_VAL_PER_CLASS = 500
_CIFAR10_RELATIVE = pathlib.Path('shared') / 'data' / 'cifar10' / 'cifar10_jpeg.npz'


def cifar10_path() -> pathlib.Path:
    """Where the CIFAR-10 file is: ``$DELEN_CIFAR10`` if set, else ``../shared/data/cifar10/cifar10_jpeg.npz``
    relative to the repository root (the source tree holding this package, else the working
    directory or one of its parents). Returns the first candidate that exists, else the first one: the
    path a "not found" message names, so an installed copy's own folder is no candidate (it named
    ``.venv/lib/python3.11/shared/...`` to every user of a fresh clone)."""
    env = os.environ.get(CIFAR10_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    source = pathlib.Path(__file__).resolve().parents[2]
    cwd = pathlib.Path.cwd().resolve()
    roots = ([source] if (source / 'package.xml').is_file() else []) + [cwd] + list(cwd.parents)[:3]
    candidates = [root.parent / _CIFAR10_RELATIVE for root in roots] + [root / '.devdata' / 'cifar10_jpeg.npz'
                                                                         for root in roots[:2]]
    return next((c for c in candidates if c.is_file()), candidates[0])


@functools.lru_cache(maxsize=1)
def _cifar10_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _cifar10_file(path: str | os.PathLike | None) -> str:
    path = pathlib.Path(path) if path is not None else cifar10_path()
    if not path.is_file():
        raise FileNotFoundError(f'CIFAR-10 not found at {path}: put cifar10_jpeg.npz there (see '
                                f'../shared/data/README.md) or set ${CIFAR10_ENV} to its path')
    return str(path.resolve())


def cifar10_split_indices(split: str, *, path: str | os.PathLike | None = None) -> np.ndarray:
    """Indices into the file's ``train_*`` (``'train'``, ``'val'``, ``'train_all'``) or ``test_*``
    (``'test'``) arrays. ``'val'``: 500 photos per class, a fixed draw (seed 0, sorted); ``'train'``:
    the other 45 000."""
    if split not in CIFAR10_SPLITS:
        raise ValueError(f'split must be one of {CIFAR10_SPLITS}, got {split!r}')
    data = _cifar10_npz(_cifar10_file(path))
    if split == 'test':
        return np.arange(len(data['test_labels']))
    labels = data['train_labels'].astype(np.int64)
    if split == 'train_all':
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    val = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:CIFAR10_VAL_PER_CLASS]
                                  for c in range(int(labels.max()) + 1)]))
    if split == 'val':
        return val
    return np.setdiff1d(np.arange(len(labels)), val)


def load_cifar10(split: str, *, path: str | os.PathLike | None = None, limit: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 photos (uint8 RGB ``N x 32 x 32 x 3``) and labels (int64 ``N``, 0-9, names in
    :data:`~delen_ros.core.architectures.cifar10_lite0.CIFAR10_LABELS`), decoded from JPEG.

    :param split: ``'train'`` (45 000), ``'val'`` (5 000 held out of the training photos), ``'test'``
        (10 000), ``'train_all'`` (50 000).
    :param path: the ``cifar10_jpeg.npz``; ``None``: :func:`cifar10_path`.
    :param limit: at most this many, a seeded random subset in file order; ``None``: all.
    :param seed: for the subset.
    :raises FileNotFoundError: no file (the message says where it was looked for and how to set it).
    """
    idx = cifar10_split_indices(split, path=path)
    idx = idx[_subsample(len(idx), limit, seed)]
    data = _cifar10_npz(_cifar10_file(path))
    part = 'test' if split == 'test' else 'train'
    jpeg, offsets = data[f'{part}_jpeg'], data[f'{part}_offsets']
    images = np.empty((len(idx), 32, 32, 3), np.uint8)
    for out, i in enumerate(idx):
        bgr = cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape != (32, 32, 3):
            raise ValueError(f'CIFAR-10 {part} image {i}: cannot decode a 32x32 colour JPEG')
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=images[out])
    return images, data[f'{part}_labels'][idx].astype(np.int64)


# --- labels ---------------------------------------------------------------------------------------------
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (opencv-doc's list), else ``class_<i>``."""
    path = find_file(OPENCV_DATA_DIR / 'dnn' / 'classification_classes_ILSVRC2012.txt')
    if path is not None:
        names = [line.strip() for line in _read_bytes(path).decode().splitlines() if line.strip()]
        if len(names) == 1000:
            return tuple(names)
    return tuple(f'class_{i}' for i in range(1000))


# --- files, videos, images ---------------------------------------------------------------------------------
def find_file(path: str | os.PathLike) -> pathlib.Path | None:
    """``path`` itself, or its gzipped twin ``path.gz`` (Debian compresses some docs), or ``None``."""
    path = pathlib.Path(path)
    for candidate in (path, path.with_name(path.name + '.gz')):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: pathlib.Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == '.gz' else path.read_bytes()


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """An image file as uint8 RGB ``H x W x 3`` or grey ``H x W``; ``None`` if unreadable."""
    path = pathlib.Path(path)
    buf = np.frombuffer(_read_bytes(path), np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if image.dtype == np.uint16:  # 16-bit PNGs: keep the top byte
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        return None
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def read_video(path: str | os.PathLike, *, step: int = 1, limit: int | None = None) -> list[np.ndarray]:
    """Frames of a video file as uint8 RGB arrays.

    :param step: keep every ``step``-th frame.
    :param limit: at most this many frames; ``None``: all.
    """
    return list(iter_video(path, step=step, limit=limit))


def iter_video(path: str | os.PathLike, *, step: int = 1, limit: int | None = None) -> Iterator[np.ndarray]:
    """Like :func:`read_video`, one frame at a time. A ``.gz`` video is unpacked to a temp file first."""
    if step < 1:
        raise ValueError(f'step must be >= 1, got {step!r}')
    path = pathlib.Path(path)
    tmp = None
    if path.suffix == '.gz':  # OpenCV needs a seekable plain file
        tmp = tempfile.NamedTemporaryFile(suffix=path.with_suffix('').suffix, delete=False)
        with gzip.open(path, 'rb') as src, tmp:
            shutil.copyfileobj(src, tmp)
        path = pathlib.Path(tmp.name)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise OSError(f'cannot open video {path}')
        index = kept = 0
        while limit is None or kept < limit:
            ok, frame = cap.read()
            if not ok:
                break
            if index % step == 0:
                kept += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()
        if tmp is not None:
            os.unlink(tmp.name)


# --- image sources -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageSource:
    """A named set of real images: a video file, a numbered frame sequence, or loose stills."""

    name: str
    kind: str                          # 'video' | 'sequence' | 'stills'
    paths: tuple[pathlib.Path, ...]    # one video file, or the image files in order

    def __len__(self) -> int:
        return len(self.paths)

    def frames(self, *, step: int = 1, limit: int | None = None) -> list[np.ndarray]:
        """The images (uint8 RGB or grey), every ``step``-th, at most ``limit`` (``None``: all)."""
        if self.kind == 'video':
            return read_video(self.paths[0], step=step, limit=limit)
        images = [read_image(p) for p in self.paths[::step]]
        images = [im for im in images if im is not None and min(im.shape[:2]) >= 32]
        return images if limit is None else images[:limit]


_VISP_SEQUENCES = {  # name -> folder, glob (frames of one moving robot camera each)
    'visp_mire2': ('mire-2', 'image.*.pgm'),                     # 501 frames 384x288, calibration target
    'visp_mbt_cube': ('mbt/cube', 'image*.pgm'),                 # 218 frames 640x480, cube on a table
    'visp_cube': ('cube', 'image.*.pgm'),
    'visp_ellipse': ('ellipse-1', 'image.*.pgm'),
    'visp_line': ('line', 'image.*.pgm'),
    'visp_castle': ('mbt-depth/Castle-simu/Images', 'Image_*.pgm'),
}
_VISP_STILLS = ('Klimt/Klimt.ppm', 'Solvay/Solvay_conference_1927_Version2_640x440.jpg', 'mire/mire.jpg',
                'faces/1280px-Solvay_conference_1927.png', 'mbt/cube.ppm')
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.ppm', '.pgm', '.bmp')


def _skimage_dir() -> pathlib.Path | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return pathlib.Path(skimage.data.__file__).parent


@functools.lru_cache(maxsize=1)
def image_sources() -> dict[str, ImageSource]:
    """Every real-image source found on this machine, by name (missing packages are skipped)."""
    sources: dict[str, ImageSource] = {}
    for name in ('vtest.avi', 'Megamind.avi', 'tree.avi'):
        path = find_file(OPENCV_DATA_DIR / name)
        if path is not None:
            sources[name.split('.')[0].lower()] = ImageSource(name.split('.')[0].lower(), 'video', (path,))
    for name, (folder, pattern) in _VISP_SEQUENCES.items():
        paths = tuple(sorted((VISP_DIR / folder).glob(pattern)))
        if paths:
            sources[name] = ImageSource(name, 'sequence', paths)
    stills = [p for p in (VISP_DIR / s for s in _VISP_STILLS) if p.is_file()]
    stills += [p for p in sorted(OPENCV_DATA_DIR.glob('*')) if p.suffix.lower() in _IMAGE_SUFFIXES]
    sk = _skimage_dir()
    if sk is not None:
        stills += [p for p in sorted(sk.glob('*')) if p.suffix.lower() in _IMAGE_SUFFIXES]
    if stills:
        sources['stills'] = ImageSource('stills', 'stills', tuple(stills))
    # The OpenCV tutorials' pictures: mostly photos (JPEG) and their processed versions, some
    # screenshots and diagrams. Far more varied than the sequences, which matters for distillation.
    docs = [p for p in sorted(OPENCV_HTML_DIR.rglob('*'))
            if (p.suffix.lower() in ('.jpg', '.jpeg') and p.stat().st_size >= 10_000)
            or (p.suffix.lower() == '.png' and p.stat().st_size >= 60_000)]
    if docs:
        sources['opencv_doc_pictures'] = ImageSource('opencv_doc_pictures', 'stills', tuple(docs))
    return sources


# Whole sequences kept out of distillation training; stills are split by name hash (1 in 4 held out).
HELD_OUT_SEQUENCES = ('vtest', 'visp_mbt_cube', 'visp_line')


def _held_out_still(path: pathlib.Path) -> bool:
    return hashlib.sha1(path.name.encode()).digest()[0] % 4 == 0


def distillation_sources(split: str) -> list[ImageSource]:
    """Unlabelled sources for ``'train'`` (distillation) or ``'test'`` (held-out evaluation).

    No frame of a held-out sequence, and no held-out still, is in the training split.
    """
    if split not in _SPLITS:
        raise ValueError(f'split must be one of {sorted(_SPLITS)}, got {split!r}')
    held_out = split == 'test'
    out = []
    for name, source in image_sources().items():
        if source.kind == 'stills':
            paths = tuple(p for p in source.paths if _held_out_still(p) == held_out)
            if paths:
                out.append(ImageSource(f'{name}_{split}', 'stills', paths))
        elif (name in HELD_OUT_SEQUENCES) == held_out:
            out.append(source)
    return out


# --- evaluation sets ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Held-out images for profiling a model.

    ``labels`` is ``None`` when no ground truth exists: accuracy then means top-1 agreement with the
    model's final exit (the caller computes the final exit's answers). ``note`` says which.
    """

    images: list[np.ndarray]
    labels: np.ndarray | None
    note: str

    def __post_init__(self):
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f'{len(self.images)} images but {len(self.labels)} labels')


def _subsample(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ValueError(f'limit must be >= 1 or None, got {limit!r}')
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def eval_set(model_name: str, *, limit: int | None = None, seed: int = 0) -> EvalSet:
    """Held-out data for ``model_name`` (never used in its training).

    :param model_name: ``'fashion_mnist'`` (labelled test set), ``'cifar10_lite0'`` (the labelled
        CIFAR-10 test set) or ``'efficientnet_lite0'`` (held-out real images, no labels).
    :param limit: at most this many images, a seeded random subset; ``None``: all.
    :param seed: for the subset.
    """
    if model_name == 'fashion_mnist':
        images, labels = load_fashion_mnist('test')
        idx = _subsample(len(images), limit, seed)
        return EvalSet([images[i] for i in idx], labels[idx].copy(),
                       'top-1 accuracy on the Fashion-MNIST test set (10 000 labelled images)')
    if model_name == 'efficientnet_lite0':
        images = held_out_images()
        idx = _subsample(len(images), limit, seed)
        return EvalSet([images[i] for i in idx], None,
                       'top-1 agreement with the final exit on held-out real images (no labels): '
                       + ', '.join(s.name for s in distillation_sources('test')))
    if model_name.startswith('cifar10'):
        images, labels = load_cifar10('test', limit=limit, seed=seed)
        return EvalSet(list(images), labels, 'top-1 accuracy on the CIFAR-10 test set '
                       f'({len(labels)} labelled images{"" if limit is None else ", a random subset"})')
    raise KeyError(f'no eval set for model {model_name!r}; known: [\'cifar10_lite0\', \'efficientnet_lite0\', '
                   '\'fashion_mnist\']')


def calibration_set(model_name: str, *, limit: int | None = None, seed: int = 0) -> EvalSet | None:
    """Held-out data for calibrating ``model_name``'s confidence thresholds, apart from its
    :func:`eval_set` (so that reported figures are not tuned on): CIFAR-10's validation split for the
    CIFAR models; ``None`` for models that have none (they calibrate on the eval set).

    :raises FileNotFoundError: the data set is absent.
    """
    if model_name.startswith('cifar10'):
        images, labels = load_cifar10('val', limit=limit, seed=seed)
        return EvalSet(list(images), labels, 'CIFAR-10 validation split (5 000 training photos held out of training)')
    return None


# Held-out videos are long and nearly static: every 4th frame is plenty and saves memory.
HELD_OUT_VIDEO_STEP = 4


def held_out_images() -> list[np.ndarray]:
    """Every held-out real image (videos subsampled by :data:`HELD_OUT_VIDEO_STEP`), fixed order."""
    images: list[np.ndarray] = []
    for source in distillation_sources('test'):
        images += source.frames(step=HELD_OUT_VIDEO_STEP if source.kind == 'video' else 1)
    return images


# --- camera sources ------------------------------------------------------------------------------------------------
def fashion_mnist_frames_dir(*, count: int = 200, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """A folder of the first ``count`` Fashion-MNIST test images as PNGs named ``<index>_<label>.png``.

    Written once (into ``cache_dir``, default ``$XDG_CACHE_HOME/delen_ros`` or ``~/.cache/delen_ros``),
    so a camera player can replay images whose true label is known from the file name.
    """
    if cache_dir is None:
        cache_dir = pathlib.Path(os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache')) / 'delen_ros'
    folder = pathlib.Path(cache_dir) / f'fashion_mnist_test_{count}'
    images, labels = load_fashion_mnist('test')
    count = min(count, len(images))
    return _write_once(folder, '.png', count,
                       lambda: ((f'{i:05d}_{labels[i]}.png', cv2.imencode('.png', images[i])[1].tobytes())
                                for i in range(count)))


def cifar10_frames_dir(*, count: int = 1000, cache_dir: str | os.PathLike | None = None,
                       path: str | os.PathLike | None = None) -> pathlib.Path:
    """A folder of ``count`` CIFAR-10 test photos, ``<k>_<label>.jpg`` (the file's own JPEG bytes, not
    re-encoded), written once into ``cache_dir`` (as :func:`fashion_mnist_frames_dir`), never into the
    repository. A camera player replays it as a labelled source. The file holds the test photos
    sorted by class, so these are a fixed random draw (seed 0) in random order: every class, mixed.

    :raises FileNotFoundError: no CIFAR-10 file.
    """
    if cache_dir is None:
        cache_dir = pathlib.Path(os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache')) / 'delen_ros'
    folder = pathlib.Path(cache_dir) / f'cifar10_test_{count}'
    data = _cifar10_npz(_cifar10_file(path))
    jpeg, offsets, labels = data['test_jpeg'], data['test_offsets'], data['test_labels']
    count = min(count, len(labels))
    order = np.random.default_rng(0).permutation(len(labels))[:count]
    return _write_once(folder, '.jpg', count,
                       lambda: ((f'{k:05d}_{int(labels[i])}.jpg', jpeg[offsets[i]:offsets[i + 1]].tobytes())
                                for k, i in enumerate(order)))


def _write_once(folder: pathlib.Path, suffix: str, count: int,
                files: Callable[[], Iterable[tuple[str, bytes]]]) -> pathlib.Path:
    """``folder`` holding ``count`` files ``*suffix``, written once. Several camera players may start at
    the same moment on a fresh machine: each writes into its own temporary folder and renames it into
    place, so no reader ever sees a half-written file (on the H200 one player read an empty JPEG)."""
    if len(list(folder.glob(f'*{suffix}'))) == count:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    try:
        for name, data in files():
            (scratch / name).write_bytes(data)
        if len(list(folder.glob(f'*{suffix}'))) == count:  # another player finished first
            return folder
        if folder.exists():  # an incomplete folder from an older, non-atomic writer
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(scratch, folder)
        except OSError:  # another player renamed its copy first: same files, keep theirs
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def camera_sources() -> dict[str, pathlib.Path]:
    """Shipped image streams a camera player can replay, by name.

    ``vtest`` (pedestrians, colour video), ``visp_mire2`` and ``visp_mbt_cube`` (grey robot-camera
    frame folders), ``fashion_mnist`` (a folder of test images named ``<index>_<label>.png``),
    ``cifar10`` (1 000 CIFAR-10 test photos, ``<index>_<label>.jpg``: labelled, 32x32). A
    value is a video file or a folder of frames; sources whose package is missing are left out.
    """
    out: dict[str, pathlib.Path] = {}
    sources = image_sources()
    if 'vtest' in sources:
        out['vtest'] = sources['vtest'].paths[0]
    for name in ('visp_mire2', 'visp_mbt_cube'):
        if name in sources:
            out[name] = sources[name].paths[0].parent
    try:
        out['fashion_mnist'] = fashion_mnist_frames_dir()
    except (FileNotFoundError, OSError):
        pass
    try:
        out['cifar10'] = cifar10_frames_dir()
    except (FileNotFoundError, OSError):
        pass
    return out
