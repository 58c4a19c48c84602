"""The HTTP service: a Ray Serve deployment over a `Predictor`, batching faces from many requests.

Endpoints (FastAPI, under Ray Serve's proxy):
- `POST /predict`: one image (a JPEG/PNG/... body, or a multipart form with a `file` field); query
  `detect` (default true: every face, as `python -m rald_fast.predict`; false: the image is one aligned
  face crop) and `topk`. Answers `application/x-ndjson`: exactly the lines of `predict --format jsonl`
  (the synthetic-model note first where it applies, then one row per face, or one `no_face` row).
- `GET /metadata`: labels, taxonomy, preprocessing, what the model was trained on, ITRR mode, revision.
- `GET /healthz`: `{"status": "ok"}` once the model is loaded.
- `GET /stats`: requests answered and the histogram of the batch sizes the model ran (load tests).

Dynamic batching (`serve.batch`): the crops of concurrent requests are stacked into one predictor
call of at most `max_batch_size` faces, waiting at most `batch_wait_s` for a batch to fill. This is
safe only because the predictor is batch-independent (ITRR in `bank` or `self` mode): an artifact in
the paper's `batch` mode, whose answers depend on the other images of the batch (and would leak them
between users), is refused (`check_servable`). Bad input is a 4xx with a one-line JSON error: 415 for
a body that is not an image or a wrong content type, 413 over the pixel limit, 400 for bad options.
Beyond `max_queued_requests` waiting at a replica Ray Serve answers 503, and the service keeps serving.
"""

import asyncio
import io
import os
from collections import Counter

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from rald_fast.artifacts import BATCH_INDEPENDENT_MODES
from rald_fast.errors import DataError, ImageTooLarge
from rald_fast.predict.faces import DEFAULT_MARGIN, DEFAULT_MIN_FACE, HaarFaceDetector, to_results
from rald_fast.predict.pipeline import Frame, RowWriter, detect_faces, face_crops, face_rows
from rald_fast.predict.predictor import Predictions, Predictor
from rald_fast.preprocess import MAX_PIXELS, decode_bytes
from rald_fast.revision import code_revision

# no `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time
IMAGE_TYPES = ("image/", "application/octet-stream")

app = FastAPI(title="rald_fast", description="RALD fine-grained facial expressions of every face in a photo")


def check_servable(predictor: Predictor) -> None:
    """Dynamic batching mixes users' images in one forward: refuse a model whose answers depend on them."""
    if predictor.itrr_mode not in BATCH_INDEPENDENT_MODES:
        raise ValueError(f"{predictor.path}: ITRR mode {predictor.itrr_mode!r} makes each answer depend on the other "
                         f"images of its batch, so batching requests would mix (and leak) users' photos; serve an "
                         f"artifact exported in a batch-independent mode: {', '.join(BATCH_INDEPENDENT_MODES[:2])} "
                         f"(python export/build_trt.py --itrr-mode bank)")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def image_bytes(request: Request) -> tuple[bytes, str]:
    """(the encoded image, a name for messages) from a raw body or a multipart `file` field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise HTTPException(400, "multipart body without a 'file' field holding the image")
        return await upload.read(), upload.filename or "file"
    if not kind.startswith(IMAGE_TYPES):
        raise HTTPException(415, f"content type {kind or 'none'!r}: send an image (image/jpeg, image/png, ...) "
                                 "or multipart/form-data with a 'file' field")
    return await request.body(), "body"


@serve.deployment(name="rald")
@serve.ingress(app)
class RALDService:
    """One replica: a Predictor, the face detector, and the batching of faces across requests."""

    def __init__(self, model: str, device: str = "auto", max_batch_size: int = 16, batch_wait_s: float = 0.005,
                 max_pixels: int = MAX_PIXELS, min_face: int = DEFAULT_MIN_FACE, margin: float = DEFAULT_MARGIN):
        self.predictor = Predictor.load(model, device=device)
        check_servable(self.predictor)
        self.detector = HaarFaceDetector(min_face=min_face)
        self.max_pixels, self.margin = max_pixels, margin
        self.note = self.predictor.provenance_note()
        self.batch_sizes: Counter[int] = Counter()
        self.requests = 0
        self.predict_crops.set_max_batch_size(max_batch_size)
        self.predict_crops.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict_crops(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """The probabilities of face crops from any requests, in one predictor call."""
        self.batch_sizes[len(crops)] += 1
        return list(self.predictor.predict(np.stack(crops)).probs)

    @app.post("/predict")
    async def predict(self, request: Request, detect: bool = True, topk: int = 3):
        if not 1 <= topk <= self.predictor.taxonomy.num_fine:
            return error(400, f"topk must be in 1..{self.predictor.taxonomy.num_fine}, got {topk}")
        try:
            data, name = await image_bytes(request)
            image = np.asarray(decode_bytes(data, name, self.max_pixels))
        except HTTPException as e:
            return error(e.status_code, e.detail)
        except ImageTooLarge as e:
            return error(413, str(e))
        except DataError as e:
            return error(415, str(e))
        boxes = detect_faces(image, self.detector if detect else None)
        crops = face_crops(image, boxes, self.predictor.preprocess.image_size, self.margin, detect)
        probs = await asyncio.gather(*(self.predict_crops(c) for c in crops))
        taxonomy = self.predictor.taxonomy
        results = to_results(Predictions(np.stack(probs), taxonomy), boxes, taxonomy, topk) if probs else []
        out = io.StringIO()
        writer = RowWriter(out, "jsonl", topk, self.note)
        for row in face_rows(Frame(name, 0, boxes=boxes, results=results)):
            writer.write(row)
        self.requests += 1
        return Response(out.getvalue(), media_type="application/x-ndjson")

    @app.get("/metadata")
    def metadata(self) -> dict:
        p = self.predictor
        return {"labels": list(p.taxonomy.fine), "taxonomy": p.taxonomy.to_dict(), "preprocess": p.preprocess.to_dict(),
                "trained_on": p.trained_on, "itrr_mode": p.itrr_mode, "artifact": p.path.name, "kind": p.kind,
                "revision": code_revision(), "synthetic_note": self.note}

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/stats")
    def stats(self) -> dict:
        """This replica's counts (a load test polls until it has seen every replica: `replica`)."""
        return {"replica": os.getpid(), "requests": self.requests,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}
