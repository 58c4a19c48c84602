"""Table 3 of the paper: the module ablation (variants a-g and the full model), one budget, N seeds.

`python -m rald_fast.experiments ablation --out DIR [budget options] [--seeds N]` trains every row with
the same preset, overrides and seeds, and writes DIR/ablation.{md,csv,json} and DIR/ablation.png. The
paper's numbers (FG-Emotions, 224 px, 300 epochs, un-pretrained ResNet18) are printed beside ours.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from rald_fast.config import VARIANTS
from rald_fast.experiments.common import (final_accuracy, fmt_pct, mean_std, plan_run, pyplot,
                                          run_or_load, seeds_of, write_json)

ROWS = ["a", "b", "c", "d", "e", "f", "g", "rald"]
MODULES = ["itrr", "hlrr", "lgifo", "nnldl"]
# Table 3 of the paper, FG-Emotions accuracy (%)
PAPER = {"a": 91.91, "b": 96.60, "c": 96.45, "d": 95.93, "e": 96.80, "f": 96.06, "g": 97.25,
         "rald": 97.34}


def run_ablation(args, variants: list[str] | None = None) -> list[dict]:
    """Train (or load) every variant at every seed; one result row per variant."""
    rows = []
    for v in variants or ROWS:
        accs, coarse, dirs = [], [], []
        for seed in seeds_of(args):
            cfg = plan_run(args, v, seed=seed)
            fine_acc, coarse_acc = final_accuracy(run_or_load(cfg))
            accs.append(fine_acc)
            coarse.append(coarse_acc)
            dirs.append(cfg.run.out)
        mean, std = mean_std(accs)
        rows.append({"variant": v, **{m: VARIANTS[v][m] for m in MODULES}, "seeds": seeds_of(args),
                     "accuracy": accs, "mean": mean, "std": std,
                     "coarse_accuracy": coarse, "coarse_mean": mean_std(coarse)[0],
                     "paper": PAPER.get(v), "runs": dirs})
    return rows


def _mark(on: bool) -> str:
    return "✓" if on else ""


def ablation_markdown(rows: list[dict]) -> str:
    n = len(rows[0]["seeds"])
    acc = "fine acc. % (mean ± std)" if n > 1 else "fine acc. %"
    lines = [f"| variant | ITRR | HLRR | LGIFO | NNLDL | {acc} | coarse acc. % | paper % |",
             "| --- | :---: | :---: | :---: | :---: | ---: | ---: | ---: |"]
    for r in rows:
        name = "Ours (RALD)" if r["variant"] == "rald" else f"({r['variant']})"
        paper = f"{r['paper']:.2f}" if r["paper"] is not None else "-"
        lines.append(f"| {name} | " + " | ".join(_mark(r[m]) for m in MODULES)
                     + f" | {fmt_pct(r['mean'], r['std'])} | {fmt_pct(r['coarse_mean'])} | {paper} |")
    return "\n".join(lines) + "\n"


def ablation_csv(rows: list[dict]) -> str:
    """One line per variant and seed: variant, modules (0/1), seed, fine and coarse accuracy."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", *MODULES, "seed", "accuracy", "coarse_accuracy", "paper_accuracy"])
    for r in rows:
        for seed, a, c in zip(r["seeds"], r["accuracy"], r["coarse_accuracy"]):
            w.writerow([r["variant"], *(int(r[m]) for m in MODULES), seed, f"{a:.6f}", f"{c:.6f}",
                        "" if r["paper"] is None else f"{r['paper'] / 100:.4f}"])
    return buf.getvalue()


def plot_ablation(rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = ["RALD" if r["variant"] == "rald" else f"({r['variant']})" for r in rows]
    means = [100 * r["mean"] for r in rows]
    errs = [0 if math.isnan(r["std"]) else 100 * r["std"] for r in rows]
    ax.bar(names, means, yerr=errs if any(errs) else None, capsize=4, color="tab:blue", alpha=0.7)
    for i, r in enumerate(rows):
        if len(r["accuracy"]) > 1:  # every seed as a dot
            ax.plot([i] * len(r["accuracy"]), [100 * a for a in r["accuracy"]], "k.", ms=8)
        top = means[i] + errs[i]
        ax.annotate(f"{means[i]:.1f}", (i, top), ha="center", va="bottom", fontsize=9,
                    xytext=(0, 3), textcoords="offset points")
    tops = [m + e for m, e in zip(means, errs)] + [100 * a for r in rows for a in r["accuracy"]]
    ax.set_xlabel("Table 3 variant (modules: see ablation.md)")
    ax.set_ylabel("test fine accuracy (%)")
    ax.set_title(title)
    ax.set_ylim(0, max(tops) * 1.15 + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_ablation(rows: list[dict], out: Path, name: str = "ablation") -> None:
    (out / f"{name}.md").write_text(ablation_markdown(rows))
    (out / f"{name}.csv").write_text(ablation_csv(rows))
    write_json(out / f"{name}.json", rows)
    n = len(rows[0]["seeds"])
    spread = "error bars: std over seeds" if n > 1 else "spread unmeasured"
    plot_ablation(rows, out / f"{name}.png", f"Table 3 ablation ({n} seed{'s' if n > 1 else ''}; "
                  f"{spread})")
