"""Does RALD beat the bare ResNet18, and does its relation learn? The paired multi-seed study.

`python -m rald_fast.experiments study --out DIR [budget options] --seeds 8 --jobs 2` trains, at one
budget and on the same seeds (every comparison is paired by seed), the cells of `MAIN_CELLS`:
the bare ResNet18 (Table 3 a), RALD as printed (independent W_Q/W_K, R_v as NNLDL's relation), RALD
with the learning relation (`LEARNING`: RelationNorm, tied init, capped temperature, L_KL's
gradient through the neighbour weights, the relation at the backbone's rate), (g) = the learning
relation without NNLDL, the cosine-of-F control, eq. (19)'s per-image normaliser and, on the first three
seeds, the paper's one learning rate for everything (`--attn-lr-mult 1`). The backbone and
the fine head train at `--lr` in every cell (`RALD.param_groups`), so what differs is what RALD adds.
With `--ablation auto` (the default) the module-by-module cells (`ABLATION_CELLS`) are added when a
RALD cell's mean is below ResNet18's, to locate the cost; `on` always adds them, `off` never.

Outputs in DIR: study.md (the table; `study_markdown`), study.csv (one line per run), study.json and
study_curves.png (per-epoch training neighbour purity, ITRR entropy and CE), and study_plan.json (which run
directory belongs to which cell). `--report-only` rebuilds every output from study_plan.json and
the runs' summary.json / metrics.jsonl alone (no checkpoint, no training, no budget options needed):
that is how README's and RESULTS' tables are made from the raw results committed under bench/results/,
and tests/test_study_tables.py checks that they still equal its output.

Every run records the code revision that trained it (`rald_fast.revision`); a table over runs of more
than one revision (or of an edited tree) is refused unless `--mixed-revisions` is given, and then each
cell says which revisions it holds.
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
from rald_fast.config import Config

# ITRR's relation exactly as printed (eqs. 3-5, 18-19): every switch of SPEC 3.1 off
PRINTED = dict(itrr_qk_norm=False, itrr_tied_init=False, itrr_temperature_cap=0.0, relation_lr_mult=-1.0,
               nnldl_relation="attention", nnldl_relation_grad=False, nnldl_normaliser="printed")
# the learning relation (SPEC 3.1's allowed readings), all together
LEARNING_ITRR = dict(itrr_qk_norm=True, itrr_tied_init=True, itrr_temperature_cap=10.0, relation_lr_mult=1.0)
LEARNING = dict(PRINTED, **LEARNING_ITRR, nnldl_relation_grad=True)


@dataclass
class Cell:
    """One model setting; `runs` holds the summaries of its finished seeds, `dirs` their run directories."""

    name: str
    variant: str
    overrides: dict = field(default_factory=dict)
    max_seeds: int | None = None  # a control measured on the first seeds only (None: every seed)
    planned: int | None = None  # how many runs study_plan.json lists for it (None: as many as it has)
    runs: list[dict] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def final(self, key: str) -> list[float]:
        """The last epoch's `key` over the finished seeds (those that have it), nulls skipped."""
        return [r["final"][key] for r in self.runs if r["final"].get(key) is not None]

    def by_seed(self, key: str = "test_acc") -> dict[int, float]:
        return {seed_of(d): r["final"][key] for d, r in zip(self.dirs, self.runs)
                if r["final"].get(key) is not None}


MAIN_CELLS = [
    Cell("ResNet18 (a)", "a"),
    Cell("RALD as printed", "rald", PRINTED),
    Cell("RALD, learning relation", "rald", LEARNING),
    Cell("(g) learning relation, no NNLDL", "g", dict(PRINTED, **LEARNING_ITRR)),
    Cell("RALD as printed, NNLDL on cos(F)", "rald", dict(PRINTED, nnldl_relation="cosine-f")),
    Cell("RALD, learning relation, eq. (19) per image", "rald", dict(LEARNING, nnldl_normaliser="image")),
    # the paper's one learning rate for everything (section 4.2) at this budget's rate: a control
    Cell("RALD as printed, one rate (--attn-lr-mult 1)", "rald", dict(PRINTED, attn_lr_mult=1.0), max_seeds=3),
]
# module by module (Table 3's rows), each ITRR with the learning relation
ABLATION_CELLS = [
    Cell("(b) ITRR", "b", dict(PRINTED, **LEARNING_ITRR)),
    Cell("(d) LGIFO", "d", PRINTED),
    Cell("(f) HLRR + LGIFO", "f", PRINTED),
]


def seed_of(run_dir: str) -> int:
    """The seed in a run directory's name (`<variant>-k<k>-flip<p>-s<seed>-<hash>`)."""
    return int(Path(run_dir).name.rsplit("-", 1)[0].rsplit("-s", 1)[-1])


def _fresh(cells: list[Cell]) -> list[Cell]:
    return [Cell(c.name, c.variant, dict(c.overrides), c.max_seeds) for c in cells]


# --- training ----------------------------------------------------------------------------------
def _train(cfg_dict: dict) -> dict:
    """Worker: train (or load) one run from its config dict (picklable for process pools)."""

    return run_or_load(Config.from_dict(cfg_dict))


def plan_cells(args, cells: list[Cell]) -> list:
    """(cell, config) of every cell's run for every seed; each cell's `dirs` lists its run directories."""
    plans = []
    for cell in cells:
        for seed in seeds_of(args)[:cell.max_seeds]:
            cfg = plan_run(args, cell.variant, seed=seed, **cell.overrides)
            if args.jobs > 1:
                cfg.run.threads, cfg.run.progress = 1, False
            plans.append((cell, cfg))
            cell.dirs.append(cfg.run.out)
    return plans


def _run_cells(args, plans: list) -> None:
    """Train (or load) the planned runs, `args.jobs` at a time, one thread each; fills `runs`."""
    if args.jobs > 1:
        # spawn, not fork: a forked child would inherit torch's thread pools
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            summaries = list(pool.map(_train, [cfg.to_dict() for _, cfg in plans]))
    else:
        summaries = [run_or_load(cfg) for _, cfg in plans]
    for (cell, _), summary in zip(plans, summaries):
        cell.runs.append(summary)


def needs_ablation(cells: list[Cell]) -> bool:
    """A RALD cell (one with NNLDL or ITRR's relation) whose mean fine accuracy is below ResNet18's."""
    base = cells[0].final("test_acc")
    if not base:
        return False
    return any(c.final("test_acc") and statistics.fmean(c.final("test_acc")) < statistics.fmean(base)
               for c in cells[1:])


def run_study(args, out: Path) -> dict:
    """Train (or load) the study's cells; saves the plan (cell -> run directories) beside the runs."""
    main = _fresh(MAIN_CELLS)
    plans = plan_cells(args, main)
    save_plan(out, {"main": main, "ablation": []})  # `--report-only` can tabulate while it trains
    _run_cells(args, plans)
    ablation = _fresh(ABLATION_CELLS) if args.ablation == "on" or (
        args.ablation == "auto" and needs_ablation(main)) else []
    if ablation:
        plans = plan_cells(args, ablation)
        save_plan(out, {"main": main, "ablation": ablation})
        _run_cells(args, plans)
    return {"main": main, "ablation": ablation}


def save_plan(out: Path, study: dict) -> None:
    rel = {part: [{"name": c.name, "variant": c.variant, "overrides": c.overrides,
                   "runs": [Path(d).relative_to(out).as_posix() if Path(d).is_relative_to(out) else d
                            for d in c.dirs]} for c in cells] for part, cells in study.items()}
    write_json(out / "study_plan.json", rel)


def load_study(out: Path) -> dict:
    """The study's cells from study_plan.json, each with the seeds whose run has finished."""
    plan_path = out / "study_plan.json"
    if not plan_path.exists():
        raise ValueError(f"{plan_path}: no study plan here; run the study first (without --report-only)")
    plan = json.loads(plan_path.read_text())
    study = {}
    for part, cells in plan.items():
        study[part] = []
        for c in cells:
            cell = Cell(c["name"], c["variant"], c["overrides"], planned=len(c["runs"]))
            for d in c["runs"]:
                path = out / d
                if (path / "summary.json").exists():
                    cell.runs.append(json.loads((path / "summary.json").read_text()))
                    cell.dirs.append(str(path))
            study[part].append(cell)
    return study


# --- statistics --------------------------------------------------------------------------------
def paired_differences(cell: Cell, base: Cell, key: str = "test_acc") -> list[float]:
    """cell - base per seed, over the seeds both have."""
    a, b = cell.by_seed(key), base.by_seed(key)
    return [a[s] - b[s] for s in sorted(a) if s in b]


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % confidence interval (Student's t; nan below two values)."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return (values[0] if values else math.nan), math.nan
    return statistics.fmean(values), t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)


def revisions_of(cell: Cell) -> list[str]:
    return list(dict.fromkeys(str(r.get("revision")) for r in cell.runs))


def check_revisions(study: dict, allow_mixed: bool) -> list[str]:
    """The revisions of every run; raises ValueError when they are not one clean revision, unless allowed."""
    seen = list(dict.fromkeys(rev for cells in study.values() for c in cells for rev in revisions_of(c)))
    bad = len(seen) > 1 or any(r == "None" or r.endswith("+dirty") for r in seen)
    if bad and not allow_mixed:
        raise ValueError(f"the study's runs come from revisions {', '.join(seen)} (None: unknown or mixed within "
                         "a run; +dirty: an edited tree): one table needs one clean revision. Retrain the "
                         "odd runs, or pass --mixed-revisions to tabulate them marked")
    return seen


# --- tables ------------------------------------------------------------------------------------
def _pct(values: list[float]) -> str:
    return fmt_pct(*mean_std(values)) if values else "-"


def _diff(cell: Cell, base: Cell) -> str:
    d = paired_differences(cell, base)
    if not d:
        return "-"
    mean, half = mean_ci95(d)
    return f"{100 * mean:+.2f}" if math.isnan(half) else \
        f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}]"


def _purity(cell: Cell, name: str) -> str:
    got, chance = cell.final(f"test_nn_purity_{name}"), cell.final(f"test_nn_chance_{name}")
    return f"{100 * statistics.fmean(got):.1f} ({100 * statistics.fmean(chance):.1f})" if got else "-"


def _rv_purity(cell: Cell) -> str:
    """R_v's own fine purity: the NNLDL relation's when it is R_v, else the diagnostic `_attention` one."""
    got = cell.final("test_nn_purity_fine_attention") or (
        cell.final("test_nn_purity_fine") if cell.overrides.get("nnldl_relation", "attention") == "attention"
        else [])
    return f"{100 * statistics.fmean(got):.1f}" if got else "-"


def _peak_ce(cell: Cell) -> str:
    """Training CE's worst epoch, seed mean: above ln C_f (the uniform prediction's CE) the run diverged early."""
    peaks = [max(r["train_ce"] for r in rows) for rows in (_epoch_rows(d) for d in cell.dirs) if rows]
    return f"{statistics.fmean(peaks):.2f}" if peaks else "-"


def _entropy(cell: Cell) -> str:
    got = cell.final("test_itrr_entropy")
    return f"{statistics.fmean(got):.3f}" if got else "-"


def study_markdown(study: dict, revisions: list[str]) -> str:
    cells = study["main"] + study["ablation"]
    base = study["main"][0]
    n = max(len(c.runs) for c in cells)
    unfinished = [c for c in cells if c.planned is not None and len(c.runs) < c.planned]
    mixed = len(revisions) > 1
    out = [f"Test accuracy in %, mean ± std over {n} paired seeds (same data and seeds in every cell; a cell "
           "with fewer finished seeds says how many). Δ: fine accuracy minus ResNet18's on the same seed, "
           "mean [95 % CI, Student's t]. NN purity: share of each test image's top-k NNLDL neighbours "
           "(eval mode, in its shuffled test batch of --eval-batch-size images) with its fine label / coarse "
           "group, chance in brackets; R_v: the same for ITRR's relation itself. Entropy: ITRR's test attention "
           "entropy / log N (1 = uniform). Peak train CE: the worst epoch's training cross-entropy, seed mean "
           "(ln 33 = 3.50 is a uniform guess). Code revision: " + ", ".join(f"`{r}`" for r in revisions) + "."
           + (" Cells marked 'k of m planned seeds' stopped before their plan finished; their Δ is paired over "
              "the seeds they have." if unfinished else ""),
           "", "| model | fine | coarse | Δ fine vs ResNet18 | NN purity fine | NN purity coarse | R_v purity "
           "fine | ITRR entropy | peak train CE |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    first_ablation = study["ablation"][0] if study["ablation"] else None
    for cell in cells:
        if cell is first_ablation:
            out.append("| *module by module* | | | | | | | | |")
        if cell.planned is not None and len(cell.runs) < cell.planned:
            note = f" ({len(cell.runs)} of {cell.planned} planned seeds)"
        else:
            note = "" if len(cell.runs) == n else f" ({len(cell.runs)} seed{'s' * (len(cell.runs) != 1)})"
        if mixed:
            note += " [" + ", ".join(revisions_of(cell)) + "]"
        diff = "-" if cell is base else _diff(cell, base)
        out.append(f"| {cell.name}{note} | {_pct(cell.final('test_acc'))} | {_pct(cell.final('test_coarse_acc'))} "
                   f"| {diff} | {_purity(cell, 'fine')} | {_purity(cell, 'coarse')} | {_rv_purity(cell)} "
                   f"| {_entropy(cell)} | {_peak_ce(cell)} |")
    return "\n".join(out) + "\n"


def study_csv(study: dict) -> str:
    """One line per run: part, cell, seed, accuracies, neighbour purity and entropy, revision, run dir."""
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = ["test_acc", "test_coarse_acc", "test_nn_purity_fine", "test_nn_chance_fine", "test_nn_purity_coarse",
            "test_nn_chance_coarse", "test_nn_purity_fine_attention", "test_nn_purity_fine_cosine_f",
            "test_itrr_entropy", "train_itrr_entropy"]
    w.writerow(["part", "cell", "seed", *keys, "revision", "run"])
    for part, cells in study.items():
        for cell in cells:
            for run, path in zip(cell.runs, cell.dirs):
                f = run["final"]
                w.writerow([part, cell.name, seed_of(path), *(f"{f[k]:.6f}" if f.get(k) is not None else ""
                                                              for k in keys),
                            run.get("revision"), Path(path).name])
    return buf.getvalue()


def _epoch_rows(path: str) -> list[dict]:
    """A run's per-epoch metrics ([] when it has none)."""
    if not (Path(path) / "metrics.jsonl").exists():
        return []
    lines = (Path(path) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def plot_curves(cells: list[Cell], path: Path) -> None:
    """Per-epoch training neighbour purity (fine, against chance), ITRR entropy and CE, seed means."""
    plt = pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.2))
    for i, cell in enumerate(cells):
        color, ls = f"C{i % 10}", "--" if i >= 10 else "-"  # one style per cell in every panel
        runs = [rows for rows in (_epoch_rows(d) for d in cell.dirs) if rows]
        if not runs:
            continue
        epochs = [r["epoch"] for r in runs[0]]
        if "train_nn_purity_fine" in runs[0][-1]:
            mean = [statistics.fmean(run[i]["train_nn_purity_fine"] for run in runs) for i in range(len(epochs))]
            ax1.plot(epochs, [100 * v for v in mean], color=color, ls=ls, label=cell.name)
            chance = statistics.fmean(run[-1]["train_nn_chance_fine"] for run in runs)
            ax1.axhline(100 * chance, color=color, ls=":", lw=1)
        if "train_itrr_entropy" in runs[0][-1]:
            ent = [statistics.fmean(run[i]["train_itrr_entropy"] for run in runs) for i in range(len(epochs))]
            ax2.plot(epochs, ent, color=color, ls=ls, label=cell.name)
        ce = [statistics.fmean(run[i]["train_ce"] for run in runs) for i in range(len(epochs))]
        ax3.plot(epochs, ce, color=color, ls=ls, label=cell.name)
    ax1.set(xlabel="epoch", ylabel="top-k neighbours with the same fine label (%)",
            title="NNLDL neighbour purity (training batches; dotted: chance)")
    ax2.set(xlabel="epoch", ylabel="entropy / log N", title="ITRR attention entropy, training (1 = uniform)")
    ax3.set(xlabel="epoch", ylabel="cross-entropy", title="training CE (seed mean)")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(study: dict, out: Path, allow_mixed: bool = False, name: str = "study") -> str:
    """study.md, .csv, .json and _curves.png from the finished runs; returns the markdown table."""
    revisions = check_revisions(study, allow_mixed)
    text = study_markdown(study, revisions)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.csv").write_text(study_csv(study))
    base = study["main"][0]
    write_json(out / f"{name}.json", {"revisions": revisions, "cells": [
        {"part": part, "name": c.name, "variant": c.variant, "overrides": c.overrides, "seeds": list(c.by_seed()),
         "fine": c.final("test_acc"), "coarse": c.final("test_coarse_acc"),
         "paired_diff_fine": paired_differences(c, base) if c is not base else None,
         "paired_diff_ci95": list(mean_ci95(paired_differences(c, base))) if c is not base else None,
         "revisions": revisions_of(c)} for part, cells in study.items() for c in cells]})
    plot_curves([c for cells in study.values() for c in cells], out / f"{name}_curves.png")
    return text
