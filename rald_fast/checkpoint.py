"""Self-describing checkpoints, written atomically.

A checkpoint (`Checkpoint`, a versioned schema) holds the weights, optimiser, scheduler, epoch, RNG
states, the resolved config, the label taxonomy, the preprocessing config, what the model was trained
on, the best metric and the package version. It is written to a
temporary file in the same directory, flushed to disk, then renamed over the target (`os.replace` is
atomic on POSIX): a crash leaves either the old file or the new one, never half of one. Loading never
executes code from the file (`weights_only=True`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from dataclasses import dataclass, field, fields

import torch

from rald_fast import __version__
from rald_fast.errors import CheckpointError
from rald_fast.files import atomic_write

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


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` atomically (a crash leaves the old file or the new one)."""
    state = {**{f.name: getattr(ckpt, f.name) for f in fields(ckpt)}, "format": FORMAT, "version": __version__}
    atomic_write(path, lambda f: torch.save(state, f))


TRAINING_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP


def strip_state_prefixes(state: dict, prefixes: tuple[str, ...] = TRAINING_PREFIXES) -> dict:
    """Keys without the wrappers' `prefixes` (repeated or nested, in any order); by default
    torch.compile's `_orig_mod.` and DDP's `module.` (backbone.py adds other models' own)."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _unpickler_reason(err: Exception) -> str:
    """The line of torch's weights_only error that says what stopped it (never its advice to load the
    file with weights_only=False, which would run the file's code)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed global|\n\s*\n|$)", text, re.S)
    return " ".join((m.group(1) if m else text.strip().splitlines()[0]).split())


def _looks_like(path: Path) -> str:
    """What a file that torch cannot read seems to be, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip()
    if head[:1] in (b"{", b"["):
        return "JSON text"
    if head.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM")):
        return "an image"
    if not head:
        return "empty"
    return "text" if all(32 <= c < 127 or c in (9, 10, 13) for c in head) else "binary data of another kind"


def read_torch_file(path: str | Path) -> object:
    """`torch.load(path, weights_only=True)`: tensors and plain values only, never code from the file.
    The one safe reader of PyTorch files (checkpoints, backbone weights); a CheckpointError says what
    the file is not: not a PyTorch file (and what it looks like), or refused because loading it would
    run code."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(e)
        if any(w in reason.lower() for w in ("global", "function", "class", "reduce")):
            raise CheckpointError(f"{path}: refused, loading it would run code from the file ({reason}); only "
                                  "tensors and plain values are read. Re-save it as a state dict "
                                  "(torch.save(model.state_dict(), ...)) in an environment you trust") from None
        raise CheckpointError(f"{path}: not a PyTorch file: it looks like {_looks_like(path)} "
                              f"({reason})") from None
    except Exception as e:  # noqa: BLE001 (torch.load raises many types for a foreign file)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a PyTorch file: it looks like {_looks_like(path)} ({first})") from None


def load_checkpoint(path: str | Path, option: str = "--checkpoint") -> Checkpoint:
    """Read a checkpoint without executing code from it (`weights_only=True`); format 1 (before the
    reference bank became a model buffer) is converted on the fly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{option} {path}: no such file")
    state = read_torch_file(path)
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
