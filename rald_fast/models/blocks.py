"""The attention block shared by ITRR, HLRR and LGIFO (paper section 3).

Each block: per-head queries, keys and values, R = lambda Q K^T (+ b[xi] in HLRR), softmax, heads
concatenated, W_MSA, then Y = norm(M + FFN(M)) (eqs. 7, 12, 17). The paper adds no residual from the
block input; `input_residual=True` adds one (M <- M + X) as an option. Every attention goes through
the one op interface `rald_fast.kernels.attention` (Triton on CUDA, PyTorch reference elsewhere).
"""

from __future__ import annotations

import torch
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


class AttentionBlock(nn.Module):
    """Multi-head attention of `x` (queries) over `context` (keys, values), then norm(M + FFN(M)).

    Args:
        dim: model width D.
        heads: h; the per-head width is D / h.
        scale: lambda of eqs. (4), (8), (14).
        value_proj: False for LGIFO, whose values are the label tokens themselves (eq. 13).
        dropout: FFN dropout.
        input_residual: add the query input to M (not in the paper).
    """

    def __init__(self, dim: int, heads: int, scale: float, *, value_proj: bool = True,
                 dropout: float = 0.1, input_residual: bool = False):
        super().__init__()
        self.heads, self.scale, self.input_residual = heads, scale, input_residual
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False) if value_proj else nn.Identity()
        self.w_msa = nn.Linear(dim, dim)
        self.ffn = FFN(dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        return x.view(n, self.heads, d // self.heads).transpose(0, 1)  # (h, n, D/h)

    def project_qk(self, x: torch.Tensor, context: torch.Tensor):
        """Per-head queries and keys, (h, Lq, D/h) and (h, Lk, D/h); NNLDL reuses ITRR's."""
        return self.split_heads(self.w_q(x)), self.split_heads(self.w_k(context))

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
        return self.split_heads(self.w_k(context)), self.split_heads(self.w_v(context))

    def forward_fixed_context(self, x: torch.Tensor, bank_k: torch.Tensor | None = None,
                              bank_v: torch.Tensor | None = None) -> torch.Tensor:
        """Each query attends to a fixed set of keys/values plus its own token, nothing else.

        With a bank (h, M, D/h) this is ITRR's `bank` inference mode; without one the softmax has a
        single entry, so the attention output is the query's own value (`self` mode). Every row is
        computed from that row alone: the result does not depend on the other images of the batch.
        """
        q, k = self.project_qk(x, x)                                    # (h, N, D/h)
        v = self.split_heads(self.w_v(x))
        return self.finish(kernels.attention_fixed_context(q, k, v, self.scale, bank_k, bank_v), x)


def decreasing_bias_init(heads: int, sigma: int) -> torch.Tensor:
    """(h, sigma + 1) table b[xi], decreasing in xi (nearer labels start with a larger bias): b = -0.5 log(1 + xi)."""
    xi = torch.arange(sigma + 1, dtype=torch.float32)
    return (-0.5 * torch.log1p(xi)).expand(heads, -1).clone()
