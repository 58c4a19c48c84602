"""TensorRT artifacts: Torch-TensorRT (dynamo IR) programs and a serialized engine built from ONNX.

Uses the TensorRT 10 API: explicit-batch networks (`create_network(0)`), `set_memory_pool_limit`,
`build_serialized_network`, named I/O tensors with `set_input_shape` / `set_tensor_address` /
`execute_async_v3` (the TensorRT 8 calls `build_engine`, `max_workspace_size` and binding indices are
gone). Supported: TensorRT 10 (setup.py's extra pins `tensorrt>=10,<11`): reduced precision is asked
for with the weakly typed `BuilderFlag.FP16` / `BF16`, which TensorRT 11 removed; with a TensorRT that
lacks them the build stops with a message saying so (`precision_flag`). Torch-TensorRT programs are
saved with the batch axis declared dynamic (`save_arguments`), so the saved program keeps the
min..max batch range it was compiled for. Nothing here runs without TensorRT and a CUDA GPU;
`missing()` says what is absent and how to install it, and the caller builds the other formats anyway.
Tests: tests/test_tensorrt_fake.py, against fake `tensorrt` / `torch_tensorrt` modules.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rald_fast.artifacts import INPUT_NAME, ArtifactError
from rald_fast.files import atomic_write

INSTALL_HINT = ("install TensorRT 10 and Torch-TensorRT built for your torch and CUDA, e.g. "
                "`pip install tensorrt torch-tensorrt` on a machine with an NVIDIA GPU and driver "
                "(see docs/DEPLOY.md)")


def missing(need_torch_tensorrt: bool = True) -> str | None:
    """None when TensorRT can build here, else a sentence naming what is missing."""
    gaps = []
    if not torch.cuda.is_available():
        gaps.append("no CUDA GPU is visible to torch")
    if importlib.util.find_spec("tensorrt") is None:
        gaps.append("the `tensorrt` Python package is not installed")
    if need_torch_tensorrt and importlib.util.find_spec("torch_tensorrt") is None:
        gaps.append("the `torch_tensorrt` package is not installed")
    return f"{'; '.join(gaps)}: {INSTALL_HINT}" if gaps else None


def build_torch_tensorrt(folded: nn.Module, out_dir: Path, stem: str, meta: dict, precision: str,
                         shapes: tuple[int, int, int]) -> list[Path]:
    """Torch-TensorRT compile (ir="dynamo", dynamic batch min/opt/max), saved twice: an
    ExportedProgram for Python (`<stem>_trt.ep`) and an AOTInductor package for C++ (`<stem>_trt.pt2`);
    the caller writes their sidecars (rald_fast/export/build.py)."""
    import torch_tensorrt

    s = meta["preprocess"]["image_size"]
    lo, opt, hi = shapes
    precisions = {"fp32": {torch.float32}, "fp16": {torch.float16, torch.float32},
                  "bf16": {torch.bfloat16, torch.float32}}[precision]
    model = folded.eval().cuda()
    inputs = [torch_tensorrt.Input(min_shape=(lo, 3, s, s), opt_shape=(opt, 3, s, s),
                                   max_shape=(hi, 3, s, s), dtype=torch.float32, name=INPUT_NAME)]
    trt_module = torch_tensorrt.compile(model, ir="dynamo", inputs=inputs, enabled_precisions=precisions,
                                        min_block_size=1)
    example = [torch.rand(opt, 3, s, s, device="cuda") * 255]
    written = []
    for suffix, fmt in (("_trt.ep", "exported_program"), ("_trt.pt2", "aot_inductor")):
        path = out_dir / f"{stem}{suffix}"
        torch_tensorrt.save(trt_module, str(path), output_format=fmt,
                            **save_arguments(torch_tensorrt.save, example, lo, hi))
        written.append(path)
    return written


def save_arguments(save, example: list[torch.Tensor], lo: int, hi: int) -> dict:
    """Keyword arguments of `torch_tensorrt.save` that re-export the program with its batch axis
    dynamic (lo..hi): without `dynamic_shapes` the retrace freezes the example's batch size."""
    import inspect

    params = inspect.signature(save).parameters
    if "dynamic_shapes" not in params:
        raise ArtifactError("this Torch-TensorRT's save() takes no dynamic_shapes, so a saved program would "
                            "only accept the example's batch size; install a newer Torch-TensorRT (one whose "
                            "torch_tensorrt.save takes dynamic_shapes) or export --formats trt")
    batch = torch.export.Dim("batch", min=lo, max=hi)
    inputs = "arg_inputs" if "arg_inputs" in params else "inputs"
    return {inputs: example, "retrace": True, "dynamic_shapes": {INPUT_NAME: {0: batch}}}


def precision_flag(trt, precision: str):
    """The builder flag of `precision` (None for fp32); a clear error where this TensorRT has none."""
    if precision == "fp32":
        return None
    flag = getattr(trt.BuilderFlag, precision.upper(), None)
    if flag is None:
        raise ArtifactError(f"TensorRT {trt.__version__} has no BuilderFlag.{precision.upper()} (weakly typed "
                            f"reduced precision is gone from TensorRT 11): this exporter supports TensorRT 10, "
                            f"`pip install 'tensorrt>=10,<11'`, or export --precision fp32")
    return flag


def build_engine_from_onnx(onnx_path: Path, engine_path: Path, meta: dict, precision: str,
                           shapes: tuple[int, int, int], workspace_gib: float = 4.0) -> Path:
    """A serialized TensorRT engine (`.engine`) from the ONNX file, one optimisation profile; its sidecar
    (`engine_metadata`, with the engine's hash) is the caller's."""
    import tensorrt as trt

    flag = precision_flag(trt, precision)  # before any build work: an unsupported TensorRT says so now
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if flag is not None:
        config.set_flag(flag)
    s = meta["preprocess"]["image_size"]
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *[(n, 3, s, s) for n in shapes])
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ArtifactError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    atomic_write(engine_path, lambda f: f.write(bytes(blob)))
    return engine_path


def engine_metadata(meta: dict, precision: str, max_batch: int) -> dict:
    """A TensorRT engine's sidecar: it is specific to the TensorRT version and GPU that built it."""
    import tensorrt as trt

    return dict(meta, precision=precision, backend="tensorrt", tensorrt=trt.__version__, max_batch=max_batch,
                gpu=torch.cuda.get_device_name())


class EngineRunner:
    """Runs a serialized engine on CUDA tensors through TensorRT 10's named-tensor API; outputs are
    allocated in the engine's own dtypes and returned as float32."""

    def __init__(self, engine_path: str | Path, device: str | torch.device = "cuda"):
        import tensorrt as trt

        self.device = torch.device(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{engine_path}: TensorRT cannot deserialize this engine (built by another "
                                f"TensorRT version or for another GPU?): rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
                       for n in names}
        profile = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_batch, self.max_batch = profile[0][0], profile[2][0]

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(self.device, self.dtypes[INPUT_NAME]).contiguous()
        if not self.context.set_input_shape(INPUT_NAME, tuple(images.shape)):
            raise ArtifactError(f"TensorRT refused input shape {tuple(images.shape)} (profile batch "
                                f"{self.min_batch}..{self.max_batch})")
        self.context.set_tensor_address(INPUT_NAME, images.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out[name] = torch.empty(shape, device=self.device, dtype=self.dtypes[name])
            self.context.set_tensor_address(name, out[name].data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not self.context.execute_async_v3(stream):
            raise ArtifactError("TensorRT engine execution failed (see its log above)")
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return {name: t.float() for name, t in out.items()}
