"""Augmentation drawn for the global batch and applied to any rows on the device (rald_fast/data/augment.py):
the default draws never change, a process's rows get exactly the pixels the whole batch would, and each
optional op (random resized crop, colour jitter, random erasing) is off by default and does what it says."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rald_fast.config import make_config
from rald_fast.data.augment import apply_augment, augment, draw_augment
from rald_fast.preprocess import Preprocess

EXTRAS = dict(rrc_scale=0.5, color_jitter=0.4, random_erasing=0.5)


def _batch(n: int = 12, s: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, s, s), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


def test_defaults_draw_flip_then_shifts_and_extras_come_after():
    cfg = make_config("tiny").data
    assert (cfg.hflip, cfg.shift, cfg.rrc_scale, cfg.color_jitter, cfg.random_erasing) == (True, 0.0625, 0, 0, 0)
    g, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    d = draw_augment(10, 32, g)
    flip = torch.rand(10, generator=ref) < 0.5
    dx, dy = torch.randint(0, 5, (10,), generator=ref), torch.randint(0, 5, (10,), generator=ref)
    assert torch.equal(d.flip, flip) and torch.equal(d.dx, dx) and torch.equal(d.dy, dy)
    assert torch.equal(g.get_state(), ref.get_state()) and d.rrc is None and d.jitter is None and d.erase is None
    e = draw_augment(10, 32, torch.Generator().manual_seed(5), **EXTRAS)
    assert torch.equal(e.flip, flip) and torch.equal(e.dx, dx) and torch.equal(e.dy, dy)


def test_rows_of_the_draws_give_the_rows_of_the_batch():
    x = _batch()
    for extras in ({}, EXTRAS):
        d = draw_augment(len(x), 16, torch.Generator().manual_seed(1), **extras)
        whole = apply_augment(x, d)
        assert whole.dtype == torch.float32 and whole.shape == x.shape
        parts = [apply_augment(x[r], d.rows(r)) for r in (slice(0, 5), slice(5, 12))]
        assert torch.equal(torch.cat(parts), whole), extras
        again = apply_augment(x, draw_augment(len(x), 16, torch.Generator().manual_seed(1), **extras))
        assert torch.equal(again, whole)
    assert torch.equal(augment(x, torch.Generator().manual_seed(1)),
                       apply_augment(x, draw_augment(len(x), 16, torch.Generator().manual_seed(1))))


def test_random_resized_crop_of_the_whole_image_is_identity_and_crops_zoom_in():
    x = _batch(6)
    d = draw_augment(6, 16, torch.Generator(), hflip=False, max_shift=0, rrc_scale=0.3)
    assert d.rrc[:, :2].prod(1).min() >= 0.3 - 1e-6 and d.rrc[:, :2].max() <= 1
    d.rrc[:] = torch.tensor([1.0, 1.0, 0.5, 0.5])
    assert torch.allclose(apply_augment(x, d), x.float(), atol=1e-3)
    d.rrc[:] = torch.tensor([0.5, 0.5, 0.25, 0.25])            # the top-left quarter, resized 2x
    out = apply_augment(x, d)
    zoom = F.interpolate(x[:, :, :8, :8].float(), size=16, mode="bilinear", align_corners=False)
    assert torch.allclose(out[..., :15, :15], zoom[..., :15, :15], atol=1e-3)  # the last row samples 7.25


def test_colour_jitter_keeps_the_range_and_unit_factors_change_nothing():
    x = _batch()
    d = draw_augment(len(x), 16, torch.Generator().manual_seed(2), hflip=False, max_shift=0, color_jitter=0.9)
    assert d.jitter.min() >= 0.1 - 1e-6 and d.jitter.max() <= 1.9 + 1e-6
    out = apply_augment(x, d)
    assert out.min() >= 0 and out.max() <= 255 and not torch.allclose(out, x.float())
    d.jitter[:] = 1.0
    assert torch.allclose(apply_augment(x, d), x.float(), atol=1e-3)


def test_random_erasing_sets_a_rectangle_to_the_mean():
    x = _batch(40)
    d = draw_augment(40, 16, torch.Generator().manual_seed(4), hflip=False, max_shift=0, random_erasing=0.5)
    z = Preprocess(16).normalize(apply_augment(x, d))
    ref = Preprocess(16).normalize(x)
    on = d.erase[:, 0] == 1
    assert 5 < int(on.sum()) < 35
    for i in range(40):
        _, x0, y0, x1, y1 = d.erase[i].tolist()
        if not on[i]:
            assert torch.equal(z[i], ref[i])
            continue
        assert 0 <= x0 < x1 <= 16 and 0 <= y0 < y1 <= 16
        assert z[i, :, y0:y1, x0:x1].abs().max() < 1e-5          # zero once normalised
        keep = torch.ones(16, 16, dtype=torch.bool)
        keep[y0:y1, x0:x1] = False
        assert torch.equal(z[i][:, keep], ref[i][:, keep])
