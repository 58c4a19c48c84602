"""Training input: batches gathered from the decoded cache, and augmentation on the training device.

Run: `pytest bench/bench_loader.py --benchmark-only` (add `--benchmark-json FILE` to keep numbers).
A 2,048-image set at 112 px (random pixels: speed does not depend on them) is written once into a decoded
cache under pytest's temp directory; each round gathers 8 global batches of 128 with
`rald_fast.train.loader.batch_loader` (as training does; 0 and 2 worker processes), or augments one batch of
128 on the device (defaults, and with every optional op). `extra_info` records images/s. The scaling
with dataset size and processes is `bench/loader_scaling.py` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rald_fast.data.augment import apply_augment, draw_augment
from rald_fast.data.cache import generated_split
from rald_fast.train.loader import batch_loader, global_batches
from rald_fast.train.distributed import SINGLE

SIZE, COUNT, BATCH, BATCHES = 112, 2048, 128, 8


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    rng = np.random.default_rng(0)
    bank = rng.integers(0, 256, (64, 3, SIZE, SIZE), dtype=np.uint8)
    return generated_split(tmp_path_factory.mktemp("decoded"), "bench-loader-random64", [i % 33 for i in range(COUNT)],
                           SIZE, lambda i: bank[i % 64])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_images_per_second(bench_env, split, workers):
    batches = global_batches(split, torch.Generator().manual_seed(0), BATCH)[:BATCHES]

    def run():
        return sum(len(x) for x in batch_loader(split, batches, SINGLE, workers))

    images = bench_env.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    bench_env.extra_info.update(images=images, images_per_s=images / bench_env.stats.stats.median,
                                loader_workers=workers)


@pytest.mark.parametrize("extras", [{}, dict(rrc_scale=0.6, color_jitter=0.3, random_erasing=0.5)],
                         ids=["default", "all-ops"])
def test_augment_images_per_second(bench_env, split, device, extras):
    x = split.images[:BATCH].to(device)
    draws = draw_augment(BATCH, SIZE, torch.Generator().manual_seed(0), **extras)

    def run():
        out = apply_augment(x, draws)
        if out.is_cuda:
            torch.cuda.synchronize()

    bench_env.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    bench_env.extra_info.update(images_per_s=BATCH / bench_env.stats.stats.median, device=device, **extras)
