"""Does each RALD module help, and why? The multi-seed study behind docs/RESULTS.md.

`python -m rald_fast.experiments study --out DIR [budget options] [--seeds 3] [--jobs 2]` trains, at
one budget and over the same seeds (so every comparison is paired by seed):
1. the weight-decay grid (`--weight-decays`) for the bare ResNet18 (Table 3 a) and RALD: each model is
   then compared at its own best weight decay (mean fine accuracy over seeds);
2. at RALD's best weight decay: (g) = RALD without NNLDL, RALD with the paper's literal blocks (no
   input residual), RALD with each other reading of NNLDL's relation (`--relations`: symmetric R_v,
   cosine of F, cosine of F~) and RALD with the literal eq. (9) reading;
3. the label-noise column: ResNet18 and RALD at 0 / 20 / 40 % flipped training labels.
It writes DIR/study.md (the tables), study.csv (one line per run: parsed back by `read_study_csv`),
study.json and study_curves.png (per-epoch neighbour purity against chance and ITRR attention entropy,
mean over seeds). Runs live under DIR/runs/ and are shared and resumable like every experiment's; a
second call with the same options trains nothing and rewrites the tables from the finished runs.
`--jobs N` trains N runs at once in separate processes, each with one CPU thread.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rald_fast.experiments.common import fmt_pct, mean_std, plan_run, pyplot, run_or_load, seeds_of, write_json

RELATIONS = ("symmetric", "cosine-f", "cosine-ftilde")
ALL_RELATIONS = ("attention", *RELATIONS)
NOISE = (0.0, 0.2, 0.4)


@dataclass
class Cell:
    """One model setting of the study; `runs` holds the summaries of its seeds (in seed order)."""

    name: str
    variant: str
    overrides: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def fine(self) -> list[float]:
        return [r["final"]["test_acc"] for r in self.runs]

    def coarse(self) -> list[float]:
        return [r["final"].get("test_coarse_acc", math.nan) for r in self.runs]

    def final(self, key: str) -> list[float]:
        return [r["final"][key] for r in self.runs if key in r["final"]]


def _train(cfg_dict: dict) -> dict:
    """Worker: train (or load) one run from its config dict (picklable for process pools)."""
    from rald_fast.config import Config

    cfg = Config.from_dict(cfg_dict)
    return run_or_load(cfg)


def _finished(cfg_dict: dict) -> dict | None:
    path = Path(cfg_dict["run"]["out"]) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _run_cells(args, cells: list[Cell]) -> None:
    """Fill every cell's runs for every seed, `args.jobs` runs at a time. With `args.report_only`
    nothing is trained: a cell keeps only the seeds whose run has finished."""
    plans = []
    for cell in cells:
        for seed in seeds_of(args):
            cfg = plan_run(args, cell.variant, seed=seed, **cell.overrides)
            if args.jobs > 1:
                cfg.run.threads, cfg.run.progress = 1, False
            plans.append((cell, cfg))
    if getattr(args, "report_only", False):
        for cell, cfg in plans:
            summary = _finished(cfg.to_dict())
            if summary is not None:
                cell.runs.append(summary)
                cell.dirs.append(cfg.run.out)
        return
    if args.jobs > 1:
        # spawn, not fork: a forked child would inherit torch's thread pools
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            summaries = list(pool.map(_train, [cfg.to_dict() for _, cfg in plans]))
    else:
        summaries = [run_or_load(cfg) for _, cfg in plans]
    for (cell, cfg), summary in zip(plans, summaries):
        cell.runs.append(summary)
        cell.dirs.append(cfg.run.out)


def run_study(args) -> dict:
    """Train (or load) every run of the study; returns its cells, grouped by part."""
    grid = {wd: [Cell(f"resnet18 wd {wd:g}", "a", {"weight_decay": wd}),
                 Cell(f"rald wd {wd:g}", "rald", {"weight_decay": wd})] for wd in args.weight_decays}
    _run_cells(args, [c for pair in grid.values() for c in pair])

    def best(i: int) -> float:
        done = [wd for wd in args.weight_decays if grid[wd][i].runs] or args.weight_decays
        return max(done, key=lambda wd: statistics.fmean(grid[wd][i].fine() or [0.0]))

    wd_a, wd_r = best(0), best(1)
    base, rald = grid[wd_a][0], grid[wd_r][1]
    at = {"weight_decay": wd_r}
    more = [Cell("(g) no NNLDL", "g", at),
            Cell("RALD, no input residual (paper's blocks)", "rald", {**at, "input_residual": False})]
    more += [Cell(f"RALD, NNLDL relation {r}", "rald", {**at, "nnldl_relation": r}) for r in args.relations]
    more += [Cell("RALD, literal eq. (9)", "rald", {**at, "xi_reading": "literal"})]
    _run_cells(args, more)
    noise = {}
    for flip in args.flips:
        noise[flip] = [Cell(f"resnet18 flip {flip:g}", "a", {"weight_decay": wd_a, "synth_flip_prob": flip}),
                       Cell(f"rald flip {flip:g}", "rald", {**at, "synth_flip_prob": flip})]
    _run_cells(args, [c for pair in noise.values() for c in pair])
    return {"grid": grid, "best_wd": {"resnet18": wd_a, "rald": wd_r},
            "main": [base, rald, *more], "noise": noise}


# --- tables ---------------------------------------------------------------------------------
def paired(cell: Cell, base: Cell) -> str:
    """Mean ± std over seeds of cell - base (fine accuracy, percent), paired by seed."""
    seeds = {Path(d).name: a for d, a in zip(base.dirs, base.fine())}
    diffs = [a - seeds[n] for d, a in zip(cell.dirs, cell.fine()) if (n := _seed_key(d, base)) in seeds]
    return fmt_pct(*mean_std(diffs)) if diffs else "-"


def _seed_key(run_dir: str, base: Cell) -> str:
    """The base cell's run directory name with the same seed as `run_dir` (labels end -s<seed>-<hash>)."""
    seed = _seed_of(run_dir)
    return next((Path(d).name for d in base.dirs if _seed_of(d) == seed), "")


def _seed_of(run_dir: str) -> str:
    return Path(run_dir).name.rsplit("-", 1)[0].rsplit("-s", 1)[-1]


def _mean_pct(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    return fmt_pct(*mean_std(values)) if values else "-"


def study_markdown(study: dict) -> str:
    grid, main, noise = study["grid"], study["main"], study["noise"]
    n = max(len(c.runs) for c in main)
    out = [f"Fine / coarse test accuracy in %, mean ± std over up to {n} seeds (paired: same seeds, same "
           "data; a cell with fewer seeds lists how many).",
           "", "**Weight-decay grid** (each model then compared at its own best):", "",
           "| weight decay | ResNet18 fine | ResNet18 coarse | RALD fine | RALD coarse |",
           "| ---: | ---: | ---: | ---: | ---: |"]
    for wd, (a, r) in grid.items():
        out.append(f"| {wd:g} | {_mean_pct(a.fine())} | {_mean_pct(a.coarse())} | {_mean_pct(r.fine())} | "
                   f"{_mean_pct(r.coarse())} |")
    base = main[0]
    out += ["", f"**Modules and readings** (ResNet18 at weight decay {study['best_wd']['resnet18']:g}, every "
            f"other row at RALD's best, {study['best_wd']['rald']:g}). Neighbour purity: share of each test "
            "image's top-k NNLDL neighbours (eval mode, its test batch) with its fine label / coarse group; "
            "chance in brackets. Entropy: ITRR attention entropy / log N on the last training epoch "
            "(1 = uniform).", "",
            "| model | fine | coarse | fine − ResNet18 (paired) | NN purity fine (chance) | "
            "NN purity coarse (chance) | F-cosine purity fine | ITRR entropy |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cell in main:
        diff = "-" if cell is base else paired(cell, base)
        pf, cf = cell.final("test_nn_purity_fine"), cell.final("test_nn_chance_fine")
        pc, cc = cell.final("test_nn_purity_coarse"), cell.final("test_nn_chance_coarse")
        fcos = cell.final("test_nn_purity_fine_cosine_f")
        ent = cell.final("train_itrr_entropy")
        purity_f = f"{_mean_pct(pf)} ({_mean_pct(cf)})" if pf else "-"
        purity_c = f"{_mean_pct(pc)} ({_mean_pct(cc)})" if pc else "-"
        entropy = f"{statistics.fmean(ent):.3f}" if ent else "-"
        seeds = "" if len(cell.runs) == n else f" ({len(cell.runs)} seed{'s' * (len(cell.runs) != 1)})"
        out.append(f"| {cell.name}{seeds} | {_mean_pct(cell.fine())} | {_mean_pct(cell.coarse())} | {diff} | "
                   f"{purity_f} | {purity_c} | {_mean_pct(fcos) if fcos else '-'} | {entropy} |")
    out += ["", "**Label noise** (share of training labels flipped to a near class; test labels clean):", "",
            "| flipped | ResNet18 fine | RALD fine | RALD − ResNet18 (paired) |", "| ---: | ---: | ---: | ---: |"]
    for flip, (a, r) in sorted(noise.items()):
        out.append(f"| {100 * flip:.0f} % | {_mean_pct(a.fine())} | {_mean_pct(r.fine())} | {paired(r, a)} |")
    return "\n".join(out) + "\n"


def relation_purity(cell: Cell) -> list[dict]:
    """Post-hoc, on the cell's trained checkpoints: NNLDL's test neighbour purity (eval mode, the
    run's test batches) had the neighbours been ranked by each relation. Mean over the seeds."""
    import dataclasses

    from rald_fast.evaluate.metrics import predict_split
    from rald_fast.evaluate.run import load_run

    found: dict[str, list[dict]] = {r: [] for r in ALL_RELATIONS}
    for run_dir in cell.dirs:
        ckpt = Path(run_dir) / "last.pt"
        if not ckpt.exists():
            continue
        m = load_run(ckpt, "cpu")
        for relation in ALL_RELATIONS:
            loss = dataclasses.replace(m.cfg.loss, nnldl_relation=relation)
            pred = predict_split(m.model, m.split, m.preprocess, m.cfg.run.eval_batch_size, m.device,
                                 m.cfg.run.seed, neighbours=loss)
            found[relation].append(pred["neighbours"])
    return [{"relation": r, **{k: statistics.fmean(s[k] for s in found[r]) for k in found[r][0]
                               if not k.endswith("_cosine_f")}, "seeds": len(found[r])}
            for r in ALL_RELATIONS if found[r]]


def relation_markdown(rows: list[dict], cell: Cell) -> str:
    out = [f"**Which features rank NNLDL's neighbours** (post hoc, on the trained checkpoints of "
           f"\"{cell.name}\"; test batches in eval mode; share of the top-k neighbours with the same label, "
           "chance in brackets):", "",
           "| relation | fine purity | coarse purity |", "| --- | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['relation']} | {100 * r['nn_purity_fine']:.1f} % ({100 * r['nn_chance_fine']:.1f} %) | "
                   f"{100 * r['nn_purity_coarse']:.1f} % ({100 * r['nn_chance_coarse']:.1f} %) |")
    return "\n".join(out) + "\n"


def _all_cells(study: dict) -> list[tuple[str, Cell]]:
    """Every cell once, with its part (the main table's first two rows are grid cells)."""
    rows = [("grid", c) for pair in study["grid"].values() for c in pair]
    rows += [("main", c) for c in study["main"] if all(c is not g for _, g in rows)]
    return rows + [("noise", c) for pair in study["noise"].values() for c in pair]


def study_csv(study: dict) -> str:
    """One line per run: part, cell, seed, fine and coarse accuracy, neighbour purity, run dir."""
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = ["test_nn_purity_fine", "test_nn_chance_fine", "test_nn_purity_coarse", "test_nn_chance_coarse",
            "test_nn_purity_fine_cosine_f", "train_itrr_entropy"]
    w.writerow(["part", "cell", "seed", "accuracy", "coarse_accuracy", *keys, "run"])
    for part, cell in _all_cells(study):
        for run, path in zip(cell.runs, cell.dirs):
            f = run["final"]
            w.writerow([part, cell.name, _seed_of(path), f"{f['test_acc']:.6f}",
                        f"{f.get('test_coarse_acc', math.nan):.6f}",
                        *(f"{f[k]:.6f}" if k in f else "" for k in keys), path])
    return buf.getvalue()


def read_study_csv(text: str) -> dict[str, list[float]]:
    """cell -> fine accuracies over seeds, parsed back from `study_csv`."""
    out: dict[str, list[float]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        out.setdefault(row["cell"], []).append(float(row["accuracy"]))
    return out


def _epoch_rows(path: str) -> list[dict]:
    lines = (Path(path) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def plot_curves(cells: list[Cell], path: Path) -> None:
    """Per-epoch training neighbour purity (fine, against chance) and ITRR entropy, seed means."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for cell in cells:
        runs = [_epoch_rows(d) for d in cell.dirs]
        if not runs or "train_nn_purity_fine" not in runs[0][-1]:
            continue
        epochs = [r["epoch"] for r in runs[0]]
        mean = [statistics.fmean(run[i]["train_nn_purity_fine"] for run in runs) for i in range(len(epochs))]
        line, = ax1.plot(epochs, [100 * v for v in mean], label=cell.name)
        chance = statistics.fmean(run[-1]["train_nn_chance_fine"] for run in runs)
        ax1.axhline(100 * chance, color=line.get_color(), ls=":", lw=1)
        if "train_itrr_entropy" in runs[0][-1]:
            ent = [statistics.fmean(run[i]["train_itrr_entropy"] for run in runs) for i in range(len(epochs))]
            ax2.plot(epochs, ent, label=cell.name)
    ax1.set(xlabel="epoch", ylabel="top-k neighbours with the same fine label (%)",
            title="NNLDL neighbour purity (training batches; dotted: chance)")
    ax2.set(xlabel="epoch", ylabel="entropy / log N", title="ITRR attention entropy (1 = uniform)")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(study: dict, out: Path, name: str = "study") -> str:
    text = study_markdown(study)
    rald = study["main"][1]
    relations = relation_purity(rald) if rald.runs else []
    if relations:
        text += "\n" + relation_markdown(relations, rald)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.csv").write_text(study_csv(study))
    write_json(out / f"{name}.json", {"best_wd": study["best_wd"], "relation_purity": relations, "cells": [
        {"part": part, "name": c.name, "variant": c.variant, "overrides": c.overrides,
         "fine": c.fine(), "coarse": c.coarse(), "runs": c.dirs} for part, c in _all_cells(study)]})
    plot_curves(study["main"][1:], out / f"{name}_curves.png")
    return text
