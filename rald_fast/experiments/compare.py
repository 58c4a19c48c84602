"""Table 1: per-class accuracy of several checkpoints side by side (valence / coarse / fine rows).

`python -m rald_fast.experiments compare CKPT... --out DIR` evaluates every checkpoint on its own test
split (all must share one taxonomy) and writes DIR/compare.{md,csv,json} in `reports.table1_*`'s layout
plus one confusion matrix per model (confusion_<name>.png). Every checkpoint is loaded by
`rald_fast.evaluate.load_run`, as in `modes`, `figures` and `study`.
"""

from __future__ import annotations

from pathlib import Path

from rald_fast.evaluate.run import Run, load_run
from rald_fast.experiments.common import write_json
from rald_fast.evaluate.metrics import compute_metrics, predict_split
from rald_fast.evaluate.reports import plot_confusion, table1_csv, table1_markdown


def evaluate_loaded(m: Run, batch_size: int | None = None, itrr_mode: str = "batch") -> dict:
    """compute_metrics() of one checkpoint on its test split, plus images/s and the batch size."""

    batch = batch_size or m.cfg.run.eval_batch_size
    pred = predict_split(m.model, m.split, m.preprocess, batch, m.device, m.cfg.run.seed, itrr_mode)
    metrics = compute_metrics(pred["probs"], pred["labels"], m.taxonomy)
    metrics.update(images_per_s=pred["images_per_s"], batch_size=batch, itrr_mode=itrr_mode)
    return metrics


def run_compare(checkpoints: list[str], names: list[str] | None, batch_size: int | None,
                device: str, out: Path) -> str:

    if names and len(names) != len(checkpoints):
        raise ValueError(f"--names: {len(names)} names for {len(checkpoints)} checkpoints")
    metrics: dict[str, dict] = {}
    taxonomy = None
    for i, path in enumerate(checkpoints):
        m = load_run(path, device, name=names[i] if names else None)
        if taxonomy is not None and list(m.taxonomy.fine) != list(taxonomy.fine):
            raise ValueError(f"{path}: taxonomy {m.taxonomy.name!r} differs from the first "
                             f"checkpoint's {taxonomy.name!r}; Table 1 needs one label set")
        taxonomy = m.taxonomy
        name = m.name if m.name not in metrics else f"{m.name}_{i}"
        metrics[name] = evaluate_loaded(m, batch_size)
        metrics[name]["checkpoint"] = str(path)
        plot_confusion(metrics[name]["confusion"], list(taxonomy.fine),
                       out / f"confusion_{name}.png",
                       f"{name} ({m.cfg.variant}): fine accuracy "
                       f"{100 * metrics[name]['accuracy']:.2f}%")
    text = table1_markdown(metrics, taxonomy)
    (out / "compare.md").write_text(text)
    (out / "compare.csv").write_text(table1_csv(metrics, taxonomy))
    write_json(out / "compare.json", metrics)
    return text + f"wrote {out}/compare.md, .csv, .json and confusion_*.png"
