"""Shared fixtures: every RNG seeded, synthetic data cached per session, tiny configs, and the mode
Triton's kernels run in.

Triton's CPU interpreter can only be switched on before `triton` is first imported
(rald_fast/kernels/_runtime.py). On a machine without CUDA this file switches it on for the whole
test session, so every kernel test runs in-process against its PyTorch reference. The few tests that
need Triton in compiled mode (compiling the kernels for sm_90, the error for CPU tensors outside the
interpreter) are marked `compiled_triton`: in an interpreted session they are deselected here and
`test_compiled_triton_in_subprocess` runs them in a child process started with TRITON_INTERPRET=0.
Nothing is skipped for being in the wrong mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # before anything imports triton (rald_fast.kernels does)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from rald_fast import kernels  # noqa: E402
from rald_fast.kernels.testing import kernel_device, seed_everything  # noqa: E402

COMPILED_MARK = "compiled_triton"


def pytest_configure(config):
    config.addinivalue_line("markers", f"{COMPILED_MARK}: needs Triton in compiled mode (run in a "
                                       "subprocess when this session interprets)")


def pytest_collection_modifyitems(config, items):
    if not kernels.interpret_mode():
        return
    keep = [it for it in items if COMPILED_MARK not in it.keywords]
    gone = [it for it in items if COMPILED_MARK in it.keywords]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = keep


@pytest.fixture(autouse=True)
def seeded():
    seed_everything(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def synthetic_cache(tmp_path_factory):
    """Synthetic datasets go to one temp cache for the session, never to ~/.cache."""
    path = tmp_path_factory.mktemp("synthetic_cache")
    old = os.environ.get("RALD_FAST_CACHE")
    os.environ["RALD_FAST_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RALD_FAST_CACHE", None)
    else:
        os.environ["RALD_FAST_CACHE"] = old


@pytest.fixture
def interpret():
    """Kernel tests that run Triton on CPU tensors: they need Triton's interpreter, which this
    conftest turns on for a session on a machine without CUDA."""
    if not kernels.interpret_mode():
        pytest.skip("CUDA session: Triton runs compiled, the CPU-interpreter tests do not apply")


@pytest.fixture
def device():
    """Where the kernel tests run: CPU tensors under the interpreter (a session without CUDA), CUDA
    tensors in a CUDA session, so `pytest -k kernel` on a GPU machine runs them on the GPU."""
    dev = kernel_device()
    if dev is None:
        pytest.skip("no CUDA and no Triton interpreter in this session")
    return dev


@pytest.fixture(scope="session")
def exported_artifacts(tmp_path_factory):
    """One tiny trained checkpoint and every artifact built from it by the documented command
    (`export/build_trt.py --formats onnx,pt2,trt,ts`), shared by the export and deployment tests:
    one training run, one ONNX export and one .pt2 compile per session."""
    from rald_fast.config import make_config
    from rald_fast.train.loop import fit

    tmp = tmp_path_factory.mktemp("export")
    # ITRR's learning relation on (RelationNorm, tied init, temperature): every artifact must carry it
    fit(make_config("tiny", "rald", out=str(tmp / "run"), epochs=1, synth_train_per_class=1,
                    synth_test_per_class=1, batch_size=16, itrr_qk_norm=True, itrr_tied_init=True,
                    itrr_temperature_cap=10.0, nnldl_relation_grad=True))
    ckpt = tmp / "run" / "last.pt"
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, str(root / "export" / "build_trt.py"), "--checkpoint", str(ckpt),
           "--formats", "onnx,pt2,trt,ts", "--out", str(tmp / "out"), "--max-batch", "16", "--opt-batch", "4"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    return {"ckpt": ckpt, "out": tmp / "out", "stdout": res.stdout}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny RALD trained for one epoch on synthetic faces (tests/test_predict.py, test_inputs.py)."""
    from rald_fast.config import make_config
    from rald_fast.train.loop import fit

    out = tmp_path_factory.mktemp("tiny_model")
    fit(make_config("tiny", "rald", out=str(out), epochs=1, synth_train_per_class=1,
                    synth_test_per_class=1, batch_size=16, eval_batch_size=16, image_size=32,
                    progress=False))
    return out / "last.pt"


@pytest.fixture(scope="session")
def predictor(checkpoint):
    from rald_fast.predict.predictor import Predictor

    return Predictor.load(checkpoint, device="cpu")


@pytest.fixture(scope="session")
def astronaut():
    """(512, 512, 3) uint8 RGB, scikit-image's bundled sample photograph (no download)."""
    import skimage.data

    return skimage.data.astronaut()
