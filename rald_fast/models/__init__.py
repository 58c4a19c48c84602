"""RALD model, its parts and its losses. `build_model(cfg, taxonomy)` is the one way to make one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rald_fast.config import Config
from rald_fast.hierarchy import Taxonomy
from rald_fast.models.losses import NeighbourMemory, nnldl_loss, rald_loss
from rald_fast.models.rald import RALD
from rald_fast.preprocess import Preprocess
from rald_fast.checkpoint import load_checkpoint
from rald_fast.errors import CheckpointError
from rald_fast.semantics import label_vectors

__all__ = ["RALD", "NeighbourMemory", "TrainedModel", "build_model", "load_model", "nnldl_loss", "rald_loss"]


def build_model(cfg: Config, taxonomy: Taxonomy) -> RALD:
    """A RALD for `taxonomy`; label vectors (F_s) are read only when LGIFO needs them."""
    vectors = None
    if cfg.model.lgifo:

        vectors = torch.from_numpy(label_vectors(taxonomy.node_names, taxonomy.node_kinds,
                                                 taxonomy.children(), cfg.model.label_vectors))
    return RALD(cfg.model, taxonomy, vectors)


@dataclass
class TrainedModel:
    """A model loaded from a training checkpoint (eval mode) with what it was trained with."""

    model: RALD
    cfg: Config
    taxonomy: Taxonomy
    preprocess: Preprocess
    provenance: dict  # what it was trained on (rald_fast.checkpoint.Checkpoint)


def load_model(path, device="cpu", option: str = "--checkpoint") -> TrainedModel:
    """The model of a training checkpoint, in eval mode on `device`, with its config, taxonomy,
    preprocessing and provenance.

    The label vectors are a buffer of the checkpoint, so no word-vector file is read; so is ITRR's
    reference bank (`model.has_reference_bank`, `model.reference_bank()`).
    """

    ckpt = load_checkpoint(path, option)
    cfg = Config.from_dict(ckpt.config)
    cfg.model.backbone_weights = None  # the checkpoint holds the trained backbone
    taxonomy = Taxonomy.from_dict(ckpt.taxonomy)
    vectors = ckpt.model.get("label_vectors")
    model = RALD(cfg.model, taxonomy, torch.zeros_like(vectors) if vectors is not None else None)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the saved config ({e})") from None
    return TrainedModel(model.to(device).eval(), cfg, taxonomy, Preprocess.from_dict(ckpt.preprocess),
                        ckpt.provenance)
