"""`python -m rald_fast.serve --model ARTIFACT`: serve predictions over HTTP with dynamic batching.

Examples:
  python -m rald_fast.serve --model runs/rald/export/rald.onnx            # http://127.0.0.1:8000
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/predict
  python -m rald_fast.serve --model rald.onnx --replicas 2 --max-batch-size 32 --batch-wait-ms 10
  python -m rald_fast.serve --model rald.onnx --address ray://head:10001   # on a running Ray cluster

The model is any artifact `Predictor.load` reads (ONNX Runtime on the CPU; a checkpoint on a GPU runs
the fast path). An artifact whose ITRR mode is `batch` is refused: batching requests would mix users'
images. Runs until interrupted (Ctrl-C); docs/SERVE.md has the endpoints and the load test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from rald_fast.cli import add_device_option, run_cli
from rald_fast.predict.faces import DEFAULT_MARGIN, DEFAULT_MIN_FACE
from rald_fast.predict.predictor import Predictor
from rald_fast.preprocess import MAX_PIXELS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rald_fast.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the artifact to serve (.onnx, .pt2, .ts, .engine, a checkpoint)")
    add_device_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas, each a process (default 1)")
    p.add_argument("--max-batch-size", type=int, default=16,
                   help="most faces of concurrent requests run in one model call (default 16)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="longest wait for a batch to fill, in milliseconds (default 5)")
    p.add_argument("--max-queued", type=int, default=64,
                   help="requests waiting per replica beyond which clients get 503 (default 64)")
    p.add_argument("--max-ongoing", type=int, default=32,
                   help="requests a replica works on at once; more concurrent requests give bigger batches "
                        "(default 32)")
    p.add_argument("--max-pixels", type=float, default=MAX_PIXELS / 1e6, metavar="MP",
                   help=f"largest image accepted, in megapixels (default {MAX_PIXELS / 1e6:g}); larger: 413")
    p.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE,
                   help=f"smallest face found, in pixels of the photo (default {DEFAULT_MIN_FACE})")
    p.add_argument("--address", default=None,
                   help="a Ray cluster to join (e.g. ray://head:10001 or auto); default: start one on this machine")
    return p


def check_args(args) -> None:
    for name in ("replicas", "max_batch_size", "max_queued", "max_ongoing", "min_face"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.batch_wait_ms >= 0 or not args.max_pixels > 0:
        raise ValueError("--batch-wait-ms must be >= 0 and --max-pixels > 0")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")


def application(args):
    """The Serve application of these options (the model is checked before Ray starts)."""
    from rald_fast.serve.service import RALDService, check_servable  # Ray and FastAPI: past --help

    check_servable(Predictor.load(args.model, device="cpu" if args.device == "auto" else args.device))
    return RALDService.options(num_replicas=args.replicas, max_queued_requests=args.max_queued,
                               max_ongoing_requests=args.max_ongoing).bind(
        args.model, args.device, args.max_batch_size, args.batch_wait_ms / 1000, int(args.max_pixels * 1e6),
        args.min_face, DEFAULT_MARGIN)


def start(args) -> None:
    """Start (or join) Ray, then the HTTP proxy and the application; returns once it is ready."""
    import ray
    from ray import serve

    # Serve gives its HTTP proxy 5 s to come up; a busy or small machine needs longer (seen: a minute on
    # 2 loaded cores). Set before Ray starts, so the controller inherits it.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    for attempt in range(3):  # Serve waits 60 s for its proxy: on a loaded machine it comes up a bit later
        try:
            serve.start(http_options={"host": args.host, "port": args.port})
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, TimeoutError):
            if attempt == 2:
                raise
    serve.run(application(args), name="rald", route_prefix="/")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    start(args)
    print(f"serving {args.model} on http://{args.host}:{args.port} (POST /predict, GET /metadata, /healthz, "
          f"/stats); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


def cli() -> int:
    """Console-script entry point (`rald-serve`)."""
    return run_cli(main)
