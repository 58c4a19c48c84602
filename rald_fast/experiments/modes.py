"""Accuracy of each ITRR inference mode at several test batch sizes (batch independence).

In the paper's `batch` mode an image attends to the other images of its test batch, so its prediction
depends on them and on the batch size; `bank` (attend to a reference bank of training features stored
in the checkpoint, plus itself) and `self` (itself only) do not (rald_fast/evaluate/reference_bank.py).
`python -m rald_fast.experiments modes CKPT --out DIR` writes DIR/modes.{md,csv,json}.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rald_fast.experiments.common import write_json
from rald_fast.evaluate.run import load_run
from rald_fast.experiments.compare import evaluate_loaded


def run_modes(checkpoint: str, batch_sizes: list[int], modes: list[str], device: str,
              out: Path) -> str:

    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"--batch-sizes must be >= 1, got {batch_sizes}")
    m = load_run(checkpoint, device)
    if "bank" in modes and m.model.itrr is not None:
        m.model.reference_bank()  # the one check, before any work
    rows = []
    for mode in modes:
        for b in batch_sizes:
            r = evaluate_loaded(m, b, mode)
            rows.append({"itrr_mode": mode, "batch_size": b, "accuracy": r["accuracy"],
                         "coarse_accuracy": r.get("coarse_accuracy"),
                         "images_per_s": r["images_per_s"]})
    bank = m.model.reference_bank() if m.model.has_reference_bank else None
    meta = {"checkpoint": str(checkpoint), "variant": m.cfg.variant, "test_images": len(m.split),
            "reference_bank": None if bank is None else len(bank)}
    text = modes_markdown(rows, batch_sizes, modes)
    (out / "modes.md").write_text(text)
    (out / "modes.csv").write_text(modes_csv(rows))
    write_json(out / "modes.json", {**meta, "rows": rows})
    return text + f"wrote {out}/modes.md, .csv, .json"


def modes_markdown(rows: list[dict], batch_sizes: list[int], modes: list[str]) -> str:
    acc = {(r["itrr_mode"], r["batch_size"]): r["accuracy"] for r in rows}
    lines = ["| ITRR mode | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
             "| --- | " + " | ".join("---:" for _ in batch_sizes) + " |"]
    for mode in modes:
        lines.append(f"| {mode} | " + " | ".join(f"{100 * acc[mode, b]:.2f}" for b in batch_sizes)
                     + " |")
    return "\n".join(lines) + "\n"


def modes_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["itrr_mode", "batch_size", "accuracy", "images_per_s"])
    for r in rows:
        w.writerow([r["itrr_mode"], r["batch_size"], f"{r['accuracy']:.6f}",
                    f"{r['images_per_s']:.3f}"])
    return buf.getvalue()
