"""The attention block shared by ITRR, HLRR and LGIFO (paper section 3).

Each block: per-head queries, keys and values, R = lambda Q K^T (+ b[xi] in HLRR), softmax, heads
concatenated, W_MSA, then Y = norm(M + FFN(M)) (eqs. 7, 12, 17). The paper adds no residual from the
block input; `input_residual=True` adds one (M <- M + X) as an option. Every attention goes through
the one op interface `rald_fast.kernels.attention` (Triton on CUDA, PyTorch reference elsewhere).

ITRR's relation R_v = lambda Q_v K_v^T (eqs. 3-5) can be made a learnable similarity (SPEC 3.1,
docs/DESIGN.md "ITRR's relation"), each switch keeping eqs. (3)-(5):
- `qk_norm`: Q and K are computed from an affine-free batch normalisation of the input
  (`RelationNorm`; running statistics at inference), so the shared mean of post-ReLU features no longer
  gives every key the same score for every query; V still reads the raw input;
- `temperature_cap`: a learnable temperature exp(t) on the logits, t initialised 0 and capped at
  log(cap), folded into the queries (R_v = lambda (e^t Q) K^T), so NNLDL ranks with the same R_v;
- W_K initialised equal to W_Q (`tie_qk_init`): R_v starts as a symmetric positive semi-definite form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rald_fast import kernels


class FFN(nn.Module):
    """Linear(D, 4D) - GELU - Dropout - Linear(4D, D) (the paper does not give the FFN; docs/DESIGN.md)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class RelationNorm(nn.BatchNorm1d):
    """Affine-free batch normalisation of the (N, D) tokens that ITRR's Q and K read.

    Training: batch statistics (the running ones are updated), so the keys of a batch have zero mean and
    no key scores high for every query; inference: the running statistics, so a prediction does not
    depend on its batch. A training batch of one image has no batch statistics: it uses the running
    ones and leaves them as they are (a last partial batch of 1 must not fail).
    """

    def __init__(self, dim: int):
        super().__init__(dim, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(x)

    def as_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (D,), with eval-mode output x * scale + shift."""
        scale = torch.rsqrt(self.running_var + self.eps)
        return scale, -self.running_mean * scale


class AttentionBlock(nn.Module):
    """Multi-head attention of `x` (queries) over `context` (keys, values), then norm(M + FFN(M)).

    Args:
        dim: model width D.
        heads: h; the per-head width is D / h.
        scale: lambda of eqs. (4), (8), (14).
        value_proj: False for LGIFO, whose values are the label tokens themselves (eq. 13).
        dropout: FFN dropout.
        input_residual: add the query input to M (not in the paper).
        qk_norm: Q and K read `RelationNorm(x)` instead of x (ITRR's learning relation).
        temperature_cap: > 0 adds a learnable temperature exp(t) <= cap on the logits (0: none).
        tie_qk_init: initialise W_K equal to W_Q.
    """

    def __init__(self, dim: int, heads: int, scale: float, *, value_proj: bool = True,
                 dropout: float = 0.1, input_residual: bool = False, qk_norm: bool = False,
                 temperature_cap: float = 0.0, tie_qk_init: bool = False):
        super().__init__()
        self.heads, self.scale, self.input_residual = heads, scale, input_residual
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False) if value_proj else nn.Identity()
        self.w_msa = nn.Linear(dim, dim)
        self.ffn = FFN(dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.qk_norm = RelationNorm(dim) if qk_norm else None
        self.temperature_cap = temperature_cap
        self.log_temperature = nn.Parameter(torch.zeros(())) if temperature_cap > 0 else None
        if tie_qk_init:
            with torch.no_grad():
                self.w_k.weight.copy_(self.w_q.weight)

    def temperature(self) -> torch.Tensor | None:
        """exp(t) capped at `temperature_cap` (None without a learnable temperature)."""
        if self.log_temperature is None:
            return None
        return self.log_temperature.clamp(max=math.log(self.temperature_cap)).exp()

    def relation_parameters(self) -> list[nn.Parameter]:
        """What shapes R_v: W_Q, W_K and the temperature (their own learning rate, `param_groups`)."""
        params = [self.w_q.weight, self.w_k.weight]
        params += [self.w_q.bias, self.w_k.bias] if self.w_q.bias is not None else []
        return params + ([self.log_temperature] if self.log_temperature is not None else [])

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        return x.view(n, self.heads, d // self.heads).transpose(0, 1)  # (h, n, D/h)

    def project_qk(self, x: torch.Tensor, context: torch.Tensor):
        """Per-head queries and keys, (h, Lq, D/h) and (h, Lk, D/h); NNLDL reuses ITRR's. The
        temperature, if any, is folded into the queries."""
        if self.qk_norm is not None:
            xn = self.qk_norm(x)                                          # one statistics update
            x, context = xn, (xn if context is x else self.qk_norm(context))
        q = self.w_q(x)
        t = self.temperature()
        if t is not None:
            q = q * t.to(q.dtype)
        return self.split_heads(q), self.split_heads(self.w_k(context))

    @torch.no_grad()
    def fold_relation(self) -> None:
        """Inference only (eval mode): fold `RelationNorm` and the temperature into W_Q and W_K, which
        gain a bias; the outputs are unchanged (FoldedRALD, so exports hold two plain linears)."""
        if self.qk_norm is None and self.log_temperature is None:
            return
        scale, shift = self.qk_norm.as_affine() if self.qk_norm is not None else (None, None)
        t = self.temperature()
        for name, mult in (("w_q", t), ("w_k", None)):
            old = getattr(self, name)
            w = old.weight * scale[None, :] if scale is not None else old.weight.clone()
            b = old.weight @ shift if shift is not None else torch.zeros(w.shape[0], device=w.device)
            if mult is not None:
                w, b = w * mult, b * mult
            new = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
            new.weight.copy_(w)
            new.bias.copy_(b)
            setattr(self, name, new)
        self.qk_norm = self.log_temperature = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                bias_table: torch.Tensor | None = None, xi: torch.Tensor | None = None,
                qk: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, backend: str = "auto") -> torch.Tensor:
        """Queries from `x` (Lq, D), keys and values from `context` (default `x`).

        qk: precomputed per-head queries and keys (ITRR shares them with NNLDL); kv: precomputed
        per-head keys and values (h, Lk, D/h) (the folded LGIFO's constants); backend: of
        `rald_fast.kernels.attention` (the folded model asks for "reference", export-safe ops).
        """
        context = x if context is None else context
        if kv is not None:
            q, (k, v) = self.split_heads(self.w_q(x)), kv
        else:
            q, k = qk if qk is not None else self.project_qk(x, context)
            v = self.split_heads(self.w_v(context))                     # (h, Lk, D/h)
        out = kernels.attention(q, k, v, self.scale, bias_table, xi, backend=backend)  # (h, Lq, D/h)
        return self.finish(out, x)

    def finish(self, heads_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Heads (h, Lq, D/h) concatenated, W_MSA, optional input residual, norm(M + FFN(M))."""
        m = self.w_msa(heads_out.transpose(0, 1).reshape(x.shape[0], -1))  # (Lq, D)
        if self.input_residual:
            m = m + x
        return self.norm(m + self.ffn(m))                               # (Lq, D)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys and values (h, M, D/h) of a fixed context (ITRR's reference bank)."""
        keys_in = self.qk_norm(context) if self.qk_norm is not None else context
        return self.split_heads(self.w_k(keys_in)), self.split_heads(self.w_v(context))

    def forward_fixed_context(self, x: torch.Tensor, bank_k: torch.Tensor | None = None,
                              bank_v: torch.Tensor | None = None) -> torch.Tensor:
        """Each query attends to a fixed set of keys/values plus its own token, nothing else.

        With a bank (h, M, D/h) this is ITRR's `bank` inference mode; without one the softmax has a
        single entry, so the attention output is the query's own value (`self` mode). Every row is
        computed from that row alone: the result does not depend on the other images of the batch.
        """
        v = self.split_heads(self.w_v(x))                               # (h, N, D/h)
        if bank_k is None or bank_k.shape[1] == 0:  # `self`: one key, weight 1; Q and K are not needed
            return self.finish(v, x)
        q, k = self.project_qk(x, x)
        return self.finish(kernels.attention_fixed_context(q, k, v, self.scale, bank_k, bank_v), x)


def decreasing_bias_init(heads: int, sigma: int) -> torch.Tensor:
    """(h, sigma + 1) table b[xi], decreasing in xi (nearer labels start with a larger bias): b = -0.5 log(1 + xi)."""
    xi = torch.arange(sigma + 1, dtype=torch.float32)
    return (-0.5 * torch.log1p(xi)).expand(heads, -1).clone()
