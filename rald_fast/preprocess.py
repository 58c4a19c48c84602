"""The one preprocessing path from an image file to the model's input, shared by every stage.

    file --decode--> upright RGB --crop (optional face box)--> resize S x S --normalise--> model

Training, evaluation, reference-bank building, folding, every exported artifact, the predictor and
the face pipeline all go through these functions, so a photo gives the same numbers everywhere:

- `open_rgb`: PIL decode, EXIF orientation applied (phone photos), converted to RGB (grey,
  palette and RGBA included; 16-bit and 32-bit grey and float images scaled to 8 bits by their bit
  depth, not clipped); a dataset's face box, in the stored image's pixels, is cropped first. An image
  over `max_pixels` (default `MAX_PIXELS`) is refused with one line before its pixels are decoded.
- `resize_square`: PIL bilinear to S x S (the one resize).
- `normalize`: (pixels / 255 - mean) / std (the one formula), for a uint8 batch in training and
  evaluation and inside the graph of the folded model and every artifact (float 0..255 input).
- `Preprocess`: input size, mean/std, channel order and layout; stored in every checkpoint and
  artifact so that no consumer can drift from training.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from rald_fast.errors import DataError, ImageTooLarge

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# file suffixes read as images by the dataset readers and the predictor
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

Box = tuple[float, float, float, float]  # face box (x0, y0, x1, y1) in pixels of the stored image
# the largest image decoded (width x height): 150 MP takes about 450 MB as RGB; a 12000 x 12000 scan fits,
# a decompression bomb does not (Pillow's own guard warns at 89 MP and refuses at 179 MP)
MAX_PIXELS = 150_000_000
# resize methods by name: what every artifact's metadata records (rald_fast/artifacts.py)
RESIZE = ("PIL Image.resize(BILINEAR) of the whole (cropped) image to S x S: a separable triangle filter whose "
          "support grows with the shrink factor (antialiased), horizontal pass then vertical, 8-bit "
          "between passes; docs/DEPLOY.md gives the recipe for other languages")


@dataclass(frozen=True)
class Preprocess:
    """What turns an image into the model's input; travels with the weights."""

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    resize: str = RESIZE  # how an image becomes S x S (`resize_square`); artifacts carry it for other callers

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(d["image_size"], tuple(d["mean"]), tuple(d["std"]), d.get("channel_order", "RGB"),
                   d.get("layout", "NCHW"), d.get("resize", RESIZE))

    def stats(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as (1, 3, 1, 1) float32 tensors."""
        return (torch.tensor(self.mean, device=device).view(1, 3, 1, 1),
                torch.tensor(self.std, device=device).view(1, 3, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0..255) (N, 3, S, S) -> float32 (N, 3, S, S), standardised."""
        return normalize(images.float(), *self.stats(images.device))

    def load(self, path: str | Path, box: Box | None = None) -> np.ndarray:
        """(S, S, 3) uint8 RGB of an image file, as training decodes it."""
        return resize_square(open_rgb(path, box), self.image_size)


def normalize(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(pixels / 255 - mean) / std: float pixels in 0..255, mean and std broadcastable (1, 3, 1, 1)."""
    return (pixels / 255.0 - mean) / std


def open_rgb(path: str | Path, box: Box | None = None, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """An image file as an upright RGB PIL image, cropped to `box` (stored pixels) when given.

    DataError names the file: missing, not an image, truncated, over `max_pixels` (None: no limit),
    or a box with nothing inside.
    """
    path = Path(path)
    try:
        return _decode(path, path, box, max_pixels)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None


def decode_bytes(data: bytes, name: str, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """`open_rgb` of an encoded image held in memory (an HTTP body); DataError names it `name`."""
    return _decode(io.BytesIO(data), name, None, max_pixels)


def _decode(source, name, box: Box | None, max_pixels: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():  # our own limit replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:  # lazy: only the header is read here
                if max_pixels is not None and im.width * im.height > max_pixels:
                    raise ImageTooLarge(f"{name}: {im.width} x {im.height} = {im.width * im.height / 1e6:.0f} MP is "
                                    f"over the pixel limit of {max_pixels / 1e6:.0f} MP (--max-pixels); "
                                    f"downscale it first or raise the limit")
                if box is not None:
                    im = im.crop(_clamp_box(box, im.size, name))
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except (DataError, FileNotFoundError):
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError,
            EOFError, struct.error, IndexError, TypeError) as e:  # what Pillow's plugins raise on damaged files
        raise DataError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode. Grey images deeper than 8 bits (16-bit "I;16*", 32-bit "I", float
    "F") are scaled by their range, not clipped: Pillow's own convert("RGB") of a 16-bit grey image
    saturates everything above 255 to white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            top = 1.0 if a.size and np.nanmax(a) <= 1.0 and np.nanmin(a) >= 0.0 else 255.0  # 0..1 or 0..255
        else:  # 16-bit data (also in a 32-bit container), else the full 32-bit range
            top = 65535.0 if not a.size or a.max() <= 65535 else 4294967295.0
            a = a - min(0.0, float(a.min(initial=0.0)))
        grey = np.clip(np.nan_to_num(a) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return im.convert("RGB")


def _clamp_box(box: Box, size: tuple[int, int], path: Path) -> tuple[int, int, int, int]:
    """Integer box inside the image; a box with (almost) nothing inside it is an error."""
    w, h = size
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise DataError(f"{path}: face box {tuple(round(float(v), 1) for v in box)} lies outside "
                        f"the {w}x{h} image")
    return x0, y0, x1, y1


def as_rgb_array(image, what: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image (any mode, `to_rgb`) or a uint8 array (H, W), (H, W, 3) or
    (H, W, 4)."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: dtype {image.dtype}, expected uint8 RGB in 0..255 (for 0..1 floats "
                         f"use (x * 255).round().astype(np.uint8))")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"{what}: shape {image.shape}, expected (H, W, 3) RGB or (H, W) grey")
    return np.ascontiguousarray(image[..., :3])


def resize_square(image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a PIL image or (H, W, 3) uint8 array resized whole, PIL bilinear."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)
