"""rald_fast/export/tensorrt.py against fake `tensorrt` / `torch_tensorrt` pieces (no GPU, no TensorRT here):
the TensorRT range it supports, the dynamic batch of saved Torch-TensorRT programs, and EngineRunner's
checks of the input shape and of the engine's output dtypes. docs/DEPLOY.md says what never ran."""

import ctypes
import types

import numpy as np
import pytest
import torch

from rald_fast.export import tensorrt as trt_export
from rald_fast.artifacts import ArtifactError

C, S = 5, 4


def fake_trt(flags=("FP16", "BF16"), out_dtype=np.float16, profile=(1, 2, 8)):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.fake"
    trt.BuilderFlag = types.SimpleNamespace(**{f: f"flag-{f}" for f in flags})
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: dt
    names = ["images", "logits", "probs"]

    class Context:
        def __init__(self):
            self.shape, self.addr = None, {}

        def set_input_shape(self, name, shape):
            ok = profile[0] <= shape[0] <= profile[2] and tuple(shape[1:]) == (3, S, S)
            self.shape = tuple(shape) if ok else self.shape
            return ok

        def get_tensor_shape(self, name):
            return (self.shape[0], C)

        def set_tensor_address(self, name, addr):
            self.addr[name] = addr

        def execute_async_v3(self, stream):
            n = self.shape[0]
            src = np.ctypeslib.as_array(ctypes.cast(self.addr["images"], ctypes.POINTER(ctypes.c_float)),
                                        (n, 3 * S * S))
            logits = src[:, :C] / 255.0
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            for name, value in (("logits", logits), ("probs", probs)):
                ptr = ctypes.cast(self.addr[name], ctypes.POINTER(ctypes.c_uint16))
                np.ctypeslib.as_array(ptr, (n, C))[:] = value.astype(out_dtype).view(np.uint16)
            return True

    class Engine:
        num_io_tensors = 3

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return "in" if name == "images" else "out"

        def get_tensor_dtype(self, name):
            return np.float32 if name == "images" else out_dtype

        def get_tensor_profile_shape(self, name, index):
            return [(b, 3, S, S) for b in profile]

        def create_execution_context(self):
            return Context()

    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, blob: Engine()})
    return trt


def test_engine_runner_checks_the_shape_and_reads_the_engines_output_dtype(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", fake_trt())
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    runner = trt_export.EngineRunner(path, device="cpu")
    assert runner.dtypes["probs"] == torch.float16 and (runner.min_batch, runner.max_batch) == (1, 8)
    x = torch.randint(0, 256, (3, 3, S, S)).float()
    out = runner(x)
    logits = x.reshape(3, -1)[:, :C] / 255.0
    assert out["probs"].dtype == torch.float32  # fp16 buffers read as fp16, returned as float32
    torch.testing.assert_close(out["logits"], logits, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(out["probs"], logits.softmax(-1), atol=2e-3, rtol=2e-3)
    with pytest.raises(ArtifactError, match=r"refused input shape \(9, 3, 4, 4\).*1\.\.8"):
        runner(torch.zeros(9, 3, S, S))


def test_precision_flags_of_the_supported_tensorrt_and_a_clear_stop_beyond():
    assert trt_export.precision_flag(fake_trt(), "fp32") is None
    assert trt_export.precision_flag(fake_trt(), "fp16") == "flag-FP16"
    assert trt_export.precision_flag(fake_trt(), "bf16") == "flag-BF16"
    with pytest.raises(ArtifactError, match=r"no BuilderFlag.BF16.*TensorRT 11.*tensorrt>=10,<11"):
        trt_export.precision_flag(fake_trt(flags=()), "bf16")


def test_saved_torch_tensorrt_programs_keep_a_dynamic_batch():
    def new_save(module, file_path="", *, output_format="exported_program", inputs=None, arg_inputs=None,
                 retrace=True, dynamic_shapes=None):
        pass

    def old_save(module, file_path="", *, output_format="exported_program", inputs=None, retrace=False):
        pass

    example = [torch.zeros(4, 3, S, S)]
    kw = trt_export.save_arguments(new_save, example, 1, 64)
    batch = kw["dynamic_shapes"]["images"][0]
    assert kw["arg_inputs"] is example and kw["retrace"]
    assert (batch.min, batch.max) == (1, 64)
    with pytest.raises(ArtifactError, match="dynamic_shapes"):
        trt_export.save_arguments(old_save, example, 1, 64)
