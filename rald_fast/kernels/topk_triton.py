"""Triton kernels of the streaming top-k neighbour search of NNLDL (eq. 18); maths in topk.py.

Pass 1 (`_row_lse_kernel`): per head and query row, the log-sum-exp of scale * q . k over all M keys,
streamed over key blocks with an online max. Pass 2 (`_topk_kernel`): stream the key blocks again;
for each block, r = sum_h exp(scale * q_h . k_h - lse_h) (the head average times H: the factor cancels
in the weights and does not change the ranking), mask padding and self, and merge the block into a
running top-K kept in registers, K <= 32; a block none of whose entries reaches a row's current worst
kept value skips the insertion loop (the common case deep into a 65,536-key bank). Both passes split
the keys over a grid axis when the query rows alone give too few programs. Merge (`_merge_kernel`):
one small launch picks each row's K best of the S x KP split candidates, renormalises their weights
and averages their predictions (eq. 18), so the extra memory is S x N x KP values, not N x M.

Exponentials are base 2 (`exp2`, the scale multiplied by log2(e) on the host); lse stays in natural
log units between the passes. Loop bounds are integer kernel arguments computed on the host (Triton
3.6's interpreter rejects in-kernel tensor bounds); key offsets are 64-bit (M x stride may pass 2^31).

Ranking order everywhere: larger r first, then lower key index. The running list keeps KP slots
(KP = next power of two >= K) and is unsorted; each block contributes at most K entries, each
replacing the current worst slot only when strictly better, so the list always holds the best K
keys seen so far. Relations are fp32; q . k uses `tl.dot` with fp32 accumulation.

Tile strategies (`rows_per_program` of the launchers, `neighbour_targets_triton`):
- "block" (the default): BLOCK_M = 64 query rows per program (`tile(N, 64)`), BLOCK_N = 64 keys,
  4 warps; the grid has cdiv(N, 64) row blocks, so each key tile is loaded once per row block and
  pass: 4 times for N = 256 (the row blocks of one split are neighbours in the grid, so the repeats
  may well come from L2).
- "all": one row block covers all N <= 256 rows (BLOCK_M = next power of two >= N; blocks of 256
  rows beyond), so each key tile is loaded once per (head, split) and pass; the key splits supply the
  parallelism instead (`_splits`: about 2 programs per SM), capped so that the merge's S x KP
  candidates stay <= MAX_SPLIT_CANDIDATES. Its tiles (`_tiles`, register counts there): 8 warps once
  BLOCK_M > 64, and BLOCK_N = 32 in pass 2 for register pressure (64 in pass 1); for N <= 64 it is
  the "block" tiling.
Neither is a clear win on paper: "all" loads K a quarter as often at N = 256, but pass 2 reloads the
q tile of every head for every key block (H x BLOCK_M x D per BLOCK_N keys, from L2), which with
BLOCK_N = 32 is twice "block"'s q traffic, and its skip test (no row of the tile can enter its top-k)
covers 4 x more rows, so it fires less often. bench/gpu_kernels.py times both (impl "triton" and
"triton_all" in its "topk" rows; bench/gpu_suite.py runs it on the GPU); the default is to be chosen
from that measurement, and stays "block" until one exists.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import MAX_TOPK, dot_precision, jit, next_pow2, num_sms, tile

LOG2E = 1.4426950408889634  # log2(e): the kernels' softmax is in base 2 (exp2), lse in natural log
MAX_HEAD_DIM = 256  # q and k tiles of BLOCK_M x D in registers; wider heads take the reference



@jit
def _row_lse_kernel(
    Q, K, Lse,  # q (H, N, D), k (H, M, D); lse partials (S, H, N) fp32, S = number of key splits
    sqh, sqm, sqd,  # q strides: head, query row, feature
    skh, skn, skd,  # k strides: head, key row, feature
    sls, slh, slm,  # lse strides: split, head, query row
    N, M, D, keys_per_split, scale,  # scale: the logit scale times log2(e) (exp2 softmax)
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
    k_head = K + h.to(tl.int64) * skh  # int64: M x stride may pass 2^31 for a large bank
    for start in range(0, keys_per_split, BLOCK_N):  # host-side bound; the first block holds a key
        offs_n = lo + start + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        kt = tl.load(k_head + offs_n[None, :].to(tl.int64) * skn + offs_d[:, None] * skd,
                     mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)  # (BLOCK_D, BLOCK_N)
        s = tl.where(col_ok[None, :], tl.dot(q, kt, input_precision=PRECISION) * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    tl.store(Lse + sp * sls + h * slh + offs_m * slm, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)


@jit
def _topk_kernel(
    Q, K, Lse,  # q (H, N, D), k (H, M, D), lse (H, N) fp32 from pass 1
    TopV, TopI,  # outputs (S, N, KP): fp32 relation sums (-inf = empty) and int32 key indices
    sqh, sqm, sqd,  # q strides: head, query row, feature
    skh, skn, skd,  # k strides: head, key row, feature
    slh, slm,  # lse strides: head, query row
    sts, stm, stk,  # TopV / TopI strides (shared): split, query row, slot
    N, M, D, H, keys_per_split, key_offset, scale,  # scale: the logit scale times log2(e)
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
    for start in range(0, keys_per_split, BLOCK_N):  # host-side bound
        offs_n = lo + start + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        r = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        q_head = Q
        k_head = K + offs_n[None, :].to(tl.int64) * skn  # int64: M x stride may pass 2^31
        lse_head = Lse
        for _h in range(H):  # head sum of the softmax probabilities (NNLDL's relation R_v, times H)
            q = tl.load(q_head + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                        mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
            kt = tl.load(k_head + offs_d[:, None] * skd, mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)
            lse2 = tl.load(lse_head + offs_m * slm, mask=row_ok, other=0.0) * 1.4426950408889634
            r += tl.exp2(tl.dot(q, kt, input_precision=PRECISION) * scale - lse2[:, None])
            q_head += sqh  # pointer increments: 64-bit, whatever H x stride
            k_head += skh
            lse_head += slh
        ok = row_ok[:, None] & col_ok[None, :]
        if EXCLUDE_SELF:  # key_offset: where the query batch sits inside the key set
            ok = ok & (offs_n[None, :] != (offs_m[:, None] + key_offset))
        r = tl.where(ok, r, float("-inf"))
        # skip the insertion when no entry of the block can beat (or tie) a row's current k-th best:
        # once the list is full, most blocks of a 65,536-key bank contribute nothing
        worst_now = tl.min(top_v, 1)
        n_cand = tl.sum(tl.sum(tl.where((r >= worst_now[:, None]) & (r > float("-inf")), 1, 0), 1), 0)
        if n_cand > 0:
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


ROWS_PER_PROGRAM = ("block", "all")  # the two tile strategies (module docstring)
DEFAULT_ROWS_PER_PROGRAM = "block"  # to be chosen from the GPU suite's timings of both (module docstring)
ALL_ROWS_MAX = 256  # "all": one row block up to this many query rows (RALD's batches), blocks of it beyond
MAX_SPLIT_CANDIDATES = 4096  # "all": automatic splits keep S x KP <= this (the merge holds a row's list)


def _tiles(N: int, M: int, rows_per_program: str | None) -> tuple[str, int, int, int, int]:
    """(strategy, BLOCK_M, pass 1's BLOCK_N, pass 2's BLOCK_N, num_warps) for `rows_per_program`
    (None: DEFAULT_ROWS_PER_PROGRAM).

    "block": 64 x 64 tiles, 4 warps. "all": BLOCK_M = next power of two >= N, at most ALL_ROWS_MAX;
    at BLOCK_M <= 64 (N <= 64) it is the "block" tiling. Beyond, register pressure sets the tiles:
    pass 2 holds the relation sum r and the q . k product (two fp32 BLOCK_M x BLOCK_N tiles), a q
    tile (BLOCK_M x D, reloaded per head), a k tile and the running top-k (two BLOCK_M x KP tiles), so
    it is kept to 8 warps (256 threads, 255 registers each at most) and BLOCK_N = 32 keys, and pass 1
    (q, a score tile and its exponential) keeps "block"'s BLOCK_N = 64. ptxas -v for sm_90a at
    BLOCK_M = 256, D = 64, bf16, with the launch's specialisation (unit strides, 16-divisible ints):
    pass 2 at BLOCK_N = 32, 8 warps uses 203 registers at k = 5 and 243 at k = 32, no spill; BLOCK_N =
    64 uses 246 at k = 5 and spills at k = 32; 4 warps spill already at k = 5 ("block", 64 x 64 on 4
    warps: 159 at k = 5, 187 at k = 32); 16 warps at BLOCK_N = 32 would use 112 to 127 (an
    alternative for the GPU to judge: more warps per SM, more cross-warp work). Pass 1
    at 256 x 64 on 8 warps: 99 registers. At BLOCK_M = 128 pass 2 uses 123 (k = 5) to 149 (k = 32).
    8 warps are also two warp groups for tl.dot (wgmma's 64-row granules).
    """
    strategy = DEFAULT_ROWS_PER_PROGRAM if rows_per_program is None else rows_per_program
    if strategy not in ROWS_PER_PROGRAM:
        raise ValueError(f"neighbour_targets: rows_per_program must be one of {ROWS_PER_PROGRAM}, got "
                         f"{rows_per_program!r}")
    bm = tile(N, 64) if strategy == "block" else min(next_pow2(N), ALL_ROWS_MAX)
    if bm <= 64 or strategy == "block":
        return strategy, bm, tile(M, 64), tile(M, 64), 4
    return strategy, bm, tile(M, 64), tile(M, 32), 8


def _splits(n_programs: int, M: int, block_n: int, device: torch.device, num_splits: int | None,
            max_splits: int | None = None):
    n_blocks = triton.cdiv(M, block_n)
    if num_splits is None:
        want = triton.cdiv(2 * num_sms(device), n_programs) if device.type == "cuda" else 1
        num_splits = max(1, min(want, n_blocks // 4, max_splits or want))  # >= 4 key blocks per split
    num_splits = max(1, min(num_splits, n_blocks))
    keys_per_split = triton.cdiv(triton.cdiv(M, num_splits), block_n) * block_n
    return triton.cdiv(M, keys_per_split), keys_per_split


def row_lse(q: torch.Tensor, k: torch.Tensor, scale: float, num_splits: int | None = None,
            rows_per_program: str | None = None) -> torch.Tensor:
    """Pass 1: (H, N) fp32 log-sum-exp over the M keys of scale * q . k, per head and row.
    rows_per_program: "block" or "all" (module docstring), None: DEFAULT_ROWS_PER_PROGRAM."""
    H, N, D = q.shape
    M = k.shape[1]
    _, bm, bn, _, warps = _tiles(N, M, rows_per_program)
    bd = next_pow2(D)
    n_m = triton.cdiv(N, bm)
    splits, kps = _splits(n_m * H, M, bn, q.device, num_splits)
    lse = torch.empty((splits, H, N), device=q.device, dtype=torch.float32)
    _row_lse_kernel[(n_m, H, splits)](
        q, k, lse, *q.stride(), *k.stride(), *lse.stride(), N, M, D, kps, float(scale) * LOG2E,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PRECISION=dot_precision(q.dtype), num_warps=warps, num_stages=2,
    )
    return lse[0] if splits == 1 else torch.logsumexp(lse, dim=0)


def topk_candidates(q, k, lse, topk: int, scale: float, exclude_self: bool, key_offset: int,
                    num_splits: int | None = None,
                    rows_per_program: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 2: per row, the best `topk` keys of each split, unsorted: values (S, N, KP) fp32 (head
    sums of probabilities, -inf for empty slots) and int32 indices (S, N, KP). rows_per_program:
    "block" or "all" (module docstring), None: DEFAULT_ROWS_PER_PROGRAM."""
    if not 1 <= topk <= MAX_TOPK:
        raise ValueError(f"neighbour_targets: Triton top-k needs 1 <= k <= {MAX_TOPK}, got {topk}")
    H, N, D = q.shape
    M = k.shape[1]
    strategy, bm, _, bn, warps = _tiles(N, M, rows_per_program)
    bd, kp = next_pow2(D), next_pow2(topk, lo=2)
    n_m = triton.cdiv(N, bm)
    # "all" has one row block for N <= 256, so the automatic split count grows (up to 2 x SMs programs);
    # the cap keeps the merge's per-row candidate list (S x KP, in registers) small; "block" unchanged
    cap = MAX_SPLIT_CANDIDATES // kp if strategy == "all" else None
    splits, kps = _splits(n_m, M, bn, q.device, num_splits, cap)
    top_v = torch.empty((splits, N, kp), device=q.device, dtype=torch.float32)
    top_i = torch.empty((splits, N, kp), device=q.device, dtype=torch.int32)
    lse = lse.contiguous()
    _topk_kernel[(n_m, splits)](
        q, k, lse, top_v, top_i, *q.stride(), *k.stride(), *lse.stride(), *top_v.stride(),
        N, M, D, H, kps, int(key_offset), float(scale) * LOG2E,
        K_TOP=topk, KP=kp, EXCLUDE_SELF=bool(exclude_self), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
        PRECISION=dot_precision(q.dtype), num_warps=warps, num_stages=2,
    )
    return top_v, top_i


@jit
def _merge_kernel(
    TopV, TopI,  # candidates (S, N, KP): fp32 relation sums (-inf = empty), int32 key indices
    P,  # predictions of the key set (M, C)
    Dout, Idx, W,  # outputs: D (N, C) in p's dtype, idx (N, K_TOP) int64, w (N, K_TOP) fp32
    sts, stm, stk,  # candidate strides (shared): split, row, slot
    spm, spc, sdm, sdc, sim, sik, swm, swk,  # strides of p, D, idx, w (row, column)
    N, C, n_cand,  # n_cand = S * KP candidates per row
    K_TOP: tl.constexpr, KP: tl.constexpr, KO: tl.constexpr,  # KO: next power of two >= K_TOP
    CAND_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Merge the split candidates by (value desc, index asc), renormalise the k best and average
    their predictions (eq. 18): one launch instead of sort, gather, divide, gather, sum."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    cand = tl.arange(0, CAND_P)
    at = (cand // KP) * sts + rows[:, None] * stm + (cand % KP) * stk
    ok = row_ok[:, None] & (cand[None, :] < n_cand)
    v = tl.load(TopV + at, mask=ok, other=float("-inf"))
    i = tl.load(TopI + at, mask=ok, other=2147483647)
    outs = tl.arange(0, KO)
    sel_v = tl.zeros([BLOCK_R, KO], tl.float32)
    sel_i = tl.zeros([BLOCK_R, KO], tl.int32)
    for t in tl.static_range(K_TOP):
        best_v = tl.max(v, 1)
        best_i = tl.min(tl.where(v == best_v[:, None], i, 2147483647), 1)
        sel_v = tl.where(outs[None, :] == t, best_v[:, None], sel_v)
        sel_i = tl.where(outs[None, :] == t, best_i[:, None], sel_i)
        v = tl.where(i == best_i[:, None], float("-inf"), v)
    total = tl.maximum(tl.sum(sel_v, 1), 1.1754943508222875e-38)  # float32 tiny, as the reference
    w = sel_v / total[:, None]
    out_ok = row_ok[:, None] & (outs[None, :] < K_TOP)
    tl.store(W + rows[:, None] * swm + outs[None, :] * swk, w, mask=out_ok)
    tl.store(Idx + rows[:, None] * sim + outs[None, :] * sik, sel_i.to(tl.int64), mask=out_ok)
    cols = tl.arange(0, BLOCK_C)
    d = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for t in tl.static_range(K_TOP):
        w_t = tl.sum(tl.where(outs[None, :] == t, w, 0.0), 1)
        i_t = tl.sum(tl.where(outs[None, :] == t, sel_i, 0), 1).to(tl.int64)
        p_t = tl.load(P + i_t[:, None] * spm + cols[None, :] * spc, mask=row_ok[:, None] & (cols[None, :] < C),
                      other=0.0)
        d += w_t[:, None] * p_t.to(tl.float32)
    tl.store(Dout + rows[:, None] * sdm + cols[None, :] * sdc, d.to(Dout.dtype.element_ty),
             mask=row_ok[:, None] & (cols[None, :] < C))


def merge_aggregate(top_v: torch.Tensor, top_i: torch.Tensor, p: torch.Tensor, topk: int):
    """(D (N, C) in p's dtype, idx (N, k) int64, w (N, k) fp32) from pass 2's candidates."""
    S, N, KP = top_v.shape
    C = p.shape[1]
    d = torch.empty((N, C), device=p.device, dtype=p.dtype)
    idx = torch.empty((N, topk), device=p.device, dtype=torch.int64)
    w = torch.empty((N, topk), device=p.device, dtype=torch.float32)
    cand_p, block_c = next_pow2(S * KP, lo=2), next_pow2(C, lo=2)
    block_r = max(1, min(16, 4096 // max(cand_p, block_c)))  # rows per program: a few K registers
    _merge_kernel[(triton.cdiv(N, block_r),)](
        top_v, top_i, p, d, idx, w, *top_v.stride(), *p.stride(), *d.stride(), *idx.stride(), *w.stride(),
        N, C, S * KP, K_TOP=topk, KO=next_pow2(topk, lo=2), KP=KP, CAND_P=cand_p, BLOCK_R=block_r,
        BLOCK_C=block_c, num_warps=4,
    )
    return d, idx, w
