"""FLOPs per image of the folded bare ResNet18 and the folded RALD (torch.utils.flop_counter).

    python bench/flops.py [--image-size 224]

The ideal RALD / ResNet18 throughput ratio is the inverse ratio of these counts (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from rald_fast.config import make_config
from rald_fast.hierarchy import fg_emotions
from rald_fast.models import build_model
from rald_fast.models.folded import fold
from rald_fast.preprocess import Preprocess


def flops_per_image(variant: str, size: int, batch: int = 8) -> float:
    model = build_model(make_config("quick", variant, image_size=size), fg_emotions()).eval()
    folded = fold(model, Preprocess(size), "self")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        folded(torch.rand(batch, 3, size, size) * 255)
    return counter.get_total_flops() / batch


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=224)
    size = p.parse_args().image_size
    r18, rald = flops_per_image("a", size), flops_per_image("rald", size)
    print(f"image {size}x{size}: ResNet18 {r18 / 1e9:.4f} GFLOP/image, RALD (folded) {rald / 1e9:.4f} "
          f"GFLOP/image, RALD / ResNet18 cost {rald / r18:.4f}, ideal throughput ratio {r18 / rald:.4f}")
