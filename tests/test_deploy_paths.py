"""The card's other deployment paths: a TorchScript `.ts` artifact (Python and C++), the ONNX
file under OpenCV DNN (loaded in a subprocess, so a crash fails a test instead of killing pytest).

The tiny checkpoint and its artifacts come from one build per session, shared with
tests/test_export.py (`exported_artifacts` in tests/conftest.py)."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rald_fast.errors import ArtifactError
from rald_fast.predict import Predictor

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def built(exported_artifacts):
    """The session's tiny checkpoint and its artifacts (tests/conftest.py)."""
    return exported_artifacts


def faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (rng.integers(20, 60), rng.integers(20, 60), 3), dtype=np.uint8)
            for _ in range(n)]


# --- TorchScript ----------------------------------------------------------------------------------
def test_ts_is_built_checked_and_carries_the_metadata(built):
    out = built["out"]
    assert (out / "rald.ts").is_file() and (out / "rald.ts.json").is_file()
    rows = [r for r in json.loads((out / "summary.json").read_text())["rows"] if r["artifact"].startswith("ts")]
    assert {r["batch"] for r in rows} == {1, 4, 16} and all(r["ok"] for r in rows)
    sidecar = json.loads((out / "rald.ts.json").read_text())
    assert sidecar["artifact"] == "rald.ts" and sidecar["itrr_mode"] == "bank"
    with zipfile.ZipFile(out / "rald.ts") as z:  # extra files: what C++ reads without a JSON parser
        extra = {Path(n).name: z.read(n).decode() for n in z.namelist() if "/extra/" in n}
    assert json.loads(extra["rald_fast"])["taxonomy"] == sidecar["taxonomy"]
    assert extra["rald_fast.version"] == "1" and extra["rald_fast.image_size"] == "32"
    assert extra["rald_fast.fine"].split("\n") == sidecar["taxonomy"]["fine"]


def test_ts_predicts_what_the_checkpoint_and_onnx_predict(built):
    ims = faces(7)
    ref = Predictor.load(built["ckpt"], device="cpu").predict(ims)
    for name in ("rald.ts", "rald.onnx"):
        p = Predictor.load(built["out"] / name, device="cpu")
        assert p.itrr_mode == "bank" and p.max_batch in (None, 16)
        out = p.predict(ims, batch_size=3)
        alone = np.concatenate([p.predict([im]).probs for im in ims])
        np.testing.assert_allclose(out.probs, alone, atol=1e-5)
        np.testing.assert_allclose(out.probs, ref.probs, atol=1e-4)
        assert out.fine == ref.fine
    assert Predictor.load(built["out"] / "rald.ts", device="cpu").kind == "torchscript"


def test_ts_refuses_junk_and_foreign_archives(built, tmp_path):
    import torch

    (tmp_path / "junk.ts").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="cannot load as a TorchScript archive"):
        Predictor.load(tmp_path / "junk.ts")
    with pytest.warns(FutureWarning):  # TorchScript is deprecated; our loader keeps it quiet
        plain = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
        torch.jit.save(plain, str(tmp_path / "plain.ts"))
    with pytest.raises(ArtifactError, match="not a rald_fast artifact"):
        Predictor.load(tmp_path / "plain.ts")


def test_cpp_example_runs_the_ts_like_python(built, tmp_path):
    if not (shutil.which("cmake") and shutil.which("c++")):
        pytest.skip("needs cmake and a C++20 compiler")
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", str(ROOT / "cpp"), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
                ["cmake", "--build", str(build), "-j2"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    batch = np.random.default_rng(4).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", batch)
    exe, ts = str(build / "rald_predict"), str(built["out"] / "rald.ts")
    res = subprocess.run([exe, ts, str(tmp_path / "images.npy"), "--topk", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.strip().splitlines()]
    want = Predictor.load(built["out"] / "rald.onnx").predict(batch)
    assert [r[1] for r in rows] == want.fine and [r[2] for r in rows] == want.coarse
    probs = np.array([[float(v) for v in r[5].split()] for r in rows])
    np.testing.assert_allclose(probs, want.probs, atol=1e-5)
    np.save(tmp_path / "bad.npy", batch[:, :16])
    res = subprocess.run([exe, ts, str(tmp_path / "bad.npy")], capture_output=True, text=True)
    assert res.returncode == 2 and "expected uint8 images (N, 32, 32, 3)" in res.stderr


# --- OpenCV DNN -----------------------------------------------------------------------------------
def test_opencv_dnn_loads_the_onnx_file_and_matches_onnx_runtime(built):
    """In a child process (rald_fast.export.opencv): OpenCV 4.14 segfaulted on the exporter's GELU."""
    import onnxruntime as ort

    from rald_fast.export.opencv import run_opencv

    onnx_path = built["out"] / "rald.onnx"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for n in (1, 3, 16):
        x = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.float32)
        got = run_opencv(onnx_path, x)
        logits, probs = session.run(None, {"images": x})
        np.testing.assert_allclose(got["logits"], logits, atol=1e-4)
        np.testing.assert_allclose(got["probs"], probs, atol=1e-5)
    rows = json.loads((built["out"] / "summary.json").read_text())["rows"]
    assert any(r["artifact"].startswith("onnx (OpenCV DNN") and r["ok"] for r in rows)


def test_gelu_rewrite_is_what_opencv_needs(tmp_path):
    """The exporter's GELU order, alone, crashes OpenCV's importer; the rewritten order loads and
    gives what ONNX Runtime gives for both. Guards the reason for formats.reorder_erf_gelu."""
    import cv2
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from rald_fast.artifacts import ArtifactError
    from rald_fast.export.formats import reorder_erf_gelu
    from rald_fast.export.opencv import run_opencv

    consts = [numpy_helper.from_array(np.array(v, np.float32), k)
              for k, v in (("sqrt2", 2 ** 0.5), ("one", 1.0), ("half", 0.5), ("w", np.eye(3 * 4 * 4)))]
    nodes = [helper.make_node("Reshape", ["images", "shape"], ["x0"]),
             helper.make_node("MatMul", ["x0", "w"], ["x"]),
             helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["half", "a"], ["m"]),
             helper.make_node("Mul", ["x", "m"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])]
    consts.append(numpy_helper.from_array(np.array([-1, 48], np.int64), "shape"))
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", 48])
                               for k in ("logits", "probs")], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = np.random.default_rng(0).uniform(-3, 3, (2, 3, 4, 4)).astype(np.float32)
    onnx.save(model, str(tmp_path / "exporter_order.onnx"))
    want = ort.InferenceSession(str(tmp_path / "exporter_order.onnx")).run(None, {"images": x})
    if cv2.__version__.startswith("4.14."):  # the version this was found with; a later one may load it
        with pytest.raises(ArtifactError, match="OpenCV DNN crashed"):
            run_opencv(tmp_path / "exporter_order.onnx", x)
    assert reorder_erf_gelu(model.graph) == 1
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    got_ort = ort.InferenceSession(str(tmp_path / "rewritten.onnx")).run(None, {"images": x})
    got_cv = run_opencv(tmp_path / "rewritten.onnx", x)
    for a, b, c in zip(want, got_ort, (got_cv["logits"], got_cv["probs"])):
        np.testing.assert_allclose(b, a, atol=1e-6)
        np.testing.assert_allclose(c, a, atol=1e-5)
