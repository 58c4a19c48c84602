"""Build ITRR's reference bank for a trained checkpoint (batch-independent inference).

    python -m rald_fast.bank --checkpoint runs/rald/last.pt [--size 63] [--out PATH]

Training already stores a bank in its final checkpoint (`--reference-bank`); this command builds
one for a checkpoint that has none, or a bank of another size. The images come from the training
split of the checkpoint's dataset (or --data-root), class-stratified and unaugmented. The checkpoint
is rewritten atomically (or written to --out); its weights are untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rald_fast.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rald_fast.bank", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (last.pt)")
    p.add_argument("--size", type=int, help="images in the bank (default: training batch size - 1)")
    p.add_argument("--data-root", help="dataset directory (default: the checkpoint's training data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified draw (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="write the checkpoint with its bank here (default: in place)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rald_fast.data.dataset import load_split
    from rald_fast.data.readers import split_source
    from rald_fast.models import load_model
    from rald_fast.models.reference_bank import build_reference_bank, default_bank_size, store_bank
    from rald_fast.training import dataset_root, resolve_device

    device = resolve_device(args.device)
    model, cfg, taxonomy, preprocess = load_model(args.checkpoint, device)
    if model.itrr is None:
        raise ValueError(f"--checkpoint {args.checkpoint}: this model has no ITRR, so it needs no "
                         f"reference bank (its predictions never depend on the batch)")
    size = default_bank_size(cfg) if args.size is None else args.size
    if size < 1:
        raise ValueError(f"--size must be >= 1, got {size}")
    root = Path(args.data_root) if args.data_root else dataset_root(cfg, taxonomy)
    split = load_split(split_source(cfg.data, taxonomy, "train", root), taxonomy, preprocess.image_size)
    bank = build_reference_bank(model, split, preprocess, size, device, args.seed)
    written = store_bank(args.checkpoint, bank, args.out)
    print(f"reference bank of {len(bank['features'])} training images from {root} stored in {written}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
