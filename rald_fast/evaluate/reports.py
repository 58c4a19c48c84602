"""Tables in the paper's Table 1 layout and figures (confusion matrix).

Table 1 of the paper lists, per model, the accuracy of each valence, each coarse group and each fine
class. `table1_rows` gives those rows for any number of models (one column each), `table1_markdown`
and `table1_csv` render them; the CSV parses back into the same numbers.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from rald_fast.hierarchy import Taxonomy


def table1_rows(metrics: dict[str, dict], taxonomy: Taxonomy) -> list[tuple[str, str, list[float]]]:
    """Rows (level, label, [accuracy per model]); metrics maps model name -> compute_metrics()."""
    models = list(metrics.values())
    rows = []

    def col(key, name):
        return [m.get(key, {}).get(name, float("nan")) for m in models]

    if not taxonomy.is_flat:
        for v in sorted(set(taxonomy.valence.values())):
            rows.append(("valence", v, col("per_valence", v)))
        for c in taxonomy.coarse:
            rows.append(("coarse", c, col("per_coarse", c)))
    for f in taxonomy.fine:
        rows.append(("fine", f, col("per_class", f)))
    rows.append(("overall", "fine accuracy", [m["accuracy"] for m in models]))
    if not taxonomy.is_flat:
        rows.append(("overall", "coarse accuracy (parent of fine)",
                     [m["coarse_accuracy"] for m in models]))
        rows.append(("overall", "coarse accuracy (summed probability)",
                     [m["coarse_accuracy_summed"] for m in models]))
    return rows


def table1_markdown(metrics: dict[str, dict], taxonomy: Taxonomy) -> str:
    names = list(metrics)
    lines = ["| level | label | " + " | ".join(names) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in names) + " |"]
    for level, label, vals in table1_rows(metrics, taxonomy):
        lines.append(f"| {level} | {label} | " + " | ".join(f"{100 * v:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def table1_csv(metrics: dict[str, dict], taxonomy: Taxonomy) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["level", "label", *metrics])
    for level, label, vals in table1_rows(metrics, taxonomy):
        w.writerow([level, label, *(f"{v:.6f}" for v in vals)])
    return buf.getvalue()


def plot_confusion(confusion, labels: list[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix as a PNG with every class name legible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(confusion, dtype=float)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(labels)
    size = max(6.0, 0.32 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
