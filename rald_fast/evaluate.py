"""`python -m rald_fast.evaluate --checkpoint PATH`: accuracy tables, confusion matrix, images/s.

Writes to --out (default: <checkpoint dir>/eval): metrics.json, table1.md and table1.csv (the paper's
Table 1 layout: valence / coarse / fine rows), confusion.png. The test split is the one the checkpoint
was trained with unless --data-root names another directory holding a test.csv.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rald_fast.cli import run_cli
from rald_fast.models.rald import ITRR_MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rald_fast.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (last.pt)")
    p.add_argument("--data-root", help="directory with test.csv (default: the training data)")
    p.add_argument("--taxonomy", help="expected taxonomy; an error if the checkpoint's differs")
    p.add_argument("--split", default="test", choices=["train", "test"],
                   help="which split of the run's dataset to evaluate (default test)")
    p.add_argument("--batch-size", type=int, help="test batch size (default: the run's)")
    p.add_argument("--itrr-mode", default="batch", choices=ITRR_MODES,
                   help="ITRR context at test time: batch (the paper: the test batch), bank (the "
                        "checkpoint's reference bank + the image itself), self (the image only); "
                        "bank and self do not depend on batch-mates (default batch)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="output directory (default: <checkpoint dir>/eval)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("gensim").setLevel(logging.WARNING)
    from rald_fast.data.dataset import load_split
    from rald_fast.data.readers import split_source
    from rald_fast.evaluation import compute_metrics, predict_split
    from rald_fast.hierarchy import load_taxonomy
    from rald_fast.models import load_model
    from rald_fast.reports import plot_confusion, table1_csv, table1_markdown
    from rald_fast.training import dataset_root, resolve_device

    device = resolve_device(args.device)
    model, cfg, taxonomy, preprocess = load_model(args.checkpoint, device)
    if args.taxonomy and load_taxonomy(args.taxonomy).fine != taxonomy.fine:
        raise ValueError(f"--checkpoint {args.checkpoint} was trained on taxonomy "
                         f"{taxonomy.name!r}, not {args.taxonomy!r}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    root = Path(args.data_root) if args.data_root else None
    if root is None:
        root = dataset_root(cfg, taxonomy)
    source = split_source(cfg.data, taxonomy, args.split, root)
    split = load_split(source, taxonomy, preprocess.image_size)
    batch = args.batch_size or cfg.run.eval_batch_size
    if args.itrr_mode == "bank" and model.itrr is not None and model.itrr_bank is None:
        raise ValueError(f"--itrr-mode bank: {args.checkpoint} holds no reference bank; build one with "
                         f"`python -m rald_fast.bank --checkpoint {args.checkpoint}`")
    pred = predict_split(model, split, preprocess, batch, device, cfg.run.seed, args.itrr_mode,
                         model.itrr_bank)
    metrics = compute_metrics(pred["probs"], pred["labels"], taxonomy)
    metrics.update(images_per_s=pred["images_per_s"], batch_size=batch, device=str(device),
                   itrr_mode=args.itrr_mode,
                   checkpoint=str(args.checkpoint), data=str(source if isinstance(source, Path) else root))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    name = {Path(args.checkpoint).parent.name or "model": metrics}
    (out / "table1.md").write_text(table1_markdown(name, taxonomy))
    (out / "table1.csv").write_text(table1_csv(name, taxonomy))
    plot_confusion(metrics["confusion"], list(taxonomy.fine), out / "confusion.png",
                   f"{cfg.variant}: fine accuracy {100 * metrics['accuracy']:.2f}%")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"fine accuracy   {100 * metrics['accuracy']:.2f}% on {metrics['n']} images")
    if "coarse_accuracy" in metrics:
        print(f"coarse accuracy {100 * metrics['coarse_accuracy']:.2f}% (parent of fine), "
              f"{100 * metrics['coarse_accuracy_summed']:.2f}% (summed probability)")
    print(f"images/s        {metrics['images_per_s']:.1f} (batch {batch}, {device}, ITRR mode {args.itrr_mode})")
    print(f"wrote {out}/metrics.json, table1.md, table1.csv, confusion.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
