"""Preprocessing that travels with the weights, and batch-level training augmentation.

`Preprocess` (input size, mean/std, channel order) is stored in every checkpoint and artifact, so
training, evaluation and deployment cannot drift. Augmentation runs on whole uint8 batches in torch:
random horizontal flip and a random translation (reflect-pad then crop), cheap on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(d["image_size"], tuple(d["mean"]), tuple(d["std"]), d.get("channel_order", "RGB"),
                   d.get("layout", "NCHW"))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float (N, 3, S, S), standardised."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, hflip: bool = True,
            max_shift: float = 0.0625) -> torch.Tensor:
    """Random flip and translation of a uint8 or float batch (N, 3, S, S)."""
    n, _, s, _ = images.shape
    x = images.float()
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    pad = int(round(max_shift * s))
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(s)).view(n, 1, s, 1).expand(n, 3, s, s + 2 * pad)
        x = x.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(s)).view(n, 1, 1, s).expand(n, 3, s, s)
        x = x.gather(3, cols)
    return x
