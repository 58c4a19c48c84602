"""The HTTP service (rald_fast/serve) on a local Ray Serve, and the Triton model repository.

The service runs the session's tiny exported ONNX model (ITRR `bank` mode) on 127.0.0.1. Batching is
safe: the same photo gets the same probabilities alone and inside concurrent bursts of other photos,
and batches of more than one request do form. Bad input gets a 4xx with a one-line JSON error; beyond
the queue bound clients get 503 while the service keeps answering. An artifact in `batch` mode is
refused. The Triton repository's config.pbtxt is parsed with tritonclient's model-config protobuf.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, data: bytes, content_type: str = "image/png", timeout: float = 120) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def rows(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def args_for(model: Path, port: int, **kw) -> Namespace:
    base = dict(model=str(model), device="cpu", host="127.0.0.1", port=port, replicas=1, max_batch_size=16,
                batch_wait_ms=20.0, max_queued=64, max_ongoing=32, max_pixels=150.0, min_face=24, address=None)
    return Namespace(**{**base, **kw})


@pytest.fixture(scope="module")
def service(exported_artifacts):
    import ray
    from ray import serve

    from rald_fast.serve.command import start

    port = free_port()
    model = exported_artifacts["out"] / "rald.onnx"
    start(args_for(model, port, max_pixels=1.0))
    yield {"url": f"http://127.0.0.1:{port}", "model": model, "port": port}
    serve.shutdown()
    ray.shutdown()


def faces(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(n)]


def test_health_metadata_and_the_predict_schema(service, astronaut):
    url = service["url"]
    assert get(f"{url}/healthz") == {"status": "ok"}
    meta = get(f"{url}/metadata")
    assert len(meta["labels"]) == 33 and meta["itrr_mode"] == "bank" and meta["trained_on"]["synthetic"]
    assert meta["preprocess"]["image_size"] == 32 and meta["artifact"] == "rald.onnx"
    status, text = post(f"{url}/predict", png(astronaut))
    lines = rows(text)
    assert status == 200 and lines[0]["status"] == "note" and "synthetic faces only" in lines[0]["message"]
    assert [r["status"] for r in lines[1:]] == ["ok"] and len(lines[1]["box"]) == 4
    assert set(lines[1]) == {"source", "frame", "face", "box", "status", "fine", "fine_prob", "coarse",
                             "coarse_prob", "valence", "topk", "message"}  # predict --format jsonl's rows
    status, text = post(f"{url}/predict?detect=false&topk=5", png(faces(1)[0]))
    assert status == 200 and len(rows(text)[1]["topk"]) == 5
    blank = np.full((64, 64, 3), 200, np.uint8)
    assert rows(post(f"{url}/predict", png(blank))[1])[1]["status"] == "no_face"


def test_batching_never_changes_an_answer_and_batches_form(service):
    url = service["url"]
    crops = faces(24, seed=1)
    alone = rows(post(f"{url}/predict?detect=false&topk=33", png(crops[0]))[1])[1]["topk"]
    before = get(f"{url}/stats")["batch_sizes"]
    with ThreadPoolExecutor(12) as pool:  # bursts: crop 0 among 23 others, several times
        burst = list(pool.map(lambda c: post(f"{url}/predict?detect=false&topk=33", png(c)),
                              crops + [crops[0]] * 6 + crops))
    assert all(status == 200 for status, _ in burst)
    for _, text in burst[:1] + burst[24:30] + burst[30:31]:
        got = rows(text)[1]["topk"]
        assert [label for label, _ in got] == [label for label, _ in alone]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in alone], atol=1e-6)
    after = get(f"{url}/stats")["batch_sizes"]
    grown = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    assert max(grown) > 1, f"no batch of more than one request formed: {grown}"


def test_bad_requests_get_a_4xx_with_a_one_line_json_error(service):
    url = service["url"]
    for data, kind, code, words in [(b"not an image", "image/png", 415, "cannot decode image"),
                                    (png(faces(1)[0]), "text/plain", 415, "content type 'text/plain'"),
                                    (png(np.zeros((1100, 1000, 3), np.uint8)), "image/png", 413, "pixel limit"),
                                    (b"", "image/jpeg", 415, "cannot decode")]:
        status, text = post(f"{url}/predict", data, kind)
        assert status == code and len(text.strip().splitlines()) == 1, (status, text)
        assert words in json.loads(text)["error"], text
    status, text = post(f"{url}/predict?topk=0", png(faces(1)[0]))
    assert status == 400 and "topk" in json.loads(text)["error"]
    assert get(f"{url}/healthz") == {"status": "ok"}  # still serving


def test_beyond_the_queue_bound_clients_get_503_and_the_service_goes_on(service, astronaut):
    from ray import serve

    from rald_fast.serve.command import application

    url = service["url"]
    serve.run(application(args_for(service["model"], service["port"], max_ongoing=1, max_queued=1)),
              name="rald", route_prefix="/")
    big = png(np.tile(astronaut, (2, 2, 1)))  # detection takes a while: requests pile up
    with ThreadPoolExecutor(16) as pool:
        codes = [s for s, _ in pool.map(lambda _: post(f"{url}/predict", big), range(16))]
    assert 503 in codes and 200 in codes, codes
    assert get(f"{url}/healthz") == {"status": "ok"}
    serve.run(application(args_for(service["model"], service["port"], max_pixels=1.0)), name="rald",
              route_prefix="/")


def test_an_artifact_in_batch_mode_is_refused(checkpoint):
    from rald_fast.predict.predictor import Predictor
    from rald_fast.serve.service import check_servable

    check_servable(Predictor.load(checkpoint, device="cpu"))  # bank (stored) or self: fine
    with pytest.raises(ValueError, match=r"ITRR mode 'batch'.*leak.*bank, self"):
        check_servable(Predictor.load(checkpoint, device="cpu", itrr_mode="batch"))


def test_serve_help_loads_neither_ray_nor_the_model():
    code = ("import runpy, sys\nsys.argv = ['x', '--help']\n"
            "try:\n    runpy.run_module('rald_fast.serve', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'fastapi') "
            "or m.startswith('rald_fast.models')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and eval(r.stdout.strip().splitlines()[-1]) == [], r.stdout + r.stderr
    assert "--max-batch-size" in r.stdout and "--replicas" in r.stdout


def test_triton_repository_config_matches_the_artifact(exported_artifacts, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from rald_fast.artifacts import read_sidecar
    from rald_fast.export.build import main

    out = tmp_path / "triton"
    assert main(["--checkpoint", str(exported_artifacts["ckpt"]), "--formats", "triton", "--out", str(out),
                 "--max-batch", "16", "--opt-batch", "4"]) == 0
    meta = read_sidecar(out / "rald.onnx")
    model_dir = out / "model_repository" / "rald"
    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    s, classes = meta["preprocess"]["image_size"], len(meta["taxonomy"]["fine"])
    assert cfg.name == "rald" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == meta["max_batch"]
    (inp,) = cfg.input
    assert inp.name == meta["input"]["name"] == "images" and list(inp.dims) == [3, s, s]
    assert inp.data_type == model_config_pb2.TYPE_FP32
    assert [o.name for o in cfg.output] == list(meta["outputs"]) == ["logits", "probs"]
    assert all(list(o.dims) == [classes] and o.data_type == model_config_pb2.TYPE_FP32 for o in cfg.output)
    assert cfg.output[1].label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text().split("\n")[:-1] == meta["taxonomy"]["fine"]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]
    assert (model_dir / "1" / "model.onnx").read_bytes() == (out / "rald.onnx").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert any(r["artifact"].startswith("triton repository") and r["ok"] for r in summary["rows"])
    assert not (out / "model_repository" / "rald_trt").exists()  # no TensorRT engine here
