"""Build deployment artifacts from a training checkpoint and check each against PyTorch.

    python export/build_trt.py --checkpoint runs/rald/last.pt [--formats onnx,pt2,ts,trt]
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
The trt artifacts need TensorRT, Torch-TensorRT and a CUDA GPU; without them a message says what is
missing and the other formats are built. Every artifact carries the preprocessing, the taxonomy and
the ITRR mode (inside, and in <artifact>.json beside it). Each is compared with the PyTorch folded
model (fp32) at batch 1, --opt-batch and --max-batch; a summary table gives size, max abs difference
and cosine similarity. Exit status 1 when an artifact misses its tolerance.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from rald_fast.checkpoint import atomic_write_text, to_json
from rald_fast.cli import add_device_option, output_dir, setup_logging
from rald_fast.device import resolve_device
from rald_fast.export import tensorrt as trt_export
from rald_fast.artifacts import OUTPUT_NAMES, ArtifactError, build_metadata, write_sidecar
from rald_fast.export.formats import at_precision, compare, export_onnx, export_pt2
from rald_fast.export.opencv import run_opencv
from rald_fast.export.torchscript import export_torchscript, load_torchscript

log = logging.getLogger(__name__)
FORMATS = ("onnx", "pt2", "ts", "trt")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from rald_fast.models import load_model
    from rald_fast.models.folded import fold

    formats = parse_formats(args.formats)
    if not 1 <= args.opt_batch <= args.max_batch:
        raise ArtifactError(f"--opt-batch {args.opt_batch} must lie in 1..--max-batch {args.max_batch}")
    loaded = load_model(args.checkpoint)
    model, cfg, taxonomy, preprocess = loaded.model, loaded.cfg, loaded.taxonomy, loaded.preprocess
    folded = fold(model, preprocess, args.itrr_mode).eval()
    out = output_dir(args.out if args.out else Path(args.checkpoint).parent / "export")
    meta = build_metadata(cfg, taxonomy, preprocess, folded.itrr_mode, args.checkpoint, trained_on=loaded.provenance)
    meta["max_batch"] = args.max_batch
    s = preprocess.image_size
    gen = torch.Generator().manual_seed(0)
    sizes = sorted({1, args.opt_batch, args.max_batch})
    batches = {n: torch.randint(0, 256, (n, 3, s, s), generator=gen).float() for n in sizes}
    with torch.no_grad():
        reference = {n: folded(x) for n, x in batches.items()}
    device = resolve_device(args.device).type
    rows, notes = [], []
    t0 = time.perf_counter()
    if "onnx" in formats or "trt" in formats:
        onnx_path = export_onnx(folded, out / f"{args.name}.onnx", meta, args.max_batch)
        write_sidecar(onnx_path, meta)
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        rows += check_artifact("onnx (ONNX Runtime, fp32)", onnx_path,
                               lambda x: session.run(None, {"images": x.numpy()}), reference, batches, "fp32")
        log.info("onnx: %s (%.0f s)", onnx_path, time.perf_counter() - t0)

        def opencv(x):
            out = run_opencv(onnx_path, x.numpy())
            return [out[k] for k in OUTPUT_NAMES]
        try:  # OpenCV DNN, in a child process (its importer can crash instead of raising)
            rows += check_artifact("onnx (OpenCV DNN, fp32)", onnx_path, opencv, reference, batches, "fp32")
        except ArtifactError as e:
            notes.append(f"OpenCV DNN check not passed: {e}")
            log.warning("%s", notes[-1])
    if "pt2" in formats:
        pt2_meta = dict(meta, precision=args.precision)
        pt2_path = export_pt2(at_precision(fold(model, preprocess, args.itrr_mode), args.precision),
                              out / f"{args.name}.pt2", pt2_meta, args.max_batch, device)
        write_sidecar(pt2_path, pt2_meta)
        package = torch._inductor.aoti_load_package(str(pt2_path))
        with torch.no_grad():
            rows += check_artifact(f"pt2 (AOTInductor {device}, {args.precision})", pt2_path,
                                   lambda x: [t.cpu() for t in package(x.to(device))], reference, batches,
                                   args.precision)
        log.info("pt2: %s (%.0f s)", pt2_path, time.perf_counter() - t0)
    if "ts" in formats:
        ts_meta = dict(meta, precision=args.precision, device=device)
        ts_path = export_torchscript(at_precision(fold(model, preprocess, args.itrr_mode), args.precision),
                                     out / f"{args.name}.ts", ts_meta, args.max_batch, device)
        write_sidecar(ts_path, ts_meta)
        module, _ = load_torchscript(ts_path, device)
        with torch.no_grad():
            rows += check_artifact(f"ts (TorchScript {device}, {args.precision})", ts_path,
                                   lambda x: [t.cpu() for t in module(x.to(device))], reference, batches,
                                   args.precision)
        log.info("ts: %s (%.0f s)", ts_path, time.perf_counter() - t0)
    if "trt" in formats:
        gap = trt_export.missing()
        if gap:
            notes.append(f"TensorRT artifacts not built: {gap}")
            log.warning("%s", notes[-1])
        else:
            shapes = (1, args.opt_batch, args.max_batch)
            trt_meta = dict(meta, precision=args.precision)
            for path in trt_export.build_torch_tensorrt(fold(model, preprocess, args.itrr_mode), out, args.name,
                                                        trt_meta, args.precision, shapes):
                if path.suffix == ".ep":
                    module = torch.export.load(str(path)).module()
                    with torch.no_grad():
                        rows += check_artifact(f"Torch-TensorRT ({args.precision})", path,
                                               lambda x, m=module: [t.cpu() for t in m(x.cuda())], reference,
                                               batches, args.precision)
            engine = trt_export.build_engine_from_onnx(onnx_path, out / f"{args.name}.engine", trt_meta,
                                                       args.precision, shapes)
            runner = trt_export.EngineRunner(engine)
            rows += check_artifact(f"TensorRT engine ({args.precision})", engine,
                                   lambda x: [runner(x)[k].cpu() for k in ("logits", "probs")], reference,
                                   batches, args.precision)
    table = summary_table(rows)
    atomic_write_text(out / "summary.json", to_json({"rows": rows, "notes": notes, "metadata": meta}, indent=2))
    (out / "summary.md").write_text(table + "\n" + "".join(f"\n{n}\n" for n in notes))
    print(table)
    for n in notes:
        print(n)
    print(f"ITRR mode {folded.itrr_mode}; wrote {out}/ (summary.md, summary.json)")
    return 0 if all(r["ok"] for r in rows) else 1


def cli() -> int:
    """Console-script entry point: `main` with user errors reported as one line (exit 2)."""
    from rald_fast.cli import run_cli

    return run_cli(main)
