"""The torch-free TensorRT runner (rald_fast/export/pycuda_runner.py) against fake `tensorrt` and
`pycuda` modules: buffers, shapes, slicing, the sidecar checks. The real TensorRT/pycuda run is not
executed here (no GPU, no TensorRT); docs/DEPLOY.md says so."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from rald_fast.artifacts import ArtifactError, write_sidecar

ROOT = Path(__file__).resolve().parent.parent
S, C = 8, 5
FINE = [f"f{i}" for i in range(C)]
PARENT = ["pos", "pos", "neg", "neg", "neg"]


def weights():
    return np.random.default_rng(0).standard_normal((3 * S * S, C)).astype(np.float32)


class FakeDevice:
    """pycuda.driver: device memory as numpy arrays keyed by a fake address."""

    def __init__(self):
        self.memory, self.next, self.allocs, self.freed = {}, 4096, 0, 0
        outer = self

        class Allocation:
            def __init__(self, nbytes):
                self.addr, self.nbytes = outer.next, nbytes
                outer.next += nbytes + 4096
                outer.memory[self.addr] = np.zeros(nbytes, np.uint8)
                outer.allocs += 1

            def __int__(self):
                return self.addr

            def free(self):
                outer.freed += 1
                del outer.memory[self.addr]

        class Stream:
            handle = 1234

            def synchronize(self):
                pass

        self.Allocation, self.Stream = Allocation, Stream

    def module(self):
        m = types.ModuleType("pycuda.driver")
        m.mem_alloc = self.Allocation
        m.Stream = self.Stream
        self.pinned = 0

        def pagelocked_empty(shape, dtype):
            self.pinned += 1
            return np.empty(shape, dtype)
        m.pagelocked_empty = pagelocked_empty

        def htod(dst, src, stream):
            raw = np.ascontiguousarray(src).view(np.uint8).ravel()
            self.memory[int(dst)][:raw.size] = raw

        def dtoh(dst, src, stream):
            raw = dst.view(np.uint8).reshape(-1)
            raw[:] = self.memory[int(src)][:raw.size]
        m.memcpy_htod_async, m.memcpy_dtoh_async = htod, dtoh
        return m


def fake_tensorrt(device: FakeDevice, profile=(1, 4, 16), size=S, outputs=("logits", "probs"),
                  deserializes=True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.fake"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    trt.Logger, trt.TensorIOMode = Logger, TensorIOMode
    trt.nptype = lambda dt: np.float32
    names = ["images", *outputs]
    w = weights()

    class Context:
        def __init__(self):
            self.shapes, self.addr, self.runs = {}, {}, []

        def set_input_shape(self, name, shape):
            ok = profile[0] <= shape[0] <= profile[2] and tuple(shape[1:]) == (3, size, size)
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            return (self.shapes["images"][0], C)

        def set_tensor_address(self, name, addr):
            self.addr[name] = addr

        def execute_async_v3(self, stream):
            n = self.shapes["images"][0]
            x = device.memory[self.addr["images"]][:n * 3 * size * size * 4].view(np.float32).reshape(n, -1)
            logits = (x / 255.0) @ w
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            for name, value in (("logits", logits), ("probs", probs)):
                if name in self.addr:
                    raw = value.astype(np.float32).view(np.uint8).ravel()
                    device.memory[self.addr[name]][:raw.size] = raw
            self.runs.append(n)
            return True

    class Engine:
        num_io_tensors = len(names)

        def __init__(self):
            self.contexts = []

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "images" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, profile_index):
            return [(b, 3, size, size) for b in profile]

        def create_execution_context(self):
            self.contexts.append(Context())
            return self.contexts[-1]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine() if deserializes else None

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake(monkeypatch):
    """Installs fake tensorrt / pycuda modules; returns a function to swap in another tensorrt."""
    device = FakeDevice()
    pycuda = types.ModuleType("pycuda")
    driver = device.module()
    pycuda.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "pycuda.autoinit", types.ModuleType("pycuda.autoinit"))

    def use(**kwargs):
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(device, **kwargs))
        return device
    use()
    return use


def engine_file(tmp_path, size=S, tamper=False):
    path = tmp_path / "rald.engine"
    path.write_bytes(b"fake serialized engine")
    meta = {"format": "rald_fast-artifact", "version": 1, "preprocess": {"image_size": size},
            "taxonomy": {"fine": FINE, "parent": PARENT}, "backend": "tensorrt", "tensorrt": "10.3.0"}
    write_sidecar(path, meta, with_hash=True)
    if tamper:
        path.write_bytes(b"another engine")
    return path


def reference(x):
    logits = (x.reshape(len(x), -1) / 255.0) @ weights()
    p = np.exp(logits - logits.max(1, keepdims=True))
    return logits, p / p.sum(1, keepdims=True)


def test_runs_batches_slices_and_reuses_buffers(fake, tmp_path):
    from rald_fast.export.pycuda_runner import PycudaEngineRunner

    device = fake()
    runner = PycudaEngineRunner(engine_file(tmp_path))
    assert (runner.min_batch, runner.max_batch, runner.input_shape) == (1, 16, (3, S, S))
    rng = np.random.default_rng(1)
    for n in (3, 1, 16, 37):  # 37 > max batch 16: three slices
        x = rng.integers(0, 256, (n, 3, S, S)).astype(np.float32)
        out = runner(x)
        logits, probs = reference(x)
        assert out["probs"].shape == (n, C) and out["probs"].dtype == np.float32
        np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["probs"], probs, rtol=1e-5, atol=1e-6)
    assert runner.engine.contexts[0].runs == [3, 1, 16, 16, 16, 5]
    assert device.allocs <= 9 and device.freed == device.allocs - 3  # grown, not made per call
    assert device.pinned <= 9  # page-locked host buffers too: 6 runs would pin 18 if made per call
    labels = runner.labels(out["probs"])
    assert labels[0] == (FINE[out["probs"][0].argmax()], PARENT[out["probs"][0].argmax()])


def test_pads_up_to_the_profiles_smallest_batch(fake, tmp_path):
    from rald_fast.export.pycuda_runner import PycudaEngineRunner

    fake(profile=(4, 8, 8))
    runner = PycudaEngineRunner(engine_file(tmp_path))
    x = np.full((2, 3, S, S), 100, np.float32)
    out = runner(x)
    assert out["probs"].shape == (2, C) and runner.engine.contexts[0].runs == [4]
    np.testing.assert_allclose(out["probs"], reference(x)[1], rtol=1e-5, atol=1e-6)


def test_refuses_a_foreign_sidecar_a_bad_engine_and_bad_input(fake, tmp_path):
    from rald_fast.export.pycuda_runner import PycudaEngineRunner

    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        PycudaEngineRunner(engine_file(tmp_path, tamper=True))
    with pytest.raises(ArtifactError, match="metadata file .* is missing"):
        (tmp_path / "lone.engine").write_bytes(b"x")
        PycudaEngineRunner(tmp_path / "lone.engine")
    with pytest.raises(ArtifactError, match=r"metadata says \(N, 3, 16, 16\)"):
        PycudaEngineRunner(engine_file(tmp_path, size=16))
    fake(deserializes=False)
    with pytest.raises(ArtifactError, match="cannot deserialize.*built with TensorRT 10.3.0.*rebuild"):
        PycudaEngineRunner(engine_file(tmp_path))
    fake(outputs=("scores",))
    with pytest.raises(ArtifactError, match="returns logits, probs"):
        PycudaEngineRunner(engine_file(tmp_path))
    fake()
    runner = PycudaEngineRunner(engine_file(tmp_path))
    with pytest.raises(ArtifactError, match=r"shape \(2, 8, 8, 3\); the engine takes float32 \(N, 3, 8, 8\)"):
        runner(np.zeros((2, S, S, 3), np.float32))
    with pytest.raises(ArtifactError, match="empty batch"):
        runner(np.zeros((0, 3, S, S), np.float32))


def test_says_what_to_install_without_tensorrt_or_pycuda(monkeypatch, tmp_path):
    from rald_fast.export.pycuda_runner import PycudaEngineRunner

    for name in ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError on import
    with pytest.raises(ArtifactError, match=r"needs `tensorrt` and `pycuda`.*pip install"):
        PycudaEngineRunner(engine_file(tmp_path))


def test_importing_the_runner_does_not_import_torch():
    code = ("import sys; import rald_fast.export.pycuda_runner as r; "
            "print(json.dumps(sorted(m for m in ('torch', 'tensorrt', 'pycuda') if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []
