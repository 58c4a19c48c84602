"""Triton kernels of the hierarchy-biased attention (paper eqs. 4-5, 8-10, 14-15); maths in attention.py.

RALD's attentions are tiny (HLRR 39 x 39, LGIFO N x 39, ITRR N x N with N <= 256, 8 heads of 64):
launch-bound, so the kernels aim at few launches and no host-side work between them.

Bias: the host gathers `b[h, xi[i, j]]` once per forward into a dense (H, Lq, Lk) tile (one torch
gather; HLRR's tile is 8 x 39 x 39 fp32, 49 KB), and the kernels load that tile: no int64 gather
inside the kernels. Softmax in base 2: logits are scaled by scale * log2(e) (and the bias tile by
log2(e)) so every exponential is an `exp2`; the saved log-sum-exp stays in natural-log units.

The launchers, tile plans and the bias tile are the host side, attention_launch.py.

Forward (`_attn_fwd_kernel`): FlashAttention-2 online softmax over key blocks, one program per
(query block, head, key split). When few query blocks exist but the key set is long (ITRR over a bank
of 65,536 keys) the keys are split over a third grid axis (flash-decoding) and the host merges the
fp32 partials.

Backward, two paths:
- fused (`_attn_bwd_fused_kernel`, Lq, Lk <= FUSED_MAX_LEN and at most MAX_BIAS_CLASSES distinct xi
  values): ONE program per head computes delta = rowsum(dO * O) itself, then dk, dv (key blocks
  outer), dq (query blocks outer), and reduces dS into the bias-table gradient over the distinct xi
  values ("classes", HLRR has 4: 0, 1, 2, sigma), writing every entry of d bias_table (zeros
  included). One launch, no atomics: bit-reproducible.
- split (longer sequences): one program per key block for dk, dv (and, with a bias, the dS tile, each
  element written once; the host sums it into the table with index_add_, which is atomic on CUDA),
  one program per query block (and key split) for dq.
Both paths run the same `@jit` helpers (Triton inlines them): `_attn_bwd_dkdv` (a key block's dk, dv,
dS), `_attn_bwd_dq` (a query block's dq over a key range), so each formula is written once.

Loop bounds are plain integer kernel arguments computed on the host (Triton 3.6's interpreter rejects
`range(lo, hi, step)` whose bound is a tensor computed in the kernel). All accumulation is fp32
(`tl.dot` accumulates in fp32; softmax statistics are fp32). Limits: head dims <= 256 (padded to a
power of two >= 16 and masked; wider heads take the PyTorch composite, attention.py), Lk >= 1, any
Lq, xi entries in [0, T).
"""

from __future__ import annotations

import triton.language as tl

from ._runtime import jit

MAX_HEAD_DIM = 256
FUSED_MAX_LEN = 256  # longest Lq / Lk of the one-program-per-head backward
MAX_BIAS_CLASSES = 64  # most distinct xi values the fused backward reduces itself
LOG2E = 1.4426950408889634  # log2(e), also written out in the kernels (1 / ln 2)


@jit
def _scores(a, b, bias_ptrs, ok, qk_scale, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 logits of one block: (a @ b) * scale * log2(e) plus, with a bias, the bias tile at bias_ptrs
    (zero where not ok) times log2(e). a @ b is q k^T, or k q^T for a transposed (keys x queries) block."""
    s = tl.dot(a, b, input_precision=PRECISION) * qk_scale
    if HAS_BIAS:
        s += tl.load(bias_ptrs, mask=ok, other=0.0) * 1.4426950408889634
    return s


@jit
def _attn_fwd_kernel(
    Q, K, V, Bias,  # q (H, Lq, Dk), k (H, Lk, Dk), v (H, Lk, Dv), bias tile b[h, xi[i, j]] (H, Lq, Lk) fp32
    Out, Lse,  # out (S, H, Lq, Dv), lse (S, H, Lq) fp32 natural log: S = number of key splits
    sqh, sqm, sqd,  # q strides: head, query row, feature
    skh, skn, skd,  # k strides: head, key row, feature
    svh, svn, svd,  # v strides: head, key row, feature
    sbh, sbm, sbn,  # bias-tile strides: head, query row, key column
    sos, soh, som, sod,  # out strides: split, head, query row, feature
    sls, slh, slm,  # lse strides: split, head, query row
    Lq, Lk, Dk, Dv, keys_per_split,  # keys_per_split: a multiple of BLOCK_N, the loop bound
    qk_scale,  # scale * log2(e)
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
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max of the base-2 logits
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(logit - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo = sp * keys_per_split
    hi = tl.minimum(lo + keys_per_split, Lk)
    for start in range(0, keys_per_split, BLOCK_N):  # the first block holds >= 1 key: m_i finite after it
        offs_n = lo + start + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        kt = tl.load(K + h * skh + offs_n[None, :] * skn + offs_dk[:, None] * skd,
                     mask=col_ok[None, :] & (offs_dk[:, None] < Dk), other=0.0)  # (BLOCK_DK, BLOCK_N)
        s = _scores(q, kt, Bias + h * sbh + offs_m[:, None] * sbm + offs_n[None, :] * sbn,
                    row_ok[:, None] & col_ok[None, :], qk_scale, HAS_BIAS, PRECISION)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + h * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=col_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(Out + sp * sos + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
             acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < Dv))
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # natural-log units at the interface
    tl.store(Lse + sp * sls + h * slh + offs_m * slm, lse, mask=row_ok)


# backward helpers, shared by the fused and the split kernels; pointer arguments arrive offset to the head


@jit
def _attn_bwd_rows(Q, DO, Lse, OD, offs_m, row_ok, sqm, sqd, sdom, sdod, slm, som, sod, Dk, Dv,
                   BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DELTA_FROM_O: tl.constexpr):
    """A query block's q, dO, base-2 lse and delta = rowsum(dO * O): computed from O = OD (strides som, sod)
    when DELTA_FROM_O (the fused kernel), else loaded from the host's delta OD, laid out like Lse."""
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + offs_m[:, None] * sqm + offs_dk[None, :] * sqd,
                mask=row_ok[:, None] & (offs_dk[None, :] < Dk), other=0.0)  # (BLOCK_M, BLOCK_DK)
    dmask = row_ok[:, None] & (offs_dv[None, :] < Dv)
    do = tl.load(DO + offs_m[:, None] * sdom + offs_dv[None, :] * sdod, mask=dmask, other=0.0)  # (BLOCK_M, BLOCK_DV)
    lse2 = tl.load(Lse + offs_m * slm, mask=row_ok, other=0.0) * 1.4426950408889634
    if DELTA_FROM_O:
        o = tl.load(OD + offs_m[:, None] * som + offs_dv[None, :] * sod, mask=dmask, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # rowsum(dO * O)
    else:
        delta = tl.load(OD + offs_m * slm, mask=row_ok, other=0.0)
    return q, do, lse2, delta


@jit
def _attn_bwd_p(a, b, bias_ptrs, ok, lse2, qk_scale, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """P = exp2(S - lse2), S = _scores(a, b), zero where not ok; either orientation (lse2 broadcast to it)."""
    return tl.where(ok, tl.exp2(_scores(a, b, bias_ptrs, ok, qk_scale, HAS_BIAS, PRECISION) - lse2), 0.0)


@jit
def _attn_bwd_ds(p, c, d, delta, PRECISION: tl.constexpr):
    """Softmax backward: dS = P * (dP - delta), dP = c @ d, delta = rowsum(dO * O) broadcast to the block."""
    return p * (tl.dot(c, d, input_precision=PRECISION) - delta)


@jit
def _attn_bwd_dkdv(Q, K, V, Bias, DO, Lse, OD, DSink, dcls, offs_n, col_ok,
                   sqm, sqd, skn, skd, svn, svd, sbm, sbn, sdom, sdod, slm, som, sod, scm, scn,
                   Lq, Dk, Dv, n_cls, qk_scale, HAS_BIAS: tl.constexpr, FUSED: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dk / scale and dv (fp32) of a key block, query blocks inner, keys on rows (transposed scores), and dS
    for the bias gradient. FUSED: delta from O = OD, dS summed per xi class into dcls (DSink: the class ids,
    strides scm, scn); else delta loaded from OD, dS stored into DSink (the dS tile, laid out like Bias)."""
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(K + offs_n[:, None] * skn + offs_dk[None, :] * skd,
                mask=col_ok[:, None] & (offs_dk[None, :] < Dk), other=0.0)  # (BLOCK_N, BLOCK_DK)
    v = tl.load(V + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                mask=col_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)  # (BLOCK_N, BLOCK_DV)
    dk = tl.zeros(k.shape, tl.float32)
    dv = tl.zeros(v.shape, tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Lq
        q, do, lse2, delta = _attn_bwd_rows(Q, DO, Lse, OD, offs_m, row_ok, sqm, sqd, sdom, sdod, slm, som, sod,
                                            Dk, Dv, BLOCK_DK, BLOCK_DV, FUSED)
        ok = col_ok[:, None] & row_ok[None, :]
        bias_at = offs_m[None, :] * sbm + offs_n[:, None] * sbn
        pt = _attn_bwd_p(k, tl.trans(q), Bias + bias_at, ok, lse2[None, :], qk_scale, HAS_BIAS, PRECISION)  # P^T
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dst = _attn_bwd_ds(pt, v, tl.trans(do), delta[None, :], PRECISION)  # dS^T, from dP^T = (dO V^T)^T
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
        if HAS_BIAS:
            if FUSED:  # d b[h, t] = sum of dS over the (i, j) of class t, in a fixed order
                cls = tl.load(DSink + offs_m[None, :] * scm + offs_n[:, None] * scn, mask=ok, other=-1)
                cls_ids = tl.arange(0, dcls.shape[0])
                for c in range(0, n_cls):
                    part = tl.sum(tl.sum(tl.where(cls == c, dst, 0.0), 1), 0)
                    dcls += tl.where(cls_ids == c, part, 0.0)
            else:  # the bias tile's gradient is dS itself
                tl.store(DSink + bias_at, dst, mask=ok)
    return dk, dv, dcls


@jit
def _attn_bwd_dq(Q, K, V, Bias, DO, Lse, OD, offs_m, row_ok,
                 sqm, sqd, skn, skd, svn, svd, sbm, sbn, sdom, sdod, slm, som, sod,
                 lo, hi, n_keys, Dk, Dv, qk_scale, HAS_BIAS: tl.constexpr, DELTA_FROM_O: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dq / scale (fp32) of a query block: sum of dS K over the keys lo + [0, n_keys) below hi (n_keys: the
    loop bound, a kernel argument); delta as in _attn_bwd_rows."""
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q, do, lse2, delta = _attn_bwd_rows(Q, DO, Lse, OD, offs_m, row_ok, sqm, sqd, sdom, sdod, slm, som, sod,
                                        Dk, Dv, BLOCK_DK, BLOCK_DV, DELTA_FROM_O)
    dq = tl.zeros(q.shape, tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        offs_n = lo + start + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        kt = tl.load(K + offs_n[None, :] * skn + offs_dk[:, None] * skd,
                     mask=col_ok[None, :] & (offs_dk[:, None] < Dk), other=0.0)  # (BLOCK_DK, BLOCK_N)
        vt = tl.load(V + offs_n[None, :] * svn + offs_dv[:, None] * svd,
                     mask=col_ok[None, :] & (offs_dv[:, None] < Dv), other=0.0)  # (BLOCK_DV, BLOCK_N)
        p = _attn_bwd_p(q, kt, Bias + offs_m[:, None] * sbm + offs_n[None, :] * sbn,
                        row_ok[:, None] & col_ok[None, :], lse2[:, None], qk_scale, HAS_BIAS, PRECISION)
        ds = _attn_bwd_ds(p, do, vt, delta[:, None], PRECISION)
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    return dq


@jit
def _attn_bwd_fused_kernel(
    Q, K, V, Bias, O, DO, Lse,  # noqa: E741 -- as in the forward; o, dO (H, Lq, Dv); lse (H, Lq) fp32 natural log
    DQ, DK, DV,  # gradients, contiguous (H, L, D) in the inputs' dtype
    Cls, Uniq, DBias,  # xi's class ids (Lq, Lk) int32, class -> table index (U,) int32, d table (H, T) fp32
    sqh, sqm, sqd, skh, skn, skd, svh, svn, svd,  # q, k, v strides (head, row, feature)
    sbh, sbm, sbn,  # bias-tile strides (head, query row, key column)
    soh, som, sod, sdoh, sdom, sdod,  # o and dO strides (head, query row, feature)
    slh, slm,  # lse strides (head, query row)
    sdqh, sdqm, sdqd, sdkh, sdkn, sdkd, sdvh, sdvn, sdvd,  # dq, dk, dv strides
    scm, scn,  # class-id strides (query row, key column)
    sdbh, sdbt,  # d table strides (head, table index)
    Lq, Lk, Dk, Dv, n_cls, T,  # n_cls: number of distinct xi values; T: table size
    qk_scale, scale,  # scale * log2(e), scale
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, CLS_P: tl.constexpr, BLOCK_T: tl.constexpr,
    PRECISION: tl.constexpr,
):
    h = tl.program_id(0)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    dcls = tl.zeros([CLS_P], tl.float32)  # sum of dS per xi class
    # dk, dv (and the bias classes): key blocks outer
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Lk
        dk, dv, dcls = _attn_bwd_dkdv(Q + h * sqh, K + h * skh, V + h * svh, Bias + h * sbh, DO + h * sdoh,
                                      Lse + h * slh, O + h * soh, Cls, dcls, offs_n, col_ok,
                                      sqm, sqd, skn, skd, svn, svd, sbm, sbn, sdom, sdod, slm, som, sod, scm, scn,
                                      Lq, Dk, Dv, n_cls, qk_scale, HAS_BIAS, True, BLOCK_M, BLOCK_DK, BLOCK_DV,
                                      PRECISION)
        tl.store(DK + h * sdkh + offs_n[:, None] * sdkn + offs_dk[None, :] * sdkd,
                 (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None] & (offs_dk[None, :] < Dk))
        tl.store(DV + h * sdvh + offs_n[:, None] * sdvn + offs_dv[None, :] * sdvd,
                 dv.to(DV.dtype.element_ty), mask=col_ok[:, None] & (offs_dv[None, :] < Dv))
    # dq: query blocks outer
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Lq
        dq = _attn_bwd_dq(Q + h * sqh, K + h * skh, V + h * svh, Bias + h * sbh, DO + h * sdoh, Lse + h * slh,
                          O + h * soh, offs_m, row_ok, sqm, sqd, skn, skd, svn, svd, sbm, sbn, sdom, sdod, slm, som,
                          sod, 0, Lk, Lk, Dk, Dv, qk_scale, HAS_BIAS, True, BLOCK_N, BLOCK_DK, BLOCK_DV, PRECISION)
        tl.store(DQ + h * sdqh + offs_m[:, None] * sdqm + offs_dk[None, :] * sdqd,
                 (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_dk[None, :] < Dk))
    if HAS_BIAS:  # every table entry written: the classes' sums, zero elsewhere (no host zeros)
        cls_ids = tl.arange(0, CLS_P)
        for start_t in range(0, T, BLOCK_T):
            offs_t = start_t + tl.arange(0, BLOCK_T)
            vals = tl.zeros([BLOCK_T], tl.float32)
            for c in range(0, n_cls):
                t_c = tl.load(Uniq + c)
                vals += tl.where(offs_t == t_c, tl.sum(tl.where(cls_ids == c, dcls, 0.0), 0), 0.0)
            tl.store(DBias + h * sdbh + offs_t * sdbt, vals, mask=offs_t < T)


@jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, Bias, DO, Lse, Delta,  # as in the forward; dO like out; lse, delta = rowsum(dO*O): (H, Lq) fp32
    DK, DV, DS,  # dk like k, dv like v (contiguous (H, L, D)); dS (H, Lq, Lk) fp32 (bias only), each element once
    sqh, sqm, sqd, skh, skn, skd, svh, svn, svd,  # q, k, v strides (head, row, feature)
    sbh, sbm, sbn,  # bias-tile strides (head, query row, key column); dS shares them (same layout)
    sdoh, sdom, sdod,  # dO strides (head, query row, feature)
    slh, slm,  # lse and delta strides (head, query row); both tensors share them
    sdkh, sdkn, sdkd, sdvh, sdvn, sdvd,  # dk, dv strides (head, key row, feature)
    Lq, Lk, Dk, Dv, qk_scale, scale,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = offs_n < Lk
    dk, dv, _ = _attn_bwd_dkdv(Q + h * sqh, K + h * skh, V + h * svh, Bias + h * sbh, DO + h * sdoh, Lse + h * slh,
                               Delta + h * slh, DS + h * sbh, tl.zeros([2], tl.float32), offs_n, col_ok,  # dcls unused
                               sqm, sqd, skn, skd, svn, svd, sbm, sbn, sdom, sdod, slm, 0, 0, 0, 0,
                               Lq, Dk, Dv, 0, qk_scale, HAS_BIAS, False, BLOCK_M, BLOCK_DK, BLOCK_DV, PRECISION)
    tl.store(DK + h * sdkh + offs_n[:, None] * sdkn + offs_dk[None, :] * sdkd,
             (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None] & (offs_dk[None, :] < Dk))
    tl.store(DV + h * sdvh + offs_n[:, None] * sdvn + offs_dv[None, :] * sdvd,
             dv.to(DV.dtype.element_ty), mask=col_ok[:, None] & (offs_dv[None, :] < Dv))


@jit
def _attn_bwd_dq_kernel(
    Q, K, V, Bias, DO, Lse, Delta,  # as in _attn_bwd_dkdv_kernel
    DQ,  # dq partials (S, H, Lq, Dk): S = number of key splits (S == 1: dq itself, in q's dtype)
    sqh, sqm, sqd, skh, skn, skd, svh, svn, svd,  # q, k, v strides (head, row, feature)
    sbh, sbm, sbn,  # bias-tile strides (head, query row, key column)
    sdoh, sdom, sdod,  # dO strides (head, query row, feature)
    slh, slm,  # lse and delta strides (head, query row)
    sdqs, sdqh, sdqm, sdqd,  # dq strides (split, head, query row, feature)
    Lq, Lk, Dk, Dv, keys_per_split, qk_scale, scale,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    row_ok = offs_m < Lq
    lo = sp * keys_per_split
    hi = tl.minimum(lo + keys_per_split, Lk)
    dq = _attn_bwd_dq(Q + h * sqh, K + h * skh, V + h * svh, Bias + h * sbh, DO + h * sdoh, Lse + h * slh,
                      Delta + h * slh, offs_m, row_ok, sqm, sqd, skn, skd, svn, svd, sbm, sbn, sdom, sdod, slm, 0, 0,
                      lo, hi, keys_per_split, Dk, Dv, qk_scale, HAS_BIAS, False, BLOCK_N, BLOCK_DK, BLOCK_DV, PRECISION)
    tl.store(DQ + sp * sdqs + h * sdqh + offs_m[:, None] * sdqm + offs_dk[None, :] * sdqd,
             (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_dk[None, :] < Dk))
