"""preprocess(): any-size RGB/grey uint8 images -> normalised N x C x H x W float32 batches."""
import contextlib

import cv2
import numpy as np
import pytest
import torch

from delen_ros.core.multi_exit import ModelInfo
from delen_ros.core.preprocess import check_image, normalisation, normalise, preprocess

GREY = ModelInfo(name='grey', input_size=(28, 28), in_channels=1, mean=(72.94,), std=(90.02,),
                 labels=tuple('abc'), exit_names=('e0',), exit_accuracy=(0.5,), accuracy_note='test')
RGB = ModelInfo(name='rgb', input_size=(32, 48), in_channels=3, mean=(127.0, 127.0, 127.0),
                std=(128.0, 128.0, 128.0), labels=tuple('abc'), exit_names=('e0',), exit_accuracy=(0.5,),
                accuracy_note='test')


def _rng_image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize('info', [GREY, RGB], ids=['grey-model', 'rgb-model'])
@pytest.mark.parametrize('shape', [(28, 28), (480, 640), (480, 640, 3), (1, 1), (3, 1000), (1000, 3, 3), (5, 7, 1)])
def test_shapes_and_dtype(info, shape):
    x = preprocess([_rng_image(shape), _rng_image(shape, 1)], info)
    assert x.shape == (2, info.in_channels, *info.input_size)
    assert x.dtype == torch.float32
    assert x.is_contiguous()


@pytest.mark.parametrize('info', [GREY, RGB], ids=['grey-model', 'rgb-model'])
@pytest.mark.parametrize('pixel', [0, 73, 255])
def test_constant_image_normalises_to_known_value(info, pixel):
    image = np.full((50, 70, 3), pixel, np.uint8)
    x = preprocess([image], info)
    expected = (pixel - info.mean[0]) / info.std[0]
    torch.testing.assert_close(x, torch.full_like(x, expected), atol=1e-5, rtol=0)


def test_rgb_to_grey_uses_luma():
    red = np.zeros((28, 28, 3), np.uint8)
    red[..., 0] = 255  # RGB order: red is channel 0
    x = preprocess([red], GREY)
    luma = cv2.cvtColor(red, cv2.COLOR_RGB2GRAY)[0, 0]  # 76: 0.299 * 255
    assert luma == 76
    torch.testing.assert_close(x, torch.full_like(x, (76 - 72.94) / 90.02), atol=1e-5, rtol=0)


def test_grey_to_rgb_repeats_the_channel():
    x = preprocess([_rng_image((40, 30))], RGB)
    torch.testing.assert_close(x[:, 0], x[:, 1])
    torch.testing.assert_close(x[:, 0], x[:, 2])


def test_resize_is_inter_area():
    image = _rng_image((480, 640, 3))
    expected = cv2.resize(image, (48, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    expected = torch.from_numpy((expected - 127.0) / 128.0).permute(2, 0, 1)
    torch.testing.assert_close(preprocess([image], RGB)[0], expected)


@pytest.mark.parametrize('info', [GREY, RGB], ids=['grey-model', 'rgb-model'])
def test_batched_equals_one_by_one(info):
    images = [_rng_image((480, 640, 3), 0), _rng_image((100, 90), 1), _rng_image((480, 640, 3), 2),
              _rng_image((28, 28), 3), _rng_image((100, 90), 4)]
    batch = preprocess(images, info)
    singles = torch.cat([preprocess([im], info) for im in images])
    torch.testing.assert_close(batch, singles, atol=0, rtol=0)


def test_input_is_not_modified():
    image = _rng_image((60, 80, 3))
    before = image.copy()
    preprocess([image, image], GREY)
    np.testing.assert_array_equal(image, before)


def test_empty_batch():
    assert preprocess([], RGB).shape == (0, 3, 32, 48)


@pytest.mark.parametrize('bad, match', [
    (np.zeros((10, 10), np.float32), 'float32'),
    (np.zeros((10, 10, 4), np.uint8), r'\(10, 10, 4\)'),
    (np.zeros((2, 10, 10, 3), np.uint8), r'\(2, 10, 10, 3\)'),
    (np.zeros((10,), np.uint8), r'\(10,\)'),
    (np.zeros((0, 10, 3), np.uint8), r'\(0, 10, 3\)'),
    (np.zeros((10, 0), np.uint8), r'\(10, 0\)'),
    ([[1, 2], [3, 4]], 'list'),
])
def test_rejects_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        preprocess([np.zeros((5, 5), np.uint8), bad], GREY)


def test_rejects_a_bare_array():
    with pytest.raises(ValueError, match=r'\(3, 28, 28\)'):
        preprocess(np.zeros((3, 28, 28), np.uint8), GREY)


def test_check_image_squeezes_single_channel():
    assert check_image(np.zeros((4, 5, 1), np.uint8)).shape == (4, 5)


# --- DevicePreprocessor (CUDA only) --------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['float32', 'bfloat16'])
def test_normalise_in_one_pass_matches_the_float_path_then_cast(dtype):
    """The device path's one kernel for frames at the model's size: the CPU path's figures, rounded once
    into the runner's dtype, laid out channels-last as it asked."""
    images = [_rng_image((32, 48, 3), seed=i) for i in range(3)]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)   # NHWC bytes seen as NCHW, as uploaded
    mean, inv_std = normalisation(RGB, 'cpu')
    for pixels in (x, x.float()):   # as uploaded, or as a resize leaves them
        out = normalise(pixels, inv_std, -mean * inv_std, dtype=dtype, memory_format=torch.channels_last)
        assert out.dtype == dtype and out.shape == (3, 3, 32, 48)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, preprocess(images, RGB).to(dtype), atol=1e-6,
                                   rtol=0 if dtype == torch.float32 else 8e-3)


@needs_cuda
@pytest.mark.parametrize('info', [GREY, RGB], ids=['grey-model', 'rgb-model'])
def test_device_preprocessing_matches_the_cpu_path(info):
    from delen_ros.core.preprocess import DevicePreprocessor
    noise = _rng_image((480, 640, 3))
    # mixed shapes, grey and colour, shrunk and grown (by an integer factor and not)
    images = [noise, noise[:, :, 0].copy(), noise[::2, ::2].copy(), _rng_image((16, 24, 3), 1), _rng_image((20, 30), 2)]
    pre = DevicePreprocessor(info, torch.device('cuda'))
    x = pre(images)
    assert x.device.type == 'cuda' and x.shape == (5, info.in_channels, *info.input_size)
    one_level = 1.0 / min(info.std) + 1e-5   # cv2's fixed-point rounding of a tie, at most
    torch.testing.assert_close(x.cpu(), preprocess(images, info), atol=one_level, rtol=0)


@needs_cuda
def test_device_preprocessing_grows_a_photo_as_the_cpu_path_does():
    from delen_ros.core.preprocess import DevicePreprocessor
    photo = _rng_image((16, 24, 3), 3)   # 2x to the model's 32 x 48: cv2.INTER_AREA replicates pixels
    x = DevicePreprocessor(RGB, torch.device('cuda'))([photo])
    torch.testing.assert_close(x.cpu(), preprocess([photo], RGB), atol=1e-6, rtol=0)


@needs_cuda
def test_device_preprocessing_of_model_sized_frames_is_one_pass_in_the_runners_dtype():
    from delen_ros.core.preprocess import DevicePreprocessor
    images = [_rng_image((32, 48, 3), seed=i) for i in range(2)]
    pre = DevicePreprocessor(RGB, torch.device('cuda'), dtype=torch.float16, memory_format=torch.channels_last)
    x = pre([pre.upload(im) for im in images])
    assert x.dtype == torch.float16 and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.float().cpu(), preprocess(images, RGB), atol=4e-3, rtol=0)


@needs_cuda
def test_device_preprocessing_takes_strided_views_and_reuses_staging():
    from delen_ros.core.preprocess import DevicePreprocessor
    rows = cv2.GaussianBlur(_rng_image((48, 100 * 3 + 8)), (0, 0), 4)   # padded rows, as a message view
    view = rows[:, :300].reshape(48, 100, 3)
    pre = DevicePreprocessor(RGB, torch.device('cuda'), dtype=torch.float16, memory_format=torch.channels_last)
    first = pre([view])
    again = pre([view])
    assert first.dtype == torch.float16 and first.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first.float().cpu(), preprocess([np.ascontiguousarray(view)], RGB), atol=0.05, rtol=0)
    for size in range(20):                            # many shapes: the staging cache stays bounded
        pre([_rng_image((10 + size, 10, 3))])
    assert len(pre._staging) <= 8


@needs_cuda
def test_uploaded_frames_match_staged_ones_and_free_the_callers_buffer():
    from delen_ros.core.preprocess import DevicePreprocessor
    smooth = cv2.GaussianBlur(_rng_image((480, 640, 3)), (0, 0), 8)
    grey = smooth[:, :, 0].copy()
    pre = DevicePreprocessor(RGB, torch.device('cuda'))
    source = smooth.copy()
    uploaded = pre.upload(source)
    source[:] = 0                                     # the caller's buffer is free once upload() returns
    mixed = pre([uploaded, grey, pre.upload(grey)])  # uploaded and host frames in one batch, in order
    torch.testing.assert_close(mixed.cpu(), preprocess([smooth, grey, grey], RGB), atol=0.05, rtol=0)
    for size in range(20):                            # many shapes: the frame buffers stay bounded
        pre([pre.upload(_rng_image((10 + size, 10, 3)))])
    assert len(pre._frame_buffers) <= 8
    with pytest.raises(ValueError, match='uint8'):
        pre.upload(np.zeros((4, 4, 3), np.float32))


@contextlib.contextmanager
def _registered_ring(slots: int, nbytes: int):
    """A frame ring (writer, reader) in /dev/shm where it has room, as the receivers' rings, its reader's mapping
    registered with CUDA; skips where it is not on a tmpfs. Unregistered and removed after."""
    from delen_ros.core.frame_ring import FrameRing
    from delen_ros.core.host_memory import HOST_MEMORY, pinnable
    writer = FrameRing.create(slots, nbytes)
    reader = FrameRing.attach(writer.path)
    if not pinnable(writer.path):
        pytest.skip(f'{writer.path} is not on a tmpfs')
    assert HOST_MEMORY.register(reader.address, reader.map_bytes), 'the driver pins a mapped ring'
    try:
        yield writer, reader
    finally:
        HOST_MEMORY.unregister(reader.address)
    assert len(HOST_MEMORY) == 0
    reader.close()
    writer.close(unlink=True)


@needs_cuda
def test_frames_in_a_registered_ring_upload_in_place_and_free_their_slot_when_done():
    from delen_ros.core.preprocess import DevicePreprocessor
    smooth = cv2.GaussianBlur(_rng_image((480, 640, 3)), (0, 0), 8)
    with _registered_ring(2, smooth.nbytes) as (writer, reader):
        pre = DevicePreprocessor(RGB, torch.device('cuda'))
        slot = writer.write(smooth.tobytes())
        frame = np.frombuffer(reader.view(slot, smooth.nbytes), np.uint8).reshape(smooth.shape)
        uploaded = pre.upload(frame)
        assert len(pre._in_place) == 1 and not pre._frame_buffers, 'no staging buffer: copied from the slot'
        del frame
        assert reader.busy() == 1, 'the slot stays busy while its copy may still run'
        x = pre([uploaded])
        torch.testing.assert_close(x.cpu(), preprocess([smooth], RGB), atol=0.05, rtol=0)
        torch.cuda.synchronize()
        pre.upload(smooth.copy())                     # outside the ring: staged, and drains finished copies
        assert not pre._in_place and reader.busy() == 0
        # a slot's frame handed to the batch itself (not uploaded ahead): copied from the slot too
        slot = writer.write(smooth.tobytes())
        frame = np.frombuffer(reader.view(slot, smooth.nbytes), np.uint8).reshape(smooth.shape)
        staged = len(pre._staging)
        x = pre([frame, smooth.copy()])
        assert len(pre._in_place) == 1 and len(pre._staging) == staged + 1, 'the ring frame in place, the other staged'
        torch.testing.assert_close(x.cpu(), preprocess([smooth, smooth], RGB), atol=0.05, rtol=0)
        del frame
        torch.cuda.synchronize()
        pre.upload(smooth.copy())
        assert not pre._in_place and reader.busy() == 0


@needs_cuda
def test_a_burst_of_ring_frames_uploads_as_one_copy_and_the_others_one_at_a_time():
    """upload_many (the frame reader's burst, DELEN_BATCH_UPLOADS=1): same-shaped frames in a registered ring
    go as rows of one device tensor behind one event; a frame outside the ring is staged alone; the
    answers are upload()'s."""
    from delen_ros.core.preprocess import DevicePreprocessor
    frames = [cv2.GaussianBlur(_rng_image((480, 640, 3)), (0, 0), 8 + i) for i in range(3)]
    with _registered_ring(4, frames[0].nbytes) as (writer, reader):
        pre = DevicePreprocessor(RGB, torch.device('cuda'))
        views = [np.frombuffer(reader.view(writer.write(f.tobytes()), f.nbytes), np.uint8).reshape(f.shape)
                 for f in frames[:2]]
        copies, in_place = [], pre._upload_in_place
        pre._upload_in_place = lambda images, shape: copies.append(len(images)) or in_place(images, shape)
        uploaded = pre.upload_many([views[0], frames[2].copy(), views[1]])
        assert uploaded[0].data_ptr() + frames[0].nbytes == uploaded[2].data_ptr(), 'rows of one tensor'
        # one launch behind one event (upload() of the other frame may already have let them go: an H200 is quick)
        assert copies == [2]
        del views
        x = pre(uploaded)
        torch.testing.assert_close(x.cpu(), preprocess([frames[0], frames[2], frames[1]], RGB), atol=0.05, rtol=0)
        torch.cuda.synchronize()
        pre.upload(frames[0].copy())   # drains finished copies: the slots go back
        assert not pre._in_place and reader.busy() == 0


@needs_cuda
def test_a_refused_registration_leaves_cuda_working(tmp_path):
    import mmap
    from delen_ros.core.host_memory import HostMemory, pinnable
    if pinnable(str(tmp_path)):
        pytest.skip(f'{tmp_path} is on a tmpfs: the driver would not refuse it')
    path = tmp_path / 'plain_file'
    path.write_bytes(bytes(1 << 20))
    with open(path, 'r+b') as f:
        mm = mmap.mmap(f.fileno(), 1 << 20)
    view = np.frombuffer(mm, np.uint8)
    memory = HostMemory()
    memory.register(view.__array_interface__['data'][0], 1 << 20)   # refused or not, CUDA must go on
    x = torch.ones(4, device='cuda') * 2                             # a launch checks the last CUDA error
    assert float(x.sum()) == 8.0
    for start in list(memory._starts):
        memory.unregister(start)
    del view
    mm.close()
