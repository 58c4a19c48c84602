"""`python -m rald_fast.experiments COMMAND`: the paper's experiments, one command each.

Commands (each writes a markdown table, a CSV that parses back into the same numbers, a JSON and a
PNG under --out; training runs are shared and resumable under OUT/runs/, see common.py):
  ablation   Table 3: variants (a)-(g) and the full model, same budget and seeds
  ksweep     Fig. 6: accuracy of the full model against the NNLDL neighbour count k
  noise      accuracy of ResNet18, RALD without NNLDL and RALD as flipped labels rise (0-40 %)
  fps        Table 1's speed row: bare ResNet18 against RALD, same batch and device, images/s
  compare    Table 1: per-class accuracy of several checkpoints in the valence/coarse/fine layout
  figures    Fig. 9 t-SNE (baseline vs RALD), Fig. 8 top-5 neighbours, confusion, training curves
  modes      accuracy of each ITRR inference mode (batch, bank, self) at several test batch sizes
  study      ResNet18 against RALD as printed and with the relation that learns, paired over seeds with
             95 % CIs, NNLDL's neighbour purity, ITRR's entropy, module by module (docs/RESULTS.md)

Examples:
  python -m rald_fast.experiments ablation --out runs/exp --image-size 32 --epochs 10 --seeds 2
  python -m rald_fast.experiments ksweep --out runs/exp --image-size 32 --epochs 10
  python -m rald_fast.experiments figures --baseline runs/exp/runs/a-.../last.pt \\
      --rald runs/exp/runs/rald-.../last.pt --out runs/exp/figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rald_fast.cli import add_device_option, run_cli, setup_logging
from rald_fast.config import ITRR_MODES
from rald_fast.experiments.common import add_budget_arguments, experiment_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rald_fast.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    budget = "training budget: --preset and any option of `python -m rald_fast.train` " \
             "(--variant is set per run); --out is the experiment directory"
    a = sub.add_parser("ablation", help="Table 3: the module ablation", description=budget)
    add_budget_arguments(a)
    a.add_argument("--variants", nargs="+", default=None, metavar="V",
                   help="rows to run (default: a b c d e f g rald)")
    k = sub.add_parser("ksweep", help="Fig. 6: accuracy against k", description=budget)
    add_budget_arguments(k)
    k.add_argument("--k-values", type=int, nargs="+", default=[1, 3, 5, 7, 10], metavar="K",
                   help="NNLDL neighbour counts to train (default 1 3 5 7 10)")
    n = sub.add_parser("noise", help="accuracy against the share of flipped labels",
                       description=budget)
    add_budget_arguments(n)
    n.add_argument("--flip-percents", type=float, nargs="+", default=[0, 10, 20, 30, 40],
                   metavar="PCT", help="shares of training labels flipped, in percent (default 0 10 20 30 40)")
    n.add_argument("--models", nargs="+", default=["a", "g", "rald"], metavar="VARIANT",
                   help="variants to compare (default: a g rald)")
    st = sub.add_parser("study", help="paired multi-seed study: ResNet18 vs RALD, the relation that learns, "
                                      "neighbour purity, module by module", description=budget)
    add_budget_arguments(st)
    st.add_argument("--jobs", type=int, default=1, help="runs trained at once, one CPU thread each")
    st.add_argument("--ablation", choices=("auto", "on", "off"), default="auto",
                    help="module-by-module cells: auto = when a RALD cell's mean is below ResNet18's (default)")
    st.add_argument("--report-only", action="store_true",
                    help="train nothing: the tables from OUT/study_plan.json and the runs that have finished "
                         "(missing seeds noted); no budget options needed")
    st.add_argument("--mixed-revisions", action="store_true",
                    help="tabulate runs of several code revisions (marked per cell) instead of refusing")
    f = sub.add_parser("fps", help="Table 1's speed row: ResNet18 vs RALD images/s")
    f.add_argument("--checkpoints", nargs="*", default=[], metavar="CKPT",
                   help="time these checkpoints (default: freshly built variant a and rald)")
    f.add_argument("--batch-size", type=int, default=64, help="images per timed batch (default 64)")
    f.add_argument("--image-size", type=int, nargs="+", default=[32], metavar="PX",
                   help="input sides to time, one row each (default 32)")
    f.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    f.add_argument("--iters", type=int, default=10, help="timed batches (default 10)")
    add_device_option(f)
    f.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    f.add_argument("--out", default="runs/experiments", help="output directory (default runs/experiments)")
    c = sub.add_parser("compare", help="Table 1: per-class accuracy of several checkpoints")
    c.add_argument("checkpoints", nargs="+", metavar="CKPT", help="training checkpoints sharing one taxonomy")
    c.add_argument("--names", nargs="+", help="column names (default: the run directory names)")
    c.add_argument("--batch-size", type=int, help="test batch size (default: each run's)")
    add_device_option(c)
    c.add_argument("--out", default="runs/experiments", help="output directory (default runs/experiments)")
    g = sub.add_parser("figures", help="t-SNE, top-5 neighbours, confusion, training curves")
    g.add_argument("--baseline", required=True, metavar="CKPT", help="e.g. a variant (a) run")
    g.add_argument("--rald", required=True, metavar="CKPT", help="a RALD run (with ITRR)")
    g.add_argument("--queries", type=int, default=4, help="test images in Fig. 8 (default 4)")
    g.add_argument("--batch-size", type=int, default=64, help="test batch (ITRR neighbours)")
    g.add_argument("--tsne-images", type=int, default=2500, help="at most this many (default 2500)")
    add_device_option(g)
    g.add_argument("--out", default="runs/experiments/figures",
                   help="output directory (default runs/experiments/figures)")
    m = sub.add_parser("modes", help="ITRR inference modes x test batch sizes")
    m.add_argument("checkpoint", metavar="CKPT", help="a training checkpoint (last.pt)")
    m.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128], metavar="N",
                   help="test batch sizes (default 1 8 32 128)")
    m.add_argument("--itrr-modes", nargs="+", default=list(ITRR_MODES), choices=ITRR_MODES, metavar="MODE",
                   help=f"ITRR inference modes (default: {' '.join(ITRR_MODES)})")
    add_device_option(m)
    m.add_argument("--out", default="runs/experiments", help="output directory (default runs/experiments)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command in ("ablation", "ksweep", "noise", "study"):
        from rald_fast.experiments import ablation, study, sweeps

        out = experiment_dir(args)
        name = args.table or args.command
        if args.command == "study":
            if args.jobs < 1:
                raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
            cells = study.load_study(out) if args.report_only else study.run_study(args, out)
            text = study.write_study(cells, out, args.mixed_revisions, name)
        elif args.command == "ablation":
            rows = ablation.run_ablation(args, args.variants)
            ablation.write_ablation(rows, out, name)
            text = ablation.ablation_markdown(rows)
        elif args.command == "ksweep":
            points = sweeps.run_ksweep(args)
            sweeps.write_ksweep(points, out, name)
            text = sweeps.ksweep_markdown(points)
        else:
            points = sweeps.run_noise(args)
            sweeps.write_noise(points, out, name)
            text = sweeps.noise_markdown(points)
        print(text + f"wrote {out}/{name}.md, .csv, .json, .png")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "fps":
        from rald_fast.experiments.speed import fps_markdown, run_fps, write_fps

        rows = run_fps(args)
        write_fps(rows, out)
        print(fps_markdown(rows) + f"wrote {out}/fps.md, .csv, .json")
    elif args.command == "compare":
        from rald_fast.experiments.compare import run_compare

        print(run_compare(args.checkpoints, args.names, args.batch_size, args.device, out))
    elif args.command == "figures":
        from rald_fast.experiments.figures import make_figures

        for path in make_figures(args, out):
            print(f"wrote {path}")
    else:
        from rald_fast.experiments.modes import run_modes

        print(run_modes(args.checkpoint, args.batch_sizes, args.itrr_modes, args.device, out))
    return 0


def cli() -> int:
    """Console-script entry point (`rald-experiments`)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
