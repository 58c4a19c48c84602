"""RALD model, its parts and its losses. `build_model(cfg, taxonomy)` is the one way to make one."""

from __future__ import annotations

import torch

from rald_fast.config import Config
from rald_fast.hierarchy import Taxonomy
from rald_fast.models.losses import NeighbourBank, nnldl_loss, rald_loss
from rald_fast.models.rald import RALD

__all__ = ["RALD", "NeighbourBank", "build_model", "load_model", "nnldl_loss", "rald_loss"]


def build_model(cfg: Config, taxonomy: Taxonomy) -> RALD:
    """A RALD for `taxonomy`; label vectors (F_s) are read only when LGIFO needs them."""
    vectors = None
    if cfg.model.lgifo:
        from rald_fast.semantics import label_vectors

        vectors = torch.from_numpy(label_vectors(taxonomy.node_names, taxonomy.node_kinds,
                                                 taxonomy.children(), cfg.model.label_vectors))
    return RALD(cfg.model, taxonomy, vectors)


def load_model(path, device="cpu"):
    """(model in eval mode, config, taxonomy, preprocess) from a training checkpoint.

    The label vectors are a buffer of the checkpoint, so no word-vector file is read. The ITRR
    reference bank, when the checkpoint has one, is `model.itrr_bank` (M, D) (else None).
    """
    from rald_fast.checkpoint import CheckpointError, load_checkpoint
    from rald_fast.data.transforms import Preprocess

    ckpt = load_checkpoint(path)
    cfg = Config.from_dict(ckpt["config"])
    cfg.model.backbone_weights = None  # the checkpoint holds the trained backbone
    taxonomy = Taxonomy.from_dict(ckpt["taxonomy"])
    state = ckpt["model"]
    vectors = state.get("label_vectors")
    model = RALD(cfg.model, taxonomy, torch.zeros_like(vectors) if vectors is not None else None)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the saved config ({e})") from None
    bank = ckpt.get("itrr_bank")
    model.itrr_bank = bank["features"] if bank is not None else None  # ITRR `bank` mode (reference_bank.py)
    return model.to(device).eval(), cfg, taxonomy, Preprocess.from_dict(ckpt["preprocess"])
