"""One prepared GPU session: kernels, training and inference speed, in one JSON file.

Run from a plain checkout (no `pip install`; the repository root goes on sys.path), on one GPU:

    python bench/gpu_suite.py --out $OUT/gpu_suite.json        # about 8 minutes on an H200
    python bench/gpu_suite.py --dry-run --out /tmp/suite.json  # the whole flow on CPU, tiny sizes

Sections (run interleaved, most valuable first: eager figures, then compiled bf16, then the rest; a
global time budget skips, and records, what no longer fits):
1. "env": GPU, compute capability, torch / triton / CUDA versions, git revision; the assumed peak
   throughput of the chip where known (the compute ceiling quoted in docs/PERFORMANCE.md).
2. "kernels": bench/gpu_kernels.py's correctness checks at RALD's shapes (vs the fp32 references)
   and its do_bench micro-benchmarks (quick set).
3. "inference": images/s of the bare ResNet18 (Table 3 a) and RALD, both folded for deployment
   (`rald_fast.models.folded.fold`, batch-independent ITRR mode "self", BatchNorm folded, float32
   RGB 0..255 in, (logits, probs) out), at batch 1 / 32 / 128 / 256 in fp32 / bf16 / fp16 for
   "eager", "compiled_cudagraphs" (torch.compile mode="reduce-overhead": inductor + CUDA graphs),
   "pt2" (torch.export + AOTInductor package, loaded back) and "compiled_max_autotune"
   (mode="max-autotune-no-cudagraphs"; last, as autotuning is slow). Each row also holds the max
   |probs - fp32 eager probs|, so a fast but wrong engine shows.
4. "training": RALD training step (backbone on the batch, ITRR, HLRR, LGIFO, CE + NNLDL, SGD) at
   batch 128, 224 x 224: eager vs compiled, fp32 vs bf16 autocast; images/s after warm-up.
Every item is guarded: an exception is recorded (`errors`) and the run goes on; the JSON is rewritten
after every item, so even a killed run leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "bench")]

import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
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
def build_rald(variant: str, image_size: int, device: torch.device):
    """A randomly initialised RALD (or its bare ResNet18, variant a) with the FG-Emotions taxonomy:
    speed does not depend on the weights."""
    from rald_fast.config import make_config
    from rald_fast.hierarchy import load_taxonomy
    from rald_fast.models import build_model

    cfg = make_config("paper", variant, image_size=image_size, progress=False)
    torch.manual_seed(0)
    return build_model(cfg, load_taxonomy("fg-emotions")).to(device), cfg


def folded_model(variant: str, image_size: int, device: torch.device) -> torch.nn.Module:
    """The deployment module: `fold(model, Preprocess(S), itrr_mode="self")` (batch-independent)."""
    try:
        from rald_fast.models.folded import fold
    except ImportError as e:
        raise RuntimeError("rald_fast.models.folded.fold is missing: this checkout predates the "
                           f"folded inference module ({e})") from None
    from rald_fast.preprocess import Preprocess

    model, _ = build_rald(variant, image_size, device)
    model.eval()
    return fold(model, preprocess=Preprocess(image_size), itrr_mode="self").eval()


def flops_per_image(module: torch.nn.Module, image_size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, image_size, image_size, device=device) * 255
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return float(counter.get_total_flops())


# --- timing ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device: torch.device, warmup: int, min_iters: int, min_seconds: float) -> dict:
    """Median-free simple timing: warm-up calls, then at least `min_iters` calls and `min_seconds`."""
    for _ in range(warmup):
        fn()
    _sync(device)
    iters, t0 = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - t0 < min_seconds:
        fn()
        iters += 1
        if iters % 5 == 0 or iters >= min_iters:
            _sync(device)
    _sync(device)
    secs = time.perf_counter() - t0
    return {"iters": iters, "ms_per_call": 1e3 * secs / iters}


# --- inference ---------------------------------------------------------------------------------
def make_engine(kind: str, module: torch.nn.Module, example: torch.Tensor, workdir: Path, dry: bool,
                max_batch: int):
    """A callable images -> (logits, probs) for one engine kind, and notes about how it was built."""
    notes: dict = {}
    t0 = time.time()
    if kind == "eager":
        engine = module
    elif kind in ("compiled_cudagraphs", "compiled_max_autotune"):
        torch._dynamo.reset()
        if dry:  # inductor's C++ build of ResNet18 takes minutes on a small CPU: trace only
            engine = torch.compile(module, backend="aot_eager", dynamic=True)
            notes["backend"] = "aot_eager (dry run)"
        elif kind == "compiled_cudagraphs":
            # batch 1 compiles static, the next size once with a dynamic batch; one CUDA graph per size
            engine = torch.compile(module, mode="reduce-overhead")
            notes["mode"] = "reduce-overhead (CUDA graphs)"
        else:
            engine = torch.compile(module, mode="max-autotune-no-cudagraphs")
            notes["mode"] = "max-autotune-no-cudagraphs"
    elif kind == "pt2":
        engine, notes = build_pt2(module, example, workdir, dry, max_batch)
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
    """The folded models, their FLOPs per image, and fp32 eager reference probabilities."""
    s, batches = cfg["image_size"], cfg["batches"]
    prepared = {}
    for name, variant in (("resnet18", "a"), ("rald", "rald")):
        m = suite.run(f"fold {name}", 30, folded_model, variant, s, device)
        if m is None:
            continue
        suite.out.setdefault("flops_per_image", {})[name] = suite.run(
            f"flops {name}", 10, flops_per_image, m, s, device)
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(max(batches), 3, s, s, generator=gen) * 255).round().to(device)
        with torch.no_grad():
            prepared[name] = (m, (x, m(x)[1].float()))
    return prepared


def bench_inference(suite: Suite, device: torch.device, cfg: dict, prepared: dict, kind: str,
                    dtypes: list[str], names: list[str]) -> None:
    rows = suite.out.setdefault("inference", [])
    for dt in dtypes:
        for name in names:
            if name in prepared:
                m, reference = prepared[name]
                suite.run(f"inference {name} {kind} {dt}", cfg["engine_cost"].get(kind, 30), _bench_engine,
                          rows, name, kind, dt, m, reference, device, cfg, cfg["workdir"])


def _bench_engine(rows, name, kind, dt, module, reference, device, cfg, workdir) -> None:
    import copy

    x_all, probs_ref = reference
    dtype = DTYPES[dt]
    m = copy.deepcopy(module).to(dtype)
    batches = cfg["batches"]
    example = x_all[:min(2, max(batches))].to(dtype)
    engine, notes = make_engine(kind, m, example, Path(workdir), cfg["dry"], max(batches))
    for b in batches:
        x = x_all[:b].to(dtype).contiguous()
        with torch.no_grad():
            t = time_calls(lambda e=engine, x=x: e(x), device, cfg["warmup"], cfg["min_iters"],
                           cfg["min_seconds"])
            probs = engine(x)[1].float()
        err = (probs - probs_ref[:b]).abs().max().item()
        rows.append(dict(model=name, engine=kind, dtype=dt, batch=b, **t,
                         images_per_s=b * 1e3 / t["ms_per_call"], max_abs_prob_diff_vs_fp32_eager=err,
                         **notes))


# --- training ----------------------------------------------------------------------------------
def bench_training(suite: Suite, device: torch.device, cfg: dict, compiled: bool, amp: str) -> None:
    rows = suite.out.setdefault("training", [])
    cost = cfg["train_cost"] * (4 if compiled else 1)
    suite.run(f"training compile={compiled} amp={amp}", cost, _bench_train_step, rows, compiled, amp, device, cfg)


def _bench_train_step(rows, compiled, amp, device, cfg) -> None:
    from rald_fast.preprocess import Preprocess
    from rald_fast.models import rald_loss
    from rald_fast.train.step import TrainForward, autocast_context
    from rald_fast.train.loop import build_optimizer

    s, b = cfg["image_size"], cfg["train_batch"]
    torch._dynamo.reset()
    model, mcfg = build_rald("rald", s, device)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer, _ = build_optimizer(mcfg, model)
    mode = ("aot_eager" if cfg["dry"] else True) if compiled else False
    forward = TrainForward(model, compile=mode)
    pre = Preprocess(s)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, 33, (b,), generator=gen).to(device)

    def step():
        x = pre.normalize(images).contiguous(memory_format=torch.channels_last)
        with autocast_context(amp, device):
            parts = rald_loss(forward(x, [b]), labels, mcfg.loss, mcfg.model.scale)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
        return parts["loss"]

    t0 = time.time()
    first_loss = step().item()  # compiles, when compiled
    warm = time.time() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time_calls(step, device, cfg["warmup"], cfg["train_iters"], cfg["min_seconds"])
    rows.append(dict(compiled=bool(compiled), backend=mode if isinstance(mode, str) else
                     ("inductor" if compiled else "eager"), amp=amp, batch=b, image_size=s,
                     first_step_seconds=round(warm, 2), first_loss=first_loss, **t,
                     images_per_s=b * 1e3 / t["ms_per_call"],
                     peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
                     else None))


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
        return dict(image_size=32, batches=[2, 4], train_batch=4, warmup=1, min_iters=1, min_seconds=0.0,
                    train_iters=2, train_cost=5, workdir=None, dry=True,
                    # compiled engines for RALD only, fp32 only: tracing a ResNet18 takes ~20 s per
                    # engine on a small CPU; max-autotune differs from the CUDA-graphs engine only
                    # in its mode string (and needs a GPU to autotune)
                    schedule=[("inference", ("eager", ["fp32", "bf16", "fp16"], BOTH)),
                              ("training", (False, "none")), ("training", (False, "bf16")),
                              ("inference", ("compiled_cudagraphs", ["fp32"], ["rald"])),
                              ("training", (True, "none")),
                              ("inference", ("pt2", ["fp32"], ["rald"]))],
                    engine_cost={"eager": 5, "compiled_cudagraphs": 20, "pt2": 20})
    return dict(image_size=224, batches=[1, 32, 128, 256], train_batch=128, warmup=3, min_iters=10,
                min_seconds=0.3, train_iters=8, train_cost=15, workdir=None, dry=False,
                # most valuable first: a budget cut drops the tail
                schedule=[("inference", ("eager", ["bf16", "fp16", "fp32"], BOTH)),
                          ("training", (False, "bf16")), ("training", (False, "none")),
                          ("inference", ("compiled_cudagraphs", ["bf16"], BOTH)),
                          ("training", (True, "bf16")),
                          ("inference", ("pt2", ["bf16"], BOTH)),
                          ("inference", ("compiled_cudagraphs", ["fp16", "fp32"], BOTH)),
                          ("training", (True, "none")),
                          ("inference", ("pt2", ["fp16", "fp32"], BOTH)),
                          ("inference", ("compiled_max_autotune", ["bf16"], BOTH))],
                engine_cost={"eager": 10, "compiled_cudagraphs": 60, "pt2": 90, "compiled_max_autotune": 150})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file, or a directory (default: $OUT, else bench/results/)")
    ap.add_argument("--dry-run", action="store_true", help="the whole flow on CPU at tiny sizes")
    ap.add_argument("--budget-s", type=float, default=450.0, help="overall time budget in seconds")
    ap.add_argument("--sections", default="kernels,inference,training",
                    help="comma-separated subset of kernels, inference, training")
    args = ap.parse_args(argv)
    dry = args.dry_run
    device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
    stamp = time.strftime("%Y%m%d_%H%M")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else _ROOT / "bench" / "results")
    if out.suffix != ".json":
        out = out / f"gpu_suite_{'dry_' if dry else ''}{stamp}.json"
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _on_alarm)
    suite = Suite(out, Budget(args.budget_s), dry)
    cfg = plan(dry)
    cfg["workdir"] = str(out.parent / "pt2_packages")
    suite.out["plan"] = {k: v for k, v in cfg.items() if k != "workdir"}
    suite.out["device"] = str(device)
    if dry:
        suite.out["skipped"].append({"what": "inference compiled_max_autotune",
                                     "reason": "dry run: the compiled_cudagraphs path with another mode string; "
                                               "autotuning needs a GPU"})
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows use TF32 tensor cores, as deployed
        torch.backends.cudnn.allow_tf32 = True
    elif not dry:
        print("error: no CUDA device; on a CPU use --dry-run", file=sys.stderr)
        return 2
    suite.out["env"] = suite.run("env", 1, environment, device)
    sections = set(args.sections.split(","))
    if "kernels" in sections:
        cost, limit = kernels_cost(dry)
        suite.run("kernels", cost, bench_kernels, suite, device, limit=limit)
    prepared = prepare_inference(suite, device, cfg) if "inference" in sections else {}
    for section, item in cfg["schedule"]:
        if section not in sections:
            continue
        if section == "inference":
            bench_inference(suite, device, cfg, prepared, *item)
        else:
            bench_training(suite, device, cfg, *item)
    suite.out["finished"] = True
    suite.save()
    print(json.dumps({"out": str(out), "errors": [e["what"] for e in suite.out["errors"]],
                      "skipped": [s["what"] for s in suite.out["skipped"]]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
