"""area_resize(): cv2's INTER_AREA in torch (the device preprocessing's resize), checked against cv2 on CPU."""
import cv2
import numpy as np
import pytest
import torch

from delen_ros.core.area_resize import area_resize, area_weights, growth_factors

# (source h, w) -> (target h, w): integer and fractional factors, shrinking, growing and mixed
SIZES = [((32, 32), (160, 160)), ((480, 640), (160, 160)), ((480, 640), (32, 48)), ((32, 32), (100, 70)),
         ((28, 28), (32, 48)), ((100, 90), (28, 28)), ((30, 50), (45, 20)), ((7, 5), (16, 16)),
         ((1, 1), (28, 28)), ((3, 1000), (28, 28)), ((17, 23), (16, 22))]
EXACT = {((32, 32), (160, 160)), ((480, 640), (160, 160)), ((100, 90), (28, 28)), ((1, 1), (28, 28))}


def _noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize('src, dst', SIZES, ids=[f'{a}->{b}' for a, b in SIZES])
def test_matches_cv2_inter_area_within_one_level(src, dst):
    image = _noise((*src, 3))
    expected = cv2.resize(image, dst[::-1], interpolation=cv2.INTER_AREA).astype(np.float32)
    out = area_resize(torch.from_numpy(image).permute(2, 0, 1)[None], dst)[0].permute(1, 2, 0).numpy()
    assert out.dtype == np.float32 and out.shape == expected.shape
    diff = np.abs(out - expected)
    assert diff.max() <= 1.0                 # cv2's fixed-point rounding of a tie, at most
    assert (diff > 0).mean() < 0.15
    if (src, dst) in EXACT:                  # integer factors: the same pixels
        assert diff.max() == 0


def test_growing_by_an_integer_factor_replicates_pixels_unlike_bilinear():
    image = _noise((32, 32, 3), seed=1)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    out = area_resize(x, (160, 160))
    torch.testing.assert_close(out[0, :, ::5, ::5], x[0].float(), atol=0, rtol=0)
    torch.testing.assert_close(out[0, :, 4::5, 4::5], x[0].float(), atol=0, rtol=0)
    bilinear = torch.nn.functional.interpolate(x.float(), size=(160, 160), mode='bilinear', align_corners=False)
    assert (bilinear - out).abs().mean() > 10   # what the device path gave before


def test_weights_are_convex_rows():
    for src, dst in ((480, 160), (640, 48), (32, 160), (7, 16), (1, 28), (1000, 28)):
        for box in (True, False):
            w = area_weights(src, dst, box=box)
            assert w.shape == (dst, src) and (w >= 0).all()
            np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)


def test_the_same_size_is_left_alone_and_batches_resize_frame_by_frame():
    x = torch.from_numpy(_noise((2, 3, 28, 28)))
    assert area_resize(x, (28, 28)) is x
    batch = torch.from_numpy(_noise((3, 3, 30, 50), seed=2))
    one_by_one = torch.cat([area_resize(batch[i:i + 1], (45, 20)) for i in range(3)])
    torch.testing.assert_close(area_resize(batch, (45, 20)), one_by_one, atol=0, rtol=0)


@pytest.mark.parametrize('src, dst', [(0, 5), (5, 0)])
def test_rejects_empty_sizes(src, dst):
    with pytest.raises(ValueError, match='>= 1'):
        area_weights(src, dst, box=True)


@pytest.mark.parametrize('src, dst, factors', [((32, 32), (160, 160), (5, 5)), ((1, 1), (28, 28), (28, 28)),
                                               ((8, 16), (16, 16), (2, 1)), ((32, 32), (32, 32), None),
                                               ((480, 640), (160, 160), None), ((30, 32), (160, 160), None),
                                               ((32, 32), (100, 70), None)])
def test_growth_factors_are_whole_growth_only(src, dst, factors):
    assert growth_factors(src, dst) == factors


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_normalise_grows_in_its_one_kernel_as_the_resize_would(memory_format, dtype):
    from delen_ros.core.preprocess import normalise
    frames = torch.from_numpy(_noise((2, 8, 6, 3))).permute(0, 3, 1, 2)   # a camera's layout, viewed as N x C x H x W
    inv_std, shift = torch.tensor([0.5, 2.0, 1.0]).view(1, 3, 1, 1), torch.tensor([-1.0, 0.0, 3.0]).view(1, 3, 1, 1)
    grown = normalise(frames, inv_std, shift, dtype=dtype, memory_format=memory_format, grow=(4, 5))
    resized = normalise(area_resize(frames, (32, 30)), inv_std, shift, dtype=dtype, memory_format=memory_format)
    assert grown.shape == (2, 3, 32, 30) and grown.dtype == dtype and grown.is_contiguous(memory_format=memory_format)
    assert torch.equal(grown, resized)
