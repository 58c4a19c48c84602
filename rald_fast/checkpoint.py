"""Self-describing checkpoints, written atomically.

A checkpoint (`Checkpoint`, a versioned schema) holds the weights, optimiser, scheduler, epoch, RNG
states, the resolved config, the label taxonomy, the preprocessing config, what the model was trained
on, the best metric and the package version. It is written to a
temporary file in the same directory, flushed to disk, then renamed over the target (`os.replace` is
atomic on POSIX): a crash leaves either the old file or the new one, never half of one. Loading never
executes code from the file (`weights_only=True`).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from dataclasses import dataclass, field, fields

import torch

from rald_fast import __version__
from rald_fast.errors import CheckpointError

FORMAT = "rald_fast.checkpoint/2"
OLD_FORMATS = ("rald_fast.checkpoint/1",)


@dataclass
class Checkpoint:
    """Everything a training checkpoint holds (format 2), written once per epoch by the training loop
    and read by `load_checkpoint` for resuming, evaluation, reference-bank building and export.

    model: the state dict; for a model with ITRR it includes the reference bank, buffer
        `itrr_reference` (M, D) (M = 0 until one is built).
    config, taxonomy, preprocess: the resolved `Config`, `Taxonomy` and `Preprocess` as dicts.
    provenance: what the model was trained on (`rald_fast.data.build.Data.provenance`): the data
        kind, whether it is synthetic, the dataset directory and the split sizes. The predictor and
        every exported artifact repeat it, so an answer from a synthetic-only model says so.
    epoch: epochs completed. best: {"test_acc", "epoch"}. metrics: the last epoch's row.
    optimizer, scheduler, scaler, rng: what resuming needs (None once stripped for deployment).
    nnldl_memory: NNLDL's FIFO memory (`--nnldl-bank`), or None.
    reference_bank: how ITRR's reference bank was drawn (labels, indices, split size, seed), or None.
    """

    model: dict
    config: dict
    taxonomy: dict
    preprocess: dict
    provenance: dict = field(default_factory=dict)
    epoch: int = 0
    best: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    rng: dict | None = None
    nnldl_memory: dict | None = None
    reference_bank: dict | None = None
    version: str = __version__
    format: str = FORMAT


def atomic_write(path: str | Path, write) -> None:
    """Call `write(fileobj)` on a temp file beside `path`, fsync, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` atomically (a crash leaves the old file or the new one)."""
    state = {**{f.name: getattr(ckpt, f.name) for f in fields(ckpt)}, "format": FORMAT, "version": __version__}
    atomic_write(path, lambda f: torch.save(state, f))


def strip_state_prefixes(state: dict) -> dict:
    """Drop `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes."""
    out = {}
    for k, v in state.items():
        for p in ("_orig_mod.", "module."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_checkpoint(path: str | Path, option: str = "--checkpoint") -> Checkpoint:
    """Read a checkpoint without executing code from it (`weights_only=True`); format 1 (before the
    reference bank became a model buffer) is converted on the fly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{option} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused, it needs code execution to load "
                              f"({str(e).splitlines()[0]})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, *OLD_FORMATS):
        raise CheckpointError(f"{path}: not a rald_fast checkpoint (format {FORMAT} expected)")
    if state["format"] == "rald_fast.checkpoint/1":
        state = _from_format_1(state)
    state["model"] = strip_state_prefixes(state["model"])
    known = {f.name for f in fields(Checkpoint)}
    try:
        return Checkpoint(**{k: v for k, v in state.items() if k in known})
    except TypeError as e:
        raise CheckpointError(f"{path}: incomplete checkpoint ({e})") from None


def _from_format_1(state: dict) -> dict:
    """Format 1 kept ITRR's reference bank under "itrr_bank" and NNLDL's memory under "bank"."""
    state = dict(state, format=FORMAT)
    bank = state.pop("itrr_bank", None)
    state["nnldl_memory"] = state.pop("bank", None)
    model = dict(state["model"])
    if bank is not None:
        model["itrr_reference"] = bank["features"]
        state["reference_bank"] = {k: v for k, v in bank.items() if k != "features"}
    elif state["config"]["model"].get("itrr", True):
        model["itrr_reference"] = torch.zeros(0, state["config"]["model"]["dim"])
    state["model"] = model
    return state
