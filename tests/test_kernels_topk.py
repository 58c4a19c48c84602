"""NNLDL neighbour targets (rald_fast.kernels.topk, paper eq. 18): streaming Triton vs reference.

Every Triton comparison runs with both tile strategies of the kernels (`rows_per_program`: "block", 64
query rows per program, and "all", one program's rows covering all N <= 256; topk_triton.py's
docstring). Device handling as in test_kernels.py: the `device` fixture gives CPU tensors under the interpreter
(tests/conftest.py turns it on for a session without CUDA) and CUDA tensors in a CUDA session. Indices must match the
reference exactly (the random data have no near-ties at fp32 resolution; exact ties are built on
purpose below and must break towards the lower key index). Weights and targets, fp32: the kernel sums
the head probabilities in another order, a few ulps: atol 1e-6 on weights and D (values <= 1).
"""

from __future__ import annotations

import functools

import pytest
import torch

from rald_fast import kernels
from rald_fast.kernels import _runtime, neighbour_targets, neighbour_targets_ref, neighbour_targets_triton
from rald_fast.kernels.testing import assert_close

INTERPRETED = kernels.interpret_mode()
needs_triton = pytest.mark.skipif(not kernels.HAS_TRITON, reason="triton not installed")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.HAS_TRITON) or INTERPRETED,
                                reason="needs CUDA + triton, compiled (not interpreted)")
SCALE = 0.125
TOL = dict(atol=1e-6, rtol=1e-5)
ROWS = ["block", "all"]  # topk_triton.ROWS_PER_PROGRAM, without importing Triton at collection
TRITON_IMPLS = {"reference": neighbour_targets_ref, "triton": neighbour_targets_triton,
                "triton_all": functools.partial(neighbour_targets_triton, rows_per_program="all")}


def make(H, N, M, D, C=7, scale_q=1.0, device="cpu", dtype=torch.float32):
    q = (torch.randn(H, N, D, device=device) * scale_q).to(dtype)
    k = torch.randn(H, M, D, device=device).to(dtype)
    p = torch.softmax(torch.randn(M, C, device=device), dim=-1)
    return q, k, p


def assert_same_targets(got, want, tol=TOL):
    (d, idx, w), (d_ref, idx_ref, w_ref) = got, want
    assert idx.dtype == torch.long and idx.shape == idx_ref.shape, (idx.shape, idx_ref.shape)
    bad = (idx != idx_ref).any(dim=1).nonzero()
    if len(bad):
        row = int(bad[0])
        raise AssertionError(f"idx: {len(bad)} rows differ; first row {row}: got {idx[row].tolist()}, "
                             f"expected {idx_ref[row].tolist()} (weights {w_ref[row].tolist()})")
    assert_close(w, w_ref, name="w", **tol)
    assert_close(d, d_ref, name="D", **tol)


# (H, N, M, key_offset, exclude_self): the batch as key set (M == N), or a bank holding the batch
# at key_offset (start, middle, end), or a bank without it (offset out of range, or no exclusion)
CASES = [
    (2, 1, 1, 0, True), (2, 2, 2, 0, True), (2, 5, 5, 0, True), (2, 128, 128, 0, True),
    (2, 5, 5, 0, False), (8, 39, 39, 0, True), (2, 5, 300, 100, True), (2, 128, 1000, 872, True),
    (2, 2, 3000, 0, True), (2, 1, 7, 3, True), (2, 5, 1000, 2000, True), (2, 7, 300, -3, True),
    (3, 17, 513, 0, False),
]


@needs_triton
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("topk", [1, 5, 16])
@pytest.mark.parametrize("H,N,M,offset,exclude", CASES)
def test_triton_matches_reference(device, H, N, M, offset, exclude, topk, rows):
    q, k, p = make(H, N, M, 40, scale_q=4.0, device=device)  # scale_q: peaked relations, as trained ITRR gives
    kw = dict(exclude_self=exclude, key_offset=offset)
    assert_same_targets(neighbour_targets_triton(q, k, p, topk, SCALE, rows_per_program=rows, **kw),
                        neighbour_targets_ref(q, k, p, topk, SCALE, **kw))


class _GridSpy:
    """Stands in for a kernel object: records each launch's grid, then launches the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(tuple(grid))
        return self.kernel[grid]


# (N, M, topk, splits, key_offset, exclude_self) with the GPU's tiles: N not a power of two, M not a
# multiple of any BLOCK_N, the batch at the bank's end / start / outside it, N above one "all" block
GPU_TILING_CASES = [
    (70, 500, 5, 1, 430, True), (70, 500, 5, 3, 430, True), (3, 1000, 32, 7, 997, True),
    (130, 200, 7, 2, 70, True), (5, 300, 5, None, 0, True), (37, 301, 16, 2, 264, True),
    (64, 257, 5, 3, 0, False), (200, 333, 9, 4, 100, True), (300, 350, 5, 2, 50, True),
]


@needs_triton
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("N,M,topk,splits,offset,exclude", GPU_TILING_CASES)
def test_triton_gpu_tiling_and_key_splits(device, monkeypatch, N, M, topk, splits, offset, exclude, rows):
    from rald_fast.kernels import topk_triton

    monkeypatch.setattr(_runtime, "INTERPRET_TILE_FACTOR", 1)  # the GPU tiles (64 x 64; "all": <= 256 x 32)
    spies = {name: _GridSpy(getattr(topk_triton, name)) for name in ("_row_lse_kernel", "_topk_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(topk_triton, name, spy)
    q, k, p = make(2, N, M, 64, scale_q=4.0, device=device)
    kw = dict(exclude_self=exclude, key_offset=offset)
    assert_same_targets(neighbour_targets_triton(q, k, p, topk, SCALE, num_splits=splits, rows_per_program=rows, **kw),
                        neighbour_targets_ref(q, k, p, topk, SCALE, **kw))
    # row blocks of both passes: "all" reads each key tile once per (head, split) for N <= 256
    row_blocks = -(-N // (64 if rows == "block" else 256))
    assert [g[0] for spy in spies.values() for g in spy.grids] == [row_blocks, row_blocks]


@needs_triton
def test_tile_strategies_at_rald_shapes(monkeypatch):
    """The launch plans on an H200 (132 SMs, faked: no GPU needed) at N = 256 queries, a 65,536-key bank,
    k = 5 and 32: "all" has one row block and makes up the parallelism with key splits, its merge
    keeps <= MAX_SPLIT_CANDIDATES candidates per row; "block" keeps its 64 x 64 tiles; None is the
    default; an unknown strategy is refused."""
    from rald_fast.kernels import topk_triton as tt

    monkeypatch.setattr(_runtime, "INTERPRET_TILE_FACTOR", 1)
    monkeypatch.setattr(tt, "num_sms", lambda device: 132)
    cuda = torch.device("cuda")
    assert tt.DEFAULT_ROWS_PER_PROGRAM in tt.ROWS_PER_PROGRAM == tuple(ROWS)
    assert tt._tiles(256, 65536, None) == tt._tiles(256, 65536, tt.DEFAULT_ROWS_PER_PROGRAM)
    assert tt._tiles(256, 65536, "block") == ("block", 64, 64, 64, 4)
    assert tt._tiles(256, 65536, "all") == ("all", 256, 64, 32, 8)
    assert tt._tiles(130, 65536, "all") == ("all", 256, 64, 32, 8)
    assert tt._tiles(300, 65536, "all")[1] == 256  # beyond 256 rows: blocks of 256
    assert tt._tiles(37, 300, "all")[1:] == tt._tiles(37, 300, "block")[1:] == (64, 64, 64, 4)  # N <= 64: the same
    for topk in (5, 32):
        kp = _runtime.next_pow2(topk, lo=2)
        _, bm, _, bn, _ = tt._tiles(256, 65536, "all")
        splits, kps = tt._splits(256 // bm, 65536, bn, cuda, None, tt.MAX_SPLIT_CANDIDATES // kp)
        assert 128 <= splits <= 264 and splits * kp <= tt.MAX_SPLIT_CANDIDATES and kps % bn == 0, (splits, kps)
        assert splits * kps >= 65536 > (splits - 1) * kps
        assert tt._splits(256 // 64, 65536, 64, cuda, None) == (64, 1024)  # "block": 4 x 64 programs, as before
    q, k, p = make(2, 5, 40, 16)
    with pytest.raises(ValueError, match="rows_per_program"):
        neighbour_targets_triton(q, k, p, 3, SCALE, rows_per_program="rows")


@pytest.mark.parametrize("impl", list(TRITON_IMPLS))
def test_ties_break_to_lower_index(request, monkeypatch, impl):
    """All relations equal (zero queries): the neighbours are the lowest eligible indices in order."""
    if impl != "reference":
        request.getfixturevalue("interpret")
    monkeypatch.setattr(_runtime, "INTERPRET_TILE_FACTOR", 1)  # the GPU's key blocks: ties across 5 of them
    fn = TRITON_IMPLS[impl]
    q, k, p = make(2, 6, 300, 16)
    q.zero_()
    d, idx, w = fn(q, k, p, 5, SCALE, key_offset=2)  # row i's self is key i + 2
    expected = torch.tensor([[j for j in range(7) if j != i + 2][:5] for i in range(6)])
    assert torch.equal(idx, expected), idx
    assert_close(w, torch.full_like(w, 0.2), name="w", **TOL)
    assert_close(d, p[expected].mean(1), name="D", **TOL)


@needs_triton
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("N", [9, 100])
def test_exact_ties_between_duplicate_keys(device, monkeypatch, N, rows):
    """Integer data make every logit exact; keys duplicated across key blocks tie exactly."""
    monkeypatch.setattr(_runtime, "INTERPRET_TILE_FACTOR", 1)  # the GPU's tiles: "all" differs at N = 100
    q = torch.randint(-2, 3, (2, N, 16)).float()
    k = torch.randint(-2, 3, (2, 600, 16)).float()
    k[:, 500:560] = k[:, 0:60]  # duplicates in later key blocks must lose the ties
    k[:, 300:310] = k[:, 290:300]
    p = torch.softmax(torch.randn(600, 5), -1)
    q, k, p = q.to(device), k.to(device), p.to(device)
    got = neighbour_targets_triton(q, k, p, 8, 1.0, exclude_self=False, rows_per_program=rows)
    want = neighbour_targets_ref(q, k, p, 8, 1.0, exclude_self=False)
    assert_same_targets(got, want)


@needs_triton
@pytest.mark.parametrize("S,KP,topk,C", [(1, 8, 5, 7), (3, 8, 5, 33), (5, 32, 32, 3)])
def test_merge_kernel_matches_sort_and_aggregate(device, S, KP, topk, C):
    """The one-launch merge + aggregation against sort (value desc, index asc) and eq. 18 in PyTorch,
    with exact value ties across splits and empty (-inf) slots."""
    from rald_fast.kernels import topk_triton

    N, M = 11, 400
    keys = torch.randperm(M)[: S * KP].reshape(S, 1, KP).expand(S, N, KP).contiguous()
    vals = torch.rand(S, N, KP).round(decimals=1)  # coarse values: many exact ties
    vals[:, :, -1] = float("-inf")  # one empty slot per split
    keys[:, :, -1] = 2**31 - 1
    p = torch.softmax(torch.randn(M, C), -1)
    d, idx, w = topk_triton.merge_aggregate(vals.to(device), keys.int().to(device), p.to(device), topk)
    flat_v, flat_i = vals.permute(1, 0, 2).reshape(N, -1), keys.permute(1, 0, 2).reshape(N, -1).long()
    order = torch.argsort(flat_i, dim=1, stable=True)
    flat_v, flat_i = flat_v.gather(1, order), flat_i.gather(1, order)
    sv, order = torch.sort(flat_v, dim=1, descending=True, stable=True)
    si = flat_i.gather(1, order)[:, :topk]
    sw = sv[:, :topk] / sv[:, :topk].sum(1, keepdim=True)
    assert torch.equal(idx.cpu(), si)
    assert_close(w, sw, name="w", **TOL)
    assert_close(d, (sw[..., None] * p[si]).sum(1), name="D", **TOL)


def test_wide_heads_take_the_reference(monkeypatch):
    """Head dims above 256 (the loss's cosine relations: H = 1, D = 512) use the reference under any
    backend instead of failing in the kernel."""
    monkeypatch.setattr(kernels, "neighbour_targets_triton", lambda *a, **kw: pytest.fail("kernel for D = 512"))
    q, k, p = make(1, 6, 50, 512)
    for backend in ("auto", "reference", "triton") if kernels.interpret_mode() else ("auto", "reference"):
        assert_same_targets(neighbour_targets(q, k, p, 3, SCALE, backend=backend),
                            neighbour_targets_ref(q, k, p, 3, SCALE))


@pytest.mark.parametrize("impl", list(TRITON_IMPLS))
def test_clamping_and_empty(request, impl):
    if impl != "reference":
        request.getfixturevalue("interpret")
    fn = TRITON_IMPLS[impl]
    q, k, p = make(2, 5, 5, 16)
    d, idx, w = fn(q, k, p, 10, SCALE)  # k >= N: all the others
    assert idx.shape == (5, 4) and not (idx == torch.arange(5)[:, None]).any()
    assert_close(w.sum(1), torch.ones(5), name="sum w", **TOL)
    assert_close(d.sum(1), torch.ones(5), name="sum D", atol=1e-6, rtol=0)  # p rows are distributions
    assert fn(q, k, p, 10, SCALE, exclude_self=False)[1].shape == (5, 5)
    d, idx, w = fn(q[:, :1], k[:, :1], p[:1], 5, SCALE)  # a lone image: no neighbour
    assert idx.shape == (1, 0) and w.shape == (1, 0) and torch.equal(d, torch.zeros(1, 7))


def test_reference_matches_definition():
    """The reference against eq. (18) written out loop by loop for one row."""
    q, k, p = make(3, 4, 50, 8)
    d, idx, w = neighbour_targets_ref(q, k, p, 5, SCALE, key_offset=10)
    r = torch.softmax(SCALE * q @ k.transpose(1, 2), dim=-1).mean(0)  # (N, M)
    i = 2
    r_i = r[i].clone()
    r_i[i + 10] = -1
    top = torch.argsort(r_i, descending=True)[:5]
    assert torch.equal(idx[i], top)
    assert_close(w[i], r[i, top] / r[i, top].sum(), name="w", **TOL)
    assert_close(d[i], (r[i, top, None] * p[top]).sum(0) / r[i, top].sum(), name="D", **TOL)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_gradients(request, impl):
    """Triton: no gradient (D is a target). Reference: differentiable, for the loss's nnldl_grad option."""
    q, k, p = make(2, 5, 5, 16)
    q.requires_grad_()
    p.requires_grad_()
    if impl == "triton":
        request.getfixturevalue("interpret")
        d, _, w = neighbour_targets_triton(q, k, p, 3, SCALE)
        assert not d.requires_grad and not w.requires_grad
    else:
        d, _, _ = neighbour_targets_ref(q, k, p, 3, SCALE)
        d.sum().backward()
        assert q.grad is not None and p.grad is not None and torch.isfinite(q.grad).all()


def test_dispatch(monkeypatch):
    q, k, p = make(2, 5, 40, 16)
    monkeypatch.delenv("RALD_FAST_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "neighbour_targets_triton", lambda *a, **kw: pytest.fail("triton on CPU auto"))
    assert_same_targets(neighbour_targets(q, k, p, 3, SCALE), neighbour_targets_ref(q, k, p, 3, SCALE))
    with pytest.raises(ValueError, match=r"\(M, C\)"):
        neighbour_targets_ref(q, k, p[:5], 3, SCALE)
    with pytest.raises(ValueError, match="k must be"):
        neighbour_targets_ref(q, k, p, -1, SCALE)


@needs_triton
def test_env_switch_and_large_k(device, monkeypatch):
    q, k, p = make(2, 5, 100, 16, device=device)
    monkeypatch.setenv("RALD_FAST_KERNELS", "triton")
    assert_same_targets(neighbour_targets(q, k, p, 5, SCALE), neighbour_targets_ref(q, k, p, 5, SCALE))
    # k above the register budget: "auto" falls back to the reference, "triton" says why it can't
    assert neighbour_targets(q, k, p, 40, SCALE)[1].shape == (5, 40)
    with pytest.raises(ValueError, match="k <= 32"):
        neighbour_targets(q, k, p, 40, SCALE, backend="triton")


# ---------------------------------------------------------------------------------------------------
# GPU: compiled kernels at RALD's bank size (skipped without CUDA)


@needs_cuda
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,M", [(128, 128), (256, 65536), (5, 4099)])
def test_cuda_matches_reference(dtype, N, M, rows):
    from rald_fast.kernels import topk_triton

    q, k, p = make(8, N, M, 64, C=33, scale_q=4.0, device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    d, idx, w = neighbour_targets_triton(q, k, p, 5, SCALE, key_offset=M - N, rows_per_program=rows)
    extra = torch.cuda.max_memory_allocated() - base
    d_ref, idx_ref, w_ref = neighbour_targets_ref(q, k, p, 5, SCALE, key_offset=M - N)
    # O(N S k) memory, not O(H N M): allow 1 MiB plus, per row, the split candidates (fp32 + int32 each):
    # 4 KiB ("block": S x KP <= 512 here) or 8 B x MAX_SPLIT_CANDIDATES ("all", more splits)
    per_row = 4096 if rows == "block" else 8 * topk_triton.MAX_SPLIT_CANDIDATES
    assert extra < 2**20 + per_row * N, f"{extra / 2**20:.1f} MiB extra"
    # bf16 inputs, fp32 maths on both sides but other summation orders: a rare near-tie may swap
    assert (idx == idx_ref).all(1).float().mean() >= 0.99
    same = (idx == idx_ref).all(1)
    assert_close(d[same], d_ref[same], name="D", atol=1e-4, rtol=1e-3)
    assert_close(w[same], w_ref[same], name="w", atol=1e-4, rtol=1e-3)
