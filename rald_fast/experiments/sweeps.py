"""Fig. 6 (accuracy against the NNLDL neighbour count k) and the label-noise study.

`ksweep`: the full model at each k (default 1 3 5 7 10), same budget and seeds; writes
DIR/ksweep.{md,csv,json,png}. `noise`: the bare ResNet18 (Table 3 a), RALD without NNLDL (g) and RALD
as the share of flipped training labels of the synthetic data rises (default 0 10 20 30 40 %); writes
DIR/noise.{md,csv,json,png}. The paper has no noise study: its claim that NNLDL eases label ambiguity
is tested here by flipping labels on purpose (`--synth-flip-prob`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from rald_fast.experiments.common import (final_accuracy, fmt_pct, mean_std, plan_run, pyplot,
                                          run_or_load, seeds_of, write_json)

NOISE_MODELS = {"a": "ResNet18 (a)", "g": "RALD without NNLDL (g)", "rald": "RALD"}


def _point(args, variant: str, **setting) -> dict:
    accs, dirs = [], []
    for seed in seeds_of(args):
        cfg = plan_run(args, variant, seed=seed, **setting)
        accs.append(final_accuracy(run_or_load(cfg))[0])
        dirs.append(cfg.run.out)
    mean, std = mean_std(accs)
    return {"variant": variant, **setting, "seeds": seeds_of(args), "accuracy": accs,
            "mean": mean, "std": std, "runs": dirs}


def run_ksweep(args) -> list[dict]:
    return [_point(args, "rald", k=k) for k in args.k_values]


def run_noise(args) -> list[dict]:
    return [_point(args, v, synth_flip_prob=p / 100)
            for v in args.models for p in args.flip_percents]


def sweep_csv(points: list[dict], key: str) -> str:
    """One line per point and seed: variant, the swept value, seed, fine accuracy."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", key, "seed", "accuracy"])
    for p in points:
        for seed, a in zip(p["seeds"], p["accuracy"]):
            w.writerow([p["variant"], p[key], seed, f"{a:.6f}"])
    return buf.getvalue()


def ksweep_markdown(points: list[dict]) -> str:
    lines = ["| k | " + " | ".join(str(p["k"]) for p in points) + " |",
             "| --- | " + " | ".join("---:" for _ in points) + " |",
             "| RALD fine acc. % | " + " | ".join(fmt_pct(p["mean"], p["std"]) for p in points)
             + " |"]
    return "\n".join(lines) + "\n"


def noise_markdown(points: list[dict]) -> str:
    flips = sorted({p["synth_flip_prob"] for p in points})
    lines = ["| model | " + " | ".join(f"{round(100 * f)} % flipped" for f in flips) + " |",
             "| --- | " + " | ".join("---:" for _ in flips) + " |"]
    for v in dict.fromkeys(p["variant"] for p in points):
        by = {p["synth_flip_prob"]: p for p in points if p["variant"] == v}
        lines.append(f"| {NOISE_MODELS.get(v, v)} | " + " | ".join(
            fmt_pct(by[f]["mean"], by[f]["std"]) if f in by else "-" for f in flips) + " |")
    return "\n".join(lines) + "\n"


def _plot_lines(series: dict[str, list[tuple[float, float, float]]], path: Path, title: str,
                xlabel: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in series.items():
        xs, ms, ss = zip(*pts)
        errs = [0 if math.isnan(s) else 100 * s for s in ss]
        ax.errorbar(xs, [100 * m for m in ms], yerr=errs, marker="o", capsize=3, label=name)
        for x, m in zip(xs, ms):
            ax.annotate(f"{100 * m:.1f}", (x, 100 * m), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test fine accuracy (%)")
    ax.set_title(title)
    ax.set_xticks(sorted({x for pts in series.values() for x, _, _ in pts}))
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_ksweep(points: list[dict], out: Path, name: str = "ksweep") -> None:
    (out / f"{name}.md").write_text(ksweep_markdown(points))
    (out / f"{name}.csv").write_text(sweep_csv(points, "k"))
    write_json(out / f"{name}.json", points)
    _plot_lines({"RALD": [(p["k"], p["mean"], p["std"]) for p in points]}, out / f"{name}.png",
                "Fig. 6: accuracy against the number of neighbours k (NNLDL)",
                "k (neighbours per image in NNLDL)")


def write_noise(points: list[dict], out: Path, name: str = "noise") -> None:
    (out / f"{name}.md").write_text(noise_markdown(points))
    (out / f"{name}.csv").write_text(sweep_csv(points, "synth_flip_prob"))
    write_json(out / f"{name}.json", points)
    series: dict[str, list] = {}
    for p in points:
        series.setdefault(NOISE_MODELS.get(p["variant"], p["variant"]), []).append(
            (round(100 * p["synth_flip_prob"]), p["mean"], p["std"]))
    _plot_lines(series, out / f"{name}.png", "Accuracy against the share of flipped training labels",
                "flipped (ambiguous) training labels (%)")
