"""Export and the predictor: ONNX and .pt2 parity, metadata, every backend agreeing,
the C++ example against Python, and a clear message for each bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rald_fast.export import tensorrt as trt_export
from rald_fast.artifacts import ArtifactError, read_sidecar, write_sidecar
from rald_fast.predict import Predictor

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def exported(exported_artifacts):
    """The session's tiny checkpoint and its artifacts (tests/conftest.py)."""
    return exported_artifacts


def faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (rng.integers(20, 60), rng.integers(20, 60), 3), dtype=np.uint8)
            for _ in range(n)]


def test_build_writes_checked_artifacts_and_a_summary(exported):
    out = exported["out"]
    for name in ("rald.onnx", "rald.onnx.json", "rald.pt2", "rald.pt2.json", "summary.md", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert {r["batch"] for r in summary["rows"]} == {1, 4, 16}
    assert all(r["ok"] and r["cosine_logits"] > 0.99999 for r in summary["rows"])
    assert "| artifact | size (MB) | batch | max abs diff (logits)" in exported["stdout"]
    if trt_export.missing():
        assert any("TensorRT artifacts not built" in n and "pip install" in n for n in summary["notes"])


def test_onnx_has_a_named_dynamic_batch_and_carries_the_metadata(exported):
    import onnx

    model = onnx.load(str(exported["out"] / "rald.onnx"))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.shape.dim[0].dim_param
    assert [o.name for o in model.graph.output] == ["logits", "probs"]
    meta = json.loads({p.key: p.value for p in model.metadata_props}["rald_fast"])
    assert meta["preprocess"]["image_size"] == 32 and meta["itrr_mode"] == "bank"
    assert len(meta["taxonomy"]["fine"]) == 33 and meta["input"]["value_range"] == [0, 255]


def test_every_backend_gives_the_same_batch_independent_answers(exported):
    ims = faces(7)
    results = {}
    for path in (exported["ckpt"], exported["out"] / "rald.onnx", exported["out"] / "rald.pt2"):
        p = Predictor.load(path)
        assert p.itrr_mode == "bank" and p.preprocess.image_size == 32
        assert p.synthetic and p.trained_on["train_images"] == 33  # provenance travels into every artifact
        out = p.predict(ims, batch_size=3)
        alone = np.concatenate([p.predict([im]).probs for im in ims])
        np.testing.assert_allclose(out.probs, alone, atol=1e-5)
        results[p.kind] = out
    ref = results["checkpoint"]
    assert len(ref.fine) == 7 and len(ref.coarse) == 7 and ref.coarse_probs.shape == (7, 6)
    np.testing.assert_allclose(ref.coarse_probs.sum(1), 1, atol=1e-5)
    assert ref.topk(3)[0][0][0] == ref.fine[0]
    for kind in ("onnx", "pt2"):
        np.testing.assert_allclose(results[kind].probs, ref.probs, atol=1e-4)
        assert results[kind].fine == ref.fine


def test_cpp_example_prints_what_python_predicts(exported, tmp_path):
    if not (shutil.which("cmake") and shutil.which("c++")):
        pytest.skip("needs cmake and a C++20 compiler")
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", str(ROOT / "cpp"), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
                ["cmake", "--build", str(build), "-j2"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rng = np.random.default_rng(4)
    batch = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", batch)
    exe, pt2 = str(build / "rald_predict"), str(exported["out"] / "rald.pt2")
    res = subprocess.run([exe, pt2, str(tmp_path / "images.npy"), "--topk", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.strip().splitlines()]
    want = Predictor.load(exported["out"] / "rald.onnx").predict(batch)
    assert [r[1] for r in rows] == want.fine and [r[2] for r in rows] == want.coarse
    probs = np.array([[float(v) for v in r[5].split()] for r in rows])
    np.testing.assert_allclose(probs, want.probs, atol=1e-5)
    assert len(rows[0][4].split()) == 2
    np.save(tmp_path / "bad.npy", batch[:, :16])
    res = subprocess.run([exe, pt2, str(tmp_path / "bad.npy")], capture_output=True, text=True)
    assert res.returncode == 2 and "expected uint8 images (N, 32, 32, 3)" in res.stderr


# --- bad input ------------------------------------------------------------------------------------
def build(args):
    return subprocess.run([sys.executable, str(ROOT / "export" / "build_trt.py"), *args],
                          capture_output=True, text=True)


def test_build_rejects_bad_options_by_name(exported, tmp_path):
    res = build(["--checkpoint", str(exported["ckpt"]), "--formats", "onnx,tflite"])
    assert res.returncode == 2 and "--formats: unsupported format tflite" in res.stderr
    res = build(["--checkpoint", str(tmp_path / "missing.pt")])
    assert res.returncode == 2 and "missing.pt" in res.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    res = build(["--checkpoint", str(tmp_path / "junk.pt")])
    assert res.returncode == 2 and "junk.pt" in res.stderr


def test_engine_refuses_foreign_and_outdated_artifacts(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported["out"] / "rald.onnx"))
    entry = next(p for p in model.metadata_props if p.key == "rald_fast")
    meta = json.loads(entry.value)
    entry.value = json.dumps(dict(meta, version=99))
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(ArtifactError, match="format version 99.*reads version 1"):
        Predictor.load(tmp_path / "old.onnx")
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ArtifactError, match="not a rald_fast artifact"):
        Predictor.load(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="not a readable ONNX file"):
        Predictor.load(tmp_path / "junk.onnx")
    (tmp_path / "junk.pt2").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="cannot load as an AOTInductor package"):
        Predictor.load(tmp_path / "junk.pt2")
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="unknown model kind"):
        Predictor.load(tmp_path / "model.tflite")
    with pytest.raises(ArtifactError, match="no such model file"):
        Predictor.load(tmp_path / "absent.onnx")


def test_tensorrt_paths_say_what_is_missing(tmp_path):
    if not trt_export.missing():
        pytest.skip("TensorRT is installed here: the parity test covers it")
    (tmp_path / "m.engine").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="cannot run a TensorRT engine here.*tensorrt"):
        Predictor.load(tmp_path / "m.engine")


def test_engine_sidecar_must_match_the_engine(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine-1")
    write_sidecar(engine, {"format": "rald_fast-artifact", "version": 1}, with_hash=True)
    assert read_sidecar(engine, require_hash=True)["artifact"] == "m.engine"
    engine.write_bytes(b"engine-2")
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        read_sidecar(engine, require_hash=True)
    (tmp_path / "n.engine").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="metadata file .*n.engine.json is missing"):
        read_sidecar(tmp_path / "n.engine")


def test_predict_names_the_expected_input(exported):
    p = Predictor.load(exported["out"] / "rald.onnx")
    with pytest.raises(ArtifactError, match="dtype float32, expected uint8 RGB"):
        p.predict(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ArtifactError, match=r"shape \(32, 32, 2\), expected \(H, W, 3\)"):
        p.predict([np.zeros((32, 32, 2), np.uint8)])
    rgba = np.zeros((32, 32, 4), np.uint8)  # an RGBA array is read like an RGBA photo: alpha dropped
    np.testing.assert_array_equal(p.predict([rgba]).probs, p.predict([rgba[..., :3]]).probs)
    with pytest.raises(ArtifactError, match="a PIL image, a uint8 RGB array"):
        p.predict(torch.zeros(1, 3, 32, 32))
    gray = p.predict([np.full((40, 30), 128, np.uint8)])
    assert gray.probs.shape == (1, 33)
