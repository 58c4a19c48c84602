"""Hierarchy-biased attention (rald_fast.kernels.attention): Triton kernels against the reference.

CPU runs use Triton's interpreter, which can only be switched on before triton is imported
(rald_fast/kernels/_runtime.py): tests/conftest.py switches it on for a test session on a machine
without CUDA, so the tests taking the `interpret` fixture run in-process. The few tests that need
Triton in compiled mode are marked `compiled_triton` and run in a subprocess (conftest.py). Tolerances, fp32
on CPU: the kernel sums in another order (online softmax, blocked dots), so elements differ by a few
ulps times the reduction length: atol 1e-5 / rtol 1e-4 for outputs and q, k, v gradients; the bias
table gradient sums dS over up to Lq * Lk entries per bucket, hence atol 1e-4.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from rald_fast import kernels
from rald_fast.kernels import _runtime, attention, attention_op, attention_ref

# the package attribute `attention` is the function; the module of the same name lives in sys.modules
attention_module = importlib.import_module("rald_fast.kernels.attention")
from rald_fast.kernels.testing import (
    assert_close,
    assert_within_ref_error,
    check_child_run,
    run_pytest_in_mode,
)

INTERPRETED = kernels.interpret_mode()
needs_triton = pytest.mark.skipif(not kernels.HAS_TRITON, reason="triton not installed")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.HAS_TRITON) or INTERPRETED,
                                reason="needs CUDA + triton, compiled (not interpreted)")
SCALE = 0.125  # lambda = 1/sqrt(64)
FP32_TOL = dict(atol=1e-5, rtol=1e-4)
DBIAS_TOL = dict(atol=1e-4, rtol=1e-4)


@needs_triton
@pytest.mark.skipif(not INTERPRETED, reason="CUDA session: the compiled-mode tests run in it directly")
def test_compiled_triton_in_subprocess():
    """The `compiled_triton` tests (deselected in this interpreted session) in a compiled-mode child."""
    check_child_run(*run_pytest_in_mode("-m", "compiled_triton", "tests/test_kernels.py",
                                        "tests/test_kernels_compile.py", interpret=False))


@pytest.fixture
def composite(monkeypatch):
    """Route the custom op to its fp32 PyTorch composite (its implementation where Triton can't run)."""
    monkeypatch.setattr(attention_module, "can_launch", lambda t: False)


def rald_xi(sigma: int = 500) -> torch.Tensor:
    """xi of FG-Emotions' label graph (eq. 9): 6 coarse + 33 fine nodes, C = 39."""
    sizes = [5, 7, 9, 3, 6, 3]
    parent = [c for c, n in enumerate(sizes) for _ in range(n)]  # coarse parent of each fine label
    C = len(sizes) + len(parent)
    xi = torch.full((C, C), sigma, dtype=torch.long)
    for f, c in enumerate(parent):
        fi = len(sizes) + f
        xi[fi, c] = xi[c, fi] = 1  # parent edge
        for g, c2 in enumerate(parent):
            if c2 == c and g != f:
                xi[fi, len(sizes) + g] = 2  # siblings through the parent
    xi.fill_diagonal_(0)
    return xi


def make_inputs(H, Lq, Lk, Dk, Dv, bias, T=11, dtype=torch.float32, device="cpu", xi=None):
    q = torch.randn(H, Lq, Dk, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(H, Lk, Dk, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(H, Lk, Dv, dtype=dtype, device=device, requires_grad=True)
    if not bias:
        return q, k, v, None, None
    table = torch.randn(H, T, device=device, requires_grad=True)
    if xi is None:
        xi = torch.randint(0, T, (Lq, Lk), device=device)
    return q, k, v, table, xi.to(device)


def check_against_reference(fn, q, k, v, table, xi, out_tol=FP32_TOL, grad_tol=FP32_TOL):
    """Output and every gradient (q, k, v, bias table) of fn against attention_ref, fp32."""
    leaves = [t for t in (q, k, v, table) if t is not None]
    out = fn(q, k, v, SCALE, table, xi)
    ref = attention_ref(q, k, v, SCALE, table, xi)
    assert_close(out, ref, name="out", **out_tol)
    grad_out = torch.randn_like(ref)
    got = torch.autograd.grad(out, leaves, grad_out)
    want = torch.autograd.grad(ref, leaves, grad_out)
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert_close(g, w, name=name, **(DBIAS_TOL if name == "dbias" else grad_tol))


SIZES = [1, 2, 5, 7, 39, 128]


@needs_triton
@pytest.mark.parametrize("Lk", SIZES)
@pytest.mark.parametrize("Lq", SIZES)
def test_triton_matches_reference_sizes(device, Lq, Lk):
    # odd head dims on purpose: Dk = 40 and Dv = 24 are padded to 64 / 32 and masked
    check_against_reference(attention_op, *make_inputs(2, Lq, Lk, 40, 24, bias=True, device=device))


@needs_triton
@pytest.mark.parametrize("Dk,Dv", [(16, 16), (32, 32), (64, 64), (40, 64), (72, 40), (128, 128)])
@pytest.mark.parametrize("bias", [False, True])
def test_triton_matches_reference_head_dims(device, Dk, Dv, bias):
    check_against_reference(attention_op, *make_inputs(3, 39, 41, Dk, Dv, bias=bias, device=device))


@needs_triton
def test_triton_hlrr_label_graph(device):
    """HLRR's real case: 39 label tokens, 8 heads of 64, sigma = 500 table, Graphormer xi (eq. 8-9)."""
    xi = rald_xi().to(device)
    table = torch.linspace(1.0, -1.0, 501, device=device).repeat(8, 1).requires_grad_()  # decreasing in xi
    q, k, v, _, _ = make_inputs(8, 39, 39, 64, 64, bias=False, device=device)
    check_against_reference(attention_op, q, k, v, table, xi)


@needs_triton
@pytest.mark.parametrize("Lq,Lk,splits", [(130, 200, 1), (65, 129, 1), (7, 300, 3), (130, 257, 5), (1, 1000, 4)])
def test_triton_gpu_tiling_and_key_splits(device, monkeypatch, Lq, Lk, splits):
    """The GPU tiles themselves (64 x 64, several query and key blocks), and split-K over the keys:
    the split backward (Lk > 256) and the fused one (Lq, Lk <= 256, several blocks per head)."""
    monkeypatch.setattr(_runtime, "INTERPRET_TILE_FACTOR", 1)
    fn = lambda q, k, v, s, b, x: attention_op(q, k, v, s, b, x, num_splits=splits)
    check_against_reference(fn, *make_inputs(2, Lq, Lk, 64, 40, bias=True, device=device))


@needs_triton
def test_triton_strided_inputs(device):
    """Views as the model makes them: (L, H, D) projections permuted to (H, L, D), non-contiguous."""
    q0, k0, v0 = (torch.randn(n, 4, 64, device=device, requires_grad=True) for n in (37, 53, 53))
    xi = torch.randint(0, 5, (53, 37), device=device).t()  # transposed index table: strides (1, 37)
    table = torch.randn(4, 5, device=device, requires_grad=True)
    q, k, v = (t.permute(1, 0, 2) for t in (q0, k0, v0))
    assert not q.is_contiguous() and not xi.is_contiguous()
    check_against_reference(attention_op, q, k, v, table, xi)


@needs_triton
def test_large_logits_are_stable(device):
    """Online softmax stays finite where exp(logit) alone would overflow fp32."""
    q, k, v, table, xi = make_inputs(2, 9, 70, 16, 16, bias=True, device=device)
    with torch.no_grad():
        q.mul_(40.0)
        table.mul_(100.0)
    out = attention_op(q, k, v, SCALE, table, xi)
    assert torch.isfinite(out).all()
    assert_close(out, attention_ref(q, k, v, SCALE, table, xi), name="out", atol=1e-4, rtol=1e-4)


@needs_triton
def test_fused_backward_is_deterministic(device):
    """Lq, Lk <= 256: one program per head reduces dq, dk, dv and the bias-table gradient in a fixed
    order (no atomics), so two backward passes are bit-identical."""
    from rald_fast.kernels import attention_launch

    q, k, v, _, _ = make_inputs(2, 39, 39, 64, 64, bias=False, device=device)
    xi = rald_xi().to(device)
    table = torch.randn(2, 501, device=device, requires_grad=True)
    assert attention_launch.use_fused_backward(39, 39, xi)
    out = attention_op(q, k, v, SCALE, table, xi)
    g = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v, table), g, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v, table), g)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), first, second):
        assert torch.equal(a, b), f"{name} differs between two backward passes"
    unused = torch.ones(501, dtype=torch.bool, device=device)
    unused[xi.unique()] = False
    assert first[3][:, unused].eq(0).all()  # the kernel writes every table entry, zeros included


@needs_triton
@pytest.mark.parametrize("Lq,Lk", [(7, 5), (61, 130)])
def test_fused_and_split_backward_agree(device, monkeypatch, Lq, Lk):
    """The fused backward (default at these sizes) and the split kernels (forced) against the reference."""
    from rald_fast.kernels import attention_launch

    inputs = make_inputs(2, Lq, Lk, 32, 24, bias=True, device=device)
    check_against_reference(attention_op, *inputs)
    monkeypatch.setattr(attention_launch, "use_fused_backward", lambda *a: False)
    check_against_reference(attention_op, *inputs)


@needs_triton
def test_many_bias_classes_take_the_split_backward(device):
    """More distinct xi values than the fused kernel reduces itself: the split kernels, same maths."""
    from rald_fast.kernels import attention_launch

    xi = torch.arange(9 * 11, device=device).reshape(9, 11)  # 99 classes > MAX_BIAS_CLASSES
    assert not attention_launch.use_fused_backward(9, 11, xi)
    q, k, v, table, _ = make_inputs(2, 9, 11, 16, 16, bias=True, T=99, device=device)
    check_against_reference(attention_op, q, k, v, table, xi)


@needs_triton
@pytest.mark.parametrize("Dk,Dv,H", [(512, 512, 1), (300, 64, 2)])
def test_wide_heads_fall_back_cleanly(device, Dk, Dv, H):
    """Head dims above the kernels' 256 (the loss's cosine relations use D = 512): the op's fp32
    composite runs instead, with the same results, whatever backend was asked."""
    q, k, v, _, _ = make_inputs(H, 5, 9, Dk, Dv, bias=False, device=device)
    check_against_reference(attention_op, q, k, v, None, None)
    out = attention(q, k, v, SCALE, backend="triton")
    assert_close(out, attention_ref(q, k, v, SCALE), name="out", **FP32_TOL)


@pytest.mark.parametrize("Lq,Lk,bias", [(1, 1, True), (5, 7, True), (39, 39, False), (128, 7, True)])
def test_composite_op_matches_reference(composite, Lq, Lk, bias):
    """The custom op's non-Triton implementation: same maths as the kernels, fp32 composite."""
    check_against_reference(attention_op, *make_inputs(2, Lq, Lk, 40, 24, bias=bias))


@pytest.mark.parametrize("impl", ["composite", "triton"])
def test_opcheck_custom_op(request, impl):
    """Schema, fake (meta) implementation and autograd registration of rald_fast::attention_fwd."""
    request.getfixturevalue("composite" if impl == "composite" else "interpret")
    q, k, v, table, xi = make_inputs(2, 5, 7, 16, 16, bias=True)
    op = torch.ops.rald_fast.attention_fwd.default
    torch.library.opcheck(op, (q, k, v, SCALE, table, xi, 0))
    torch.library.opcheck(op, (q, k, v, SCALE, None, None, 0))
    # permuted (L, H, D) views: the fake outputs must have the real outputs' (contiguous) strides
    qs, ks, vs = (t.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_() for t in (q, k, v))
    assert not ks.is_contiguous()
    torch.library.opcheck(op, (qs, ks, vs, SCALE, table, xi.t().contiguous().t(), 0))


# ---------------------------------------------------------------------------------------------------
# dispatch: backends, the environment switch, export


def test_auto_picks_reference_on_cpu_even_when_interpreting(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("custom op called")

    monkeypatch.setattr(kernels, "attention_op", boom)
    monkeypatch.delenv("RALD_FAST_KERNELS", raising=False)
    q, k, v, table, xi = make_inputs(2, 5, 7, 16, 16, bias=True)
    out = attention(q, k, v, SCALE, table, xi)  # in the interpreted process too
    assert_close(out, attention_ref(q, k, v, SCALE, table, xi), atol=0, rtol=0)


@needs_triton
def test_env_switch_forces_triton(device, monkeypatch):
    calls = []
    real = kernels.attention_op
    monkeypatch.setattr(kernels, "attention_op", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("RALD_FAST_KERNELS", "triton")
    q, k, v, table, xi = make_inputs(2, 5, 7, 16, 16, bias=True, device=device)
    out = attention(q, k, v, SCALE, table, xi)
    assert calls == [1]
    assert_close(out, attention_ref(q, k, v, SCALE, table, xi), name="out", **FP32_TOL)
    monkeypatch.setenv("RALD_FAST_KERNELS", "reference")
    attention(q, k, v, SCALE, table, xi)
    assert calls == [1]
    monkeypatch.setenv("RALD_FAST_KERNELS", "cuda")
    with pytest.raises(ValueError, match="RALD_FAST_KERNELS"):
        attention(q, k, v, SCALE)


@needs_triton
@pytest.mark.compiled_triton
def test_triton_on_cpu_without_interpreter_raises_clearly():
    q, k, v, _, _ = make_inputs(1, 3, 3, 16, 16, bias=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(q, k, v, SCALE, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, SCALE, backend="cuda")


@needs_triton
def test_kernels_follow_tritons_import_mode(monkeypatch):
    """Kernels take the mode of Triton's own standard library (fixed at triton import), not the
    current TRITON_INTERPRET: flipping the variable now must not change them."""
    import triton.language as tl

    from rald_fast.kernels import _runtime, attention_triton

    want = "InterpretedFunction" if INTERPRETED else "JITFunction"
    assert type(tl.standard.zeros).__name__ == want
    monkeypatch.setenv("TRITON_INTERPRET", "0" if INTERPRETED else "1")
    assert type(_runtime.jit(attention_triton._attn_fwd_kernel.fn)).__name__ == want
    assert type(attention_triton._attn_fwd_kernel).__name__ == want


def test_onnx_export_uses_reference(monkeypatch):
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    monkeypatch.setattr(kernels, "attention_op", lambda *a, **k: pytest.fail("custom op during ONNX export"))
    q, k, v, _, _ = make_inputs(1, 3, 3, 16, 16, bias=False)
    attention(q, k, v, SCALE, backend="triton")


def test_interface_rules():
    q, k, v, table, xi = make_inputs(2, 5, 7, 16, 8, bias=True)
    # bias only when both are given
    assert_close(attention(q, k, v, SCALE, table, None), attention_ref(q, k, v, SCALE), atol=0, rtol=0)
    # mixed dtypes are promoted (LGIFO's unprojected label values may be fp32 while q is not)
    out = attention(q.double(), k, v, SCALE, table, xi)
    assert out.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's dtype wins, as in matmul
        assert attention(q, k, v.double(), SCALE, table, xi).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="shapes"):
        attention(q, k[:, :, :8], v, SCALE)
    with pytest.raises(ValueError, match="bias_table"):
        attention(q, k, v, SCALE, table, xi[:, :3])
    with pytest.raises(ValueError, match="integer tensor"):
        attention(q, k, v, SCALE, table, xi.float())
    with pytest.raises(ValueError, match="Lk >= 1"):
        attention_op(q, k[:, :0], v[:, :0], SCALE)


# ---------------------------------------------------------------------------------------------------
# torch.compile / torch.export trace the op


class TinyAttention(torch.nn.Module):
    """A stand-in for HLRR: project, attend with the hierarchy bias, project back."""

    def __init__(self, dim=32, heads=2, T=11, backend="auto"):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.bias = torch.nn.Parameter(torch.randn(heads, T))

    def forward(self, x, xi):  # x (L, dim), xi (L, L)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(1, 2, 0, 3)  # 3 x (H, L, d)
        return attention(q, k, v, SCALE, self.bias, xi, backend=self.backend).transpose(0, 1).flatten(1)


@needs_triton
def test_torch_compile_traces_custom_op(interpret):
    model = TinyAttention(backend="triton")
    x, xi = torch.randn(9, 32), torch.randint(0, 11, (9, 9))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x, xi)
    assert_close(out, model(x, xi), name="compiled out", **FP32_TOL)
    out.sum().backward()
    assert model.bias.grad is not None and model.qkv.weight.grad is not None


@needs_triton
def test_torch_export_traces_custom_op(interpret):
    model = TinyAttention(backend="triton")
    x, xi = torch.randn(9, 32), torch.randint(0, 11, (9, 9))
    exported = torch.export.export(model, (x, xi))
    assert "rald_fast.attention_fwd" in str(exported.graph)
    assert_close(exported.module()(x, xi), model(x, xi), name="exported out", **FP32_TOL)


def test_torch_export_reference_path():
    model = TinyAttention(backend="auto")
    x, xi = torch.randn(9, 32), torch.randint(0, 11, (9, 9))
    exported = torch.export.export(model, (x, xi))
    assert "rald_fast" not in str(exported.graph)  # plain aten ops: what ONNX / TensorRT receive
    assert_close(exported.module()(x, xi), model(x, xi), name="exported out", atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------
# GPU: compiled kernels, fp32 / fp16 / bf16 (skipped without CUDA)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("H,Lq,Lk,bias", [(8, 39, 39, True), (8, 128, 39, False), (8, 256, 256, False),
                                          (8, 128, 4096 + 7, False), (8, 5, 7, True)])
def test_cuda_matches_reference(dtype, H, Lq, Lk, bias):
    q, k, v, table, xi = make_inputs(H, Lq, Lk, 64, 64, bias=bias, T=501, dtype=dtype, device="cuda")
    leaves = [t for t in (q, k, v, table) if t is not None]
    f32 = [t.detach().float().requires_grad_() for t in leaves]
    args32 = f32 + [None] * (4 - len(f32))
    out = attention(q, k, v, SCALE, table, xi, backend="triton")
    ref = attention_ref(q, k, v, SCALE, table, xi)  # PyTorch in the same precision
    ref32 = attention_ref(*args32[:3], SCALE, args32[3], xi)
    g = torch.randn_like(ref32)
    grads = torch.autograd.grad(out, leaves, g.to(dtype))
    grads_ref = torch.autograd.grad(ref, leaves, g.to(dtype))
    grads32 = torch.autograd.grad(ref32, f32, g)
    assert_within_ref_error(out, ref, ref32, name="out")
    for name, a, b, c in zip(("dq", "dk", "dv", "dbias"), grads, grads_ref, grads32):
        # fp32: PyTorch's own error is ~0, so the atol carries the check (blocked sums, 1e-4)
        assert_within_ref_error(a, b, c, atol=1e-4 if dtype == torch.float32 else 1e-3, name=name)


@needs_triton
def test_gpu_script_checks_run_on_cpu(interpret, monkeypatch):
    """bench/gpu_kernels.py's correctness checks, run through the interpreter so the GPU script
    cannot rot between device sessions."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    gpu_kernels = importlib.import_module("gpu_kernels")
    kc = gpu_kernels.kc
    row = gpu_kernels.check_attention(kc.AttnCase("t", 2, 39, 39, 64, True, True), "fp32", device="cpu")
    assert row["ok"], row
    row = gpu_kernels.check_topk(kc.TopkCase("t", 2, 20, 300, 64, 33, 5, True), "fp32", device="cpu")
    assert row["ok"], row
    if not torch.cuda.is_available():
        assert gpu_kernels.run_kernel_checks_and_bench({}) == {"skipped": "no CUDA device"}
