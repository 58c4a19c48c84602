"""The command lines of evaluation: `python -m rald_fast.evaluate` and `python -m rald_fast.bank`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rald_fast.cli import (add_checkpoint_option, add_data_root_option, add_device_option, output_dir,
                           setup_logging)
from rald_fast.config import ITRR_MODES
from rald_fast.files import atomic_write_text, to_json
from rald_fast.errors import CheckpointError
from rald_fast.checkpoint import load_checkpoint
from rald_fast.checkpoint import save_checkpoint
from rald_fast.cli import run_cli
from rald_fast.hierarchy import load_taxonomy


EVALUATE_DOC = """`python -m rald_fast.evaluate --checkpoint PATH`: accuracy tables, confusion matrix, images/s.

Writes to --out (default: <checkpoint dir>/eval): metrics.json, table1.md and table1.csv (the paper's
Table 1 layout: valence / coarse / fine rows), confusion.png. The test split is the one the checkpoint
was trained with unless --data-root names another directory holding a test.csv.
"""

BANK_DOC = """Build ITRR's reference bank for a trained checkpoint (batch-independent inference).

    python -m rald_fast.bank --checkpoint runs/rald/last.pt [--size 63] [--out PATH]

Training already stores a bank in its final checkpoint (`--reference-bank`); this command builds
one for a checkpoint that has none, or a bank of another size. The images come from the training
split of the checkpoint's dataset (or --data-root), class-stratified and unaugmented. The checkpoint
is rewritten atomically (or written to --out); its weights are untouched.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rald_fast.evaluate", description=EVALUATE_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_option(p)
    add_data_root_option(p)
    p.add_argument("--taxonomy", help="expected taxonomy; an error if the checkpoint's differs")
    p.add_argument("--split", default="test", choices=["train", "test"],
                   help="which split of the run's dataset to evaluate (default test)")
    p.add_argument("--batch-size", type=int, help="test batch size (default: the run's)")
    p.add_argument("--itrr-mode", default="batch", choices=ITRR_MODES,
                   help="ITRR context at test time: batch (the paper: the test batch), bank (the "
                        "checkpoint's reference bank + the image itself), self (the image only); "
                        "bank and self do not depend on batch-mates (default batch)")
    add_device_option(p)
    p.add_argument("--out", help="output directory (default: <checkpoint dir>/eval)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from rald_fast.evaluate.metrics import compute_metrics, predict_split
    from rald_fast.evaluate.reports import plot_confusion, table1_csv, table1_markdown
    from rald_fast.evaluate.run import load_run

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    run = load_run(args.checkpoint, args.device, args.split, args.data_root)
    if args.taxonomy and load_taxonomy(args.taxonomy).fine != run.taxonomy.fine:
        raise ValueError(f"--checkpoint {args.checkpoint} was trained on taxonomy "
                         f"{run.taxonomy.name!r}, not {args.taxonomy!r}")
    if args.itrr_mode == "bank" and run.model.itrr is not None:
        run.model.reference_bank()  # the one check, before any work
    batch = args.batch_size or run.cfg.run.eval_batch_size
    pred = predict_split(run.model, run.split, run.preprocess, batch, run.device, run.cfg.run.seed, args.itrr_mode)
    metrics = compute_metrics(pred["probs"], pred["labels"], run.taxonomy)
    metrics.update(images_per_s=pred["images_per_s"], batch_size=batch, device=str(run.device),
                   itrr_mode=args.itrr_mode, checkpoint=str(args.checkpoint), data=str(run.root))
    out = output_dir(args.out if args.out else Path(args.checkpoint).parent / "eval")
    name = {run.name: metrics}
    (out / "table1.md").write_text(table1_markdown(name, run.taxonomy))
    (out / "table1.csv").write_text(table1_csv(name, run.taxonomy))
    plot_confusion(metrics["confusion"], list(run.taxonomy.fine), out / "confusion.png",
                   f"{run.cfg.variant}: fine accuracy {100 * metrics['accuracy']:.2f}%")
    atomic_write_text(out / "metrics.json", to_json(metrics, indent=2))
    print(f"fine accuracy   {100 * metrics['accuracy']:.2f}% on {metrics['n']} images")
    if "coarse_accuracy" in metrics:
        print(f"coarse accuracy {100 * metrics['coarse_accuracy']:.2f}% (parent of fine), "
              f"{100 * metrics['coarse_accuracy_summed']:.2f}% (summed probability)")
    print(f"images/s        {metrics['images_per_s']:.1f} (batch {batch}, {run.device}, ITRR mode {args.itrr_mode})")
    print(f"wrote {out}/metrics.json, table1.md, table1.csv, confusion.png")
    return 0


def build_bank_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rald_fast.bank", description=BANK_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_option(p)
    p.add_argument("--size", type=int, help="images in the bank (default: training batch size - 1)")
    add_data_root_option(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified draw (default 0)")
    add_device_option(p, "where the backbone runs")
    p.add_argument("--out", help="write the checkpoint with its bank here (default: in place)")
    return p


def bank_main(argv: list[str] | None = None) -> int:
    args = build_bank_parser().parse_args(argv)
    from rald_fast.evaluate.reference_bank import build_reference_bank, default_bank_size
    from rald_fast.evaluate.run import load_run

    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    run = load_run(args.checkpoint, args.device, "train", args.data_root)
    if run.model.itrr is None:
        raise ValueError(f"--checkpoint {args.checkpoint}: this model has no ITRR, so it needs no "
                         f"reference bank (its predictions never depend on the batch)")
    size = default_bank_size(run.cfg) if args.size is None else args.size
    bank = build_reference_bank(run.model, run.split, run.preprocess, size, run.device, args.seed)
    features = bank.pop("features")
    ckpt = load_checkpoint(args.checkpoint)
    ckpt.model["itrr_reference"] = features
    ckpt.reference_bank = bank
    written = args.out or args.checkpoint
    if args.out:
        check_checkpoint_target(Path(args.out))
    save_checkpoint(written, ckpt)
    print(f"reference bank of {len(features)} training images from {run.root} stored in {written}")
    return 0


def check_checkpoint_target(path: Path) -> None:
    """`bank --out`: a new file, or a rald_fast checkpoint to replace; never a folder or another file."""

    if path.is_dir():
        raise ValueError(f"--out {path}: is a folder; name the checkpoint file to write")
    if path.exists():
        try:
            load_checkpoint(path, "--out")
        except CheckpointError:
            raise ValueError(f"--out {path}: exists and is not a rald_fast checkpoint; it is not overwritten "
                             "(name a new file)") from None
    if not path.parent.is_dir():
        raise ValueError(f"--out {path}: its folder {path.parent} does not exist")


def cli() -> int:
    """Console-script entry point: `main` with user errors reported as one line (exit 2)."""

    return run_cli(main)


def bank_cli() -> int:
    """Console-script entry point of `rald-bank` (`python -m rald_fast.bank`)."""

    return run_cli(bank_main)
