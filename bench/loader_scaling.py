"""Loader throughput and memory per process against dataset size, on the decoded cache (docs/PERFORMANCE.md).

    python bench/loader_scaling.py --out bench/results/cpu_loader_2026-12-02 --cache-dir /tmp/decoded

For each dataset size (default 10k / 50k / 100k images at 112 px) and each number of processes (1, 2):
- `loader`: P processes at once, each walking the global batches of one epoch's order (batch 128) and
  gathering its own rows (rald_fast.train.loader.batch_loader, as training does), for --loader-batches
  batches: images/s per process and memory: peak VmHWM, peak RssAnon (private memory, sampled every
  batch), RssFile and Pss at the end (/proc/self/status, /proc/self/smaps_rollup);
- `train`: P processes (gloo DDP when P = 2) running the real training step (train_one_epoch, RALD,
  --train-batch global) for --train-steps steps over the same cache: train images/s and the same memory
  figures, so the loader's rate can be set against the step's;
- `build`: the first process to ask builds the cache (its time is `map_seconds`), the rest map it;
- `memory_split` (1 process, up to --memory-split-max images): the split read whole into this
  process's memory, as --no-decoded-cache holds it, for contrast.

The images are not drawn one by one: 100,000 synthetic faces at 112 px take about 25 CPU-minutes to
draw (14.8 ms each here), so each set cycles a bank of --bank synthetic faces (rald_fast.data.synthetic,
drawn once) through `cache.generated_split`, written straight into the decoded cache. The loader's
memory and speed do not depend on what the pixels show. Each process's figures go to one JSON file
under --out; summary.json collects them with the bottleneck (loader or step) of each size.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def memory() -> dict:
    """This process's memory in MB: VmHWM (peak RSS), VmRSS, RssAnon, RssFile, and Pss (shared pages
    divided among the processes that map them)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("Pss", "Pss_Anon", "Pss_File"):
                out[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return {k: round(v, 1) for k, v in out.items()}


def bench_split(args, n: int):
    """The n-image set: a bank of drawn faces cycled (module docstring)."""
    import numpy as np

    from rald_fast.data.cache import generated_split
    from rald_fast.data.synthetic import SyntheticConfig, class_prototypes, render_sample

    bank_file = Path(args.cache_dir) / f"bench_bank_{args.bank}_{args.image_size}.npz"
    if not bank_file.exists():
        bank_file.parent.mkdir(parents=True, exist_ok=True)
        cfg = SyntheticConfig(image_size=args.image_size)
        protos = class_prototypes(cfg)
        drawn = [render_sample(cfg, "train", i, protos) for i in range(args.bank)]
        images = np.stack([np.asarray(d[0]).transpose(2, 0, 1) for d in drawn])
        np.savez(bank_file, images=images, labels=np.array([d[2] for d in drawn]))
    bank = np.load(bank_file)
    images, labels = bank["images"], bank["labels"]
    return generated_split(args.cache_dir, f"bench-faces-v1-bank{args.bank}-n{n}",
                           [int(labels[i % len(labels)]) for i in range(n)], args.image_size,
                           lambda i: images[i % len(images)], workers=2)


def child(args) -> None:
    """One process of one measurement; writes its JSON to --result."""
    import torch

    torch.set_num_threads(args.threads)
    from rald_fast.train.distributed import DistInfo, init_from_env

    # the loader needs no process group (each process knows its rows); DDP training does
    info = init_from_env(torch.device(args.device).type) if args.what == "train" else \
        DistInfo(int(os.environ.get("RANK", "0")), args.world)
    base = memory()
    t0 = time.perf_counter()
    split = bench_split(args, args.n)
    row = {"what": args.what, "images": args.n, "processes": args.world, "rank": info.rank,
           "image_size": args.image_size, "memory_at_start_mb": base, "map_seconds": time.perf_counter() - t0,
           "cache_built_here": split.store.built}
    if args.what == "build":
        pass
    elif args.what == "loader":
        from rald_fast.train.loader import batch_loader, global_batches

        batches = global_batches(split, torch.Generator().manual_seed(0), args.batch, args.world)
        batches = batches[:args.loader_batches]
        peak_anon, seen = 0.0, 0
        t0 = time.perf_counter()
        for x in batch_loader(split, batches, info, args.loader_workers):
            seen += len(x)
            peak_anon = max(peak_anon, memory()["RssAnon"])
        secs = time.perf_counter() - t0
        row.update(batch=args.batch, batches=len(batches), loader_workers=args.loader_workers,
                   own_images_per_s=seen / secs, global_images_per_s=seen * args.world / secs,
                   peak_rss_anon_mb=peak_anon)
    elif args.what == "memory_split":
        import numpy as np

        t0 = time.perf_counter()
        held = np.array(split.store.array())  # the whole split in this process, as --no-decoded-cache
        row.update(read_seconds=time.perf_counter() - t0, held_mb=held.nbytes / 2**20)
    else:
        from rald_fast.config import make_config
        from rald_fast.hierarchy import load_taxonomy
        from rald_fast.models import build_model
        from rald_fast.preprocess import Preprocess
        from rald_fast.train.distributed import sync_batchnorm
        from rald_fast.train.loop import build_forward, build_optimizer, train_one_epoch

        device = torch.device(args.device)
        cfg = make_config("quick", "rald", image_size=args.image_size, batch_size=args.train_batch,
                          progress=False, loader_workers=args.loader_workers, device=args.device)
        torch.manual_seed(0)
        model = build_model(cfg, load_taxonomy("fg-emotions")).to(device).to(memory_format=torch.channels_last)
        model = sync_batchnorm(model, info, device.type)
        optimizer, _ = build_optimizer(cfg, model)
        forward = build_forward(model, cfg, info, device)
        train_one_epoch(model, split, Preprocess(args.image_size), optimizer, cfg, 0, device,
                        forward=forward, info=info, max_steps=2)  # warm-up
        m = train_one_epoch(model, split, Preprocess(args.image_size), optimizer, cfg, 1, device,
                            forward=forward, info=info, max_steps=args.train_steps)
        row.update(batch=args.train_batch, steps=args.train_steps, device=args.device,
                   train_images_per_s=m["train_images_per_s"], train_loss=m["train_loss"])
    row["memory_at_end_mb"] = memory()
    Path(args.result).write_text(json.dumps(row, indent=1))
    if info.enabled:
        from rald_fast.train.distributed import shutdown

        shutdown(info)


def launch(args, what: str, n: int, world: int) -> list[dict]:
    """Start `world` children at once (a torch.distributed group for training) and collect their rows."""
    out = Path(args.out)
    procs, files = [], []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for rank in range(world):
        f = out / f"{what}_n{n}_p{world}_r{rank}.json"
        cmd = [sys.executable, __file__, "--child", "--what", what, "--n", str(n), "--world", str(world),
               "--result", str(f)] + [a for a in sys.argv[1:] if a != "--child"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(cmd, env=env))
        files.append(f)
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{what} n={n} p={world}: a child failed (exit {p.returncode})")
    return [json.loads(f.read_text()) for f in files]


def table(out: Path) -> str:
    """Markdown of the rows in `out` (one line per size and process count; memory: the largest rank)."""
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("*_r*.json"))]
    lines = ["| images | processes | loader images/s per process (all) | train images/s (all) | "
             "loader: peak RSS / private (RssAnon) MB per process | train: peak RSS / private MB per process |",
             "|---:|---:|---:|---:|---:|---:|"]
    for n in sorted({r["images"] for r in rows}):
        for world in sorted({r["processes"] for r in rows if r["images"] == n}):
            ld = [r for r in rows if r["what"] == "loader" and r["images"] == n and r["processes"] == world]
            tr = [r for r in rows if r["what"] == "train" and r["images"] == n and r["processes"] == world]
            if not ld:
                continue
            own = min(r["own_images_per_s"] for r in ld)
            cell = f"{own:,.0f} ({min(r['global_images_per_s'] for r in ld):,.0f})"
            mem = (f"{max(r['memory_at_end_mb']['VmHWM'] for r in ld):,.0f} / "
                   f"{max(r['peak_rss_anon_mb'] for r in ld):,.0f}")
            tcell = tmem = "-"
            if tr:
                tcell = f"{tr[0]['train_images_per_s']:.1f}"
                tmem = (f"{max(r['memory_at_end_mb']['VmHWM'] for r in tr):,.0f} / "
                        f"{max(r['memory_at_end_mb']['RssAnon'] for r in tr):,.0f}")
            lines.append(f"| {n:,} | {world} | {cell} | {tcell} | {mem} | {tmem} |")
    held = [r for r in rows if r["what"] == "memory_split"]
    if held:
        lines.append("")
        lines.append("In memory instead (--no-decoded-cache holds the split in every process): " + ", ".join(
            f"{r['images']:,} images: {r['held_mb']:,.0f} MB more private memory per process "
            f"(RssAnon {r['memory_at_end_mb']['RssAnon']:,.0f} MB)" for r in held))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/loader")
    p.add_argument("--cache-dir", default=None, help="decoded cache (default: rald_fast's)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--bank", type=int, default=512, help="distinct drawn faces cycled through each set")
    p.add_argument("--batch", type=int, default=128, help="global batch of the loader measurement")
    p.add_argument("--loader-batches", type=int, default=200)
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--train-sizes", type=int, nargs="*", default=None, help="sizes to train on (default: all)")
    p.add_argument("--memory-split-max", type=int, default=50_000,
                   help="largest set also read whole into one process (--no-decoded-cache's memory)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", metavar="DIR", help="print the markdown table of the results in DIR and exit")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--what", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return None
    if args.cache_dir is None:
        from rald_fast.data.cache import default_cache_dir

        args.cache_dir = str(default_cache_dir())
    if args.child:
        return child(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        rows += launch(args, "build", n, 1)
        print(f"n={n}: cache ready in {time.perf_counter() - t0:.0f} s", flush=True)
        if n <= args.memory_split_max:
            rows += launch(args, "memory_split", n, 1)
        for world in args.procs:
            rows += launch(args, "loader", n, world)
            if args.train_sizes is None or n in args.train_sizes:
                rows += launch(args, "train", n, world)
            print(f"n={n} p={world} done", flush=True)
    summary = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "what", "n", "world", "result")},
               "rows": rows, "bottleneck": {}}
    for n in args.sizes:
        for world in args.procs:
            ld = [r for r in rows if r["what"] == "loader" and r["images"] == n and r["processes"] == world]
            tr = [r for r in rows if r["what"] == "train" and r["images"] == n and r["processes"] == world]
            if ld and tr:
                loader = min(r["global_images_per_s"] for r in ld)
                step = tr[0]["train_images_per_s"]
                summary["bottleneck"][f"n{n}_p{world}"] = {"loader_images_per_s": loader,
                                                          "train_images_per_s": step,
                                                          "bottleneck": "loader" if loader < step else "step"}
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["bottleneck"], indent=1))


if __name__ == "__main__":
    main()
