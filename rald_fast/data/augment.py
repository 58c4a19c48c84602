"""Training augmentation in two halves: `draw_augment` (the random draws of a whole global batch, on
the CPU, from the per-epoch generator) and `apply_augment` (the pixel ops, on any device, on any rows
of that batch).

Why two halves: under torchrun every process walks the same global batches but holds only its own
rows. Every process makes the global batch's draws from the same generator in the same order (a few
small vectors per step), keeps its rows' draws (`AugmentDraws.rows`) and applies them to its own
images on the training device. Each pixel op works on one image at a time, so N processes produce
exactly the pixels one process would, and a resumed run (the generator is seeded per (seed, epoch))
continues with the draws an uninterrupted run would have made.

The ops, each a flag (`--hflip`, `--shift`, `--rrc-scale`, `--color-jitter`, `--random-erasing`):
- horizontal flip (on by default) and translation (reflect-pad, then crop; on by default, 1/16 of
  the side) are drawn first, in this order: the draws of the default configuration never change;
- random resized crop (area share in [MIN, 1], aspect 3/4..4/3, bilinear back to S x S), colour
  jitter (brightness, contrast, saturation in [1 - S, 1 + S]) and random erasing (with probability P
  a rectangle of 2-33 % of the image, aspect 0.3..3.3, set to the normalisation mean, i.e. 0 after
  `Preprocess.normalize`) are off by default and draw only when on, after the default draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from rald_fast.preprocess import IMAGENET_MEAN

RRC_RATIO = (3 / 4, 4 / 3)       # aspect range of the random resized crop (torchvision's)
ERASE_AREA = (0.02, 0.33)        # area share of the erased rectangle (torchvision's RandomErasing)
ERASE_RATIO = (0.3, 3.3)         # its aspect range


@dataclass
class AugmentDraws:
    """The random draws of one batch; a field is None when its op is off. One row per image."""

    size: int                             # image side S
    flip: torch.Tensor | None = None      # (n,) bool
    pad: int = 0                          # translation: reflect padding in pixels
    dx: torch.Tensor | None = None        # (n,) crop offsets in 0..2 pad
    dy: torch.Tensor | None = None
    rrc: torch.Tensor | None = None       # (n, 4): crop width, height, centre x, centre y (shares of S)
    jitter: torch.Tensor | None = None    # (n, 3): brightness, contrast, saturation factors
    erase: torch.Tensor | None = None     # (n, 5): on, x0, y0, x1, y1 (pixels; on = 0 or 1)

    def rows(self, rows: slice | torch.Tensor) -> AugmentDraws:
        """The draws of some rows of the batch (e.g. this process's `distributed.local_rows`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                out[k] = v[rows]
        return AugmentDraws(**out)


def draw_augment(n: int, size: int, generator: torch.Generator, hflip: bool = True,
                 max_shift: float = 0.0625, rrc_scale: float = 0.0, color_jitter: float = 0.0,
                 random_erasing: float = 0.0) -> AugmentDraws:
    """The draws for a batch of n images of side `size`, in a fixed order (module docstring)."""
    d = AugmentDraws(size)
    if hflip:
        d.flip = torch.rand(n, generator=generator) < 0.5
    d.pad = int(round(max_shift * size))
    if d.pad:
        d.dx = torch.randint(0, 2 * d.pad + 1, (n,), generator=generator)
        d.dy = torch.randint(0, 2 * d.pad + 1, (n,), generator=generator)
    if rrc_scale > 0:
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        area = rrc_scale + (1 - rrc_scale) * u[:, 0]
        lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
        ratio = torch.exp(lo + (hi - lo) * u[:, 1])
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = w / 2 + (1 - w) * u[:, 2]
        cy = h / 2 + (1 - h) * u[:, 3]
        d.rrc = torch.stack([w, h, cx, cy], 1).float()
    if color_jitter > 0:
        d.jitter = (1 - color_jitter + 2 * color_jitter * torch.rand(n, 3, generator=generator)).clamp(min=0)
    if random_erasing > 0:
        u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[:, 1]) * size * size
        lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
        ratio = torch.exp(lo + (hi - lo) * u[:, 2])
        h = torch.sqrt(area * ratio).round().clamp(1, size)
        w = torch.sqrt(area / ratio).round().clamp(1, size)
        y0 = ((size - h + 1) * u[:, 3]).floor().clamp(max=size - h)
        x0 = ((size - w + 1) * u[:, 4]).floor().clamp(max=size - w)
        on = (u[:, 0] < random_erasing).double()
        d.erase = torch.stack([on, x0, y0, x0 + w, y0 + h], 1).long()
    return d


def apply_augment(images: torch.Tensor, d: AugmentDraws) -> torch.Tensor:
    """The draws `d` (of these rows) applied to a uint8 or float batch (n, 3, S, S) on its device;
    float32 out, pixel values in 0..255."""
    n, _, s, _ = images.shape
    x = images.float()
    dev = x.device
    if d.flip is not None:
        x = torch.where(d.flip.to(dev).view(n, 1, 1, 1), x.flip(-1), x)
    if d.pad:
        pad = d.pad
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        ar = torch.arange(s, device=dev)
        rows = (d.dy.to(dev).view(n, 1) + ar).view(n, 1, s, 1).expand(n, 3, s, s + 2 * pad)
        x = x.gather(2, rows)
        cols = (d.dx.to(dev).view(n, 1) + ar).view(n, 1, 1, s).expand(n, 3, s, s)
        x = x.gather(3, cols)
    if d.rrc is not None:
        x = resized_crop(x, d.rrc.to(dev))
    if d.jitter is not None:
        x = jitter(x, d.jitter.to(dev))
    if d.erase is not None:
        x = erase(x, d.erase.to(dev))
    return x


def augment(images: torch.Tensor, generator: torch.Generator, hflip: bool = True,
            max_shift: float = 0.0625) -> torch.Tensor:
    """Random flip and translation of a uint8 or float batch (N, 3, S, S); float32 out."""
    return apply_augment(images, draw_augment(len(images), images.shape[-1], generator, hflip, max_shift))


def resized_crop(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Each image's box (width, height, centre x, centre y as shares of the side) resized back to the
    full side, bilinear (`grid_sample` at the box's pixel centres; at the box's edge the pixel just
    outside it, if any, takes part in the interpolation)."""
    n = x.shape[0]
    w, h, cx, cy = box.unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * cy - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (n, 1, S, S), as torchvision's rgb_to_grayscale."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation (in this order) scaled by each image's factors; the result
    is clamped to 0..255 after each, as torchvision's ColorJitter does."""
    n = x.shape[0]
    b, c, s = (f.view(n, 1, 1, 1) for f in factors.unbind(1))
    x = (x * b).clamp(0, 255)
    mean = _grey(x).mean((1, 2, 3), keepdim=True)
    x = (mean + c * (x - mean)).clamp(0, 255)
    grey = _grey(x)
    return (grey + s * (x - grey)).clamp(0, 255)


def erase(x: torch.Tensor, rect: torch.Tensor) -> torch.Tensor:
    """Set each image's rectangle (on, x0, y0, x1, y1) to the normalisation mean (0 once normalised)."""
    n, _, s, _ = x.shape
    ar = torch.arange(s, device=x.device)
    on, x0, y0, x1, y1 = (v.view(n, 1, 1, 1) for v in rect.unbind(1))
    inside = (on > 0) & (ar.view(1, 1, s, 1) >= y0) & (ar.view(1, 1, s, 1) < y1) & \
        (ar.view(1, 1, 1, s) >= x0) & (ar.view(1, 1, 1, s) < x1)
    fill = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255
    return torch.where(inside, fill, x)
