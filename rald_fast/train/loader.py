"""Training batches: the global batches of an epoch, and a DataLoader that gathers this process's rows.

Every process walks the same global batches (`global_batches`: the epoch's order from
`dataset.epoch_order`, cut into `--batch-size` slices, a last batch too small for ITRR / NNLDL or for
every process dropped). Process r needs only its rows of each (`distributed.local_rows`), so
`batch_loader` gathers exactly those as a uint8 batch: from the decoded cache with one `pread` per
image (`cache.DecodedStore.read_rows`: the file's pages stay in the page cache that all processes
share, not in any process's resident memory), or by indexing an in-memory split. With
`--loader-workers W` the gathering runs in W worker processes, W x 2 batches ahead, into pinned
memory on CUDA; with 0 it runs in the training process. The loader draws nothing from the global RNG
(it gets a generator of its own), so the training's random stream is the same with or without it.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from rald_fast.data.dataset import Split, epoch_order
from rald_fast.train.distributed import DistInfo, local_rows


class RowGather(Dataset):
    """`dataset[rows]` -> uint8 (len(rows), 3, S, S) of a split's images (see the module docstring)."""

    def __init__(self, split: Split):
        self.store = split.store
        self.images = split.images if split.store is None else None  # the mapped tensor stays behind
        self.count = len(split)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.store is not None:
            return torch.from_numpy(self.store.read_rows(rows.numpy()))
        return self.images[rows]


def global_batches(split: Split, generator: torch.Generator, batch_size: int,
                   world_size: int = 1) -> list[torch.Tensor]:
    """The epoch's global batches of image indices, drawn from `generator` (seeded per (seed, epoch))."""
    order = epoch_order(split, generator)  # a permutation, or class-balanced draws (--balanced)
    n = len(order)
    # ITRR and NNLDL work across the batch: drop a last batch too small to have neighbours (or to
    # give every process a row)
    smallest = max(min(batch_size, 2), world_size)
    return [order[s:s + batch_size] for s in range(0, n, batch_size) if min(batch_size, n - s) >= smallest]


def batch_loader(split: Split, batches: list[torch.Tensor], info: DistInfo, workers: int = 0,
                 pin: bool = False) -> DataLoader:
    """Yields, for each global batch in turn, this process's rows as a uint8 (rows, 3, S, S) tensor."""
    own = [b[local_rows(len(b), info)] for b in batches]
    return DataLoader(RowGather(split), batch_size=None, sampler=own, num_workers=workers, pin_memory=pin,
                      prefetch_factor=2 if workers else None, generator=torch.Generator())
