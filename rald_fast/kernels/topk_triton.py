"""Triton kernels of the streaming top-k neighbour search of NNLDL (eq. 18); maths in topk.py.

Pass 1 (`_row_lse_kernel`): per head and query row, the log-sum-exp of scale * q . k over all M keys,
streamed over key blocks with an online max. Pass 2 (`_topk_kernel`): stream the key blocks again;
for each block, r = sum_h exp(scale * q_h . k_h - lse_h) (the head average times H: the factor cancels
in the weights and does not change the ranking), mask padding and self, and merge the block into a
running top-K kept in registers, K <= 32. Both passes split the keys over a grid axis when the query
rows alone give too few programs; the host merges the partials (S x N x K values, not N x M).

Ranking order everywhere: larger r first, then lower key index. The running list keeps KP slots
(KP = next power of two >= K) and is unsorted; each block contributes at most K entries, each
replacing the current worst slot only when strictly better, so the list always holds the best K
keys seen so far. Relations are fp32; q . k uses `tl.dot` with fp32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import MAX_TOPK, dot_precision, jit, next_pow2, num_sms, tile

_BIG_INDEX = 2**31 - 1  # index of an empty slot: the worst under the lower-index tie-break


@jit
def _row_lse_kernel(
    Q, K, Lse,  # q (H, N, D), k (H, M, D); lse partials (S, H, N) fp32, S = number of key splits
    sqh, sqm, sqd,  # q strides: head, query row, feature
    skh, skn, skd,  # k strides: head, key row, feature
    sls, slh, slm,  # lse strides: split, head, query row
    N, M, D, keys_per_split, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N
    q = tl.load(Q + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    lo = sp * keys_per_split
    hi = tl.minimum(lo + keys_per_split, M)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        kt = tl.load(K + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)  # (BLOCK_D, BLOCK_N)
        s = tl.where(col_ok[None, :], tl.dot(q, kt, input_precision=PRECISION) * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m_i = m_new
    tl.store(Lse + sp * sls + h * slh + offs_m * slm, m_i + tl.log(l_i), mask=row_ok)


@jit
def _topk_kernel(
    Q, K, Lse,  # q (H, N, D), k (H, M, D), lse (H, N) fp32 from pass 1
    TopV, TopI,  # outputs (S, N, KP): fp32 relation sums (-inf = empty) and int32 key indices
    sqh, sqm, sqd,  # q strides: head, query row, feature
    skh, skn, skd,  # k strides: head, key row, feature
    slh, slm,  # lse strides: head, query row
    sts, stm, stk,  # TopV / TopI strides (shared): split, query row, slot
    N, M, D, H, keys_per_split, key_offset, scale,
    K_TOP: tl.constexpr, KP: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    sp = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    slots = tl.arange(0, KP)
    row_ok = offs_m < N
    top_v = tl.full([BLOCK_M, KP], float("-inf"), tl.float32)
    top_i = tl.full([BLOCK_M, KP], 2147483647, tl.int32)
    lo = sp * keys_per_split
    hi = tl.minimum(lo + keys_per_split, M)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        r = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for h in range(H):  # head sum of the softmax probabilities (SPEC 4's relation, times H)
            q = tl.load(Q + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                        mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
            kt = tl.load(K + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                         mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)
            lse = tl.load(Lse + h * slh + offs_m * slm, mask=row_ok, other=0.0)
            r += tl.exp(tl.dot(q, kt, input_precision=PRECISION) * scale - lse[:, None])
        ok = row_ok[:, None] & col_ok[None, :]
        if EXCLUDE_SELF:  # key_offset: where the query batch sits inside the key set
            ok = ok & (offs_n[None, :] != (offs_m[:, None] + key_offset))
        r = tl.where(ok, r, float("-inf"))
        for _t in tl.static_range(K_TOP):  # a block gives at most K_TOP entries of the top K
            best_v = tl.max(r, 1)
            best_i = tl.min(tl.where(r == best_v[:, None], offs_n[None, :], 2147483647), 1)
            worst_v = tl.min(top_v, 1)
            is_worst_v = top_v == worst_v[:, None]
            worst_i = tl.max(tl.where(is_worst_v, top_i, -1), 1)
            worst_slot = tl.min(tl.where(is_worst_v & (top_i == worst_i[:, None]), slots[None, :], KP), 1)
            better = (best_v > worst_v) | ((best_v == worst_v) & (best_i < worst_i))
            better = better & (best_v > float("-inf"))
            put = better[:, None] & (slots[None, :] == worst_slot[:, None])
            top_v = tl.where(put, best_v[:, None], top_v)
            top_i = tl.where(put, best_i[:, None], top_i)
            r = tl.where(offs_n[None, :] == best_i[:, None], float("-inf"), r)
    out = sp * sts + offs_m[:, None] * stm + slots[None, :] * stk
    tl.store(TopV + out, top_v, mask=row_ok[:, None])
    tl.store(TopI + out, top_i, mask=row_ok[:, None])


def _splits(n_programs: int, M: int, block_n: int, device: torch.device, num_splits: int | None):
    n_blocks = triton.cdiv(M, block_n)
    if num_splits is None:
        want = triton.cdiv(2 * num_sms(device), n_programs) if device.type == "cuda" else 1
        num_splits = max(1, min(want, n_blocks // 4))  # >= 4 key blocks per split
    num_splits = max(1, min(num_splits, n_blocks))
    keys_per_split = triton.cdiv(triton.cdiv(M, num_splits), block_n) * block_n
    return triton.cdiv(M, keys_per_split), keys_per_split


def row_lse(q: torch.Tensor, k: torch.Tensor, scale: float, num_splits: int | None = None) -> torch.Tensor:
    """Pass 1: (H, N) fp32 log-sum-exp over the M keys of scale * q . k, per head and row."""
    H, N, D = q.shape
    M = k.shape[1]
    bm, bn, bd = tile(N, 64), tile(M, 64), next_pow2(D)
    n_m = triton.cdiv(N, bm)
    splits, kps = _splits(n_m * H, M, bn, q.device, num_splits)
    lse = torch.empty((splits, H, N), device=q.device, dtype=torch.float32)
    _row_lse_kernel[(n_m, H, splits)](
        q, k, lse, *q.stride(), *k.stride(), *lse.stride(), N, M, D, kps, float(scale),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2,
    )
    return lse[0] if splits == 1 else torch.logsumexp(lse, dim=0)


def topk_candidates(q, k, lse, topk: int, scale: float, exclude_self: bool, key_offset: int,
                    num_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 2: per row, the best `topk` keys of each split, unsorted: values (N, S*KP) fp32 (head
    sums of probabilities, -inf for empty slots) and int64 indices (N, S*KP)."""
    if not 1 <= topk <= MAX_TOPK:
        raise ValueError(f"neighbour_targets: Triton top-k needs 1 <= k <= {MAX_TOPK}, got {topk}")
    H, N, D = q.shape
    M = k.shape[1]
    bm, bn, bd, kp = tile(N, 64), tile(M, 64), next_pow2(D), next_pow2(topk, lo=2)
    n_m = triton.cdiv(N, bm)
    splits, kps = _splits(n_m, M, bn, q.device, num_splits)
    top_v = torch.empty((splits, N, kp), device=q.device, dtype=torch.float32)
    top_i = torch.empty((splits, N, kp), device=q.device, dtype=torch.int32)
    lse = lse.contiguous()
    _topk_kernel[(n_m, splits)](
        q, k, lse, top_v, top_i, *q.stride(), *k.stride(), *lse.stride(), *top_v.stride(),
        N, M, D, H, kps, int(key_offset), float(scale),
        K_TOP=topk, KP=kp, EXCLUDE_SELF=bool(exclude_self), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
        PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2,
    )
    return top_v.permute(1, 0, 2).reshape(N, -1), top_i.permute(1, 0, 2).reshape(N, -1).long()
