"""ONNX and AOTInductor (`.pt2`) export of the folded model, each with a dynamic batch axis.

Both take the folded module (rald_fast/models/folded.py): float32 RGB (N, 3, S, S) in 0..255 ->
(logits, probs). The ONNX file goes through `torch.onnx.export(dynamo=True)` and `onnx.checker`; the
`.pt2` through `torch.export` and `torch._inductor.aoti_compile_and_package`, which the C++ example
loads with `AOTIModelPackageLoader`. Files are written to a temporary name and renamed, so a failed
export never leaves a half-written artifact.

The ONNX graph gets one rewrite after export (`reorder_erf_gelu`): the exporter writes GELU as
`x * (0.5 * (1 + erf(x / sqrt2)))`, and OpenCV's ONNX importer (4.14; `cv2.dnn.readNetFromONNX`)
crashes with a segmentation fault on that order while it loads the same ops in the order
`(x * (1 + erf(x / sqrt2))) * 0.5`; the rewrite only swaps which two of the tensors each `Mul` takes, so
the graph stays plain opset-18 ONNX and ONNX Runtime (which checks every build) sees the same function.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from rald_fast.artifacts import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ArtifactError
from rald_fast.files import atomic_path

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


def export_onnx(folded: nn.Module, path: str | Path, meta: dict, max_batch: int,
                opset: int = 18) -> Path:
    """ONNX file with input `images` (batch, 3, S, S) and outputs `logits`, `probs`; metadata inside."""
    import onnx

    path, s = Path(path), meta["preprocess"]["image_size"]
    example = torch.rand(2, 3, s, s) * 255
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(folded.eval(), (example,), str(tmp), input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), dynamic_shapes={INPUT_NAME: {0: batch}},
                              dynamo=True, opset_version=opset, external_data=False)
        model = onnx.load(str(tmp))
        reorder_erf_gelu(model.graph)
        onnx.checker.check_model(model, full_check=True)
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        model.doc_string = (f"rald_fast {meta['variant']} ({len(meta['taxonomy']['fine'])} fine labels), "
                            f"ITRR mode {meta['itrr_mode']}; input float32 RGB NCHW 0..255")
        onnx.save(model, str(tmp))
    return path


def reorder_erf_gelu(graph) -> int:
    """Rewrites each `Mul(x, Mul(0.5, Add(Erf(Div(x, c)), 1)))` as `Mul(Mul(x, Add(...)), 0.5)`, in
    place; returns how many. The order the torch exporter writes crashes OpenCV's ONNX importer
    (a segfault while loading, OpenCV 4.14); the rewritten one loads. Same ops, same math."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)

    def only_consumer(name, op):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    count = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div":
            continue
        x = div.input[0]
        add = only_consumer(erf.output[0], "Add")
        half = add and only_consumer(add.output[0], "Mul")
        outer = half and only_consumer(half.output[0], "Mul")
        if outer is None or x not in outer.input:
            continue
        constant = next((i for i in half.input if i != add.output[0]), None)
        if constant is None or constant == x:
            continue
        half.input[:] = [x, add.output[0]]
        outer.input[:] = [half.output[0], constant]
        count += 1
    return count


def export_pt2(folded: nn.Module, path: str | Path, meta: dict, max_batch: int,
               device: str = "cpu") -> Path:
    """AOTInductor package with a dynamic batch; metadata under the key "rald_fast"."""
    path, s = Path(path), meta["preprocess"]["image_size"]
    folded = folded.eval().to(device)
    example = torch.rand(2, 3, s, s, device=device) * 255
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with atomic_path(path, suffix=".pt2") as tmp, torch.no_grad():  # the packager wants the .pt2 extension
        program = torch.export.export(folded, (example,), dynamic_shapes={INPUT_NAME: {0: batch}})
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": flat_metadata(meta)})
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
