"""The one preprocessing path (rald_fast/preprocess.py) and the training augmentation (data/augment.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rald_fast.data.augment import augment
from rald_fast.data.dataset import decode_image
from rald_fast.errors import DataError, MediaError
from rald_fast.predict.media import read_image
from rald_fast.preprocess import (IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, RESIZE, Preprocess, as_rgb_array,
                                  normalize, open_rgb, resize_square)

RED, GREEN = (255, 0, 0), (0, 255, 0)


def _pattern(h: int = 12, w: int = 16) -> np.ndarray:
    """(h, w, 3) uint8 with every pixel distinct enough to locate a crop."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 15, y * 20, (x + y) * 5], -1).astype(np.uint8)


def _two_halves(h: int = 20, w: int = 40) -> np.ndarray:
    """Left half red, right half green."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2], a[:, w // 2:] = RED, GREEN
    return a


def _save_rotated(path, arr: np.ndarray, **kw):
    """Store `arr` with EXIF orientation 6: viewers rotate it 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, exif=exif, **kw)


# --- open_rgb ------------------------------------------------------------------------------------
def test_open_rgb_grey_palette_rgba(tmp_path):
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    out = np.asarray(open_rgb(tmp_path / "grey.png"))
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, 2))

    pal = Image.new("P", (5, 4))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((2, 1), 1)
    pal.save(tmp_path / "pal.png")
    im = open_rgb(tmp_path / "pal.png")
    assert im.mode == "RGB" and im.size == (5, 4)
    out = np.asarray(im)
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 2]) == (200, 100, 50)

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = _pattern(4, 5)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # a transparent pixel keeps its colour (convert drops alpha)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    im = open_rgb(tmp_path / "rgba.png")
    assert im.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(im), rgba[..., :3])


def test_open_rgb_exif_orientation_jpeg(tmp_path):
    path = tmp_path / "phone.jpg"
    _save_rotated(path, _two_halves(20, 40), quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)  # stored landscape
    out = np.asarray(open_rgb(path))
    assert out.shape == (40, 20, 3)  # upright portrait: width and height swapped
    # 90 degrees clockwise: the stored left (red) half is now the top half, the right (green) the bottom
    np.testing.assert_allclose(out[5, 10], RED, atol=8)
    np.testing.assert_allclose(out[35, 10], GREEN, atol=8)


def test_open_rgb_box_crop_in_stored_pixels(tmp_path):
    arr = _pattern(12, 16)
    Image.fromarray(arr).save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "p.png", (3, 2, 10, 8))), arr[2:8, 3:10])
    # fractional boxes grow to whole pixels (floor, ceil); a box over the border is clamped
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "p.png", (2.5, 1.2, 9.6, 7.9))), arr[1:8, 2:10])
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "p.png", (-5, -4, 4, 3))), arr[:3, :4])
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "p.png", (10, 6, 99, 99))), arr[6:, 10:])


def test_open_rgb_box_is_cropped_before_the_exif_turn(tmp_path):
    """The box is in the stored image's pixels (as dataset annotations are); the crop is then turned."""
    path = tmp_path / "phone.png"  # PNG: lossless, exact pixels
    arr = _pattern(20, 40)
    _save_rotated(path, arr)
    np.testing.assert_array_equal(np.asarray(open_rgb(path)), np.rot90(arr, -1))
    np.testing.assert_array_equal(np.asarray(open_rgb(path, (5, 2, 30, 15))), np.rot90(arr[2:15, 5:30], -1))


def test_open_rgb_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        open_rgb(missing)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all\n")
    with pytest.raises(DataError, match=re.escape(str(text)) + ".*cannot decode"):
        open_rgb(text)
    good = tmp_path / "p.png"
    Image.fromarray(_pattern(12, 16)).save(good)
    for box in [(20, 20, 30, 30), (-10, -10, -1, -1), (3, 3, 4, 10)]:  # outside, outside, 1 px wide
        with pytest.raises(DataError, match=re.escape(str(good)) + ".*outside the 16x12 image"):
            open_rgb(good, box)


def test_image_suffixes():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp"} <= IMAGE_SUFFIXES
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert ".mp4" not in IMAGE_SUFFIXES and ".txt" not in IMAGE_SUFFIXES


# --- as_rgb_array, resize_square -----------------------------------------------------------------
def test_as_rgb_array():
    rgb = _pattern(4, 5)
    np.testing.assert_array_equal(as_rgb_array(rgb), rgb)
    np.testing.assert_array_equal(as_rgb_array(Image.fromarray(rgb)), rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(as_rgb_array(grey), np.repeat(grey[:, :, None], 3, 2))
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], -1)
    out = as_rgb_array(rgba)
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.c_contiguous
    with pytest.raises(ValueError, match="dtype float"):
        as_rgb_array(rgb.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="shape"):
        as_rgb_array(np.zeros((4, 5, 2), np.uint8))


def test_resize_square_pil_and_array_agree():
    arr = _pattern(12, 16)
    a, b = resize_square(arr, 8), resize_square(Image.fromarray(arr), 8)
    assert a.shape == (8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.asarray(Image.fromarray(arr).resize((8, 8), Image.BILINEAR)))
    up = resize_square(arr, 20)
    assert up.shape == (20, 20, 3) and up.dtype == np.uint8


def test_resize_square_noop_at_target_size():
    sq = _pattern(9, 9)
    np.testing.assert_array_equal(resize_square(sq, 9), sq)
    np.testing.assert_array_equal(resize_square(Image.fromarray(sq), 9), sq)
    # a non-contiguous view is accepted
    np.testing.assert_array_equal(resize_square(_pattern(9, 18)[:, ::2], 9), _pattern(9, 18)[:, ::2])


# --- normalize, Preprocess -----------------------------------------------------------------------
def _by_hand(x: np.ndarray, mean, std) -> np.ndarray:
    x = x.astype(np.float64)
    return (x / 255.0 - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_preprocess_normalize_by_hand(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 5, 4), generator=g).to(dtype)
    for pre in (Preprocess(4), Preprocess(4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))):
        out = pre.normalize(x)
        assert out.dtype == torch.float32 and out.shape == x.shape
        np.testing.assert_allclose(out.double().numpy(), _by_hand(x.numpy(), pre.mean, pre.std), rtol=0, atol=1e-6)
    assert (Preprocess(4).mean, Preprocess(4).std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_normalize_function_by_hand():
    x = torch.tensor([0.0, 127.5, 255.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2).contiguous()
    mean, std = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    out = normalize(x, mean, std)
    # channel 0: (0 - .5) / .5 = -1; channel 1: (.5 - .5) / .25 = 0; channel 2: (1 - .5) / 2 = .25
    np.testing.assert_allclose(out[:, :, 0, 0].numpy(), [[-1.0, 0.0, 0.25]] * 2, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out.double().numpy(), _by_hand(x.numpy(), [0.5] * 3, [0.5, 0.25, 2.0]), atol=1e-6)


def test_preprocess_dict_round_trip():
    for pre in (Preprocess(112), Preprocess(64, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "BGR", "NHWC")):
        assert Preprocess.from_dict(pre.to_dict()) == pre
        assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre  # lists back to tuples
    assert Preprocess(112).to_dict() == {"image_size": 112, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                         "channel_order": "RGB", "layout": "NCHW", "resize": RESIZE}
    old = {"image_size": 32, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}  # no channel_order / layout / resize
    assert Preprocess.from_dict(old) == Preprocess(32, (0.1, 0.2, 0.3), (1, 1, 1), "RGB", "NCHW", RESIZE)
    assert "BILINEAR" in RESIZE and Preprocess.from_dict(dict(old, resize="x")).resize == "x"


# --- one decode path -----------------------------------------------------------------------------
def test_decode_image_and_read_image_share_open_rgb(tmp_path):
    path = tmp_path / "phone.jpg"
    _save_rotated(path, _pattern(20, 40), quality=90)
    box = (4, 3, 30, 18)
    for b in (None, box):
        out = decode_image(path, 16, b)
        assert out.shape == (3, 16, 16) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, resize_square(open_rgb(path, b), 16).transpose(2, 0, 1))
    np.testing.assert_array_equal(Preprocess(16).load(path, box), decode_image(path, 16, box).transpose(1, 2, 0))
    img = read_image(path)
    assert img.shape == (40, 20, 3) and img.dtype == np.uint8  # upright, like training
    np.testing.assert_array_equal(img, np.asarray(open_rgb(path)))
    with pytest.raises(MediaError, match=re.escape(str(tmp_path / "gone.png"))):
        read_image(tmp_path / "gone.png")


# --- augment -------------------------------------------------------------------------------------
def _batch(n: int = 32, s: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, s, s), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


def test_augment_flip_only():
    x = _batch()
    out = augment(x, torch.Generator().manual_seed(0), hflip=True, max_shift=0)
    assert out.dtype == torch.float32 and out.shape == x.shape
    xf = x.float()
    same = [torch.equal(out[i], xf[i]) for i in range(len(x))]
    mirrored = [torch.equal(out[i], xf[i].flip(-1)) for i in range(len(x))]
    assert all(a or b for a, b in zip(same, mirrored))
    assert any(same) and any(mirrored)


def test_augment_same_seed_same_output():
    x = _batch()
    a = augment(x, torch.Generator().manual_seed(7), hflip=True, max_shift=0.25)
    b = augment(x, torch.Generator().manual_seed(7), hflip=True, max_shift=0.25)
    assert torch.equal(a, b)
    c = augment(x, torch.Generator().manual_seed(8), hflip=True, max_shift=0.25)
    assert not torch.equal(a, c)


def test_augment_translation_is_a_window_of_the_reflect_padded_image():
    x, s, pad = _batch(16, 8), 8, 2  # max_shift 0.25 of 8 px = 2 px
    out = augment(x, torch.Generator().manual_seed(0), hflip=True, max_shift=0.25)
    assert out.shape == x.shape and out.dtype == torch.float32
    shifts = set()
    for i in range(len(x)):
        windows = {(flip, dy, dx)
                   for flip in (False, True)
                   for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(out[i], F.pad((x[i].float().flip(-1) if flip else x[i].float())[None],
                                                (pad,) * 4, mode="reflect")[0, :, dy:dy + s, dx:dx + s])}
        assert windows, f"image {i} is no flip + shift of its input"
        shifts |= {(dy, dx) for _, dy, dx in windows}
    assert len(shifts) > 1  # the shifts vary across the batch


def test_augment_nothing_is_identity():
    x = _batch()
    out = augment(x, torch.Generator().manual_seed(0), hflip=False, max_shift=0)
    assert out.dtype == torch.float32
    assert torch.equal(out, x.float())
    xf = x.float() / 3
    assert torch.equal(augment(xf, torch.Generator().manual_seed(0), hflip=False, max_shift=0), xf)
