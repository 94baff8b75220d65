"""TrivialAugment on small photos (tools/photo_augment.py): what each operation does, and the batch."""
from __future__ import annotations

import pytest
import torch

from delen_ros.tools.photo_augment import OPS, apply_op, trivial_augment
from delen_ros.tools.train_cifar import main as train_main


def _photos(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _s(value: float, n: int = 8) -> torch.Tensor:
    return torch.full((n,), float(value))


def test_every_operation_at_zero_strength_but_the_absolute_ones_leaves_the_photo():
    x = _photos().float()
    for name, _ in OPS:
        if name in ('posterize', 'autocontrast'):
            continue   # posterize 0 keeps 8 bits (checked below); autocontrast has no strength
        out = apply_op(x, name, _s(0.0))
        if name == 'solarize':   # threshold 256: nothing is inverted
            assert torch.equal(out, x)
        else:
            assert torch.allclose(out, x, atol=1e-3), name
    assert torch.equal(apply_op(x, 'posterize', _s(0.0)), x)


def test_enhancing_operations_blend_toward_their_degenerate_image():
    x = _photos().float()
    assert torch.equal(apply_op(x, 'brightness', _s(-1.0)), torch.zeros_like(x))
    gray = apply_op(x, 'color', _s(-1.0))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    flat = apply_op(x, 'contrast', _s(-1.0))
    assert torch.allclose(flat, flat[:, :1, :1, :1].expand_as(flat))
    assert float((apply_op(x, 'brightness', _s(0.9)) - x).mean()) > 0   # brighter, clamped at 255
    assert float(apply_op(x, 'brightness', _s(0.9)).max()) <= 255


def test_posterize_solarize_and_autocontrast_do_what_pil_does():
    x = _photos().float()
    posterized = apply_op(x, 'posterize', _s(4.0))
    assert torch.equal(posterized % 16, torch.zeros_like(x)) and torch.all(x - posterized < 16)
    assert torch.equal(apply_op(x, 'solarize', _s(256.0)), 255.0 - x)            # threshold 0: all inverted
    dim = x * 0.5 + 20.0
    stretched = apply_op(dim, 'autocontrast', _s(0.0))
    assert torch.allclose(stretched.amin(dim=(2, 3)), torch.zeros(8, 3), atol=1e-3)
    assert torch.allclose(stretched.amax(dim=(2, 3)), torch.full((8, 3), 255.0), atol=1e-3)
    constant = torch.full((2, 3, 32, 32), 77.0)
    assert torch.equal(apply_op(constant, 'autocontrast', _s(0.0, 2)), constant)


def test_translation_moves_the_photo_and_fills_with_black():
    x = _photos().float() + 1.0   # no black pixel of its own
    out = apply_op(x, 'translate_x', _s(0.5))   # half the side: 16 px
    assert torch.equal(out[..., :16], x[..., 16:])
    assert torch.equal(out[..., 16:], torch.zeros_like(out[..., 16:]))
    rotated = apply_op(x, 'rotate', _s(30.0))
    assert not torch.equal(rotated, x) and float((rotated == 0).float().mean()) > 0.05   # black corners


def test_the_batch_keeps_shape_and_type_and_is_reproducible():
    x = _photos(64)
    a = trivial_augment(x, torch.Generator().manual_seed(3))
    b = trivial_augment(x, torch.Generator().manual_seed(3))
    c = trivial_augment(x, torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != x).flatten(1).any(dim=1).float().mean()
    assert 0.6 < float(changed) < 1.0   # one op each, identity among them (and weak draws)


def test_prob_zero_changes_nothing_and_bad_input_is_refused():
    x = _photos()
    assert torch.equal(trivial_augment(x, torch.Generator().manual_seed(0), prob=0.0), x)
    with pytest.raises(ValueError, match='prob'):
        trivial_augment(x, torch.Generator(), prob=1.5)
    with pytest.raises(ValueError, match='uint8'):
        trivial_augment(x.float(), torch.Generator())
    with pytest.raises(ValueError, match='unknown operation'):
        apply_op(x.float(), 'equalize', _s(0.0))


def test_the_trainer_refuses_a_share_outside_zero_to_one():
    with pytest.raises(SystemExit, match='trivial-augment'):
        train_main(['--trivial-augment', '1.5', '--data', '/nonexistent.npz'])
