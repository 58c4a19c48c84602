"""Load test of the HTTP service (rald_fast/serve) against a plain loop over `Predictor`, on loopback.

    python bench/serve_load.py --model runs/rald/export/rald.onnx --out bench/results/cpu_serve_DATE

For each setting (replicas x max batch size x batch wait) the service is started on 127.0.0.1, warmed
up, and a bounded client sends N requests (one face crop each, `detect=false`, so the model and the
batching are what is measured) with C in flight at once; it stops by itself. Reported per setting:
requests/s, latency p50 / p95 / p99, the histogram of the batch sizes the replicas ran (polled from
`/stats` until every replica has answered) and the number of non-200 answers. The same N crops then
go through `Predictor.predict` one at a time in this process (no HTTP, no batching) and in batches of
the largest batch size: the service's overhead is the ratio. Raw rows: OUT/serve_load.json, the table
OUT/serve_load.md.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rald_fast.predict.predictor import Predictor  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def crops(n: int, size: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def send(url: str, body: bytes) -> tuple[int, float]:
    t = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    return code, time.perf_counter() - t


def stats(base: str, replicas: int, tries: int = 200) -> dict[str, int]:
    """The batch-size histogram summed over every replica (each answers /stats with its own pid)."""
    seen: dict[int, dict] = {}
    for _ in range(tries):
        with urllib.request.urlopen(f"{base}/stats", timeout=60) as r:
            s = json.loads(r.read())
        seen[s["replica"]] = s["batch_sizes"]
        if len(seen) >= replicas:
            break
    total: dict[str, int] = {}
    for hist in seen.values():
        for k, v in hist.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items(), key=lambda kv: int(kv[0])))


def quantiles(latencies: list[float]) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": round(1e3 * q[49], 2), "p95_ms": round(1e3 * q[94], 2), "p99_ms": round(1e3 * q[98], 2)}


def run_setting(model: str, bodies: list[bytes], concurrency: int, replicas: int, batch: int, wait_ms: float) -> dict:
    from ray import serve

    from rald_fast.serve.command import start

    port = free_port()
    args = argparse.Namespace(model=model, device="cpu", host="127.0.0.1", port=port, replicas=replicas,
                              max_batch_size=batch, batch_wait_ms=wait_ms, max_queued=4 * len(bodies),
                              max_ongoing=max(concurrency, batch), max_pixels=150.0, min_face=24, address=None)
    start(args)  # the service's own start-up (proxy time-outs, retries)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/predict?detect=false"
    with ThreadPoolExecutor(concurrency) as pool:  # warm-up: every replica, every batch size path
        list(pool.map(lambda b: send(url, b), bodies[: 4 * concurrency]))
    before = stats(base, replicas)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda b: send(url, b), bodies))
    seconds = time.perf_counter() - t0
    after = stats(base, replicas)
    serve.shutdown()
    hist = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    ok = [lat for code, lat in results if code == 200]
    return dict(kind="service", replicas=replicas, max_batch_size=batch, batch_wait_ms=wait_ms,
                concurrency=concurrency, requests=len(bodies), non_200=len(results) - len(ok),
                requests_per_s=round(len(ok) / seconds, 2), **quantiles(ok), batch_sizes=hist)


def run_plain(model: str, bodies: list[bytes], batch: int) -> list[dict]:
    from rald_fast.preprocess import decode_bytes

    predictor = Predictor.load(model, device="cpu")
    images = [np.asarray(decode_bytes(b, "crop")) for b in bodies]
    rows = []
    for size in (1, batch):
        predictor.predict(images[:size])  # warm-up
        lat, t0 = [], time.perf_counter()
        for i in range(0, len(images), size):
            t = time.perf_counter()
            predictor.predict(images[i:i + size])
            lat += [time.perf_counter() - t] * len(images[i:i + size])
        seconds = time.perf_counter() - t0
        rows.append(dict(kind=f"Predictor loop, batch {size}", requests=len(images),
                         requests_per_s=round(len(images) / seconds, 2), **quantiles(lat)))
    return rows


def markdown(rows: list[dict]) -> str:
    plain = next(r for r in rows if r["kind"] == "Predictor loop, batch 1")["requests_per_s"]
    out = ["| setting | requests/s | vs Predictor loop (batch 1) | p50 ms | p95 ms | p99 ms | batch sizes run | "
           "non-200 |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        name = r["kind"] if r["kind"] != "service" else (
            f"service: {r['replicas']} replica(s), max batch {r['max_batch_size']}, wait {r['batch_wait_ms']:g} ms, "
            f"{r['concurrency']} in flight")
        hist = ", ".join(f"{k}: {v}" for k, v in r.get("batch_sizes", {}).items()) or "-"
        out.append(f"| {name} | {r['requests_per_s']} | {r['requests_per_s'] / plain:.2f} | {r['p50_ms']} | "
                   f"{r['p95_ms']} | {r['p99_ms']} | {hist} | {r.get('non_200', 0)} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the artifact to serve (batch-independent ITRR mode)")
    ap.add_argument("--requests", type=int, default=400, help="requests per setting (default 400)")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    ap.add_argument("--settings", default="1x1x0,1x16x5,1x16x20,2x16x5",
                    help="replicas x max batch x wait ms, comma-separated (default 1x1x0,1x16x5,1x16x20,2x16x5)")
    ap.add_argument("--out", type=Path, required=True, help="folder for serve_load.json and serve_load.md")
    args = ap.parse_args(argv)
    import ray

    size = Predictor.load(args.model, device="cpu").preprocess.image_size
    bodies = crops(args.requests, size)
    rows = run_plain(args.model, bodies, 16)
    for setting in args.settings.split(","):
        replicas, batch, wait = setting.split("x")
        rows.append(run_setting(args.model, bodies, args.concurrency, int(replicas), int(batch), float(wait)))
        print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()
    args.out.mkdir(parents=True, exist_ok=True)
    import os
    import platform

    from rald_fast.revision import code_revision

    record = {"model": str(args.model), "revision": code_revision(), "command": " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(), "machine": platform.machine(),
              "ray": ray.__version__, "rows": rows}
    (args.out / "serve_load.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "serve_load.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
