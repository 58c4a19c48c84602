"""Evaluation: predictions over a split, and the paper's metrics (section 4.3).

Overall fine accuracy; per-class accuracy at the valence / coarse / fine levels (Table 1 layout);
coarse accuracy both ways (the parent of the fine prediction, and the argmax of the probability summed
over each coarse group); a confusion matrix; images per second of the forward pass.

ITRR attends among the images of a batch, so in the paper's batch mode a prediction depends on its
batch-mates. Test batches are therefore drawn in a fixed *shuffled* order (seeded): a file-ordered test
list would put same-class images together and leak labels through ITRR. The `bank` and `self` ITRR
modes remove the dependence (rald_fast/evaluate/reference_bank.py).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from rald_fast import kernels
from rald_fast.config import LossConfig
from rald_fast.data.dataset import Split
from rald_fast.hierarchy import Taxonomy
from rald_fast.models.losses import attention_entropy, neighbour_stats, relation_qk
from rald_fast.preprocess import Preprocess


@torch.no_grad()
def predict_split(model, split: Split, preprocess: Preprocess, batch_size: int,
                  device: torch.device, seed: int = 0, itrr_mode: str = "batch",
                  neighbours: LossConfig | None = None) -> dict:
    """Probabilities (N, C_f) and features (N, D) in the split's order, plus images/s.

    itrr_mode: `batch` (the paper), `bank` (attend to the model's reference bank plus itself) or
    `self`; see `RALD.head_outputs`.
    neighbours: with ITRR in batch mode, also report NNLDL's neighbour purity on these batches
    (`neighbour_stats`) for the relation of this loss config and, for comparison, for the cosine
    of the backbone features F: key "neighbours", batch-size weighted means."""
    model.eval()
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    labels_tokens = model.label_tokens() if model.lgifo is not None else None  # constant: no image enters it
    probs = torch.empty(n, model.taxonomy.num_fine)
    feats = torch.empty(n, model.cfg.dim)
    seconds = 0.0
    sums: dict[str, float] = {}
    counted = 0  # images of the batches with neighbours (more than one image)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x = preprocess.normalize(split.images[idx].to(device))
        t0 = time.perf_counter()
        out = model.head_outputs(model.backbone_features(x), labels_tokens, itrr_mode)
        p = out["logits"].float().softmax(-1)
        seconds += time.perf_counter() - t0
        probs[idx], feats[idx] = p.cpu(), out["features"].float().cpu()
        if neighbours is not None and "itrr_q" in out and len(idx) > 1:
            for k, v in batch_neighbour_stats(out, p, split.labels[idx].to(device), model, neighbours).items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            counted += len(idx)
    result = {"probs": probs.numpy(), "features": feats.numpy(), "labels": split.labels.numpy(),
              "images_per_s": n / max(seconds, 1e-9)}
    if sums:
        result["neighbours"] = {k: v / counted for k, v in sums.items()}
    return result


def batch_neighbour_stats(out: dict, probs: torch.Tensor, labels: torch.Tensor, model,
                          cfg: LossConfig) -> dict[str, float]:
    """NNLDL's neighbour purity for one batch: for `cfg`'s relation, and for comparison for ITRR's
    R_v itself (suffix `_attention`, when that is not `cfg`'s relation) and the cosine of the
    backbone features F (suffix `_cosine_f`); see `losses.neighbour_stats`. Also ITRR's attention
    entropy / log N (`itrr_entropy`)."""
    coarse_of = torch.as_tensor(model.taxonomy.coarse_of_fine(), device=labels.device)
    stats = {"itrr_entropy": float(attention_entropy(out["itrr_q"], out["itrr_k"], model.cfg.scale))}
    relations = [(cfg.nnldl_relation, "")]
    relations += [("attention", "_attention")] if cfg.nnldl_relation != "attention" else []
    for relation, suffix in (*relations, ("cosine-f", "_cosine_f")):
        q, k, s = relation_qk(out, relation, model.cfg.scale, cfg.nnldl_tau)
        _, nn_idx, _ = kernels.neighbour_targets(q, k, probs, cfg.k, s)
        for name, v in neighbour_stats(nn_idx, labels, labels, coarse_of).items():
            stats[name + suffix] = float(v)
    return stats


def compute_metrics(probs: np.ndarray, labels: np.ndarray, taxonomy: Taxonomy) -> dict:
    """Accuracies at every level of the taxonomy, and the fine confusion matrix."""
    pred = probs.argmax(1)
    c = taxonomy.num_fine
    conf = np.bincount(labels * c + pred, minlength=c * c).reshape(c, c)
    support = conf.sum(1)
    per_fine = np.where(support > 0, np.diag(conf) / np.maximum(support, 1), np.nan)
    out = {"accuracy": float((pred == labels).mean()), "n": int(len(labels)),
           "per_class": {f: float(a) for f, a in zip(taxonomy.fine, per_fine)},
           "confusion": conf.tolist()}
    if not taxonomy.is_flat:
        parent = taxonomy.coarse_of_fine()                     # (C_f,) fine -> coarse index
        true_c, pred_c = parent[labels], parent[pred]
        summed = np.zeros((len(probs), len(taxonomy.coarse)))
        np.add.at(summed.T, parent, probs.T)                   # probability summed per group
        out["coarse_accuracy"] = float((pred_c == true_c).mean())
        out["coarse_accuracy_summed"] = float((summed.argmax(1) == true_c).mean())
        out["per_coarse"] = {name: float((pred_c[true_c == i] == i).mean())
                             for i, name in enumerate(taxonomy.coarse) if (true_c == i).any()}
        if taxonomy.valence:
            val_names = sorted(set(taxonomy.valence.values()))
            val_of = np.array([val_names.index(taxonomy.valence[g]) for g in taxonomy.coarse])
            tv, pv = val_of[true_c], val_of[pred_c]
            out["valence_accuracy"] = float((tv == pv).mean())
            out["per_valence"] = {v: float((pv[tv == i] == i).mean())
                                  for i, v in enumerate(val_names) if (tv == i).any()}
    return out
