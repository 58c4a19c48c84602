"""A Triton Inference Server model repository of an exported RALD (`build_trt.py --formats triton`).

    <out>/model_repository/
      rald/config.pbtxt          platform onnxruntime_onnx, dynamic batching, named I/O, label file
      rald/labels.txt            the fine labels, one per line, in the model's output order
      rald/1/model.onnx          the ONNX artifact (metadata inside, as every artifact)
      rald_trt/...               the same with platform tensorrt_plan and 1/model.plan, where a
                                 TensorRT engine was built (it is specific to its GPU and TensorRT)

Dynamic batching puts requests of different users in one forward pass, so the repository is written
only for a batch-independent ITRR mode (`bank` or `self`). Inputs, outputs, dims and data types come
from the artifact's metadata. The server itself is not run here (no Triton server, no GPU): the test
parses config.pbtxt with the model-config protobuf that `tritonclient` ships and checks every field.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rald_fast.artifacts import BATCH_INDEPENDENT_MODES, INPUT_NAME, OUTPUT_NAMES, ArtifactError
from rald_fast.files import atomic_path, atomic_write_text

DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}


def config_pbtxt(name: str, platform: str, meta: dict, preferred: list[int], max_batch: int,
                 queue_delay_us: int) -> str:
    """The text of a model's config.pbtxt (Triton's ModelConfig in protobuf text format)."""
    s, classes = meta["preprocess"]["image_size"], len(meta["taxonomy"]["fine"])
    dtype = DTYPES[meta["input"]["dtype"]]
    outputs = ",\n".join(f'  {{ name: "{o}" data_type: TYPE_FP32 dims: [ {classes} ]'
                         + (' label_filename: "labels.txt"' if o == "probs" else "") + " }" for o in OUTPUT_NAMES)
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
            f'input [\n  {{ name: "{INPUT_NAME}" data_type: {dtype} dims: [ 3, {s}, {s} ] }}\n]\n'
            f"output [\n{outputs}\n]\n"
            f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
            "instance_group [ { count: 1 kind: KIND_AUTO } ]\n")


def _model(repo: Path, name: str, platform: str, artifact: Path, file_name: str, meta: dict, preferred: list[int],
           max_batch: int, queue_delay_us: int) -> Path:
    model_dir = repo / name
    with atomic_path(model_dir / "1" / file_name) as tmp:
        shutil.copyfile(artifact, tmp)
    atomic_write_text(model_dir / "labels.txt", "".join(f"{label}\n" for label in meta["taxonomy"]["fine"]))
    atomic_write_text(model_dir / "config.pbtxt", config_pbtxt(name, platform, meta, preferred, max_batch,
                                                               queue_delay_us))
    return model_dir


def write_model_repository(out: Path, onnx_path: Path, meta: dict, opt_batch: int, max_batch: int,
                           engine_path: Path | None = None, queue_delay_us: int = 1000) -> list[Path]:
    """Write `out/model_repository/` (module docstring); returns the model folders written."""
    if meta["itrr_mode"] not in BATCH_INDEPENDENT_MODES:
        raise ArtifactError(f"--formats triton: ITRR mode {meta['itrr_mode']!r} makes each answer depend on the "
                            "other images of its batch, and Triton's dynamic batching mixes users' requests; "
                            "export with --itrr-mode bank or self")
    repo = Path(out) / "model_repository"
    preferred = sorted({b for b in (opt_batch, max_batch) if 1 <= b <= max_batch})
    written = [_model(repo, "rald", "onnxruntime_onnx", onnx_path, "model.onnx", meta, preferred, max_batch,
                      queue_delay_us)]
    if engine_path is not None:
        written.append(_model(repo, "rald_trt", "tensorrt_plan", engine_path, "model.plan", meta, preferred,
                              max_batch, queue_delay_us))
    return written
