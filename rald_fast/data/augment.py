"""Training augmentation on whole batches in torch: random horizontal flip and a random translation
(reflect-pad then crop), cheap on a 2-core CPU. Draws come from the caller's generator, seeded per
(seed, epoch), so a resumed or distributed run sees exactly the pixels one uninterrupted process would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, generator: torch.Generator, hflip: bool = True,
            max_shift: float = 0.0625) -> torch.Tensor:
    """Random flip and translation of a uint8 or float batch (N, 3, S, S); float32 out."""
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
