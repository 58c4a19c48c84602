"""Faces from many photos and frames in predictor-sized batches, and the rows that report them.

`FacePipeline` detects and crops the faces of each frame it is given, queues the crops, and calls
the predictor once the queue holds `batch_size` faces, so a folder of one-face photos runs at the
predictor's batch throughput instead of batch 1. Frames come out in the order they went in (an input
that failed, or a frame without a face, keeps its place), each with its `FaceResult`s. Answers do
not depend on the batch they were computed in: `Predictor.predict` is batch-independent.

`predict_faces` is the one-photo Python API over it. `face_rows` turns one frame's outcome into output
rows (one per face; one `no_face` or `error` row otherwise); `RowWriter` writes them as CSV or JSON lines.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from rald_fast.predict.faces import (DEFAULT_MARGIN, DEFAULT_MIN_FACE, Box, FaceResult, crop_face, default_detector,
                                     to_results, whole_image)
from rald_fast.predict.media import read_image
from rald_fast.preprocess import as_rgb_array, resize_square

STAGES = ("decode", "detect", "crop", "predict", "write")


@dataclass
class Frame:
    """One photo or video frame in flight; `image` is kept only when someone will draw on it."""

    source: str
    index: int                      # frame number in a video, 0 for a photo
    image: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    results: list[FaceResult] = field(default_factory=list)
    error: str | None = None        # why this input produced nothing
    tag: object = None              # caller's own (where to write the annotation)


def detect_faces(image: np.ndarray, detector) -> list[Box]:
    """The face boxes of an RGB image; `detector` None: the whole image is one aligned face crop."""
    return detector(image) if detector is not None else [whole_image(image)]


def face_crops(image: np.ndarray, boxes: list[Box], size: int, margin: float, detected: bool) -> list[np.ndarray]:
    """(size, size, 3) uint8 model inputs of `boxes`: square crops with `margin` around detected faces,
    or the whole image resized as the training images are (`detected` False)."""
    if not detected:
        return [resize_square(image, size)]
    return [crop_face(image, b, size, margin) for b in boxes]


class FacePipeline:
    """Detect -> crop -> batched predict over a stream of frames.

    Args:
        predictor: a `rald_fast.predict.Predictor`.
        emit: called with each finished Frame, in input order.
        detector: image -> list[Box]; None treats every image as one aligned crop (`--no-detect`).
        margin: crop margin per side, as a fraction of the face box side.
        batch_size: faces per predictor call (capped by `predictor.max_batch`).
        keep_images: keep each frame's pixels for `emit` (annotation).
    """

    def __init__(self, predictor, emit: Callable[[Frame], None], detector=None,
                 margin: float = DEFAULT_MARGIN, topk: int = 3, batch_size: int = 32,
                 keep_images: bool = False):
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.predictor, self.emit, self.detector = predictor, emit, detector
        self.margin, self.topk, self.keep_images = margin, topk, keep_images
        self.batch_size = min(batch_size, predictor.max_batch or batch_size)
        self.size = predictor.preprocess.image_size
        self.seconds = dict.fromkeys(STAGES, 0.0)  # time per stage; decode/write are the caller's
        self.faces = 0
        self._frames: list[Frame] = []
        self._crops: list[np.ndarray] = []

    def add(self, source: str, index: int, image: np.ndarray, tag=None) -> None:
        """Queue the faces of one RGB frame; runs the predictor when a batch is full."""
        t0 = time.perf_counter()
        boxes = detect_faces(image, self.detector)
        t1 = time.perf_counter()
        self._crops += face_crops(image, boxes, self.size, self.margin, self.detector is not None)
        self.seconds["detect"] += t1 - t0
        self.seconds["crop"] += time.perf_counter() - t1
        self._queue(Frame(source, index, image if self.keep_images else None, boxes, tag=tag))

    def add_error(self, source: str, message: str, index: int = 0, tag=None) -> None:
        """An input that produced nothing keeps its place in the output order."""
        self._queue(Frame(source, index, error=message, tag=tag))

    def _queue(self, frame: Frame) -> None:
        self._frames.append(frame)
        if len(self._crops) >= self.batch_size or len(self._frames) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Predict every queued crop and emit every queued frame."""
        frames, crops = self._frames, self._crops
        self._frames, self._crops = [], []
        results: list[FaceResult] = []
        boxes = [b for f in frames for b in f.boxes]
        t0 = time.perf_counter()
        for i in range(0, len(crops), self.batch_size):
            pred = self.predictor.predict(np.stack(crops[i:i + self.batch_size]))
            results += to_results(pred, boxes[i:i + self.batch_size], self.predictor.taxonomy,
                                  self.topk)
        self.seconds["predict"] += time.perf_counter() - t0
        self.faces += len(results)
        start = 0
        for f in frames:
            f.results = results[start:start + len(f.boxes)]
            start += len(f.boxes)
            self.emit(f)


# --- rows -------------------------------------------------------------------------------------
def face_rows(frame: Frame) -> list[dict]:
    """One row per face; a frame without faces gives one `no_face` row, a failed input `error`."""
    base = {"source": frame.source, "frame": frame.index}
    if frame.error is not None:
        return [{**base, "face": None, "box": None, "status": "error", "message": frame.error}]
    if not frame.results:
        return [{**base, "face": None, "box": None, "status": "no_face",
                 "message": "no face found"}]
    return [{**base, "face": i, "box": list(r.box), "status": "ok", "fine": r.fine,
             "fine_prob": round(r.fine_prob, 6), "coarse": r.coarse,
             "coarse_prob": None if r.coarse_prob is None else round(r.coarse_prob, 6),
             "valence": r.valence, "topk": [[k, round(p, 6)] for k, p in r.topk], "message": ""}
            for i, r in enumerate(frame.results)]


class RowWriter:
    """Rows as CSV (flat columns, `top1_label`, `top1_prob`, ...) or JSON lines (nested).

    `note` (the predictor's `provenance_note()`, for a model trained on synthetic faces only) is
    written first: a `# ` comment line before the CSV header, or a JSON line with status `note`.
    """

    def __init__(self, stream: TextIO, fmt: str, topk: int, note: str | None = None):
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"--format must be csv or jsonl, got {fmt!r}")
        self.stream, self.fmt = stream, fmt
        if note and fmt == "csv":
            stream.write(f"# {note}\n")
        elif note:
            stream.write(json.dumps({"status": "note", "message": note}) + "\n")
        if fmt == "csv":
            tops = [f"top{i}_{part}" for i in range(1, topk + 1) for part in ("label", "prob")]
            self.columns = ["source", "frame", "face", "x", "y", "w", "h", "status", "fine",
                            "fine_prob", "coarse", "coarse_prob", "valence", *tops, "message"]
            self._csv = csv.DictWriter(stream, self.columns, lineterminator="\n")
            self._csv.writeheader()

    def write(self, row: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(row) + "\n")
            return
        flat = {k: v for k, v in row.items() if k in self.columns}
        if row.get("box") is not None:
            flat.update(zip("xywh", row["box"]))
        for i, (label, prob) in enumerate(row.get("topk") or [], start=1):
            flat[f"top{i}_label"], flat[f"top{i}_prob"] = label, prob
        self._csv.writerow({k: "" if v is None else v for k, v in flat.items()})


def load_image(source) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path (decoded as training decodes), a PIL image or an array."""
    if isinstance(source, (str, Path)):
        return read_image(Path(source))
    return as_rgb_array(source)


def predict_faces(predictor, image, detector=None, margin: float = DEFAULT_MARGIN,
                  min_face: int = DEFAULT_MIN_FACE, detect: bool = True, topk: int = 3,
                  batch_size: int = 64) -> list[FaceResult]:
    """Every face in `image` with its fine label, coarse group, valence and top-k probabilities.

    Args:
        predictor: a `rald_fast.predict.Predictor`.
        image: (H, W, 3) uint8 RGB array, a PIL image or an image path.
        detector: a callable image -> list[Box]; default the bundled Haar cascade.
        margin: fraction of the face box side added on each side before the square crop.
        min_face: smallest face side in pixels (for the default detector).
        detect: False treats the whole image as one aligned face crop, resized whole (no margin,
            no padding) as the training images are.
        topk: how many (label, probability) pairs each result keeps.
        batch_size: faces per predictor call (capped by `predictor.max_batch`).

    Returns:
        One FaceResult per face, left to right; an empty list when no face is found.
    """
    done = []
    pipe = FacePipeline(predictor, done.append, (detector or default_detector(min_face)) if detect else None,
                        margin, topk, batch_size)
    pipe.add("image", 0, load_image(image))
    pipe.flush()
    return done[0].results
