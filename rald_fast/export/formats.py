"""ONNX and AOTInductor (`.pt2`) export of the folded model, each with a dynamic batch axis.

Both take the folded module (rald_fast/models/folded.py): float32 RGB (N, 3, S, S) in 0..255 ->
(logits, probs). The ONNX file goes through `torch.onnx.export(dynamo=True)` and `onnx.checker`; the
`.pt2` through `torch.export` and `torch._inductor.aoti_compile_and_package`, which the C++ example
loads with `AOTIModelPackageLoader`. Files are written to a temporary name and renamed, so a failed
export never leaves a half-written artifact.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from rald_fast.export.artifacts import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ArtifactError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CastWrapper(nn.Module):
    """Runs the folded model in `dtype`; the input stays float32 0..255, the outputs float32."""

    def __init__(self, folded: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.folded, self.dtype = folded.to(dtype), dtype

    def forward(self, images: torch.Tensor):
        logits, probs = self.folded(images.to(self.dtype))
        return logits.float(), probs.float()


def at_precision(folded: nn.Module, precision: str) -> nn.Module:
    if precision not in DTYPES:
        raise ArtifactError(f"--precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    return folded if precision == "fp32" else CastWrapper(folded, DTYPES[precision])


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def export_onnx(folded: nn.Module, path: str | Path, meta: dict, max_batch: int,
                opset: int = 18) -> Path:
    """ONNX file with input `images` (batch, 3, S, S) and outputs `logits`, `probs`; metadata inside."""
    import onnx

    path, s = Path(path), meta["preprocess"]["image_size"]
    example = torch.rand(2, 3, s, s) * 255
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    tmp = _tmp(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(folded.eval(), (example,), str(tmp), input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), dynamic_shapes={INPUT_NAME: {0: batch}},
                              dynamo=True, opset_version=opset, external_data=False)
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model, full_check=True)
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        model.doc_string = (f"rald_fast {meta['variant']} ({len(meta['taxonomy']['fine'])} fine labels), "
                            f"ITRR mode {meta['itrr_mode']}; input float32 RGB NCHW 0..255")
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_pt2(folded: nn.Module, path: str | Path, meta: dict, max_batch: int,
               device: str = "cpu") -> Path:
    """AOTInductor package with a dynamic batch; metadata under the key "rald_fast"."""
    path, s = Path(path), meta["preprocess"]["image_size"]
    folded = folded.eval().to(device)
    example = torch.rand(2, 3, s, s, device=device) * 255
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    tmp = _tmp(path).with_suffix(".pt2")  # the packager wants the .pt2 extension
    try:
        with torch.no_grad():
            program = torch.export.export(folded, (example,), dynamic_shapes={INPUT_NAME: {0: batch}})
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(tmp),
                inductor_configs={"aot_inductor.metadata": flat_metadata(meta)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def flat_metadata(meta: dict) -> dict[str, str]:
    """AOTInductor metadata (string -> string): the full JSON, plus the few fields a C++ consumer
    needs as plain strings, so it needs no JSON parser (cpp/rald_predict.cpp)."""
    tax = meta["taxonomy"]
    return {METADATA_KEY: json.dumps(meta),
            f"{METADATA_KEY}.version": str(meta["version"]),
            f"{METADATA_KEY}.image_size": str(meta["preprocess"]["image_size"]),
            f"{METADATA_KEY}.itrr_mode": meta["itrr_mode"],
            f"{METADATA_KEY}.fine": "\n".join(tax["fine"]),
            f"{METADATA_KEY}.coarse_of_fine": "\n".join(p or "" for p in tax["parent"])}


def compare(reference: torch.Tensor, other) -> dict:
    """Max abs difference and cosine similarity of two (N, C) outputs, flattened."""
    a = reference.detach().float().cpu().flatten()
    b = torch.as_tensor(other).detach().float().cpu().flatten()
    if a.shape != b.shape:
        raise ArtifactError(f"output shape {tuple(b.shape)} differs from PyTorch's {tuple(a.shape)}")
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()
    return {"max_abs_diff": (a - b).abs().max().item(), "cosine": cos}
