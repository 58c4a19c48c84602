"""The first command of a GPU window: the headline figures, most valuable first, each printed as it lands.

    PYTHONPATH=. python bench/gpu_headline.py --out $OUT --revision $(git rev-parse --short=12 HEAD) \\
        2>&1 | tee $OUT/headline.log
    python bench/gpu_headline.py --dry-run --out /tmp/headline      # the same flow on the CPU, tiny sizes

Every result is one JSON line, printed (flushed) and appended to OUT/headline.jsonl as soon as it is
measured, so a run killed at any point has returned everything before it; nothing large is written
under OUT (compiled artifacts live in a temporary folder). Items, in order (the plan prints each
item's estimate beside the budget, and an item that no longer fits is skipped and says so):
1. env: GPU, versions, the revision passed in (`.git` may not travel), the plan.
2. calibrate: device-to-device copy bandwidth and a large bf16 matrix product (what this GPU gives).
3. build: RALD and the bare ResNet18 (Table 3 a), random init, paper config (224 px, FG-Emotions),
   folded (`self` mode) and put on the fast path (rald_fast/models/fast.py: uint8 NHWC in,
   normalisation in conv1, channels_last, bf16, a CUDA graph per batch size).
4. check: 8 images through RALD's fast bf16 engine against a float64 CPU reference of the unfolded
   model; max |probability difference| must stay below --tolerance.
5. inference: RALD and ResNet18 interleaved in one process at batch 256 and 1, CUDA events, median
   and 10/90 % quantiles over repeats; images/s and the RALD / ResNet18 ratio.
6. train: one training step (SGD, CE + NNLDL for RALD, CE for ResNet18) at batch 128, bf16 autocast,
   eager, both models interleaved.
7. kernels: RALD's training step with the Triton kernels on and off (RALD_FAST_KERNELS=triton |
   reference), interleaved.
8. compiled inference: each engine again after torch.compile (inductor, default mode, static shapes)
   under its CUDA graphs, both models interleaved at 256 and 1 (max-autotune: bench/gpu_suite.py).
9. compiled train: the training step with --compile, both models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT)]

# seconds each item takes on an H100 (the first: process start and imports), and on the CPU dry run
ESTIMATES = {"start": 25, "env": 1, "calibrate": 8, "build": 15, "check": 20, "inference": 30, "train": 40,
             "kernels": 70, "compiled_inference": 120, "compiled_train": 120}
PAPER = {"rald_images_per_s": 1291, "resnet18_images_per_s": 1942, "gpu": "RTX A4000"}


class Recorder:
    """One JSON line per result: printed, flushed and appended to OUT/headline.jsonl."""

    def __init__(self, out: Path, budget_s: float):
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.end, self.t0 = out / "headline.jsonl", time.time() + budget_s, time.time()

    def emit(self, kind: str, **row) -> dict:
        row = {"kind": kind, "t": round(time.time() - self.t0, 1), **row}
        line = json.dumps(row, default=str)
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return row

    def left(self) -> float:
        return self.end - time.time()

    def run(self, name: str, fn, *args):
        """fn(*args) if its estimate fits what is left of the budget; an error is a row, not the end."""
        if ESTIMATES[name] > self.left():
            return self.emit("skipped", item=name, reason=f"{self.left():.0f} s left, needs about {ESTIMATES[name]} s")
        t = time.time()
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - record and go on: device time is scarce
            import traceback

            return self.emit("error", item=name, error=repr(exc)[:600], trace=traceback.format_exc()[-1500:])
        finally:
            self.emit("item_done", item=name, seconds=round(time.time() - t, 1))


# --- timing ------------------------------------------------------------------------------------
def time_ms(fn, device, repeats: int, inner: int) -> list[float]:
    """`repeats` samples of the mean ms per call over `inner` back-to-back calls: CUDA events on a GPU."""
    import torch

    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / inner)
        else:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append(1e3 * (time.perf_counter() - t) / inner)
    return samples


def summary(samples: list[float], batch: int) -> dict:
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) > 1 else [samples[0]] * 9
    med = statistics.median(samples)
    return {"ms_median": round(med, 4), "ms_p10": round(q[0], 4), "ms_p90": round(q[-1], 4),
            "images_per_s": round(batch * 1e3 / med, 1), "samples": len(samples)}


def interleaved(engines: dict, inputs: dict, device, repeats: int, inner: int) -> dict:
    """Median timing of each engine, alternating between them sample by sample (clocks and neighbours
    drift alike for both)."""
    samples = {name: [] for name in engines}
    for _ in range(repeats):
        for name, fn in engines.items():
            samples[name] += time_ms(lambda f=fn, x=inputs[name]: f(x), device, 1, inner)
    return samples


# --- items -------------------------------------------------------------------------------------
def env_item(rec: Recorder, args, device) -> None:
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    total, fits = 0, []
    for item, seconds in ESTIMATES.items():
        total += seconds
        if total <= args.budget_s:
            fits.append(item)
    row = dict(python=sys.version.split()[0], torch=torch.__version__, triton=triton_version,
               cuda=torch.version.cuda, revision=args.revision, device=str(device), dry_run=args.dry_run,
               budget_s=args.budget_s, plan_estimates_s=ESTIMATES, plan_total_s=total,
               expected_within_budget=fits, paper=PAPER)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        row.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
    rec.emit("env", **row)


def calibrate(rec: Recorder, cfg: dict, device) -> None:
    import torch

    n = cfg["copy_mib"] * 2**20 // 4
    a = torch.empty(n, device=device)
    b = torch.empty_like(a)
    ms = statistics.median(time_ms(lambda: b.copy_(a), device, 5, 4))
    rec.emit("calibrate", what="copy", gb_per_s=round(2 * a.numel() * 4 / ms / 1e6, 1), ms=round(ms, 4))
    s = cfg["matmul"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x, y = torch.randn(s, s, device=device, dtype=dtype), torch.randn(s, s, device=device, dtype=dtype)
    ms = statistics.median(time_ms(lambda: x @ y, device, 5, 3))
    rec.emit("calibrate", what=f"matmul {s}^3 {str(dtype).removeprefix('torch.')}",
             tflops=round(2 * s**3 / ms / 1e9, 1), ms=round(ms, 4))


def build(rec: Recorder, cfg: dict, device, state: dict) -> None:
    """The two models (random init: speed does not depend on the weights) and their fast engines."""
    import torch

    from rald_fast.config import make_config
    from rald_fast.hierarchy import load_taxonomy
    from rald_fast.models import build_model
    from rald_fast.models.fast import FastEngine, fast_module
    from rald_fast.models.folded import fold
    from rald_fast.preprocess import Preprocess

    s = cfg["image_size"]
    for name, variant in (("rald", "rald"), ("resnet18", "a")):
        mcfg = make_config("paper", variant, image_size=s, progress=False)
        torch.manual_seed(0)
        model = build_model(mcfg, load_taxonomy("fg-emotions")).eval()
        folded = fold(model, Preprocess(s), "self")
        fast = fast_module(folded, cfg["dtype"])
        state[name] = dict(cfg=mcfg, model=model, engine=FastEngine(fast, device, cuda_graphs=cfg["graphs"]),
                           fast=fast)
        params = sum(p.numel() for p in fast.parameters())
        rec.emit("build", model=name, params=params, dtype=cfg["dtype"], image_size=s, graphs=cfg["graphs"])


def check(rec: Recorder, cfg: dict, device, state: dict) -> None:
    """RALD's fast engine (bf16 on the GPU) against the unfolded model in float64 on the CPU."""
    import copy

    import torch

    from rald_fast.preprocess import Preprocess

    s = cfg["image_size"]
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (8, s, s, 3), dtype=torch.uint8, generator=gen)
    for name in ("rald", "resnet18"):
        ref_model = copy.deepcopy(state[name]["model"]).double().eval()
        with torch.no_grad():
            feats = ref_model.backbone_features(Preprocess(s).normalize(x.permute(0, 3, 1, 2)).double())
            want = ref_model.head_outputs(feats, itrr_mode="self")["logits"].softmax(-1)
            got = state[name]["engine"](x.to(device)).double().cpu()
        err = (got - want).abs().max().item()
        agree = (got.argmax(1) == want.argmax(1)).float().mean().item()
        rec.emit("check", model=name, dtype=cfg["dtype"], max_abs_prob_diff=err, argmax_agreement=agree,
                 tolerance=cfg["tolerance"], ok=err <= cfg["tolerance"])


def inference(rec: Recorder, cfg: dict, device, state: dict, compiled: bool = False) -> None:
    import torch

    s = cfg["image_size"]
    if compiled:
        from rald_fast.models.fast import FastEngine

        for name in ("rald", "resnet18"):
            torch._dynamo.reset()
            state[name]["compiled"] = FastEngine(state[name]["fast"], device, cuda_graphs=cfg["graphs"],
                                                 compile=cfg["compile_mode"], backend=cfg["compile_backend"])
    key = "compiled" if compiled else "engine"
    for batch in cfg["batches"]:
        x = torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, device=device)
        engines = {name: state[name][key] for name in ("rald", "resnet18")}
        t = time.time()
        for fn in engines.values():  # capture (and compile) outside the timing
            fn(x)
        build_s = round(time.time() - t, 1)
        inner = cfg["inner"] if batch > 1 else cfg["inner"] * 8
        samples = interleaved(engines, {n: x for n in engines}, device, cfg["repeats"], inner)
        rows = {n: summary(v, batch) for n, v in samples.items()}
        for n, r in rows.items():
            rec.emit("inference", model=n, engine=("compiled " + cfg["compile_mode"]) if compiled else "eager",
                     graphs=cfg["graphs"], dtype=cfg["dtype"], batch=batch, build_s=build_s, **r)
        rec.emit("ratio", what="rald / resnet18 images/s", engine="compiled" if compiled else "eager", batch=batch,
                 ratio=round(rows["rald"]["images_per_s"] / rows["resnet18"]["images_per_s"], 3),
                 rald_images_per_s=rows["rald"]["images_per_s"], paper_rald_images_per_s=PAPER["rald_images_per_s"])


def train_steps(cfg: dict, device, state: dict, compiled: bool, kernels: str | None = None) -> dict:
    """A training step per model (callable), built fresh: SGD, the RALD loss, bf16 autocast."""
    import torch

    from rald_fast.models import build_model, rald_loss
    from rald_fast.hierarchy import load_taxonomy
    from rald_fast.preprocess import Preprocess
    from rald_fast.train.loop import build_optimizer
    from rald_fast.train.step import TrainForward, autocast_context

    s, b = cfg["image_size"], cfg["train_batch"]
    pre = Preprocess(s)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, 33, (b,), generator=gen).to(device)
    steps = {}
    for name in ("rald", "resnet18"):
        mcfg = state[name]["cfg"]
        torch.manual_seed(0)
        model = build_model(mcfg, load_taxonomy("fg-emotions")).to(device).to(memory_format=torch.channels_last)
        optimizer, _ = build_optimizer(mcfg, model.train())
        forward = TrainForward(model, compile=cfg["train_compile"] if compiled else False)

        def step(model=model, forward=forward, optimizer=optimizer, mcfg=mcfg):
            x = pre.normalize(images).contiguous(memory_format=torch.channels_last)
            with autocast_context(cfg["amp"], device):
                parts = rald_loss(forward(x, [b]), labels, mcfg.loss, mcfg.model.scale)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
        steps[name] = step
    return steps


def train(rec: Recorder, cfg: dict, device, state: dict, compiled: bool = False) -> None:
    import torch

    steps = train_steps(cfg, device, state, compiled)
    t = time.time()
    for fn in steps.values():
        fn()  # the first step (compiles, when compiled)
    first_s = round(time.time() - t, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples = interleaved({n: (lambda _x, f=f: f()) for n, f in steps.items()}, {n: None for n in steps},
                          device, cfg["train_repeats"], cfg["train_inner"])
    for n, v in samples.items():
        rec.emit("train", model=n, compiled=compiled, amp=cfg["amp"], batch=cfg["train_batch"],
                 first_steps_s=first_s, **summary(v, cfg["train_batch"]))


def kernels_ab(rec: Recorder, cfg: dict, device, state: dict) -> None:
    """RALD's eager training step with the Triton kernels against the PyTorch reference, interleaved."""
    os.environ["RALD_FAST_KERNELS"] = "triton" if device.type == "cuda" else "reference"
    step = train_steps(cfg, device, state, False)["rald"]

    def with_backend(backend):
        def run(_x):
            os.environ["RALD_FAST_KERNELS"] = backend
            step()
        return run

    runs = {"triton": with_backend("triton" if device.type == "cuda" else "reference"),
            "reference": with_backend("reference")}
    for fn in runs.values():
        fn(None)  # Triton's JIT compiles here
    samples = interleaved(runs, {n: None for n in runs}, device, cfg["train_repeats"], cfg["train_inner"])
    os.environ.pop("RALD_FAST_KERNELS", None)
    rows = {n: summary(v, cfg["train_batch"]) for n, v in samples.items()}
    for n, r in rows.items():
        rec.emit("kernels", backend=n, model="rald", amp=cfg["amp"], batch=cfg["train_batch"], **r)
    rec.emit("ratio", what="training step, triton / reference images/s",
             ratio=round(rows["triton"]["images_per_s"] / rows["reference"]["images_per_s"], 3))


# --- plan --------------------------------------------------------------------------------------
def plan(dry: bool) -> dict:
    if dry:
        return dict(image_size=32, batches=[4, 1], dtype="fp32", graphs=False, tolerance=1e-4, copy_mib=16,
                    matmul=256, repeats=3, inner=2, train_batch=8, train_repeats=2, train_inner=1, amp="none",
                    compile_mode="default", compile_backend="aot_eager", train_compile="aot_eager")
    return dict(image_size=224, batches=[256, 1], dtype="bf16", graphs=True, tolerance=2e-2, copy_mib=1024,
                matmul=8192, repeats=15, inner=10, train_batch=128, train_repeats=8, train_inner=3, amp="bf16",
                # inductor without autotuning here (about a minute for both models); max-autotune is the
                # second command's (bench/gpu_suite.py)
                compile_mode="default", compile_backend="inductor", train_compile=True)


def check_returned(out: Path, rec: Recorder) -> None:
    """What the device tool brings back: at most 8 files, 16 MiB each, 64 MiB in all."""
    files = [p for p in out.rglob("*") if p.is_file()]
    sizes = [p.stat().st_size for p in files]
    ok = len(files) <= 8 and max(sizes, default=0) <= 16 * 2**20 and sum(sizes) <= 64 * 2**20
    rec.emit("returned", files=len(files), mib=round(sum(sizes) / 2**20, 3), within_limits=ok)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results/headline")),
                    help="folder for headline.jsonl (default: $OUT)")
    ap.add_argument("--revision", default="unknown", help="the git revision of this checkout (.git may not travel)")
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="seconds for the whole run; items that no longer fit are skipped (default 330)")
    ap.add_argument("--dry-run", action="store_true",
                    help="the whole flow on the CPU at tiny sizes, with the device image's missing packages hidden")
    ap.add_argument("--skip", default="", help="comma-separated items to leave out (e.g. compiled_train)")
    args = ap.parse_args(argv)
    if args.dry_run:
        from bench.device_image import hide_missing

        hidden = hide_missing()
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type != "cuda" and not args.dry_run:
        print("error: no CUDA device; on a CPU use --dry-run", file=sys.stderr)
        return 2
    rec = Recorder(args.out, args.budget_s - ESTIMATES["start"])
    cfg = plan(args.dry_run)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    state: dict = {}
    env_item(rec, args, device)
    if args.dry_run:
        rec.emit("dry_run", hidden_packages=hidden, note="estimates are the GPU's; the dry run checks the flow")
    skip = set(filter(None, args.skip.split(",")))
    items = [("calibrate", calibrate, ()), ("build", build, (state,)), ("check", check, (state,)),
             ("inference", inference, (state,)), ("train", train, (state,)), ("kernels", kernels_ab, (state,)),
             ("compiled_inference", inference, (state, True)), ("compiled_train", train, (state, True))]
    with tempfile.TemporaryDirectory() as tmp:  # compiled artifacts and caches never go under OUT
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tmp) / "inductor"))
        for name, fn, extra in items:
            if name in skip:
                continue
            if name != "build" and extra and "rald" not in state:
                rec.emit("skipped", item=name, reason="the models were not built")
                continue
            rec.run(name, fn, rec, cfg, device, *extra)
    check_returned(args.out, rec)
    rec.emit("done", seconds=round(time.time() - rec.t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
