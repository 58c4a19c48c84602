"""Benchmark cases of the two kernels at RALD's shapes, shared by bench_kernels.py and gpu_kernels.py.

Shapes (paper sections 3-4): h = 8 heads of d = 64, C = 39 label tokens (6 coarse + 33 fine), batches
of N = 128 / 256 images, ITRR over a reference bank of 4,096 or 65,536 keys, NNLDL with k = 5.
Each attention case is run by up to four implementations:
- "eager": `attention_ref`, the PyTorch composite (matmul, bias gather, softmax, matmul);
- "sdpa": `F.scaled_dot_product_attention` with the bias materialised as an (h, Lq, Lk) float mask;
- "flex": `flex_attention` compiled, the bias looked up in a score_mod (CUDA only);
- "triton": rald_fast's fused kernels (CUDA only).
Top-k cases: "reference" (materialised relation, stable sort), "torch_topk" (materialised relation,
`torch.topk` + gather: the usual way), "triton" (two streaming passes, O(N k) memory, the kernels'
default tile strategy) and "triton_all" (the same with rows_per_program="all": one program's rows
cover all N <= 256 queries, so each key tile is read once per pass; topk_triton.py's docstring).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rald_fast.kernels import (attention, attention_ref, neighbour_targets, neighbour_targets_ref,
                               neighbour_targets_triton)

SCALE = 0.125  # lambda = 1 / sqrt(64)
SIGMA = 500  # eq. (9): bucket of unreachable label pairs; table size sigma + 1


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """GPU name, library versions and git revision, stored beside every result (Liger's CSV rows)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda, git=rev,
    )


@dataclass(frozen=True)
class AttnCase:
    name: str
    H: int
    Lq: int
    Lk: int
    D: int
    bias: bool  # HLRR's hierarchy bias (eq. 8)
    cpu: bool  # small enough for the CPU reference benchmarks


ATTN_CASES = [
    AttnCase("hlrr_c39", 8, 39, 39, 64, True, True),
    AttnCase("lgifo_n128", 8, 128, 39, 64, False, True),
    AttnCase("lgifo_n256", 8, 256, 39, 64, False, True),
    AttnCase("itrr_n128", 8, 128, 128, 64, False, True),
    AttnCase("itrr_n256", 8, 256, 256, 64, False, True),
    AttnCase("itrr_bank4k_n128", 8, 128, 4096, 64, False, True),
    AttnCase("itrr_bank64k_n128", 8, 128, 65536, 64, False, False),
    AttnCase("itrr_bank64k_n256", 8, 256, 65536, 64, False, False),
]


@dataclass(frozen=True)
class TopkCase:
    name: str
    H: int
    N: int
    M: int
    D: int
    C: int
    k: int
    cpu: bool


TOPK_CASES = [
    TopkCase("batch_n128", 8, 128, 128, 64, 33, 5, True),
    TopkCase("batch_n256", 8, 256, 256, 64, 33, 5, True),
    TopkCase("bank4k_n128", 8, 128, 4096, 64, 33, 5, True),
    TopkCase("bank64k_n128", 8, 128, 65536, 64, 33, 5, False),
    TopkCase("bank64k_n256", 8, 256, 65536, 64, 33, 5, False),
]


def label_xi(Lq: int = 39, Lk: int | None = None, sigma: int = SIGMA) -> torch.Tensor:
    """An (Lq, Lk) xi table with the structure of FG-Emotions' label graph (eq. 9): the 39-node
    table (6 coarse + 33 fine nodes) for Lq = Lk = 39, cropped or tiled (index modulo 39) for the
    odd-sized bias cases (Lq = 5, Lk = 7, ...)."""
    Lk = Lq if Lk is None else Lk
    sizes = [5, 7, 9, 3, 6, 3]
    parent = [c for c, n in enumerate(sizes) for _ in range(n)]
    C = len(sizes) + len(parent)  # 39
    xi = torch.full((C, C), sigma, dtype=torch.long)
    for f, c in enumerate(parent):
        xi[6 + f, c] = xi[c, 6 + f] = 1
        for g, c2 in enumerate(parent):
            if c2 == c and g != f:
                xi[6 + f, 6 + g] = 2
    xi.fill_diagonal_(0)
    rows, cols = torch.arange(Lq) % C, torch.arange(Lk) % C
    return xi[rows][:, cols].contiguous()


def attn_inputs(case: AttnCase, device, dtype, requires_grad: bool = True) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device, dtype).requires_grad_(requires_grad)
    inp = dict(q=mk(case.H, case.Lq, case.D), k=mk(case.H, case.Lk, case.D), v=mk(case.H, case.Lk, case.D),
               table=None, xi=None)
    if case.bias:
        table = torch.linspace(1.0, -1.0, SIGMA + 1).repeat(case.H, 1)  # fp32 parameter
        inp["table"] = table.to(device).requires_grad_(requires_grad)
        inp["xi"] = label_xi(case.Lq, case.Lk).to(device)
    inp["grad_out"] = torch.randn(case.H, case.Lq, case.D, generator=g).to(device, dtype)
    return inp


def _sdpa(q, k, v, table, xi):
    mask = None if table is None else table.to(q.dtype)[:, xi]  # materialised (H, Lq, Lk) bias
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=SCALE)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    for name in ("recompile_limit", "cache_size_limit"):  # one compile per benchmarked shape
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, table, xi):
    flex = _compiled_flex()
    if table is None:
        score_mod = None
    else:
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + table[h, xi[q_idx, kv_idx]].to(score.dtype)
    out = flex(q[None], k[None], v[None], score_mod=score_mod, scale=SCALE)  # (1, H, Lq, D)
    return out[0]


ATTN_IMPLS = {
    "eager": lambda q, k, v, table, xi: attention_ref(q, k, v, SCALE, table, xi),
    "sdpa": _sdpa,
    "flex": _flex,
    "triton": lambda q, k, v, table, xi: attention(q, k, v, SCALE, table, xi, backend="triton"),
}
CUDA_ONLY = {"flex", "triton"}


def attn_step(impl: str, inp: dict, backward: bool):
    """A zero-argument callable running one forward (and backward) of `impl` on `inp` (built with
    requires_grad=backward, so a forward-only step records no graph)."""
    fn = ATTN_IMPLS[impl]
    leaves = [inp[n] for n in ("q", "k", "v", "table") if inp[n] is not None]

    def fwd():
        return fn(inp["q"], inp["k"], inp["v"], inp["table"], inp["xi"])

    def fwd_bwd():
        out = fn(inp["q"], inp["k"], inp["v"], inp["table"], inp["xi"])
        return torch.autograd.grad(out, leaves, inp["grad_out"])

    return fwd_bwd if backward else fwd


def attn_flops(case: AttnCase, backward: bool) -> float:
    """Useful flops (FlashAttention's convention): 4 H Lq Lk D forward; the backward is 2.5 x the
    forward, so forward + backward counts 3.5 x."""
    fwd = 4.0 * case.H * case.Lq * case.Lk * case.D
    return fwd * (3.5 if backward else 1.0)


def topk_inputs(case: TopkCase, device, dtype) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    q = (4.0 * torch.randn(case.H, case.N, case.D, generator=g)).to(device, dtype)
    k = torch.randn(case.H, case.M, case.D, generator=g).to(device, dtype)
    p = torch.softmax(torch.randn(case.M, case.C, generator=g), -1).to(device)
    return dict(q=q, k=k, p=p, key_offset=case.M - case.N)  # the batch sits at the bank's end


@torch.no_grad()
def _torch_topk(q, k, p, topk, key_offset):
    """The usual way: materialise the head-averaged relation, mask self, torch.topk, gather."""
    r = torch.softmax(torch.matmul(q, k.transpose(1, 2)).float() * SCALE, dim=-1).mean(0)  # (N, M)
    rows = torch.arange(q.shape[1], device=q.device)
    r[rows, rows + key_offset] = -1.0
    w, idx = torch.topk(r, topk, dim=1)
    w = w / w.sum(1, keepdim=True)
    return (w[..., None] * p[idx]).sum(1), idx, w


TOPK_IMPLS = {
    "reference": lambda q, k, p, topk, off: neighbour_targets_ref(q, k, p, topk, SCALE, key_offset=off),
    "torch_topk": _torch_topk,
    "triton": lambda q, k, p, topk, off: neighbour_targets(q, k, p, topk, SCALE, key_offset=off, backend="triton"),
    "triton_all": lambda q, k, p, topk, off: neighbour_targets_triton(q, k, p, topk, SCALE, key_offset=off,
                                                                      rows_per_program="all"),
}


def topk_step(impl: str, case: TopkCase, inp: dict):
    fn = TOPK_IMPLS[impl]
    return lambda: fn(inp["q"], inp["k"], inp["p"], case.k, inp["key_offset"])


def synchronized(fn):
    """Wrap fn so that a timed call includes the GPU work it queued."""
    if not torch.cuda.is_available():
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def looped(fn, n: int):
    """n back-to-back calls per timed call (synchronised once by `synchronized`): launch-bound time."""

    def run():
        for _ in range(n):
            out = fn()
        return out

    return run


def cuda_graph(fn):
    """fn captured once in a CUDA graph (after a warm-up on a side stream, as capture requires);
    returns the replay, which times the kernels without the launch overhead."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


TIMINGS = ("call", "loop20", "graph")  # one synchronised call; 20 calls then one sync; graph replay


def timed_step(fn, timing: str):
    """The callable a benchmark times for `timing` (TIMINGS), and the calls it makes per timed call."""
    if timing == "call":
        return synchronized(fn), 1
    if timing == "loop20":
        return synchronized(looped(fn, 20)), 20
    if timing == "graph":
        return synchronized(cuda_graph(fn)), 1
    raise ValueError(timing)


def topk_flops(case: TopkCase) -> float:
    """Two passes of H N M D multiply-adds (the streaming kernel computes q.k twice)."""
    return 2 * 2.0 * case.H * case.N * case.M * case.D
