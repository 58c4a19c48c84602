"""The second command of a GPU window (after bench/gpu_headline.py): kernels, then the other engines.

Run from a plain checkout (no `pip install`; the repository root goes on sys.path), on one GPU, only
if the headline left time:

    python bench/gpu_suite.py --out $OUT/gpu_suite.json --revision REV     # within --budget-s (330 s)
    python bench/gpu_suite.py --dry-run --out /tmp/suite.json              # the whole flow on CPU, tiny sizes

Sections (most valuable first; a global time budget skips, and records, what no longer fits):
1. "env": GPU, compute capability, torch / triton / CUDA versions, the revision passed in; the assumed
   peak throughput of the chip where known (the compute ceiling quoted in docs/PERFORMANCE.md).
2. "kernels": bench/gpu_kernels.py's correctness checks at RALD's shapes (vs the fp32 references)
   and its do_bench micro-benchmarks (quick set, including the bank-scale top-k over 65,536 keys).
3. "inference": images/s of the bare ResNet18 (Table 3 a) and RALD on the fast path
   (rald_fast/models/fast.py: folded, `self` mode, uint8 NHWC in, normalisation in conv1,
   channels_last), at batch 1 / 32 / 256 / 512, for the engines "graphs" (eager kernels, a CUDA graph
   per batch size) in fp16 and fp32, "pt2" (torch.export + AOTInductor package with a dynamic batch,
   loaded back; built in a temporary folder, never under OUT) in bf16, and "max_autotune"
   (torch.compile mode max-autotune-no-cudagraphs, static shapes, under the engine's CUDA graphs) in
   bf16. CUDA-event medians and 10/90 % quantiles; each row also holds the max |probs - fp32 probs|,
   so a fast but wrong engine shows. (bf16 graphs, the compiled default mode and the training steps
   are the headline's.)
Every item is guarded: an exception is recorded (`errors`) and the run goes on; the JSON is rewritten
after every item and each row is printed (flushed) as it lands, so a killed run leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "bench")]

import torch  # noqa: E402

# dense peak TFLOP/s from NVIDIA's data sheets (SXM parts), for the compute ceiling
PEAK_TFLOPS = {"H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
               "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
               "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
               "RTX A4000": {"bf16": 76.7, "fp16": 76.7, "tf32": 38.3, "fp32": 19.2}}
PAPER = {"rald_images_per_s": 1291, "resnet18_images_per_s": 1942, "gpu": "RTX A4000",
         "note": "paper section 4.3, PyTorch, batch size not stated"}


class Budget:
    """Seconds left of the run; `fits(cost)` says whether an item of that estimated cost fits."""

    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()

    def fits(self, cost: float) -> bool:
        return self.left() > cost


class Suite:
    def __init__(self, out_path: Path, budget: Budget, dry: bool):
        self.path, self.budget, self.dry = out_path, budget, dry
        self.out: dict = {"errors": [], "skipped": [], "dry_run": dry}

    def save(self) -> None:
        self.out["seconds_left"] = round(self.budget.left(), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.out, indent=1, default=str))
        tmp.replace(self.path)

    def run(self, what: str, cost: float, fn, *args, limit: float | None = None, **kwargs):
        """fn(*args) if `cost` seconds (an estimate) fit the budget; errors and skips recorded.
        An alarm interrupts an item that overruns `limit` seconds (default 3 x its estimate, at
        least 60 s) or the budget (a stuck compile must not eat the rest of the session); a dry run
        (a loaded CPU) has only the budget."""
        if not self.budget.fits(cost):
            self.out["skipped"].append({"what": what, "reason": f"time budget: {self.budget.left():.0f} s "
                                                                f"left, item needs about {cost:.0f} s"})
            print(json.dumps({"skipped": what}), flush=True)
            self.save()
            return None
        use_alarm = hasattr(signal, "SIGALRM")
        if use_alarm:
            limit = max(60.0, 3 * cost) if limit is None else limit
            limit = self.budget.left() if self.dry else min(self.budget.left(), limit)
            signal.alarm(max(1, int(limit)))
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - record and go on: device time is scarce
            self.out["errors"].append({"what": what, "error": repr(exc)[:800],
                                       "trace": traceback.format_exc()[-2500:]})
            return None
        finally:
            if use_alarm:
                signal.alarm(0)
            self.out.setdefault("item_seconds", {})[what] = round(time.time() - t0, 2)
            print(json.dumps({"item": what, "seconds": round(time.time() - t0, 2),
                              "errors": len(self.out["errors"])}), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.save()


def _on_alarm(signum, frame):
    raise TimeoutError("gpu_suite: the item overran its time limit (3 x its estimate, or the budget)")


# --- environment -------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    from kernel_cases import environment as kernel_env

    env = dict(kernel_env())
    env["python"] = sys.version.split()[0]
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        env["torchvision"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
        env["peak_tflops_assumed"] = next((v for k, v in PEAK_TFLOPS.items() if k in p.name), None)
    env["paper"] = PAPER
    return env


# --- models ------------------------------------------------------------------------------------
def fast_model(variant: str, image_size: int, dtype: str):
    """A randomly initialised RALD (or its bare ResNet18, variant a) with the FG-Emotions taxonomy on
    the fast path (`self` mode): speed does not depend on the weights."""
    from rald_fast.config import make_config
    from rald_fast.hierarchy import load_taxonomy
    from rald_fast.models import build_model
    from rald_fast.models.fast import fast_module
    from rald_fast.models.folded import fold
    from rald_fast.preprocess import Preprocess

    cfg = make_config("paper", variant, image_size=image_size, progress=False)
    torch.manual_seed(0)
    model = build_model(cfg, load_taxonomy("fg-emotions")).eval()
    return fast_module(fold(model, Preprocess(image_size), "self"), dtype)


def flops_per_image(module: torch.nn.Module, image_size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randint(0, 256, (1, image_size, image_size, 3), dtype=torch.uint8, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return float(counter.get_total_flops())


# --- inference ---------------------------------------------------------------------------------
def make_engine(kind: str, module: torch.nn.Module, example: torch.Tensor, workdir: Path, dry: bool,
                max_batch: int, device: torch.device):
    """A callable uint8 images -> probs for one engine kind, and notes about how it was built."""
    from rald_fast.models.fast import FastEngine

    notes: dict = {}
    t0 = time.time()
    if kind == "graphs":
        engine = FastEngine(module, device)
        notes["cuda_graphs"] = engine.use_graphs
    elif kind == "max_autotune":
        # inductor's C++ build of ResNet18 takes minutes on a small CPU: the dry run traces only
        backend = "aot_eager" if dry else "inductor"
        engine = FastEngine(module, device, compile="max-autotune-no-cudagraphs", backend=backend)
        notes.update(mode="max-autotune-no-cudagraphs", backend=backend, cuda_graphs=engine.use_graphs)
    elif kind == "pt2":
        package, notes = build_pt2(module, example, workdir, dry, max_batch)
        engine = lambda x: package(x)[1]  # noqa: E731
    else:
        raise ValueError(kind)
    notes["build_seconds"] = round(time.time() - t0, 2)
    return engine, notes


def build_pt2(module: torch.nn.Module, example: torch.Tensor, workdir: Path, dry: bool, max_batch: int):
    """torch.export with a dynamic batch, AOTInductor-compiled into a `.pt2` package, loaded back."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        exported = torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}})
    notes = {"exported_nodes": len(exported.graph.nodes)}
    if dry and not os.environ.get("RALD_FAST_DRY_PT2"):
        # AOTInductor's C++ build of a ResNet18 takes minutes on a small CPU: the dry run checks the
        # export and runs the exported program; tests/test_gpu_suite.py packages a small module
        notes["aoti"] = "skipped in the dry run (set RALD_FAST_DRY_PT2=1 to build it)"
        return exported.module(), notes
    path = package_pt2(exported, workdir / f"model_{id(module)}.pt2")
    notes["package_mib"] = round(path.stat().st_size / 2**20, 2)
    return torch._inductor.aoti_load_package(str(path)), notes


def package_pt2(exported, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(torch._inductor.aoti_compile_and_package(exported, package_path=str(path)))


def prepare_inference(suite: Suite, device: torch.device, cfg: dict) -> dict:
    """Input images (uint8 NHWC), FLOPs per image and fp32 reference probabilities of each model."""
    s, batches = cfg["image_size"], cfg["batches"]
    prepared = {}
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (max(batches), s, s, 3), dtype=torch.uint8, generator=gen).to(device)
    for name, variant in (("resnet18", "a"), ("rald", "rald")):
        m = suite.run(f"build {name}", 30, fast_model, variant, s, "fp32")
        if m is None:
            continue
        m = m.to(device)
        suite.out.setdefault("flops_per_image", {})[name] = suite.run(
            f"flops {name}", 10, flops_per_image, m, s, device)
        with torch.no_grad():
            prepared[name] = (variant, x, m(x)[1].float())
    return prepared


def bench_inference(suite: Suite, device: torch.device, cfg: dict, prepared: dict, kind: str,
                    dtypes: list[str], names: list[str]) -> None:
    rows = suite.out.setdefault("inference", [])
    for dt in dtypes:
        for name in names:
            if name in prepared:
                suite.run(f"inference {name} {kind} {dt}", cfg["engine_cost"].get(kind, 30), _bench_engine,
                          rows, name, kind, dt, prepared[name], device, cfg)


def _bench_engine(rows, name, kind, dt, prepared, device, cfg) -> None:
    from gpu_headline import summary, time_ms

    variant, x_all, probs_ref = prepared
    module = fast_model(variant, cfg["image_size"], dt).to(device)
    batches = cfg["batches"]
    with tempfile.TemporaryDirectory() as workdir:  # .pt2 packages never go under OUT
        engine, notes = make_engine(kind, module, x_all[:min(2, max(batches))], Path(workdir), cfg["dry"],
                                    max(batches), device)
        for b in batches:
            x = x_all[:b].contiguous()
            with torch.no_grad():
                engine(x)  # capture / compile at this batch size outside the timing
                samples = time_ms(lambda e=engine, x=x: e(x), device, cfg["repeats"],
                                  cfg["inner"] * (8 if b == 1 else 1))
                probs = engine(x).float()
            err = (probs - probs_ref[:b]).abs().max().item()
            row = dict(model=name, engine=kind, dtype=dt, batch=b, **summary(samples, b),
                       max_abs_prob_diff_vs_fp32=err, **notes)
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)


# --- kernels -----------------------------------------------------------------------------------
def bench_kernels(suite: Suite, device: torch.device) -> None:
    from rald_fast import kernels

    out = suite.out.setdefault("kernels", {})
    if device.type == "cuda":
        from gpu_kernels import run_kernel_checks_and_bench

        # TF32 is on for the suite's fp32 inference rows; the checks turn it off themselves
        # (gpu_kernels.exact_fp32) and every timed row records it. Rows are saved as they come.
        run_kernel_checks_and_bench(out, quick=True, rep_ms=50, save=suite.save)
        return
    if not kernels.interpret_mode():
        out["skipped"] = "no CUDA device, and Triton is not in interpreter mode (TRITON_INTERPRET=1)"
        return
    import kernel_cases as kc
    from gpu_kernels import check_attention, check_topk

    case = kc.AttnCase("dry_5x7_bias", 2, 5, 7, 16, True, True)  # tiny: the interpreter is slow
    topk_case = kc.TopkCase("dry_topk", 2, 6, 9, 16, 5, 3, True)
    out["checks"] = [check_attention(case, "fp32", device="cpu"),
                     check_topk(topk_case, "fp32", device="cpu"),  # the default tile strategy
                     check_topk(topk_case, "fp32", device="cpu", rows_per_program="all")]
    out["checks_ok"] = all(r["ok"] for r in out["checks"])


def kernels_cost(dry: bool) -> tuple[float, float]:
    """(estimate, alarm limit) in seconds of the kernels item: gpu_kernels counts its compiles
    (about 20 Triton specialisations and 4 flex_attention compiles in the quick plan); the limit
    leaves 1.5 x the estimate, then the alarm ends the item (its rows are already saved)."""
    if dry:
        return 5.0, 600.0
    import gpu_kernels

    est = gpu_kernels.estimate_seconds(gpu_kernels.plan(True))["seconds"]
    return float(est), 1.5 * est


# --- main --------------------------------------------------------------------------------------
BOTH = ["resnet18", "rald"]


def plan(dry: bool) -> dict:
    if dry:
        return dict(image_size=32, batches=[2, 4], repeats=2, inner=1, dry=True,
                    schedule=[("graphs", ["fp32", "fp16"], BOTH), ("pt2", ["fp32"], ["rald"]),
                              ("max_autotune", ["fp32"], ["rald"])],
                    engine_cost={"graphs": 5, "pt2": 20, "max_autotune": 20})
    return dict(image_size=224, batches=[1, 32, 256, 512], repeats=10, inner=5, dry=False,
                # most valuable first: a budget cut drops the tail
                schedule=[("pt2", ["bf16"], BOTH), ("graphs", ["fp16", "fp32"], BOTH),
                          ("max_autotune", ["bf16"], BOTH)],
                engine_cost={"graphs": 15, "pt2": 90, "max_autotune": 180})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file, or a directory (default: $OUT, else bench/results/)")
    ap.add_argument("--revision", default="unknown", help="the git revision of this checkout (.git may not travel)")
    ap.add_argument("--dry-run", action="store_true",
                    help="the whole flow on CPU at tiny sizes, with the device image's missing packages hidden")
    ap.add_argument("--budget-s", type=float, default=330.0, help="overall time budget in seconds (default 330)")
    ap.add_argument("--sections", default="kernels,inference", help="comma-separated subset of kernels, inference")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if dry:
        from device_image import hide_missing

        hide_missing()
    device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
    stamp = time.strftime("%Y%m%d_%H%M")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else _ROOT / "bench" / "results")
    if out.suffix != ".json":
        out = out / f"gpu_suite_{'dry_' if dry else ''}{stamp}.json"
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _on_alarm)
    suite = Suite(out, Budget(args.budget_s), dry)
    cfg = plan(dry)
    suite.out["plan"] = cfg
    suite.out["device"] = str(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows use TF32 tensor cores, as deployed
        torch.backends.cudnn.allow_tf32 = True
    elif not dry:
        print("error: no CUDA device; on a CPU use --dry-run", file=sys.stderr)
        return 2
    suite.out["env"] = suite.run("env", 1, environment, device)
    if suite.out["env"] is not None:
        suite.out["env"]["revision"] = args.revision
    sections = set(args.sections.split(","))
    if "kernels" in sections:
        cost, limit = kernels_cost(dry)
        suite.run("kernels", cost, bench_kernels, suite, device, limit=limit)
    if "inference" in sections:
        prepared = prepare_inference(suite, device, cfg)
        for item in cfg["schedule"]:
            bench_inference(suite, device, cfg, prepared, *item)
    suite.out["finished"] = True
    suite.save()
    print(json.dumps({"out": str(out), "errors": [e["what"] for e in suite.out["errors"]],
                      "skipped": [s["what"] for s in suite.out["skipped"]]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
