"""Shared plumbing of the experiment commands: one training budget, shared run directories.

Every training experiment (ablation, k sweep, noise study) builds its runs from the same command-line
budget (`--preset` plus any `--field` override of `rald_fast.config`) and keeps them under
`OUT/runs/<label>-<hash>/`, where the hash covers the whole resolved config except where and how it
runs (output path, threads, device, progress bars). Two experiments that need the same training run
therefore share it: the ablation's full model at seed 0 is the k sweep's k = 5 point and the noise
study's 10 % point. A run directory holding `summary.json` is finished and is never trained again; one
holding only `last.pt` is resumed from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import statistics
from dataclasses import fields
from pathlib import Path

from rald_fast.files import atomic_write_text, to_json
from rald_fast.config import RUN_ONLY, Config, add_config_arguments, make_config, sections
from rald_fast.train.loop import fit

log = logging.getLogger(__name__)



def add_budget_arguments(p: argparse.ArgumentParser, seeds: bool = True) -> None:
    """Every config option (the training budget) plus --out (the experiment directory)."""
    # includes --out: here the experiment directory, not one run's. The help shows the quick preset's
    # values without a variant's (each run sets its own); the values come from --preset as before.
    add_config_arguments(p, "quick", variant=None, help_overrides={
        "out": "the experiment directory: its runs under OUT/runs/, its tables and figures in OUT "
               "(default: runs/experiments)"})
    if seeds:
        p.add_argument("--seeds", type=int, default=1,
                       help="runs per setting, seeds --seed, --seed + 1, ... (default 1)")
    p.add_argument("--table", metavar="NAME",
                   help="file stem of the table and figure (default: the command's name)")


def budget_overrides(args: argparse.Namespace) -> dict:
    """The config fields given on the command line (except --out)."""
    keys = {f.name for sub in sections(Config()) for f in fields(sub)} - {"out"}
    return {k: v for k, v in vars(args).items() if k in keys}


def experiment_dir(args: argparse.Namespace) -> Path:
    out = Path(getattr(args, "out", None) or "runs/experiments")
    out.mkdir(parents=True, exist_ok=True)
    return out


def seeds_of(args: argparse.Namespace) -> list[int]:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    first = getattr(args, "seed", 0)
    return [first + i for i in range(args.seeds)]


def config_hash(cfg: Config) -> str:
    """Hash of the fields that differ from the dataclass defaults (so a config field added later,
    at its default, keeps the old runs' directories)."""
    base, d = Config().to_dict(), cfg.to_dict()
    diff = {f"{s}.{k}": v for s in ("model", "loss", "data", "optim", "run")
            for k, v in d[s].items() if v != base[s][k] and k not in RUN_ONLY}
    return hashlib.sha1(json.dumps(diff, sort_keys=True).encode()).hexdigest()[:8]


def run_label(cfg: Config) -> str:
    flip = round(100 * cfg.data.synth_flip_prob)
    return f"{cfg.variant}-k{cfg.loss.k}-flip{flip}-s{cfg.run.seed}"


def plan_run(args: argparse.Namespace, variant: str, **extra) -> Config:
    """The config of one run of an experiment: preset, then variant, then the command line, then the
    experiment's own setting (k, flip share, seed); its directory is OUT/runs/<label>-<hash>."""
    cfg = make_config(args.preset, variant, **{**budget_overrides(args), **extra})
    cfg.run.out = str(experiment_dir(args) / "runs" / f"{run_label(cfg)}-{config_hash(cfg)}")
    return cfg


def run_or_load(cfg: Config) -> dict:
    """summary.json of the run: read if finished, else trained (or resumed from last.pt)."""
    out = Path(cfg.run.out)
    if (out / "summary.json").exists():
        log.info("done already: %s", out)
        return json.loads((out / "summary.json").read_text())

    resume = str(out / "last.pt") if (out / "last.pt").exists() else None
    log.info("%s %s", "resuming" if resume else "training", out)
    return fit(cfg, resume=resume)


def final_accuracy(summary: dict) -> tuple[float, float]:
    """(fine, coarse) test accuracy at the last epoch (no model selection on the test set)."""
    final = summary["final"]
    return final["test_acc"], final.get("test_coarse_acc", math.nan)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value: spread unmeasured)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def fmt_pct(mean: float, std: float = math.nan) -> str:
    """'29.55' or '29.55 ± 1.20' (percent)."""
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
