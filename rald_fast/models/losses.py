"""Losses: CE on the fine labels plus NNLDL's nearest-neighbour label distribution (eqs. 18-21).

NNLDL, eqs. (18)-(19): for image i take its k most related other images, weights r renormalised over
the k, and the target D^i = sum_j r_j P_j / sum_j r_j. L_KL = -(1 / (N C_f)) sum_i sum_c D^i_c log P^i_c.
D is a target (stop-gradient) unless `nnldl_grad` is set; `nnldl_relation_grad` lets the gradient
reach the relation through the weights r alone (the neighbours' predictions P_j stay a target, so
L_KL cannot pull them toward image i), which is what teaches R_v which images are related. With fewer
than k + 1 images all the others are used; a single image has no neighbour and contributes no L_KL.
`nnldl_normaliser`: eq. (19)'s 1 / (N C_f) as printed, or 1 / N (a per-image average: with 33 classes
the printed one makes L_KL's gradient about 1/33 of CE's). Total loss (20)-(21): L = CE(P, Y) + w * L_KL.

"Most related" (`--nnldl-relation`, docs/DESIGN.md has the measurements behind the default):
- `attention`: R_v as printed, ITRR's softmax(lambda Q_v K_v^T) averaged over heads. Q_v and K_v come
  from two independent projections, so R_v is a bilinear form, not a similarity;
- `symmetric`: the same attention logits symmetrised, lambda (q_i k_j + k_i q_j) / 2;
- `cosine-f` / `cosine-ftilde`: softmax(cos / tau) of the backbone features F / of ITRR's output F~.
Every relation is one head-averaged softmax of scaled dot products, so one kernel (`rald_fast.kernels
.neighbour_targets`) ranks and weighs them all.

Beyond the paper: with `--nnldl-memory M` the neighbours are drawn from the batch *and* a FIFO memory of
the relation keys, predictions and labels of the last M training images (detached, so slightly stale,
as in MoCo-style banks); the streaming top-k kernel never materialises that N x (N + M) matrix on GPU.
Training also reports what NNLDL does (`neighbour_stats`): the share of the top-k neighbours with the
query's fine label and coarse group against chance, and ITRR's attention entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rald_fast import kernels
from rald_fast.config import LossConfig


class NeighbourMemory:
    """NNLDL's FIFO memory (`--nnldl-bank M`; not ITRR's reference bank) of relation keys (h, M, d),
    predictions (M, C_f) and labels (M,) of recent training images."""

    def __init__(self, size: int):
        self.size = size
        self.keys: torch.Tensor | None = None
        self.preds: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.preds is None else self.preds.shape[0]

    @torch.no_grad()
    def push(self, k: torch.Tensor, p: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Add a batch (newest first); unknown labels (None) are stored as -1."""
        y = torch.full((p.shape[0],), -1, device=p.device) if labels is None else labels.detach()
        k, p = k.detach(), p.detach().float()
        if self.preds is not None:  # newest first
            k, p = torch.cat([k, self.keys], 1), torch.cat([p, self.preds], 0)
            y = torch.cat([y, self.labels], 0)
        self.keys, self.preds, self.labels = k[:, :self.size], p[:self.size], y[:self.size]

    def state_dict(self) -> dict:
        return {"size": self.size, "keys": self.keys, "preds": self.preds, "labels": self.labels}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.keys, self.preds = state["size"], state["keys"], state["preds"]
        self.labels = state.get("labels")


def relation_qk(out: dict, relation: str, scale: float, tau: float):
    """(q, k, scale) whose head-averaged softmax(scale q k^T) is the NNLDL relation of `out`."""
    if relation == "attention":
        return out["itrr_q"], out["itrr_k"], scale
    if relation == "symmetric":  # [q, k] . [k, q] = q_i k_j + k_i q_j
        q, k = out["itrr_q"], out["itrr_k"]
        return torch.cat([q, k], -1), torch.cat([k, q], -1), scale / 2
    feats = out["backbone_features" if relation == "cosine-f" else "itrr_features"]
    unit = F.normalize(feats.float(), dim=-1).unsqueeze(0)               # (1, N, D)
    return unit, unit, 1.0 / tau


@torch.no_grad()
def neighbour_stats(idx: torch.Tensor, labels: torch.Tensor, key_labels: torch.Tensor,
                    coarse_of: torch.Tensor) -> dict:
    """Purity of the chosen neighbours against chance, as batch means (0-dim tensors).

    idx (N, k) into the key set, whose first N keys are the batch; labels (N,), key_labels (M,);
    coarse_of (C_f,) fine -> coarse. Chance: the share of same-label keys among all the others.
    """
    others = max(key_labels.shape[0] - 1, 1)
    out = {}
    for name, mine, keys in (("fine", labels, key_labels),
                             ("coarse", coarse_of[labels], coarse_of[key_labels])):
        same = (keys[None, :] == mine[:, None]).sum(1).float() - 1              # minus the image itself
        out[f"nn_purity_{name}"] = (keys[idx] == mine[:, None]).float().mean()
        out[f"nn_chance_{name}"] = (same / others).mean()
    return out


def attention_entropy(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """ITRR's mean attention entropy over heads and queries, divided by log N (1 = uniform)."""
    with torch.no_grad():
        logp = (scale * q.float() @ k.float().transpose(1, 2)).log_softmax(-1)   # (h, N, N)
        ent = -(logp.exp() * logp).sum(-1).mean()
        return ent / math.log(max(k.shape[1], 2))


def nnldl_loss(logits: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float,
               cfg: LossConfig, memory: NeighbourMemory | None = None,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """L_KL of eq. (19) for one batch, the neighbour indices (N, k') into batch + memory, and the
    labels of that key set. logits (N, C_f); q, k (h, N, d) of the relation (`relation_qk`)."""
    n, c = logits.shape
    log_p = F.log_softmax(logits.float(), dim=-1)                         # (N, C_f)
    p = log_p.exp()
    keys, preds, key_labels = k, p, labels
    if memory is not None and len(memory):                                    # the batch first: offset 0
        keys, preds = torch.cat([k, memory.keys.to(k.dtype)], 1), torch.cat([p, memory.preds], 0)
        if labels is not None and memory.labels is not None:
            key_labels = torch.cat([labels, memory.labels], 0)
    if preds.shape[0] < 2:
        return logits.new_zeros(()), None, None
    if cfg.nnldl_grad:
        d, idx, _ = kernels.neighbour_targets_ref(q, keys, preds, cfg.k, scale)
    elif cfg.nnldl_relation_grad:  # through the weights r only: the predictions stay a target
        d, idx, _ = kernels.neighbour_targets_ref(q, keys, preds.detach(), cfg.k, scale)
    else:
        with torch.no_grad():
            d, idx, _ = kernels.neighbour_targets(q.detach(), keys.detach(), preds.detach(),
                                                  cfg.k, scale)            # D (N, C_f), eq. (18)
    if memory is not None:
        memory.push(k, p, labels)
    if key_labels is not None and key_labels.shape[0] != keys.shape[1]:
        key_labels = None  # a memory restored from an older checkpoint has no labels
    norm = n * c if cfg.nnldl_normaliser == "printed" else n                  # eq. (19) | per image
    return -(d * log_p).sum() / norm, idx, key_labels


def rald_loss(out: dict, labels: torch.Tensor, cfg: LossConfig, scale: float,
              memory: NeighbourMemory | None = None, *, use_nnldl: bool = True,
              coarse_of: torch.Tensor | None = None) -> dict:
    """Total loss (21) and its parts, as tensors. `use_nnldl=False` leaves L_KL out (the warm-up
    epochs). With `coarse_of` (C_f,), the parts also carry the detached diagnostics of
    `neighbour_stats` and `attention_entropy` (keys `nn_*`, `itrr_entropy`)."""
    ce = F.cross_entropy(out["logits"].float(), labels)
    parts = {"ce": ce}
    total = ce
    if cfg.nnldl:
        q, k, s = relation_qk(out, cfg.nnldl_relation, scale, cfg.nnldl_tau)
        idx = key_labels = None
        if use_nnldl:
            kl, idx, key_labels = nnldl_loss(out["logits"], q, k, s, cfg, memory, labels)
            parts["kl"] = kl
            total = total + cfg.nnldl_weight * kl
        elif coarse_of is not None and q.shape[1] > 1:  # warm-up: rank only, for the diagnostics
            with torch.no_grad():
                p = out["logits"].detach().float().softmax(-1)
                idx = kernels.neighbour_targets(q.detach(), k.detach(), p, cfg.k, s)[1]
            key_labels = labels
        if coarse_of is not None and idx is not None and key_labels is not None:
            parts.update(neighbour_stats(idx, labels, key_labels, coarse_of))
    if coarse_of is not None and "itrr_q" in out:
        parts["itrr_entropy"] = attention_entropy(out["itrr_q"], out["itrr_k"], scale)
    parts["loss"] = total
    return parts
