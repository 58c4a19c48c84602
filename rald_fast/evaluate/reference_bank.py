"""ITRR's reference bank: backbone features of training images that stand in for batch-mates.

The paper's ITRR (eqs. 3-7) lets every image attend to the other images of its batch, so an image's
prediction changes with whatever else is in the batch (one image alone sees only itself). The `bank`
inference mode replaces the batch with a fixed set of M training images, chosen class-stratified and
stored with the model; every test image attends to the bank plus itself, whatever its batch.

The default M is the training batch size minus one: each query then sees as many keys as it did in
training (its own plus B - 1 others), so the softmax of eq. (5) is spread over as many entries.
"""

from __future__ import annotations

import torch

from rald_fast.data.dataset import Split
from rald_fast.preprocess import Preprocess


def stratified_indices(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """`size` indices drawn round-robin over the classes (shuffled within each class, seeded)."""
    g = torch.Generator().manual_seed(seed)
    per_class = [idx[torch.randperm(len(idx), generator=g)]
                 for c in labels.unique().tolist() for idx in [(labels == c).nonzero().flatten()]]
    picked: list[int] = []
    depth = 0
    while len(picked) < size and any(depth < len(p) for p in per_class):
        picked += [int(p[depth]) for p in per_class if depth < len(p)]
        depth += 1
    return torch.tensor(picked[:size], dtype=torch.long)


@torch.no_grad()
def build_reference_bank(model, split: Split, preprocess: Preprocess, size: int,
                         device: torch.device | str = "cpu", seed: int = 0,
                         batch_size: int = 128) -> dict:
    """Features F (M, D) of `size` class-stratified images of `split`, in eval mode, unaugmented.

    Returns features (M, D) fp32 on the CPU (for `RALD.set_reference_bank`) and how they were drawn,
    kept in the checkpoint's `reference_bank`: labels (M,), indices into the split (M,), the split's
    length (to recognise it later) and the seed.
    """
    if size < 1:
        raise ValueError(f"reference bank size must be >= 1, got {size}")
    if len(split) == 0:
        raise ValueError("cannot build a reference bank from an empty training split")
    was_training = model.training
    model.eval()
    idx = stratified_indices(split.labels, min(size, len(split)), seed)
    feats = []
    for start in range(0, len(idx), batch_size):
        x = preprocess.normalize(split.images[idx[start:start + batch_size]].to(device))
        if next(model.backbone.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(model.backbone_features(x).float().cpu())
    model.train(was_training)
    return {"features": torch.cat(feats), "labels": split.labels[idx].clone(), "indices": idx,
            "split_size": len(split), "seed": seed}


def default_bank_size(cfg) -> int:
    """Training batch size - 1: as many keys per query as in training (module docstring)."""
    return max(1, cfg.optim.batch_size - 1)
