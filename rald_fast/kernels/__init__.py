"""rald_fast.kernels: the two hot ops of RALD behind one interface each.

- `attention`: multi-head attention with the optional hierarchy bias b[h, xi[i, j]] (paper eqs. 4-5,
  8-10, 14-15); Triton kernels (attention_triton.py) on CUDA, plain PyTorch elsewhere.
- `attention_fixed_context`: each query over a fixed key set plus its own key (ITRR's `bank` and
  `self` inference modes); plain PyTorch everywhere (inference only, export-safe).
- `neighbour_targets`: NNLDL's top-k neighbour label distributions (paper eq. 18); a streaming
  two-pass Triton kernel (topk_triton.py) on CUDA, plain PyTorch elsewhere.

Backend choice, per call: `backend="reference" | "triton" | "auto"`. "auto" defers to the
environment variable RALD_FAST_KERNELS (same three values, default "auto"), read at each call, and
"auto" then means Triton when the inputs are CUDA tensors and Triton is installed. While an ONNX
export runs the reference is used whatever was asked (export never needs Triton). "triton" on CPU
tensors works only in Triton's interpreter (TRITON_INTERPRET=1, tests) and raises otherwise; the
interpreter never changes what "auto" picks for CPU tensors.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ._runtime import HAS_TRITON, MAX_TOPK, check_launchable, interpret_mode
from .attention import attention_op, attention_ref, fixed_context_attention_ref
from .topk import clamp_topk, neighbour_targets_ref, neighbour_targets_triton

__all__ = [
    "BACKENDS", "HAS_TRITON", "MAX_TOPK", "attention", "attention_fixed_context", "attention_op", "attention_ref",
    "default_backend", "fixed_context_attention_ref",
    "interpret_mode", "neighbour_targets", "neighbour_targets_ref", "neighbour_targets_triton",
    "resolve_backend",
]

BACKENDS = ("auto", "reference", "triton")
MAX_TOPK_HEAD_DIM = 256  # topk_triton.MAX_HEAD_DIM (without importing Triton here)
ENV_VAR = "RALD_FAST_KERNELS"


def default_backend() -> str:
    """The backend "auto" stands for: RALD_FAST_KERNELS, or "auto" when unset."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {BACKENDS}")
    return value


def _onnx_exporting() -> bool:
    fn = getattr(torch.onnx, "is_in_onnx_export", None)
    return bool(fn()) if fn is not None else False


def resolve_backend(backend: str, t: Tensor, op: str = "rald_fast.kernels") -> str:
    """"reference" or "triton" for inputs like `t` (module docstring has the rules)."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = default_backend()
    if _onnx_exporting() or backend == "reference":
        return "reference"
    if backend == "triton":
        check_launchable(t, op)
        return "triton"
    return "triton" if HAS_TRITON and t.is_cuda else "reference"


def _compute_dtype(q: Tensor, k: Tensor, v: Tensor) -> torch.dtype:
    """Autocast's dtype when autocast is on for q's device (as matmul would cast), else the promoted
    dtype: under bf16 autocast LGIFO's values (LayerNorm output, fp32) meet bf16 queries."""
    device_type = q.device.type
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError, RuntimeError):  # older signatures: CUDA only
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, bias_table: Optional[Tensor] = None,
              xi: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """Multi-head attention with optional hierarchy bias (paper eqs. 4-5, 8-10, 14-15).

    logits[h, i, j] = scale * q[h, i] . k[h, j] + bias_table[h, xi[i, j]] (bias only when both are
    given); returns softmax(logits, -1) @ v. Differentiable in q, k, v and bias_table.

    Args:
        q: (H, Lq, Dk) queries. k: (H, Lk, Dk) keys. v: (H, Lk, Dv) values. They are cast to
            autocast's dtype when autocast is on, else to their promoted dtype, the output's.
        scale: logit scale (lambda = 1/sqrt(64) = 0.125 for RALD's 64-d heads).
        bias_table: (H, T) learnable bias table. xi: (Lq, Lk) int64 indices into its last dim.
        backend: "auto", "reference" or "triton" (module docstring). Head dims > 256 run the custom
            op's fp32 PyTorch composite instead of the kernels.
    Returns:
        (H, Lq, Dv).
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"attention: q, k, v must be (H, L, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    H, Lq, Dk = q.shape
    if k.shape[0] != H or v.shape[0] != H or k.shape[2] != Dk or v.shape[1] != k.shape[1]:
        raise ValueError(f"attention: shapes do not agree: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if bias_table is None or xi is None:
        bias_table = xi = None
    elif bias_table.dim() != 2 or bias_table.shape[0] != H or tuple(xi.shape) != (Lq, k.shape[1]):
        raise ValueError(f"attention: bias_table must be (H={H}, T) and xi (Lq={Lq}, Lk={k.shape[1]}), "
                         f"got {tuple(bias_table.shape)}, {tuple(xi.shape)}")
    elif xi.device != q.device or xi.dtype.is_floating_point:
        raise ValueError(f"attention: xi must be an integer tensor on {q.device}, got {xi.dtype} on {xi.device}")
    dtype = _compute_dtype(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if resolve_backend(backend, q, "attention") == "reference" or Lq == 0 or H == 0:
        return attention_ref(q, k, v, scale, bias_table, xi)
    return attention_op(q, k, v, scale, bias_table, xi)


def attention_fixed_context(q: Tensor, k: Tensor, v: Tensor, scale: float, bank_k: Optional[Tensor] = None,
                            bank_v: Optional[Tensor] = None) -> Tensor:
    """Attention of each query over (bank_k, bank_v) (H, M, D) plus its own key and value (H, N, D):
    ITRR's batch-independent inference (`fixed_context_attention_ref`). Returns (H, N, Dv)."""
    if q.shape != k.shape or q.shape[:2] != v.shape[:2]:
        raise ValueError(f"attention_fixed_context: q, k, v must be (H, N, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if bank_k is not None and (bank_v is None or bank_k.shape[:2] != bank_v.shape[:2]
                               or bank_k.shape[0] != q.shape[0] or bank_k.shape[2] != q.shape[2]):
        raise ValueError(f"attention_fixed_context: bank keys / values {tuple(bank_k.shape)} / "
                         f"{None if bank_v is None else tuple(bank_v.shape)} do not fit q {tuple(q.shape)}")
    return fixed_context_attention_ref(q, k, v, scale, bank_k, bank_v)


def neighbour_targets(q: Tensor, k: Tensor, p: Tensor, topk: int, scale: float, *,
                      exclude_self: bool = True, key_offset: int = 0,
                      backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """NNLDL targets (paper eq. 18): D = sum_j w_j p[j] over each image's top-k related keys.

    Args:
        q: (H, N, Dk) queries of the N images. k: (H, M, Dk) keys of the key set (the batch, M == N,
            or a memory bank). p: (M, C) predictions of the key set.
        topk: neighbours per image, clamped to the eligible keys.
        scale: logit scale of ITRR's attention (lambda = 0.125).
        exclude_self: key i + key_offset is never image i's neighbour.
        key_offset: position of the batch inside the key set (0 when the key set is the batch).
        backend: "auto", "reference" or "triton" (module docstring). "auto" uses the reference
            when k > 32 (the Triton path keeps the top-k in registers); head dims > 256 (the loss's
            cosine relations may pass D = 512) take the reference whatever the backend.
    Returns:
        D (N, C) in p's dtype, idx (N, k') int64, w (N, k') fp32, sorted by decreasing relation;
        no gradient.
    """
    chosen = resolve_backend(backend, q, "neighbour_targets")
    k_eff = clamp_topk(topk, q.shape[1], k.shape[1], exclude_self, key_offset)
    wide = q.dim() == 3 and q.shape[2] > MAX_TOPK_HEAD_DIM
    if chosen == "triton" and not wide and (k_eff <= MAX_TOPK or backend == "triton"):
        return neighbour_targets_triton(q, k, p, topk, scale, exclude_self=exclude_self, key_offset=key_offset)
    return neighbour_targets_ref(q, k, p, topk, scale, exclude_self=exclude_self, key_offset=key_offset)

