"""Offline data: IDX reader, Fashion-MNIST, real-image sources, held-out splits, eval sets."""
import gzip
import multiprocessing
import pathlib

import cv2
import numpy as np
import pytest

from delen_ros.core import datasets

HAVE_FASHION = (datasets.FASHION_MNIST_DIR / 'train-images-idx3-ubyte.gz').exists()
HAVE_OPENCV_DOC = datasets.OPENCV_DATA_DIR.is_dir()
HAVE_VISP = datasets.VISP_DIR.is_dir()
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason='Debian dataset-fashion-mnist not installed')
needs_images = pytest.mark.skipif(not (HAVE_OPENCV_DOC and HAVE_VISP), reason='opencv-doc / visp-images-data missing')


def _write_idx(path, array, *, code=0x08, compress=False):
    header = bytes([0, 0, code, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize('compress', [False, True])
def test_read_idx(tmp_path, compress):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ('x.idx.gz' if compress else 'x.idx')
    _write_idx(path, array, compress=compress)
    np.testing.assert_array_equal(datasets.read_idx(path), array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([1, -2, 70000], dtype='>i4')
    _write_idx(tmp_path / 'x.idx', array, code=0x0C)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / 'x.idx'), [1, -2, 70000])


@pytest.mark.parametrize('data, match', [
    (b'\x01\x00\x08\x01\x00\x00\x00\x01\x05', 'not an IDX'),
    (b'\x00\x00\x07\x01\x00\x00\x00\x01\x05', '0x07'),
    (b'\x00\x00\x08\x01\x00\x00\x00\x03\x05', 'holds 1'),
])
def test_read_idx_rejects_bad_files(tmp_path, data, match):
    (tmp_path / 'bad.idx').write_bytes(data)
    with pytest.raises(ValueError, match=match):
        datasets.read_idx(tmp_path / 'bad.idx')


@needs_fashion
@pytest.mark.parametrize('split, n', [('train', 60000), ('test', 10000)])
def test_fashion_mnist(split, n):
    images, labels = datasets.load_fashion_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    # Fashion-MNIST is balanced: every class has exactly n / 10 images.
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n // 10] * 10)
    assert images.max() == 255 and images.min() == 0
    assert not images.flags.writeable  # cached and shared


def test_fashion_mnist_bad_split():
    with pytest.raises(ValueError, match="'validation'"):
        datasets.load_fashion_mnist('validation')


def test_fashion_mnist_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        datasets.load_fashion_mnist('test', root=tmp_path)


def test_imagenet_labels():
    labels = datasets.imagenet_labels()
    assert len(labels) == 1000
    if HAVE_OPENCV_DOC:
        assert labels[0] == 'tench, Tinca tinca'
        assert labels[243] == 'bull mastiff'


def test_imagenet_labels_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, 'OPENCV_DATA_DIR', tmp_path)
    labels = datasets.imagenet_labels()
    assert labels[0] == 'class_0' and labels[999] == 'class_999'


def test_find_file_and_gzipped_image(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ok, png = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    (tmp_path / 'a.png.gz').write_bytes(gzip.compress(png.tobytes()))
    found = datasets.find_file(tmp_path / 'a.png')
    assert found == tmp_path / 'a.png.gz'
    np.testing.assert_array_equal(datasets.read_image(found), image)  # RGB order restored
    assert datasets.find_file(tmp_path / 'missing.png') is None


def test_read_image_grey_and_garbage(tmp_path):
    cv2.imwrite(str(tmp_path / 'g.png'), np.full((8, 9), 7, np.uint8))
    assert datasets.read_image(tmp_path / 'g.png').shape == (8, 9)
    (tmp_path / 'junk.png').write_bytes(b'not an image')
    assert datasets.read_image(tmp_path / 'junk.png') is None


@pytest.mark.parametrize('compress', [False, True])
def test_read_video(tmp_path, compress):
    path = tmp_path / 'v.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (32, 24))
    if not writer.isOpened():
        pytest.skip('no MJPG writer in this OpenCV build')
    for i in range(6):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    if compress:
        gz = tmp_path / 'v.avi.gz'
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        path = gz
    frames = datasets.read_video(path, step=2)
    assert len(frames) == 3 and frames[0].shape == (24, 32, 3)
    assert abs(int(frames[1].mean()) - 80) <= 3  # frames 0, 2, 4 kept
    assert len(datasets.read_video(path, limit=2)) == 2
    with pytest.raises(ValueError, match='0'):
        datasets.read_video(path, step=0)


@needs_images
def test_image_sources_found():
    sources = datasets.image_sources()
    assert {'vtest', 'visp_mire2', 'visp_mbt_cube', 'stills', 'opencv_doc_pictures'} <= set(sources)
    assert len(sources['visp_mire2']) == 501
    assert len(sources['visp_mbt_cube']) == 218


@needs_images
def test_distillation_split_holds_out_whole_sequences():
    train = datasets.distillation_sources('train')
    test = datasets.distillation_sources('test')
    train_paths = {p for s in train for p in s.paths}
    test_paths = {p for s in test for p in s.paths}
    assert train_paths and test_paths and not train_paths & test_paths
    assert {s.name for s in test} >= set(datasets.HELD_OUT_SEQUENCES)
    assert not {s.name for s in train} & set(datasets.HELD_OUT_SEQUENCES)
    # Every still is in exactly one split.
    stills = {p for s in datasets.image_sources().values() if s.kind == 'stills' for p in s.paths}
    assert stills == {p for s in train + test if s.kind == 'stills' for p in s.paths}


@needs_fashion
def test_eval_set_fashion_mnist():
    a = datasets.eval_set('fashion_mnist', limit=100, seed=3)
    b = datasets.eval_set('fashion_mnist', limit=100, seed=3)
    assert len(a.images) == 100 and a.labels.shape == (100,)
    assert a.images[0].shape == (28, 28) and a.images[0].dtype == np.uint8
    np.testing.assert_array_equal(a.labels, b.labels)
    assert 'test set' in a.note
    assert len(datasets.eval_set('fashion_mnist').images) == 10000


@needs_images
def test_eval_set_efficientnet_is_unlabelled_held_out_data():
    data = datasets.eval_set('efficientnet_lite0', limit=5)
    assert len(data.images) == 5 and data.labels is None
    assert 'agreement' in data.note and 'vtest' in data.note


def test_eval_set_unknown_model():
    with pytest.raises(KeyError, match='fashion_mnist'):
        datasets.eval_set('resnet9000')


@needs_images
@needs_fashion
def test_camera_sources(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    sources = datasets.camera_sources()
    assert {'vtest', 'visp_mire2', 'visp_mbt_cube', 'fashion_mnist'} <= set(sources)
    assert sources['vtest'].is_file()
    assert sources['visp_mire2'].is_dir()
    frames = sorted(sources['fashion_mnist'].glob('*.png'))
    assert len(frames) == 200 and str(sources['fashion_mnist']).startswith(str(tmp_path))
    _, labels = datasets.load_fashion_mnist('test')
    first = frames[0].stem.split('_')
    assert int(first[1]) == labels[int(first[0])]
    assert cv2.imread(str(frames[0]), cv2.IMREAD_UNCHANGED).shape == (28, 28)


def _write_folder(folder: str) -> list[int]:
    """One camera player's start-up: materialise the folder, then read every file's size."""
    target = pathlib.Path(folder)
    datasets._write_once(target, '.bin', 40, lambda: ((f'{i:05d}.bin', bytes([i]) * 50_000) for i in range(40)))
    return sorted(p.stat().st_size for p in target.glob('*.bin'))


def test_frames_folder_written_once_by_racing_players(tmp_path):
    # eight players started together on a fresh machine; before, one read an empty, half-written JPEG
    folder = tmp_path / 'frames'
    with multiprocessing.get_context('spawn').Pool(8) as pool:
        sizes = pool.map(_write_folder, [str(folder)] * 8)
    assert all(s == [50_000] * 40 for s in sizes)
    assert [p.name for p in tmp_path.iterdir()] == ['frames']   # no scratch folder left behind


def test_frames_folder_replaces_an_incomplete_one(tmp_path):
    folder = tmp_path / 'frames'
    folder.mkdir()
    (folder / '00000.bin').write_bytes(b'')                      # an older writer stopped here
    assert _write_folder(str(folder)) == [50_000] * 40
