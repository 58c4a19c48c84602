"""`load_run`: a trained checkpoint ready to evaluate, with one split of its dataset.

The one loader behind `python -m rald_fast.evaluate`, `python -m rald_fast.bank` and the
experiments: the model in eval mode (with its ITRR reference bank, when the checkpoint has one),
the config, taxonomy and preprocessing it was trained with, and a split decoded exactly as training
decoded it. It never imports the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rald_fast.config import Config
from rald_fast.data.dataset import Split
from rald_fast.hierarchy import Taxonomy
from rald_fast.preprocess import Preprocess
from rald_fast.data.build import dataset_root
from rald_fast.data.dataset import load_split
from rald_fast.data.readers import split_source
from rald_fast.device import resolve_device
from rald_fast.models import load_model


@dataclass
class Run:
    """A checkpoint ready to evaluate: the model (eval mode, on `device`), its config, taxonomy,
    preprocessing, one split of its dataset and where that came from."""

    name: str
    checkpoint: Path
    model: torch.nn.Module
    cfg: Config
    taxonomy: Taxonomy
    preprocess: Preprocess
    split: Split
    root: Path
    device: torch.device


def load_run(checkpoint: str | Path, device: str | torch.device = "auto", split: str = "test",
             data_root: str | Path | None = None, name: str | None = None,
             option: str = "--checkpoint") -> Run:
    """Load `checkpoint` and decode `split` ("train" or "test") of its dataset (or of `data_root`)."""

    dev = resolve_device(device)
    loaded = load_model(checkpoint, dev, option=option)
    model, cfg, taxonomy, preprocess = loaded.model, loaded.cfg, loaded.taxonomy, loaded.preprocess
    root = Path(data_root) if data_root else dataset_root(cfg, taxonomy)
    data = load_split(split_source(cfg.data, taxonomy, split, root), taxonomy, preprocess.image_size)
    path = Path(checkpoint)
    return Run(name or path.parent.name or "model", path, model, cfg, taxonomy, preprocess, data, root, dev)
