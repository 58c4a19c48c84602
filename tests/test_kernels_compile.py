"""The Triton kernels compile for the GPU (sm_90, H100/H200) on a machine without one.

The interpreter (test_kernels.py) checks the maths but not what only the compiler checks: types,
`tl.dot` shapes, constexpr branches, shared memory. Triton can compile down to a cubin with no GPU
present (its bundled ptxas), so these tests compile each kernel with the constexprs the launchers
use and check that the shared memory fits an sm_90 block (227 KiB). They need Triton in compiled
mode: marked `compiled_triton`, an interpreted session runs them in a child process
(tests/conftest.py); ~40 s on 2 CPU cores (Triton caches the
results under ~/.triton/cache, so reruns take seconds).
"""

from __future__ import annotations

import inspect

import pytest

from rald_fast import kernels

pytestmark = [pytest.mark.compiled_triton,
              pytest.mark.skipif(not kernels.HAS_TRITON, reason="triton not installed")]
SM90_SMEM = 232448  # bytes of shared memory one block may use on sm_90


def compile_sm90(kernel, pointers: dict, constexprs: dict, num_stages: int):
    """Compile `kernel` (a JITFunction) for sm_90; every argument not named is an int32 or fp32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(kernel.fn).parameters)
    floats = ("scale", "qk_scale")
    signature = {n: pointers.get(n) or ("constexpr" if n in constexprs else "fp32" if n in floats else "i32")
                 for n in names}
    try:
        src = ASTSource(kernel, signature, {(names.index(n),): v for n, v in constexprs.items()})
        target = GPUTarget("cuda", 90, 32)
    except TypeError as exc:  # this Triton's ASTSource / GPUTarget signature differs
        pytest.skip(f"triton compile API differs: {exc}")
    return triton.compile(src, target=target, options=dict(num_warps=4, num_stages=num_stages))


def attn_pointers(dt: str) -> dict:
    ptrs = {n: f"*{dt}" for n in ("Q", "K", "V", "O", "Out", "DO", "DK", "DV", "DQ")}
    ptrs.update(Bias="*fp32", Lse="*fp32", Delta="*fp32", DS="*fp32", DBias="*fp32", Cls="*i32", Uniq="*i32")
    return ptrs


# (kernel, dtype, head dim, bias): every kernel at RALD's d = 64 in bf16, and the ones with the most
# shared memory at d = 64 in fp32: the split dk/dv backward (97 KB; other dims are measured in
# attention_launch._blocks' docstring: fp32 d = 128 peaks at 161 KB but takes a minute to compile)
# and the fused one-program-per-head backward
KERNELS = ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_fused_kernel")
ATTN_CONFIGS = [(name, "bf16", 64, True) for name in KERNELS]
ATTN_CONFIGS += [("_attn_bwd_dkdv_kernel", "fp32", 64, True), ("_attn_bwd_fused_kernel", "fp32", 64, True)]


@pytest.mark.parametrize("name,dt,d,bias", ATTN_CONFIGS)
def test_attention_kernels_compile_for_sm90(name, dt, d, bias):
    import torch

    from rald_fast.kernels import _runtime, attention_launch, attention_triton

    L = attention_triton.FUSED_MAX_LEN if "fused" in name else 4096
    bm, bn, bdk, bdv, stages = attention_launch._blocks(L, L, d, d)  # the launcher's tiles
    torch_dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dt]
    const = dict(HAS_BIAS=bias, BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=bdk, BLOCK_DV=bdv,
                 PRECISION=_runtime.dot_precision(torch_dt))
    if "fused" in name:
        const.update(CLS_P=4, BLOCK_T=512)  # HLRR: 4 xi classes, a table of 501
    compiled = compile_sm90(getattr(attention_triton, name), attn_pointers(dt), const, stages)
    assert "cubin" in compiled.asm
    assert compiled.metadata.shared <= SM90_SMEM, f"{compiled.metadata.shared} bytes of shared memory"


@pytest.mark.parametrize("dt", ["bf16"])
def test_topk_kernels_compile_for_sm90(dt):
    from rald_fast.kernels import topk_triton

    ptrs = dict(Q=f"*{dt}", K=f"*{dt}", Lse="*fp32", TopV="*fp32", TopI="*i32")
    const = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, PRECISION="ieee" if dt == "fp32" else "tf32")
    lse = compile_sm90(topk_triton._row_lse_kernel, ptrs, const, 2)
    top = compile_sm90(topk_triton._topk_kernel, ptrs, dict(const, K_TOP=5, KP=8, EXCLUDE_SELF=True), 2)
    for compiled in (lse, top):
        assert "cubin" in compiled.asm and compiled.metadata.shared <= SM90_SMEM
