"""Self-describing checkpoints, written atomically.

A checkpoint holds the weights, optimiser, scheduler, epoch, RNG states, the resolved config, the label
taxonomy, the preprocessing config, the best metric and the package version. It is written to a
temporary file in the same directory, flushed to disk, then renamed over the target (`os.replace` is
atomic on POSIX): a crash leaves either the old file or the new one, never half of one. Loading never
executes code from the file (`weights_only=True`).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from rald_fast import __version__

FORMAT = "rald_fast.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run."""


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    state = {"format": FORMAT, "version": __version__, **state}
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


def load_checkpoint(path: str | Path, option: str = "--checkpoint") -> dict[str, Any]:
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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a rald_fast checkpoint (format {FORMAT} expected)")
    state["model"] = strip_state_prefixes(state["model"])
    return state
