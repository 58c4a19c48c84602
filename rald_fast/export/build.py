"""Build deployment artifacts from a training checkpoint and check each against PyTorch.

    python export/build_trt.py --checkpoint runs/rald/last.pt [--formats onnx,pt2,ts,trt,triton]
                               [--precision fp32|fp16|bf16] [--itrr-mode bank|self|batch] [--out DIR]

The checkpoint is folded (rald_fast/models/folded.py: label branch precomputed, BatchNorm folded,
ITRR batch-independent by default) and written as:
  onnx  <out>/<name>.onnx       dynamic batch, onnx.checker, run with ONNX Runtime and OpenCV DNN
                                (always fp32)
  pt2   <out>/<name>.pt2        torch.export + AOTInductor, dynamic batch (C++: cpp/)
  ts    <out>/<name>.ts         TorchScript (torch.jit.trace, deprecated), dynamic batch, for libtorch
                                builds that cannot load this torch's .pt2 (C++: cpp/ too); not built
                                unless asked for
  trt   <out>/<name>_trt.ep     Torch-TensorRT (ir="dynamo") ExportedProgram for Python
        <out>/<name>_trt.pt2    the same as an AOTInductor package for C++
        <out>/<name>.engine     serialized TensorRT engine built from the ONNX file
  triton <out>/model_repository/  a Triton Inference Server repository: rald (ONNX Runtime) and,
                                with trt, rald_trt (the engine); config.pbtxt with dynamic batching
The trt artifacts need TensorRT, Torch-TensorRT and a CUDA GPU; without them a message says what is
missing and the other formats are built. Every artifact carries the preprocessing, the taxonomy and
the ITRR mode (inside, and in <artifact>.json beside it). Each is compared with the PyTorch folded
model (fp32) at batch 1, --opt-batch and --max-batch; a summary table gives size, max abs difference
and cosine similarity. Exit status 1 when an artifact misses its tolerance.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rald_fast.artifacts import OUTPUT_NAMES, ArtifactError, build_metadata, write_sidecar
from rald_fast.cli import add_device_option, output_dir, run_cli, setup_logging
from rald_fast.device import resolve_device
from rald_fast.export import tensorrt as trt_export
from rald_fast.export.formats import at_precision, compare, export_onnx, export_pt2
from rald_fast.export.opencv import run_opencv
from rald_fast.export.torchscript import export_torchscript, load_torchscript
from rald_fast.export.triton_repo import write_model_repository
from rald_fast.files import atomic_write_text, to_json

log = logging.getLogger(__name__)
FORMATS = ("onnx", "pt2", "ts", "trt", "triton")  # in build order: trt needs the ONNX, triton both
DEFAULT_FORMATS = "onnx,pt2,trt"
TOLERANCE = {"fp32": (1e-3, 0.99999), "fp16": (3e-2, 0.999), "bf16": (6e-2, 0.995)}  # probs abs, cosine


def invoked_as(argv0: str | None = None) -> str:
    """The command as the user typed it, for the usage line: `python export/build_trt.py`,
    `python -m rald_fast.export` or `rald-export`."""
    name = Path(argv0 if argv0 is not None else sys.argv[0]).name
    if name == "build_trt.py":
        return "python export/build_trt.py"
    if name in ("__main__.py", "-m"):
        return "python -m rald_fast.export"
    return name if name.startswith("rald-") else "python export/build_trt.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=invoked_as(), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (last.pt)")
    p.add_argument("--formats", default=DEFAULT_FORMATS,
                   help=f"comma-separated: {', '.join(FORMATS)} (default {DEFAULT_FORMATS})")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="compute precision of the .pt2, .ts and TensorRT artifacts; ONNX stays fp32 (default fp32)")
    p.add_argument("--itrr-mode", choices=["bank", "self", "batch"],
                   help="ITRR context: bank (default when the checkpoint has a reference bank), self, or "
                        "batch (the paper's; predictions then depend on batch-mates)")
    p.add_argument("--out", help="output directory (default: <checkpoint dir>/export)")
    p.add_argument("--name", default="rald", help="file stem of the artifacts (default rald)")
    add_device_option(p, "device the .pt2 is compiled for and the .ts traced on")
    p.add_argument("--opt-batch", type=int, default=32, help="typical batch: TensorRT's opt shape (default 32)")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch the artifacts accept (default 256)")
    return p


def parse_formats(text: str) -> list[str]:
    names = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise ArtifactError(f"--formats: unsupported format {', '.join(bad) or repr(text)}; choose from "
                            f"{', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def check_artifact(name: str, path: Path, run, reference, batches: dict[int, torch.Tensor],
                   precision: str) -> list[dict]:
    """Rows of the summary table: one per checked batch size."""
    atol, min_cos = TOLERANCE[precision]
    rows = []
    for n, x in batches.items():
        logits, probs = run(x)
        ref_logits, ref_probs = reference[n]
        c_logits, c_probs = compare(ref_logits, logits), compare(ref_probs, probs)
        ok = c_probs["max_abs_diff"] <= atol and c_logits["cosine"] >= min_cos
        rows.append({"artifact": name, "file": str(path), "size_mb": path.stat().st_size / 2**20, "batch": n,
                     "max_abs_logits": c_logits["max_abs_diff"], "max_abs_probs": c_probs["max_abs_diff"],
                     "cosine_logits": c_logits["cosine"], "ok": ok})
    return rows


def summary_table(rows: list[dict]) -> str:
    lines = ["| artifact | size (MB) | batch | max abs diff (logits) | max abs diff (probs) | cosine | ok |",
             "|---|---:|---:|---:|---:|---:|:-:|"]
    lines += [f"| {r['artifact']} | {r['size_mb']:.1f} | {r['batch']} | {r['max_abs_logits']:.2e} | "
              f"{r['max_abs_probs']:.2e} | {r['cosine_logits']:.6f} | {'yes' if r['ok'] else 'NO'} |"
              for r in rows]
    return "\n".join(lines)


@dataclass
class Built:
    """One built artifact: its label in the summary, file, metadata (the sidecar beside it, None when
    an earlier row of the same file wrote it), how to run it (float32 images -> (logits, probs) on the
    CPU) and at which precision it is checked. `soft`: a failure to run is a note, not an error."""

    label: str
    path: Path
    meta: dict | None
    run: Callable
    precision: str
    hashed: bool = False
    soft: bool = False


@dataclass
class ExportJob:
    """What every format builder needs: the model folded once, the metadata, where and how to build."""

    folded: nn.Module
    meta: dict
    out: Path
    name: str
    precision: str
    device: str
    opt_batch: int
    max_batch: int
    notes: list[str] = field(default_factory=list)
    onnx_path: Path | None = None
    engine_path: Path | None = None

    def model_at_precision(self) -> nn.Module:
        """A copy of the folded model in --precision (the cast changes the module it is given)."""
        return at_precision(copy.deepcopy(self.folded), self.precision)


def build_onnx(job: ExportJob) -> list[Built]:
    import onnxruntime as ort

    path = export_onnx(job.folded, job.out / f"{job.name}.onnx", job.meta, job.max_batch)
    job.onnx_path = path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def opencv(x):  # OpenCV DNN, in a child process (its importer can crash instead of raising)
        got = run_opencv(path, x.numpy())
        return [got[k] for k in OUTPUT_NAMES]
    return [Built("onnx (ONNX Runtime, fp32)", path, job.meta, lambda x: session.run(None, {"images": x.numpy()}),
                  "fp32"),
            Built("onnx (OpenCV DNN, fp32)", path, None, opencv, "fp32", soft=True)]


def build_pt2(job: ExportJob) -> list[Built]:
    meta = dict(job.meta, precision=job.precision)
    path = export_pt2(job.model_at_precision(), job.out / f"{job.name}.pt2", meta, job.max_batch, job.device)
    package = torch._inductor.aoti_load_package(str(path))
    return [Built(f"pt2 (AOTInductor {job.device}, {job.precision})", path, meta,
                  lambda x: [t.cpu() for t in package(x.to(job.device))], job.precision)]


def build_ts(job: ExportJob) -> list[Built]:
    meta = dict(job.meta, precision=job.precision, device=job.device)
    path = export_torchscript(job.model_at_precision(), job.out / f"{job.name}.ts", meta, job.max_batch,
                              job.device)
    module, _ = load_torchscript(path, job.device)
    return [Built(f"ts (TorchScript {job.device}, {job.precision})", path, meta,
                  lambda x: [t.cpu() for t in module(x.to(job.device))], job.precision)]


def build_trt(job: ExportJob) -> list[Built]:
    gap = trt_export.missing()
    if gap:
        job.notes.append(f"TensorRT artifacts not built: {gap}")
        log.warning("%s", job.notes[-1])
        return []
    shapes = (1, job.opt_batch, job.max_batch)
    built = build_onnx(job) if job.onnx_path is None else []  # the engine is built from the ONNX file
    ep_meta = dict(job.meta, precision=job.precision, backend="torch_tensorrt")
    for path in trt_export.build_torch_tensorrt(job.model_at_precision(), job.out, job.name, ep_meta,
                                                job.precision, shapes):
        run = None
        if path.suffix == ".ep":
            module = torch.export.load(str(path)).module()
            run = lambda x, m=module: [t.cpu() for t in m(x.cuda())]  # noqa: E731
        built.append(Built(f"Torch-TensorRT ({job.precision})", path, ep_meta, run, job.precision))
    engine = trt_export.build_engine_from_onnx(job.onnx_path, job.out / f"{job.name}.engine", job.meta, job.precision,
                                               shapes)
    job.engine_path = engine
    runner = trt_export.EngineRunner(engine)
    built.append(Built(f"TensorRT engine ({job.precision})", engine,
                       trt_export.engine_metadata(job.meta, job.precision, job.max_batch),
                       lambda x: [runner(x)[k].cpu() for k in OUTPUT_NAMES], job.precision, hashed=True))
    return built


def build_triton(job: ExportJob) -> list[Built]:
    """A Triton Inference Server model repository of the ONNX file (and of the TensorRT engine when
    `trt` was built too): rald_fast/export/triton_repo.py."""
    import onnxruntime as ort

    built = build_onnx(job) if job.onnx_path is None else []
    folders = write_model_repository(job.out, job.onnx_path, job.meta, job.opt_batch, job.max_batch,
                                     job.engine_path)
    model = folders[0] / "1" / "model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return built + [Built("triton repository (model.onnx, ONNX Runtime)", model, None,
                          lambda x: session.run(None, {"images": x.numpy()}), "fp32")]


# adding a format: a builder here (it returns what it built and how to run it) and its name in FORMATS
BUILDERS = {"onnx": build_onnx, "pt2": build_pt2, "ts": build_ts, "trt": build_trt, "triton": build_triton}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    formats = parse_formats(args.formats)
    if not 1 <= args.opt_batch <= args.max_batch:
        raise ArtifactError(f"--opt-batch {args.opt_batch} must lie in 1..--max-batch {args.max_batch}")
    out = output_dir(args.out if args.out else Path(args.checkpoint).parent / "export")
    from rald_fast.models import load_model  # the model code only past --help (docs/ARCHITECTURE.md)
    from rald_fast.models.folded import fold

    loaded = load_model(args.checkpoint)
    folded = fold(loaded.model, loaded.preprocess, args.itrr_mode).eval()
    meta = build_metadata(loaded.cfg, loaded.taxonomy, loaded.preprocess, folded.itrr_mode, args.checkpoint,
                          trained_on=loaded.provenance)
    meta["max_batch"] = args.max_batch
    job = ExportJob(folded, meta, out, args.name, args.precision, resolve_device(args.device).type,
                    args.opt_batch, args.max_batch)
    s = loaded.preprocess.image_size
    gen = torch.Generator().manual_seed(0)
    batches = {n: torch.randint(0, 256, (n, 3, s, s), generator=gen).float()
               for n in sorted({1, args.opt_batch, args.max_batch})}
    with torch.no_grad():
        reference = {n: folded(x) for n, x in batches.items()}
    rows, t0 = [], time.perf_counter()
    for fmt in [f for f in FORMATS if f in formats]:  # ONNX first: the TensorRT engine is built from it
        for built in BUILDERS[fmt](job):
            if built.meta is not None:
                write_sidecar(built.path, built.meta, with_hash=built.hashed)
            if built.run is None:
                continue
            try:
                with torch.no_grad():
                    rows += check_artifact(built.label, built.path, built.run, reference, batches, built.precision)
            except ArtifactError as e:
                if not built.soft:
                    raise
                job.notes.append(f"{built.label} check not passed: {e}")
                log.warning("%s", job.notes[-1])
            log.info("%s: %s (%.0f s)", built.label, built.path, time.perf_counter() - t0)
    table = summary_table(rows)
    atomic_write_text(out / "summary.json", to_json({"rows": rows, "notes": job.notes, "metadata": meta}, indent=2))
    atomic_write_text(out / "summary.md", table + "\n" + "".join(f"\n{n}\n" for n in job.notes))
    print(table)
    for n in job.notes:
        print(n)
    print(f"ITRR mode {folded.itrr_mode}; wrote {out}/ (summary.md, summary.json)")
    return 0 if all(r["ok"] for r in rows) else 1


def cli() -> int:
    """Console-script entry point: `main` with user errors reported as one line (exit 2)."""

    return run_cli(main)
