"""Losses: CE on the fine labels plus NNLDL's nearest-neighbour label distribution (SPEC 4).

NNLDL, eqs. (18)-(19): for image i take its k most related other images in ITRR's relation R_v
(read as the head-averaged softmax attention probabilities), weights r renormalised over the k, and
the target D^i = sum_j r_j P_j / sum_j r_j. L_KL = -(1 / (N C_f)) sum_i sum_c D^i_c log P^i_c.
D is a target (stop-gradient) unless `nnldl_grad` is set. With fewer than k + 1 images all the others
are used; a single image has no neighbour and contributes no L_KL. Total loss (20)-(21):
L = CE(P, Y) + w * L_KL.

Beyond the paper (SPEC 4, issue 4): with `--nnldl-bank M` the neighbours are drawn from the batch
*and* a FIFO bank of the ITRR keys and predictions of the last M training images (detached, so
slightly stale, as in MoCo-style banks). The relation is then the head-averaged softmax over
batch + bank keys; the streaming top-k kernel never materialises that N x (N + M) matrix on GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rald_fast import kernels
from rald_fast.config import LossConfig


class NeighbourBank:
    """FIFO memory of ITRR keys (h, M, D/h) and predictions (M, C_f) of recent training images."""

    def __init__(self, size: int):
        self.size = size
        self.keys: torch.Tensor | None = None
        self.preds: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.preds is None else self.preds.shape[0]

    @torch.no_grad()
    def push(self, k: torch.Tensor, p: torch.Tensor) -> None:
        k, p = k.detach(), p.detach().float()
        if self.preds is not None:
            k, p = torch.cat([k, self.keys], 1), torch.cat([p, self.preds], 0)  # newest first
        self.keys, self.preds = k[:, :self.size], p[:self.size]

    def state_dict(self) -> dict:
        return {"size": self.size, "keys": self.keys, "preds": self.preds}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.keys, self.preds = state["size"], state["keys"], state["preds"]


def nnldl_loss(logits: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float,
               cfg: LossConfig, bank: NeighbourBank | None = None) -> torch.Tensor:
    """L_KL of eq. (19) for one batch. logits (N, C_f); q, k (h, N, D/h) from ITRR."""
    n, c = logits.shape
    log_p = F.log_softmax(logits.float(), dim=-1)                         # (N, C_f)
    p = log_p.exp()
    if bank is not None and len(bank):                                    # the batch first: offset 0
        keys, preds = torch.cat([k, bank.keys.to(k.dtype)], 1), torch.cat([p, bank.preds], 0)
    else:
        keys, preds = k, p
    if preds.shape[0] < 2:
        return logits.new_zeros(())
    if cfg.nnldl_grad:
        d, _, _ = kernels.neighbour_targets_ref(q, keys, preds, cfg.k, scale)
    else:
        with torch.no_grad():
            d, _, _ = kernels.neighbour_targets(q.detach(), keys.detach(), preds.detach(),
                                                cfg.k, scale)              # D (N, C_f), eq. (18)
    if bank is not None:
        bank.push(k, p)
    return -(d * log_p).sum() / (n * c)


def rald_loss(out: dict, labels: torch.Tensor, cfg: LossConfig, scale: float,
              bank: NeighbourBank | None = None) -> dict:
    """Total loss (21) and its parts, as tensors."""
    ce = F.cross_entropy(out["logits"].float(), labels)
    parts = {"ce": ce}
    total = ce
    if cfg.nnldl:
        kl = nnldl_loss(out["logits"], out["itrr_q"], out["itrr_k"], scale, cfg, bank)
        parts["kl"] = kl
        total = total + cfg.nnldl_weight * kl
    parts["loss"] = total
    return parts
