"""Process groups for `torchrun`, and the collectives that let RALD's batch-level parts see the
global batch (docs/DISTRIBUTED.md).

ITRR attends among the images of a batch and NNLDL ranks each image's neighbours in that batch, so
with N processes each backbone sees B/N images but ITRR, LGIFO, the head and the loss must see all B.
The backbone features of every rank are all-gathered (`gather_rows`) before ITRR; every rank then runs
the head and the loss on the identical global batch. Gradients stay exact under DDP's averaging:

- each rank's loss L_r equals the single-process loss L (same rows, same labels, same dropout draws:
  every rank seeds the global RNG alike and the head consumes it in the same order);
- the backward of `gather_rows` sums the incoming gradients over ranks (the adjoint of all-gather),
  so rank r's backbone receives N * dL/dF_r, and DDP's mean over ranks gives sum_r dL/dF_r dF_r/dθ;
- the head's parameters get dL/dθ on every rank; DDP's mean leaves it unchanged.

BatchNorm must see the global batch too: `sync_batchnorm` swaps BatchNorm for
`torch.nn.SyncBatchNorm` on CUDA and for `GlobalBatchNorm2d` (below, all-reduced sums) elsewhere,
because PyTorch's SyncBatchNorm refuses CPU tensors.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: object = None  # a process group for the feature collectives (apart from DDP's)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str, timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by torchrun's RANK / WORLD_SIZE / LOCAL_RANK (and
    MASTER_ADDR / MASTER_PORT); gloo for CPU, NCCL for CUDA. One process: no group, `SINGLE`."""
    if not launched_by_torchrun():
        return SINGLE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    group = dist.new_group(backend=backend)  # DDP's bucket all-reduces run on the default group
    return DistInfo(rank, world, local_rank, group)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def slice_sizes(n: int, world_size: int) -> list[int]:
    """Rows of a global batch of n held by each rank: `torch.tensor_split`'s sizes (rank r holds
    rows sum(sizes[:r]) .. sum(sizes[:r + 1]) - 1)."""
    return [len(part) for part in torch.arange(n).tensor_split(world_size)]


def local_rows(n: int, info: DistInfo) -> slice:
    sizes = slice_sizes(n, info.world_size)
    start = sum(sizes[:info.rank])
    return slice(start, start + sizes[info.rank])


class _GatherRows(torch.autograd.Function):
    """All-gather of row blocks of unequal length (padded to the longest); the backward sums the
    incoming gradients over ranks (all-reduce) and returns this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], rank: int, group) -> torch.Tensor:
        ctx.sizes, ctx.rank, ctx.group, ctx.dtype = sizes, rank, group, x.dtype
        longest = max(sizes)
        pad = x.new_zeros((longest,) + tuple(x.shape[1:]), dtype=torch.float32)  # gloo: fp32 safe
        pad[:x.shape[0]] = x.float()
        parts = [torch.empty_like(pad) for _ in sizes]
        dist.all_gather(parts, pad, group=group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.float().contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return g[start:start + ctx.sizes[ctx.rank]].to(ctx.dtype), None, None, None


def gather_rows(x: torch.Tensor, sizes: list[int], info: DistInfo) -> torch.Tensor:
    """(sizes[rank], ...) on each rank -> (sum(sizes), ...) in rank order, differentiable (module
    docstring). Every rank knows the sizes (`slice_sizes`), so they are not communicated."""
    if not info.enabled:
        return x
    if x.shape[0] != sizes[info.rank]:
        raise ValueError(f"gather_rows: rank {info.rank} holds {x.shape[0]} rows, sizes say {sizes}")
    return _GatherRows.apply(x, tuple(sizes), info.rank, info.group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its adjoint is again a sum over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        y = x.contiguous().clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over the global batch of all ranks (sums
    all-reduced with gradient), for devices PyTorch's SyncBatchNorm refuses (CPU / gloo).
    Same parameters and buffers as BatchNorm2d, so checkpoints do not change."""

    group = None  # set by `sync_batchnorm`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None:
            return super().forward(x)
        xf = x.float()
        c = x.shape[1]
        local = torch.cat([xf.sum((0, 2, 3)), xf.new_full((1,), xf.numel() / c)])
        sums = _AllReduceSum.apply(local, self.group)                     # (C + 1): sums, count
        n = sums[-1]
        mean = sums[:c] / n
        # two passes, as BatchNorm itself: E[x^2] - E[x]^2 cancels badly when the mean is large
        centred = xf - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3)), self.group) / n  # biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
        shape = (1, c, 1, 1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, info: DistInfo, device_type: str) -> nn.Module:
    """BatchNorm over the global batch: SyncBatchNorm on CUDA, GlobalBatchNorm2d elsewhere."""
    if not info.enabled:
        return module
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=info.group)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(child.weight.device)
            new.load_state_dict(child.state_dict())
            new.group = info.group
            setattr(module, name, new)
        else:
            sync_batchnorm(child, info, device_type)
    return module
