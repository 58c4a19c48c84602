"""Losses: CE on the fine labels plus NNLDL's nearest-neighbour label distribution (SPEC 4).

NNLDL, eqs. (18)-(19): for image i take its k most related other images in ITRR's relation R_v
(read as the head-averaged softmax attention probabilities), weights r renormalised over the k, and
the target D^i = sum_j r_j P_j / sum_j r_j. L_KL = -(1 / (N C_f)) sum_i sum_c D^i_c log P^i_c.
D is a target (stop-gradient) unless `nnldl_grad` is set. With fewer than k + 1 images all the others
are used; a single image has no neighbour and contributes no L_KL. Total loss (20)-(21):
L = CE(P, Y) + w * L_KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rald_fast import kernels
from rald_fast.config import LossConfig


def nnldl_loss(logits: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float,
               cfg: LossConfig) -> torch.Tensor:
    """L_KL of eq. (19) for one batch. logits (N, C_f); q, k (h, N, D/h) from ITRR."""
    n, c = logits.shape
    if n < 2:
        return logits.new_zeros(())
    log_p = F.log_softmax(logits.float(), dim=-1)                         # (N, C_f)
    if cfg.nnldl_grad:
        d, _, _ = kernels.neighbour_targets_ref(q, k, log_p.exp(), cfg.k, scale)
    else:
        with torch.no_grad():
            d, _, _ = kernels.neighbour_targets(q.detach(), k.detach(), log_p.exp().detach(),
                                                cfg.k, scale)              # D (N, C_f), eq. (18)
    return -(d * log_p).sum() / (n * c)


def rald_loss(out: dict, labels: torch.Tensor, cfg: LossConfig, scale: float) -> dict:
    """Total loss (21) and its parts, as tensors."""
    ce = F.cross_entropy(out["logits"].float(), labels)
    parts = {"ce": ce}
    total = ce
    if cfg.nnldl:
        kl = nnldl_loss(out["logits"], out["itrr_q"], out["itrr_k"], scale, cfg)
        parts["kl"] = kl
        total = total + cfg.nnldl_weight * kl
    parts["loss"] = total
    return parts
