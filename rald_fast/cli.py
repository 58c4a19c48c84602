"""Shared command-line plumbing: bad input becomes one clear message and a non-zero exit, and the
options several commands share are declared once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rald_fast.device import DEVICE_CHOICES_HELP
from rald_fast.errors import USER_ERRORS


def run_cli(main) -> int:
    """Run `main()`; print a user error as `error: ...` (exit 2) instead of a traceback.

    Set RALD_FAST_DEBUG=1 to see the traceback instead.
    """
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint is intact; continue with --resume",
              file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("RALD_FAST_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def setup_logging() -> None:
    """INFO lines without decoration for the commands; chatty libraries at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("gensim", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def add_device_option(p: argparse.ArgumentParser, what: str = "where the model runs") -> None:
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help=f"{what}: {DEVICE_CHOICES_HELP} (default auto)")


def add_checkpoint_option(p: argparse.ArgumentParser, help: str = "a training checkpoint (last.pt)") -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=help)


def add_data_root_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", metavar="DIR",
                   help="dataset directory (default: the one the checkpoint was trained on)")


def output_dir(path: str | Path, option: str = "--out") -> Path:
    """The folder a command writes into, made when missing; one clear error when `path` is a file or
    cannot be made (train, evaluate, export)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {p}: exists and is not a folder; name a folder for the outputs")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{option} {p}: cannot create this folder ({e.strerror})") from None
    return p


RUN_FILES = ("last.pt", "summary.json", "metrics.jsonl")


def check_run_dir(path: str | Path, resuming: bool, overwrite: bool) -> None:
    """A training run never silently replaces another: `path` may hold a run only when resuming it
    or when told to overwrite it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p}: exists and is not a folder; name a folder for the run")
    held = [n for n in RUN_FILES if (p / n).exists()]
    if held and not (resuming or overwrite):
        state = "a finished run" if "summary.json" in held else "a run"
        raise ValueError(f"--out {p} holds {state} ({', '.join(held)}): continue it with --resume "
                         f"{p / 'last.pt'}, replace it with --overwrite, or choose another --out")
