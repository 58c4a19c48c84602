"""`python -m rald_fast.train`: train RALD. With no arguments: the quick preset on synthetic data.

Examples:
  python -m rald_fast.train                                  # synthetic data, CPU, a few minutes
  python -m rald_fast.train --variant a --out runs/baseline  # bare ResNet18, same budget
  python -m rald_fast.train --preset paper --data labelfile --data-root DIR --backbone-weights W.pth
  python -m rald_fast.train --resume runs/rald/last.pt --epochs 20
  python -m rald_fast.train --amp bf16 --compile                # mixed precision, compiled step
  torchrun --nproc-per-node 2 -m rald_fast.train                # DDP; docs/DISTRIBUTED.md
"""

from __future__ import annotations

import argparse
import os
import sys

from rald_fast.cli import check_run_dir, setup_logging
from rald_fast.config import (RESUME_OVERRIDABLE, SCHEDULES, VARIANTS, Config, add_config_arguments,
                              config_from_args, set_option, validate)
from rald_fast.checkpoint import load_checkpoint
from rald_fast.cli import run_cli

class _PreParseError(Exception):
    pass


class _PreParser(argparse.ArgumentParser):
    """Reads --preset and --variant only; a malformed line is left for the full parser to report."""

    def error(self, message: str):
        raise _PreParseError(message)


def selected_preset(argv: list[str] | None) -> tuple[str, str]:
    """(preset, variant) named on the command line, for the help text; quick/rald when absent or unknown
    (the full parser then rejects an unknown name as it always has)."""
    if not argv:
        return "quick", "rald"
    pre = _PreParser(add_help=False)
    pre.add_argument("--preset", default="quick")
    pre.add_argument("--variant", default="rald")
    try:
        known, _ = pre.parse_known_args(argv)
    except _PreParseError:
        return "quick", "rald"
    return (known.preset if known.preset in SCHEDULES else "quick",
            known.variant if known.variant in VARIANTS else "rald")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of `python -m rald_fast.train`; `argv` (the command line to parse, None: none) only
    picks the preset and variant whose defaults the help text shows, never the parsed values."""
    p = argparse.ArgumentParser(prog="python -m rald_fast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", metavar="CKPT",
                   help="continue the run saved in CKPT (last.pt) with its saved config (not the defaults "
                        "below); only " + ", ".join(f"--{k.replace('_', '-')}" for k in sorted(RESUME_OVERRIDABLE))
                        + " may change")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, a folder holding a run is refused)")
    add_config_arguments(p, *selected_preset(argv))
    return p


def resolve_config(args: argparse.Namespace, argv: list[str]) -> Config:
    if not args.resume:
        return config_from_args(args)

    ckpt = load_checkpoint(args.resume, "--resume")
    cfg = Config.from_dict(ckpt.config)
    given = {k for k in vars(args) if k not in ("resume", "preset", "variant", "overwrite")}
    bad = sorted(given - RESUME_OVERRIDABLE)
    if bad or "--preset" in argv or "--variant" in argv:
        raise ValueError("--resume continues the saved config; only "
                         f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_OVERRIDABLE))}"
                         f" may change (got {', '.join(bad) or '--preset/--variant'})")
    for k in given:
        set_option(cfg, k, getattr(args, k))
    validate(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    cfg = resolve_config(args, argv)
    check_run_dir(cfg.run.out, resuming=bool(args.resume), overwrite=args.overwrite)
    setup_logging()
    from rald_fast.train.loop import fit

    summary = fit(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 reports
        return 0
    final = summary["final"]
    print(f"\nfinished {summary['epochs']} epochs in {summary['train_seconds']:.0f} s "
          f"(variant {summary['variant']}, preset {summary['preset']})")
    print(f"  test fine accuracy   {final.get('test_acc', float('nan')):.4f}")
    print(f"  test coarse accuracy {final.get('test_coarse_acc', float('nan')):.4f}")
    print(f"  checkpoint  {summary['checkpoint']}")
    print(f"  metrics     {summary['out']}/metrics.csv (and metrics.jsonl)")
    print(f"  config      {summary['out']}/config.json, taxonomy.json, summary.json")
    print(f"  dataset     {summary['dataset']}")
    print(f"evaluate with: python -m rald_fast.evaluate --checkpoint {summary['checkpoint']}")
    return 0


def cli() -> int:
    """Console-script entry point: `main` with user errors reported as one line (exit 2)."""

    return run_cli(main)
