"""Triton kernels of the hierarchy-biased attention (SPEC eq. 4-5, 8-10, 14-15); maths in attention.py.

Forward: FlashAttention-2 style online softmax over key blocks; the bias `b[h, xi[i, j]]` is gathered
inside the kernel from the (Lq, Lk) int64 index table and the (H, T) bias table, so no (H, Lq, Lk)
tensor ever reaches HBM. Backward: one kernel per key block for dk, dv and the bias-table gradient
(fp32 atomics into (H, T)), one kernel per query block for dq. When few query blocks exist but the
key set is long (ITRR over a bank of 65,536 keys), the forward and the dq kernel split the keys over
a third grid axis (flash-decoding) and the host merges the fp32 partials.

All accumulation is fp32 (`tl.dot` accumulates in fp32; softmax statistics are fp32). Limits: head
dims <= 256 (padded to a power of two >= 16 and masked), Lk >= 1, any Lq, xi entries in [0, T).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import dot_precision, jit, next_pow2, num_sms, tile

MAX_HEAD_DIM = 256


@jit
def _attn_fwd_kernel(
    Q, K, V, Bias, Xi,  # q (H, Lq, Dk), k (H, Lk, Dk), v (H, Lk, Dv), bias table (H, T), xi (Lq, Lk) int64
    Out, Lse,  # out (S, H, Lq, Dv), lse (S, H, Lq) fp32: S = number of key splits (1: final tensors)
    sqh, sqm, sqd,  # q strides: head, query row, feature
    skh, skn, skd,  # k strides: head, key row, feature
    svh, svn, svd,  # v strides: head, key row, feature
    sbh, sbt,  # bias-table strides: head, table index
    sxm, sxn,  # xi strides: query row, key column
    sos, soh, som, sod,  # out strides: split, head, query row, feature
    sls, slh, slm,  # lse strides: split, head, query row
    Lq, Lk, Dk, Dv, keys_per_split, scale,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Lq
    q = tl.load(Q + h * sqh + offs_m[:, None] * sqm + offs_dk[None, :] * sqd,
                mask=row_ok[:, None] & (offs_dk[None, :] < Dk), other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max of the logits
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp(logit - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo = sp * keys_per_split
    hi = tl.minimum(lo + keys_per_split, Lk)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        kt = tl.load(K + h * skh + offs_n[None, :] * skn + offs_dk[:, None] * skd,
                     mask=col_ok[None, :] & (offs_dk[:, None] < Dk), other=0.0)  # (BLOCK_DK, BLOCK_N)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        if HAS_BIAS:
            idx = tl.load(Xi + offs_m[:, None] * sxm + offs_n[None, :] * sxn,
                          mask=row_ok[:, None] & col_ok[None, :], other=0)
            s += tl.load(Bias + h * sbh + idx * sbt).to(tl.float32)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block holds >= 1 valid key
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + h * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=col_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(Out + sp * sos + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
             acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < Dv))
    tl.store(Lse + sp * sls + h * slh + offs_m * slm, m_i + tl.log(l_i), mask=row_ok)


@jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, Bias, Xi, DO, Lse, Delta,  # as in the forward; dO like out; lse, delta = rowsum(dO*O): (H, Lq) fp32
    DK, DV, DBias,  # dk like k, dv like v (contiguous (H, L, D)); d bias table (H, T) fp32, atomically summed
    sqh, sqm, sqd, skh, skn, skd, svh, svn, svd,  # q, k, v strides (head, row, feature)
    sbh, sbt, sxm, sxn,  # bias-table strides (head, index), xi strides (query row, key column)
    sdoh, sdom, sdod,  # dO strides (head, query row, feature)
    slh, slm,  # lse and delta strides (head, query row); both tensors share them
    sdkh, sdkn, sdkd, sdvh, sdvn, sdvd,  # dk, dv strides (head, key row, feature)
    sdbh, sdbt,  # d bias-table strides (head, index)
    Lq, Lk, Dk, Dv, scale,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = offs_n < Lk
    k = tl.load(K + h * skh + offs_n[:, None] * skn + offs_dk[None, :] * skd,
                mask=col_ok[:, None] & (offs_dk[None, :] < Dk), other=0.0)  # (BLOCK_N, BLOCK_DK)
    v = tl.load(V + h * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                mask=col_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)  # (BLOCK_N, BLOCK_DV)
    dk = tl.zeros([BLOCK_N, BLOCK_DK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Lq
        q = tl.load(Q + h * sqh + offs_m[:, None] * sqm + offs_dk[None, :] * sqd,
                    mask=row_ok[:, None] & (offs_dk[None, :] < Dk), other=0.0)  # (BLOCK_M, BLOCK_DK)
        do = tl.load(DO + h * sdoh + offs_m[:, None] * sdom + offs_dv[None, :] * sdod,
                     mask=row_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)  # (BLOCK_M, BLOCK_DV)
        lse = tl.load(Lse + h * slh + offs_m * slm, mask=row_ok, other=0.0)
        delta = tl.load(Delta + h * slh + offs_m * slm, mask=row_ok, other=0.0)
        # transposed scores sT[j, i] = logit[i, j]: keys on rows, as dk and dv are
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale  # (BLOCK_N, BLOCK_M)
        ok = col_ok[:, None] & row_ok[None, :]
        if HAS_BIAS:
            idx = tl.load(Xi + offs_m[None, :] * sxm + offs_n[:, None] * sxn, mask=ok, other=0)
            st += tl.load(Bias + h * sbh + idx * sbt).to(tl.float32)
        pt = tl.where(ok, tl.exp(st - lse[None, :]), 0.0)  # probabilities P^T
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (dO V^T)^T
        dst = pt * (dpt - delta[None, :])  # softmax backward: dS = P * (dP - rowsum(dO * O))
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
        if HAS_BIAS:  # d b[h, t] = sum of dS over the (i, j) with xi[i, j] == t
            tl.atomic_add(DBias + h * sdbh + idx * sdbt, dst, mask=ok)
    tl.store(DK + h * sdkh + offs_n[:, None] * sdkn + offs_dk[None, :] * sdkd,
             (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None] & (offs_dk[None, :] < Dk))
    tl.store(DV + h * sdvh + offs_n[:, None] * sdvn + offs_dv[None, :] * sdvd,
             dv.to(DV.dtype.element_ty), mask=col_ok[:, None] & (offs_dv[None, :] < Dv))


@jit
def _attn_bwd_dq_kernel(
    Q, K, V, Bias, Xi, DO, Lse, Delta,  # as in _attn_bwd_dkdv_kernel
    DQ,  # dq partials (S, H, Lq, Dk): S = number of key splits (S == 1: dq itself, in q's dtype)
    sqh, sqm, sqd, skh, skn, skd, svh, svn, svd,  # q, k, v strides (head, row, feature)
    sbh, sbt, sxm, sxn,  # bias-table strides (head, index), xi strides (query row, key column)
    sdoh, sdom, sdod,  # dO strides (head, query row, feature)
    slh, slm,  # lse and delta strides (head, query row)
    sdqs, sdqh, sdqm, sdqd,  # dq strides (split, head, query row, feature)
    Lq, Lk, Dk, Dv, keys_per_split, scale,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Lq
    q = tl.load(Q + h * sqh + offs_m[:, None] * sqm + offs_dk[None, :] * sqd,
                mask=row_ok[:, None] & (offs_dk[None, :] < Dk), other=0.0)
    do = tl.load(DO + h * sdoh + offs_m[:, None] * sdom + offs_dv[None, :] * sdod,
                 mask=row_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)
    lse = tl.load(Lse + h * slh + offs_m * slm, mask=row_ok, other=0.0)
    delta = tl.load(Delta + h * slh + offs_m * slm, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_DK], tl.float32)
    lo = sp * keys_per_split
    hi = tl.minimum(lo + keys_per_split, Lk)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        kt = tl.load(K + h * skh + offs_n[None, :] * skn + offs_dk[:, None] * skd,
                     mask=col_ok[None, :] & (offs_dk[:, None] < Dk), other=0.0)  # (BLOCK_DK, BLOCK_N)
        vt = tl.load(V + h * svh + offs_n[None, :] * svn + offs_dv[:, None] * svd,
                     mask=col_ok[None, :] & (offs_dv[:, None] < Dv), other=0.0)  # (BLOCK_DV, BLOCK_N)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        ok = row_ok[:, None] & col_ok[None, :]
        if HAS_BIAS:
            idx = tl.load(Xi + offs_m[:, None] * sxm + offs_n[None, :] * sxn, mask=ok, other=0)
            s += tl.load(Bias + h * sbh + idx * sbt).to(tl.float32)
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    tl.store(DQ + sp * sdqs + h * sdqh + offs_m[:, None] * sdqm + offs_dk[None, :] * sdqd,
             (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_dk[None, :] < Dk))


def _blocks(Lq: int, Lk: int, Dk: int, Dv: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_DV, num_stages): 64 x 64 tiles, shrunk (>= 16) for tiny
    sequences; heads wider than 128 take 32 x 32 tiles and no pipelining. Shared memory on sm_90
    (fwd / dkdv / dq, KB): bf16 d=64 32/49/48, fp32 d=64 80/97/96, fp32 d=128 128/161/160, fp32
    d=256 68/136/132 (213 KB for dkdv with 64 x 32 tiles and 2 stages, hence the rule)."""
    if max(Dk, Dv) > MAX_HEAD_DIM:
        raise ValueError(f"attention kernel: head dims must be <= {MAX_HEAD_DIM}, got Dk={Dk}, Dv={Dv}")
    wide = max(Dk, Dv) > 128
    t = 32 if wide else 64
    return tile(Lq, t), tile(Lk, t), next_pow2(Dk), next_pow2(Dv), 1 if wide else 2


def _num_splits(n_programs: int, Lk: int, block_n: int, device: torch.device, num_splits: int | None) -> int:
    """Key splits so that about two programs per SM run when query blocks x heads are too few."""
    n_blocks = triton.cdiv(Lk, block_n)
    if num_splits is None:
        want = triton.cdiv(2 * num_sms(device), n_programs) if device.type == "cuda" else 1
        num_splits = max(1, min(want, n_blocks // 4))  # >= 4 key blocks per split
    return max(1, min(num_splits, n_blocks))


def _bias_args(bias_table, xi, q):
    if bias_table is None:  # dummies never read (HAS_BIAS=False)
        return q, q, (0, 0), (0, 0)
    return bias_table, xi, bias_table.stride(), xi.stride()


def attention_fwd(q, k, v, scale, bias_table=None, xi=None, num_splits=None):
    """Launch the forward. Returns (out (H, Lq, Dv) in q's dtype, lse (H, Lq) fp32)."""
    H, Lq, Dk = q.shape
    Lk, Dv = k.shape[1], v.shape[2]
    bm, bn, bdk, bdv, stages = _blocks(Lq, Lk, Dk, Dv)
    n_m = triton.cdiv(Lq, bm)
    splits = _num_splits(n_m * H, Lk, bn, q.device, num_splits)
    keys_per_split = triton.cdiv(triton.cdiv(Lk, splits), bn) * bn
    splits = triton.cdiv(Lk, keys_per_split)  # every split holds >= 1 key
    if splits == 1:
        out = q.new_empty((1, H, Lq, Dv))
    else:
        out = torch.empty((splits, H, Lq, Dv), device=q.device, dtype=torch.float32)
    lse = torch.empty((splits, H, Lq), device=q.device, dtype=torch.float32)
    bias, xi_, sb, sx = _bias_args(bias_table, xi, q)
    _attn_fwd_kernel[(n_m, H, splits)](
        q, k, v, bias, xi_, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *sb, *sx, *out.stride(), *lse.stride(),
        Lq, Lk, Dk, Dv, keys_per_split, float(scale),
        HAS_BIAS=bias_table is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=bdk, BLOCK_DV=bdv,
        PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=stages,
    )
    if splits == 1:
        return out[0], lse[0]
    lse_all = torch.logsumexp(lse, dim=0)  # merge the split partials (flash-decoding)
    weights = torch.exp(lse - lse_all)[..., None]  # (S, H, Lq, 1)
    return (weights * out).sum(0).to(q.dtype), lse_all


def attention_bwd(q, k, v, out, lse, dout, scale, bias_table=None, xi=None, num_splits=None):
    """Launch the backward. Returns (dq, dk, dv, d bias_table or an empty tensor)."""
    H, Lq, Dk = q.shape
    Lk, Dv = k.shape[1], v.shape[2]
    bm, bn, bdk, bdv, stages = _blocks(Lq, Lk, Dk, Dv)
    delta = (dout.float() * out.float()).sum(-1)  # (H, Lq) rowsum(dO * O), fp32
    lse = lse.contiguous()
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    has_bias = bias_table is not None
    dbias = torch.zeros(bias_table.shape if has_bias else (0, 0), device=q.device, dtype=torch.float32)
    bias, xi_, sb, sx = _bias_args(bias_table, xi, q)
    prec = dot_precision(q.dtype)
    common = (*q.stride(), *k.stride(), *v.stride(), *sb, *sx, *dout.stride(), *lse.stride())
    meta = dict(HAS_BIAS=has_bias, BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=bdk, BLOCK_DV=bdv, PRECISION=prec,
                num_warps=4, num_stages=stages)
    _attn_bwd_dkdv_kernel[(triton.cdiv(Lk, bn), H)](
        q, k, v, bias, xi_, dout, lse, delta, dk, dv, dbias if has_bias else dk,
        *common, *dk.stride(), *dv.stride(), *(dbias.stride() if has_bias else (0, 0)),
        Lq, Lk, Dk, Dv, float(scale), **meta,
    )
    n_m = triton.cdiv(Lq, bm)
    splits = _num_splits(n_m * H, Lk, bn, q.device, num_splits)
    keys_per_split = triton.cdiv(triton.cdiv(Lk, splits), bn) * bn
    splits = triton.cdiv(Lk, keys_per_split)
    if splits == 1:
        dq = q.new_empty((1, H, Lq, Dk))
    else:
        dq = torch.empty((splits, H, Lq, Dk), device=q.device, dtype=torch.float32)
    _attn_bwd_dq_kernel[(n_m, H, splits)](
        q, k, v, bias, xi_, dout, lse, delta, dq,
        *common, *dq.stride(), Lq, Lk, Dk, Dv, keys_per_split, float(scale), **meta,
    )
    dq = dq[0] if splits == 1 else dq.sum(0).to(q.dtype)
    dbias = dbias.to(bias_table.dtype) if has_bias else dbias
    return dq, dk, dv, dbias
