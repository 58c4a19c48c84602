"""Multi-head attention with an optional hierarchy bias: the one attention op of RALD.

Maths (paper eqs. 4-5 ITRR, 8-10 HLRR, 14-15 LGIFO), per head h, query i, key j:

    logit[h, i, j] = scale * q[h, i] . k[h, j] + b[h, xi[i, j]]     (bias only for HLRR, eq. 8)
    out[h, i]      = sum_j softmax_j(logit[h, i, :]) v[h, j]

q (H, Lq, Dk), k (H, Lk, Dk), v (H, Lk, Dv): no batch axis, because RALD's tokens are the images of
the batch (ITRR), the label nodes (HLRR) or both (LGIFO). b is the learnable (H, T) table of the
Graphormer-style structural bias and xi the (Lq, Lk) integer table of eq. (9) (0 on the diagonal,
shortest-path distance, sigma = 500 when unreachable; T = sigma + 1).

Backward, with P = softmax(logit), dO = grad of out, delta[i] = sum_d dO[i, d] * out[i, d]:

    dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dQ = scale * dS K,  dK = scale * dS^T Q,
    db[h, t] = sum over (i, j) with xi[i, j] == t of dS[h, i, j]

Implementations:
- `attention_ref`: plain PyTorch in the inputs' dtype; materialises the (H, Lq, Lk) logits. It is
  the export-safe path (ONNX, TensorRT) and the CPU path.
- `attention_op`: the Triton kernels of attention_triton.py on CUDA (or on CPU under
  TRITON_INTERPRET=1). Eagerly it goes through `_TritonAttention`, a torch.autograd.Function that
  calls the launchers directly (cached tile / split configurations, cached xi classes): the
  dispatcher overhead of a custom op is a large share of a launch-bound 39 x 39 attention. Under
  torch.compile / torch.export it is the custom op `rald_fast::attention_fwd` (+ `attention_bwd`),
  with fake implementations and an autograd registration, which runs the same launchers. Where the
  kernels cannot run (no Triton, CPU without the interpreter, head dims > 256) the op runs an fp32
  PyTorch composite of the same forward/backward. fp32 accumulation throughout; no double backward.
  For Lq, Lk <= 256 the backward is one deterministic kernel launch (attention_triton.py).
Limits of the Triton path: Lk >= 1, head dims <= 256 (wider: the composite), xi entries in [0, T)
(not checked: a device sync per call would cost more than the kernel).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._runtime import HAS_TRITON, can_launch

if HAS_TRITON:
    from . import attention_launch as _tri
    from .attention_triton import MAX_HEAD_DIM
else:  # pragma: no cover
    _tri = None
    MAX_HEAD_DIM = 256


def _kernels_run(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """True when the Triton kernels can run these inputs (device, interpreter, head dims)."""
    return can_launch(q) and max(q.shape[-1], v.shape[-1]) <= MAX_HEAD_DIM


def attention_ref(q: Tensor, k: Tensor, v: Tensor, scale: float,
                  bias_table: Optional[Tensor] = None, xi: Optional[Tensor] = None) -> Tensor:
    """Reference attention (module docstring), computed in the inputs' dtype; differentiable."""
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale  # (H, Lq, Lk)
    if bias_table is not None and xi is not None:
        logits = logits + bias_table.to(logits.dtype)[:, xi]  # gather b[h, xi[i, j]] (eq. 8)
    return torch.matmul(torch.softmax(logits, dim=-1), v)  # (H, Lq, Dv)


def fixed_context_attention_ref(q: Tensor, k: Tensor, v: Tensor, scale: float,
                                bank_k: Optional[Tensor] = None, bank_v: Optional[Tensor] = None) -> Tensor:
    """Each query i attends to a fixed key set (bank_k, bank_v) (H, M, D) plus its own key k[:, i] and
    value v[:, i], nothing else: ITRR's batch-independent `bank` mode (M = 0 or no bank: `self`
    mode, where the softmax has one entry and the output is v itself). Plain ops (export-safe).

    q, k, v: (H, N, D). Returns (H, N, Dv); row i depends on row i alone.
    """
    if bank_k is None or bank_k.shape[1] == 0:
        return v                                                        # softmax over one key = 1
    own = scale * (q * k).sum(-1, keepdim=True)                         # (H, N, 1)
    logits = torch.cat([scale * q @ bank_k.transpose(1, 2), own], -1)  # (H, N, M + 1)
    p = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1).to(v.dtype)  # >= fp32
    return p[..., :-1] @ bank_v + p[..., -1:] * v


def _logits_fp32(q, k, scale, bias_table, xi):
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias_table is not None:
        s = s + bias_table.float()[:, xi]
    return s


def _fwd_composite(q, k, v, scale, bias_table, xi):
    """fp32 PyTorch forward returning (out, lse), the op's implementation where Triton cannot run."""
    s = _logits_fp32(q, k, scale, bias_table, xi)
    lse = torch.logsumexp(s, dim=-1)  # (H, Lq)
    out = torch.matmul(torch.exp(s - lse[..., None]), v.float())
    return out.to(q.dtype), lse


def _bwd_composite(q, k, v, out, lse, dout, scale, bias_table, xi):
    """fp32 PyTorch backward from the saved lse (module docstring's formulas)."""
    p = torch.exp(_logits_fp32(q, k, scale, bias_table, xi) - lse[..., None])  # (H, Lq, Lk)
    dout = dout.float()
    dv = torch.matmul(p.transpose(-1, -2), dout)
    dp = torch.matmul(dout, v.float().transpose(-1, -2))
    ds = p * (dp - (dout * out.float()).sum(-1, keepdim=True))
    dq = torch.matmul(ds, k.float()) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.float()) * scale
    if bias_table is None:
        dbias = torch.zeros((0, 0), device=q.device, dtype=torch.float32)
    else:
        H = q.shape[0]
        dbias = torch.zeros(bias_table.shape, device=q.device, dtype=torch.float32)
        dbias.index_add_(1, xi.reshape(-1).long(), ds.reshape(H, -1))
        dbias = dbias.to(bias_table.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias


@torch.library.custom_op("rald_fast::attention_fwd", mutates_args=())
def _attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float, bias_table: Optional[Tensor],
                   xi: Optional[Tensor], num_splits: int) -> tuple[Tensor, Tensor]:
    """Returns (out (H, Lq, Dv) in q's dtype, lse (H, Lq) fp32). num_splits 0 = automatic."""
    if _kernels_run(q, k, v):
        return _tri.attention_fwd(q, k, v, scale, bias_table, xi, num_splits or None)
    return _fwd_composite(q, k, v, scale, bias_table, xi)


@_attention_fwd.register_fake
def _(q, k, v, scale, bias_table, xi, num_splits):
    H, Lq, _ = q.shape
    return q.new_empty((H, Lq, v.shape[-1])), q.new_empty((H, Lq), dtype=torch.float32)


@torch.library.custom_op("rald_fast::attention_bwd", mutates_args=())
def _attention_bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                   scale: float, bias_table: Optional[Tensor], xi: Optional[Tensor],
                   num_splits: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv, d bias_table); the last is an empty (0, 0) tensor without bias."""
    if _kernels_run(q, k, v):
        return _tri.attention_bwd(q, k, v, out, lse, dout, scale, bias_table, xi, num_splits or None)
    return _bwd_composite(q, k, v, out, lse, dout, scale, bias_table, xi)


@_attention_bwd.register_fake
def _(q, k, v, out, lse, dout, scale, bias_table, xi, num_splits):
    # contiguous like the real outputs, whatever the inputs' strides
    db = bias_table.new_empty(bias_table.shape) if bias_table is not None else q.new_empty((0, 0), dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), db


def _setup_context(ctx, inputs, output):
    q, k, v, scale, bias_table, xi, num_splits = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias_table, xi)
    ctx.scale, ctx.num_splits = scale, num_splits


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, bias_table, xi = ctx.saved_tensors
    dq, dk, dv, db = torch.ops.rald_fast.attention_bwd(
        q, k, v, out, lse, dout.contiguous(), ctx.scale, bias_table, xi, ctx.num_splits)
    return dq, dk, dv, None, (db if bias_table is not None else None), None, None


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _TritonAttention(torch.autograd.Function):
    """The eager path: the launchers called directly, without the custom op's dispatch."""

    @staticmethod
    def forward(ctx, q, k, v, scale, bias_table, xi, num_splits):
        bias = _tri.bias_tile(bias_table, xi)  # gathered once, kept for the backward
        out, lse = _tri.attention_fwd(q, k, v, scale, bias_table, xi, num_splits or None, bias=bias)
        ctx.save_for_backward(q, k, v, out, lse, bias_table, xi, bias)
        ctx.scale, ctx.num_splits = scale, num_splits
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, bias_table, xi, bias = ctx.saved_tensors
        dq, dk, dv, db = _tri.attention_bwd(q, k, v, out, lse, dout.contiguous(), ctx.scale, bias_table, xi,
                                            ctx.num_splits or None, bias=bias)
        return dq, dk, dv, None, (db if bias_table is not None else None), None, None


def _tracing() -> bool:
    """torch.compile or torch.export is tracing: the custom op, which they can see through."""
    compiler = getattr(torch, "compiler", None)
    if compiler is None:  # pragma: no cover - old torch
        return False
    return bool(compiler.is_compiling() or getattr(compiler, "is_exporting", lambda: False)())


def attention_op(q: Tensor, k: Tensor, v: Tensor, scale: float, bias_table: Optional[Tensor] = None,
                 xi: Optional[Tensor] = None, num_splits: int = 0) -> Tensor:
    """Attention through the custom op (Triton where it can launch, fp32 composite elsewhere).

    Args:
        q, k, v: (H, Lq, Dk), (H, Lk, Dk), (H, Lk, Dv), one dtype.
        scale: logit scale (lambda = 0.125 in RALD).
        bias_table, xi: (H, T) float table and (Lq, Lk) integer index table; both or neither.
        num_splits: key splits of the forward and dq kernels (0: chosen from the GPU's SM count).
    """
    if (bias_table is None) != (xi is None):
        raise ValueError("attention: pass both bias_table and xi, or neither")
    if k.shape[1] == 0:
        raise ValueError("attention: needs at least one key (Lk >= 1)")
    if not _tracing() and _kernels_run(q, k, v):
        return _TritonAttention.apply(q, k, v, float(scale), bias_table, xi, int(num_splits))
    return torch.ops.rald_fast.attention_fwd(q, k, v, float(scale), bias_table, xi, int(num_splits))[0]
