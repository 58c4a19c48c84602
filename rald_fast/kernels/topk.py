"""Nearest-neighbour label-distribution targets of NNLDL (paper eq. 18).

For each image i (query) and each key j of the key set (the batch itself, or a memory bank):

    r[i, j] = (1/H) sum_h softmax_j(scale * q[h, i] . k[h, j])     (ITRR's attention probabilities,
                                                                     eq. 6, averaged over heads;
                                                                     normaliser over ALL M keys)
    J_i     = the top-k keys j by r[i, j], key i + key_offset excluded when exclude_self,
              ties broken by the lower key index, k clamped to the number of eligible keys
    w[i, j] = r[i, j] / sum_{j' in J_i} r[i, j']
    D[i]    = sum_{j in J_i} w[i, j] p[j]                           (eq. 18)

D is a target (stop-gradient, docs/DESIGN.md "NNLDL"): the Triton path runs under no_grad. The reference stays
differentiable (through the weights and p; the top-k choice itself is piecewise constant) for the
loss's option of letting the gradient through D; callers that want a target detach its inputs.

- `neighbour_targets_ref` materialises the (H, N, M) logits: O(H N M) memory.
- `neighbour_targets_triton` (topk_triton.py) streams the keys twice, a per-head log-sum-exp pass
  and a ranking pass with a running top-k in registers, then one small kernel merges the split
  candidates and aggregates D: three launches, extra memory O(H N + N S k) for S key splits, so a
  bank of M = 65,536 keys never becomes an N x M matrix. k <= 32 and head dims <= 256 on that path
  (`neighbour_targets` falls back to the reference beyond either).

Returns (D (N, C) in p's dtype, idx (N, k') int64, w (N, k') fp32) with k' the clamped k; idx and
w are sorted by decreasing relation (paper Fig. 8). k' == 0 (a lone image without a bank) gives
D = 0 and empty idx, w: the caller's KL term is then zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._runtime import HAS_TRITON

if HAS_TRITON:
    from . import topk_triton as _tri
else:  # pragma: no cover
    _tri = None


def clamp_topk(topk: int, N: int, M: int, exclude_self: bool, key_offset: int) -> int:
    """k clamped to the keys every row may use: M, minus one when some row's own key is in range."""
    if topk < 0:
        raise ValueError(f"neighbour_targets: k must be >= 0, got {topk}")
    self_in_range = exclude_self and N > 0 and key_offset < M and key_offset + N > 0
    return max(0, min(topk, M - int(self_in_range)))


def _check(q: Tensor, k: Tensor, p: Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"neighbour_targets: q (H, N, D) and k (H, M, D) expected, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    if p.dim() != 2 or p.shape[0] != k.shape[1]:
        raise ValueError(f"neighbour_targets: p must be (M, C) with M = {k.shape[1]}, got {tuple(p.shape)}")


def _aggregate(vals: Tensor, idx: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weights renormalised over the chosen keys and the weighted mean of their predictions."""
    w = vals / vals.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    d = (w[..., None] * p.float()[idx]).sum(dim=1)  # (N, C)
    return d.to(p.dtype), idx, w


def _empty(N: int, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return (p.new_zeros((N, p.shape[1])), torch.zeros((N, 0), dtype=torch.long, device=p.device),
            torch.zeros((N, 0), dtype=torch.float32, device=p.device))


def neighbour_targets_ref(q: Tensor, k: Tensor, p: Tensor, topk: int, scale: float, *,
                          exclude_self: bool = True, key_offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Reference NNLDL targets (module docstring); materialises the relation matrix."""
    _check(q, k, p)
    N, M = q.shape[1], k.shape[1]
    k_eff = clamp_topk(topk, N, M, exclude_self, key_offset)
    if k_eff == 0:
        return _empty(N, p)
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (H, N, M)
    r = torch.softmax(logits, dim=-1).mean(dim=0)  # (N, M) head-averaged probabilities
    if exclude_self:
        cols = torch.arange(M, device=q.device)
        own = cols[None, :] == torch.arange(N, device=q.device)[:, None] + key_offset  # (N, M)
        r = r.masked_fill(own, float("-inf"))
    vals, idx = torch.sort(r, dim=1, descending=True, stable=True)  # stable: lower index wins ties
    return _aggregate(vals[:, :k_eff], idx[:, :k_eff], p)


@torch.no_grad()
def neighbour_targets_triton(q: Tensor, k: Tensor, p: Tensor, topk: int, scale: float, *,
                             exclude_self: bool = True, key_offset: int = 0,
                             num_splits: int | None = None,
                             rows_per_program: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Streaming Triton NNLDL targets (module docstring); num_splits: key splits (None: automatic);
    rows_per_program: the kernels' tile strategy, "block" (64 query rows per program) or "all" (one
    program's rows cover all N <= 256; topk_triton's docstring), None: topk_triton's default."""
    _check(q, k, p)
    if rows_per_program is not None and rows_per_program not in _tri.ROWS_PER_PROGRAM:
        raise ValueError(f"neighbour_targets: rows_per_program must be one of {_tri.ROWS_PER_PROGRAM} or None, "
                         f"got {rows_per_program!r}")
    N, M = q.shape[1], k.shape[1]
    k_eff = clamp_topk(topk, N, M, exclude_self, key_offset)
    if k_eff == 0 or N == 0:
        return _empty(N, p)
    if k.dtype != q.dtype:
        k = k.to(q.dtype)
    if q.shape[2] > _tri.MAX_HEAD_DIM:
        raise ValueError(f"neighbour_targets: the Triton top-k needs head dims <= {_tri.MAX_HEAD_DIM}, "
                         f"got {q.shape[2]}; use backend='reference' or 'auto'")
    lse = _tri.row_lse(q, k, scale, num_splits, rows_per_program)  # (H, N) pass 1
    top_v, top_i = _tri.topk_candidates(q, k, lse, k_eff, scale, exclude_self, key_offset, num_splits,
                                        rows_per_program)
    return _tri.merge_aggregate(top_v, top_i, p, k_eff)  # merge by (value desc, index asc), eq. 18
