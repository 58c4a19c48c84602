"""Host side of the attention kernels (attention_triton.py): tile and split plans (cached per shape),
the bias tile and the xi classes (cached per xi tensor), and the launchers `attention_fwd` /
`attention_bwd` that `attention.py` calls. Kept apart from the kernels so each file reads in one go.
"""

from __future__ import annotations

import functools
import weakref

import torch
import triton

from . import _runtime
from ._runtime import dot_precision, next_pow2, num_sms, tile
from .attention_triton import (FUSED_MAX_LEN, LOG2E, MAX_BIAS_CLASSES, MAX_HEAD_DIM, _attn_bwd_dkdv_kernel,
                               _attn_bwd_dq_kernel, _attn_bwd_fused_kernel, _attn_fwd_kernel)


def _blocks(Lq: int, Lk: int, Dk: int, Dv: int) -> tuple[int, int, int, int, int]:
    return _blocks_cached(Lq, Lk, Dk, Dv, _runtime.INTERPRET_TILE_FACTOR)


@functools.lru_cache(maxsize=256)
def _blocks_cached(Lq: int, Lk: int, Dk: int, Dv: int, _factor: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_DV, num_stages): 64 x 64 tiles, shrunk (>= 16) for tiny
    sequences; heads wider than 128 take 32 x 32 tiles and no pipelining. Shared memory on sm_90
    (fwd / dkdv / dq, KB): bf16 d=64 32/49/48, fp32 d=64 80/97/96, fp32 d=128 128/161/160, fp32
    d=256 68/136/132 (213 KB for dkdv with 64 x 32 tiles and 2 stages, hence the rule). Cached per
    shape (and interpreter tile factor, which tests change): the eager path pays it once."""
    if max(Dk, Dv) > MAX_HEAD_DIM:
        raise ValueError(f"attention kernel: head dims must be <= {MAX_HEAD_DIM}, got Dk={Dk}, Dv={Dv}")
    wide = max(Dk, Dv) > 128
    t = 32 if wide else 64
    return tile(Lq, t), tile(Lk, t), next_pow2(Dk), next_pow2(Dv), 1 if wide else 2


@functools.lru_cache(maxsize=256)
def _split_plan(n_programs: int, Lk: int, block_n: int, sms: int, num_splits: int | None) -> tuple[int, int]:
    """(splits, keys_per_split): about two programs per SM when query blocks x heads are too few
    (sms = 0: no GPU, one split unless asked), >= 4 key blocks per split, every split non-empty."""
    n_blocks = triton.cdiv(Lk, block_n)
    if num_splits is None:
        want = triton.cdiv(2 * sms, n_programs) if sms else 1
        num_splits = max(1, min(want, n_blocks // 4))
    splits = max(1, min(num_splits, n_blocks))
    keys_per_split = triton.cdiv(triton.cdiv(Lk, splits), block_n) * block_n
    return triton.cdiv(Lk, keys_per_split), keys_per_split


def _sms(device: torch.device) -> int:
    return num_sms(device) if device.type == "cuda" else 0


def bias_tile(bias_table: torch.Tensor | None, xi: torch.Tensor | None) -> torch.Tensor | None:
    """b[h, xi[i, j]] as a dense fp32 (H, Lq, Lk) tile: one gather on the host per forward."""
    if bias_table is None:
        return None
    return bias_table.float()[:, xi].contiguous()


_CLASS_CACHE: dict[int, tuple] = {}


def xi_classes(xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(class ids (Lq, Lk) int32, class -> table index (U,) int32, U): xi's distinct values. Cached
    per xi tensor (HLRR's xi is a buffer) while it lives and is unmodified: torch.unique syncs."""
    key = id(xi)
    hit = _CLASS_CACHE.get(key)
    if hit is not None and hit[0]() is xi and hit[1] == xi._version:
        return hit[2]
    uniq, inverse = torch.unique(xi, return_inverse=True)
    value = (inverse.to(torch.int32).contiguous(), uniq.to(torch.int32), int(uniq.numel()))
    if len(_CLASS_CACHE) > 64:
        _CLASS_CACHE.clear()
    _CLASS_CACHE[key] = (weakref.ref(xi), xi._version, value)
    return value


def use_fused_backward(Lq: int, Lk: int, xi: torch.Tensor | None) -> bool:
    """The one-program-per-head backward: short sequences, and few enough distinct xi values."""
    if max(Lq, Lk) > FUSED_MAX_LEN:
        return False
    return xi is None or xi_classes(xi)[2] <= MAX_BIAS_CLASSES


def attention_fwd(q, k, v, scale, bias_table=None, xi=None, num_splits=None, bias=None):
    """Launch the forward. Returns (out (H, Lq, Dv) in q's dtype, lse (H, Lq) fp32, natural log).
    bias: the `bias_tile(bias_table, xi)` when the caller already has it (the eager path keeps it
    for the backward: one gather per step)."""
    H, Lq, Dk = q.shape
    Lk, Dv = k.shape[1], v.shape[2]
    bm, bn, bdk, bdv, stages = _blocks(Lq, Lk, Dk, Dv)
    n_m = triton.cdiv(Lq, bm)
    splits, keys_per_split = _split_plan(n_m * H, Lk, bn, _sms(q.device), num_splits)
    if splits == 1:
        out = q.new_empty((1, H, Lq, Dv))
    else:
        out = torch.empty((splits, H, Lq, Dv), device=q.device, dtype=torch.float32)
    lse = torch.empty((splits, H, Lq), device=q.device, dtype=torch.float32)
    bias = bias_tile(bias_table, xi) if bias is None else bias
    _attn_fwd_kernel[(n_m, H, splits)](
        q, k, v, q if bias is None else bias, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *((0, 0, 0) if bias is None else bias.stride()),
        *out.stride(), *lse.stride(),
        Lq, Lk, Dk, Dv, keys_per_split, float(scale) * LOG2E,
        HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=bdk, BLOCK_DV=bdv,
        PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=stages,
    )
    if splits == 1:
        return out[0], lse[0]
    lse_all = torch.logsumexp(lse, dim=0)  # merge the split partials (flash-decoding)
    weights = torch.exp(lse - lse_all)[..., None]  # (S, H, Lq, 1)
    return (weights * out).sum(0).to(q.dtype), lse_all


def attention_bwd(q, k, v, out, lse, dout, scale, bias_table=None, xi=None, num_splits=None, bias=None):
    """Launch the backward. Returns (dq, dk, dv, d bias_table or an empty tensor): the fused
    deterministic kernel when `use_fused_backward`, else the split kernels. bias: as in the forward."""
    if bias_table is not None and bias is None:
        bias = bias_tile(bias_table, xi)
    if use_fused_backward(q.shape[1], k.shape[1], xi if bias_table is not None else None):
        return _bwd_fused(q, k, v, out, lse, dout, scale, bias_table, xi, bias)
    return _bwd_split(q, k, v, out, lse, dout, scale, bias_table, xi, num_splits, bias)


def _bwd_fused(q, k, v, out, lse, dout, scale, bias_table, xi, bias):
    H, Lq, Dk = q.shape
    Lk, Dv = k.shape[1], v.shape[2]
    bm, bn, bdk, bdv, stages = _blocks(Lq, Lk, Dk, Dv)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    has_bias = bias_table is not None
    if has_bias:
        cls, uniq, n_cls = xi_classes(xi)
        T = bias_table.shape[1]
        dbias = torch.empty((H, T), device=q.device, dtype=torch.float32)
        cls_p, block_t = next_pow2(n_cls, lo=2), min(1024, next_pow2(T))
    else:  # dummies never read (HAS_BIAS=False)
        bias, cls, uniq, n_cls, T, cls_p, block_t = q, q, q, 0, 0, 2, 16
        dbias = torch.zeros((0, 0), device=q.device, dtype=torch.float32)
    _attn_bwd_fused_kernel[(H,)](
        q, k, v, bias, out, dout, lse, dq, dk, dv, cls, uniq, dbias,
        *q.stride(), *k.stride(), *v.stride(), *(bias.stride() if has_bias else (0, 0, 0)),
        *out.stride(), *dout.stride(), *lse.stride(), *dq.stride(), *dk.stride(), *dv.stride(),
        *(cls.stride() if has_bias else (0, 0)), *(dbias.stride() if has_bias else (0, 0)),
        Lq, Lk, Dk, Dv, n_cls, T, float(scale) * LOG2E, float(scale),
        HAS_BIAS=has_bias, BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=bdk, BLOCK_DV=bdv, CLS_P=cls_p, BLOCK_T=block_t,
        PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=stages,
    )
    if has_bias and bias_table.dtype != torch.float32:
        dbias = dbias.to(bias_table.dtype)
    return dq, dk, dv, dbias


def _bwd_split(q, k, v, out, lse, dout, scale, bias_table, xi, num_splits, bias):
    H, Lq, Dk = q.shape
    Lk, Dv = k.shape[1], v.shape[2]
    bm, bn, bdk, bdv, stages = _blocks(Lq, Lk, Dk, Dv)
    delta = (dout.float() * out.float()).sum(-1)  # (H, Lq) rowsum(dO * O), fp32
    lse = lse.contiguous()
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    has_bias = bias_table is not None
    bias = bias if has_bias else q  # dummy never read (HAS_BIAS=False)
    ds = torch.empty((H, Lq, Lk), device=q.device, dtype=torch.float32) if has_bias else dk
    sb = bias.stride() if has_bias else (0, 0, 0)
    prec = dot_precision(q.dtype)
    common = (*q.stride(), *k.stride(), *v.stride(), *sb, *dout.stride(), *lse.stride())
    meta = dict(HAS_BIAS=has_bias, BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=bdk, BLOCK_DV=bdv, PRECISION=prec,
                num_warps=4, num_stages=stages)
    qk_scale = float(scale) * LOG2E
    _attn_bwd_dkdv_kernel[(triton.cdiv(Lk, bn), H)](
        q, k, v, bias, dout, lse, delta, dk, dv, ds,
        *common, *dk.stride(), *dv.stride(), Lq, Lk, Dk, Dv, qk_scale, float(scale), **meta,
    )
    n_m = triton.cdiv(Lq, bm)
    splits, keys_per_split = _split_plan(n_m * H, Lk, bn, _sms(q.device), num_splits)
    if splits == 1:
        dq = q.new_empty((1, H, Lq, Dk))
    else:
        dq = torch.empty((splits, H, Lq, Dk), device=q.device, dtype=torch.float32)
    _attn_bwd_dq_kernel[(n_m, H, splits)](
        q, k, v, bias, dout, lse, delta, dq,
        *common, *dq.stride(), Lq, Lk, Dk, Dv, keys_per_split, qk_scale, float(scale), **meta,
    )
    dq = dq[0] if splits == 1 else dq.sum(0).to(q.dtype)
    if not has_bias:
        return dq, dk, dv, torch.zeros((0, 0), device=q.device, dtype=torch.float32)
    dbias = torch.zeros(bias_table.shape, device=q.device, dtype=torch.float32)
    dbias.index_add_(1, xi.reshape(-1).long(), ds.reshape(H, -1))  # atomic on CUDA: not bit-reproducible
    return dq, dk, dv, dbias.to(bias_table.dtype)

