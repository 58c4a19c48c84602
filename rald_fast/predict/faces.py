"""Faces in photos: detect every face and crop it square with a margin (the pipeline predicts them,
drawing.py draws the answers).

Detection uses OpenCV's Viola-Jones frontal-face cascade, whose model file ships inside the
opencv-python(-headless) 4.x wheel (`cv2.data.haarcascades`), so nothing is downloaded at run time
(docs/DESIGN.md, "Face detection"). A crop is the detector's box grown by `margin` of its side on
every side, made square around the box centre; the part outside the photo is filled by repeating
the border pixels, so the face stays centred as in aligned datasets (RAF-DB "aligned"). It is then
resized by `rald_fast.preprocess.resize_square`, the resize training uses.

`rald_fast.predict.pipeline.predict_faces(predictor, image)` is the Python API of
`python -m rald_fast.predict`; both run the predictor's batch-independent `Predictor.predict`, so a
face's answer does not depend on the others.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from rald_fast.preprocess import resize_square

DEFAULT_MARGIN = 0.2   # fraction of the face box side added on each side
DEFAULT_MIN_FACE = 24  # smallest face side in pixels (the cascade's own window is 24 px)
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


class Box(NamedTuple):
    """A face box in pixels of the photo: top-left corner, width, height."""

    x: int
    y: int
    w: int
    h: int


@dataclass
class FaceResult:
    """One face's prediction. `coarse*`/`valence` are None for a flat taxonomy (RAF-DB's 7)."""

    box: Box
    fine: str
    fine_prob: float
    coarse: str | None
    coarse_prob: float | None
    valence: str | None
    topk: list[tuple[str, float]]
    probs: np.ndarray = field(repr=False)  # (C_fine,) float32, in the taxonomy's fine order


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError("face detection needs OpenCV 4: pip install 'opencv-python-headless<5'") \
            from None
    return cv2


WINDOW = 24   # the frontal cascade's detection window in pixels: the smallest face it sees at a scale
SURE = 36     # a face is looked for where it appears at least this large (1.5 windows): near 24 px the
              # cascade misses faces it finds at 30 px and more (measured on skimage's astronaut)
BAND = 80     # a finer pyramid level looks only for faces of SURE..BAND px; larger ones (>= 40 px at the
              # level below) were found there


class HaarFaceDetector:
    """Every frontal face in an RGB image, by OpenCV's bundled Haar cascade, down to `min_face` px.

    Detection runs on an image pyramid, each level contrast-equalised locally (CLAHE: a global
    histogram equalisation is dominated by a large plain background and loses faces). The coarsest
    level is the photo shrunk so its longer side is at most `max_side`, searched for every face size;
    each next level doubles the resolution and looks only for faces too small for the level below
    (SURE..BAND px), up to the scale at which a `min_face` face appears SURE px large (at most the full
    resolution). So a face of `min_face` px or more is findable whatever the photo's size, and the
    finer levels, which cost the most, scan only small windows (docs/PREDICT.md gives sizes and times).
    A box mostly inside one already found (a face part seen at a finer level) is dropped.

    Args:
        cascade: a file name in `cv2.data.haarcascades` or a path to a cascade XML.
        min_face: smallest face side to find and report, in pixels of the input image.
        max_side: the coarsest level's longer side (it finds the large faces cheaply).
        scale_factor, min_neighbors: `cv2.CascadeClassifier.detectMultiScale`'s; more neighbours
            give fewer false faces and miss more real ones.
    """

    def __init__(self, cascade: str = DEFAULT_CASCADE, min_face: int = DEFAULT_MIN_FACE,
                 max_side: int = 1280, scale_factor: float = 1.1, min_neighbors: int = 5):
        cv2 = _cv2()
        path = cascade if os.path.isfile(cascade) else os.path.join(cv2.data.haarcascades, cascade)
        self.classifier = cv2.CascadeClassifier(path)
        if self.classifier.empty():
            raise ValueError(f"cannot load the face cascade {path!r}: OpenCV 5 no longer ships the "
                             "Haar cascades; install 'opencv-python-headless<5'")
        if min_face < 1 or max_side < 64:
            raise ValueError(f"min_face must be >= 1 and max_side >= 64, got {min_face}, {max_side}")
        self.min_face, self.max_side = min_face, max_side
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))

    def levels(self, height: int, width: int) -> list[tuple[float, int]]:
        """(scale, largest window in px at that scale; 0 = no limit) of each pyramid level."""
        scale = min(1.0, self.max_side / max(height, width))
        finest = min(1.0, SURE / self.min_face)
        levels = [(scale, 0)]
        while scale < finest:
            scale = min(finest, 2 * scale)
            levels.append((scale, BAND))
        return levels

    def __call__(self, image: np.ndarray) -> list[Box]:
        """Boxes of (H, W, 3) uint8 RGB `image`, left to right."""
        cv2 = _cv2()
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        found: list[Box] = []
        for scale, largest in self.levels(*gray.shape):
            level = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale,
                                                         interpolation=cv2.INTER_AREA)
            side = max(WINDOW, int(self.min_face * scale))
            if largest and side > largest:
                continue
            hits = self.classifier.detectMultiScale(self.clahe.apply(level), self.scale_factor, self.min_neighbors,
                                                    minSize=(side, side), maxSize=(largest, largest))
            boxes = [Box(*(int(round(v / scale)) for v in b)) for b in np.asarray(hits).reshape(-1, 4)]
            for box in sorted(boxes, key=lambda b: -b.w * b.h):  # the larger of two nested boxes wins
                if min(box.w, box.h) >= self.min_face and not any(_inside(box, k) > 0.5 for k in found):
                    found.append(box)
        return sorted(found, key=lambda b: (b.x, b.y))


def _inside(a: Box, b: Box) -> float:
    """Share of the smaller box's area that lies inside the other."""
    w = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    h = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return w * h / max(1, min(a.w * a.h, b.w * b.h))


@functools.lru_cache(maxsize=4)
def default_detector(min_face: int = DEFAULT_MIN_FACE) -> HaarFaceDetector:
    return HaarFaceDetector(min_face=min_face)


def crop_face(image: np.ndarray, box: Box, size: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """(size, size, 3) uint8: the square around `box` grown by `margin` per side, border-padded."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    h, w = image.shape[:2]
    side = max(1, int(round(max(box.w, box.h) * (1 + 2 * margin))))
    x0 = int(round(box.x + box.w / 2 - side / 2))
    y0 = int(round(box.y + box.h / 2 - side / 2))
    x1, y1 = x0 + side, y0 + side
    crop = image[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    if crop.size == 0:
        raise ValueError(f"face box {tuple(box)} lies outside the {w}x{h} image")
    pad = ((max(-y0, 0), max(y1 - h, 0)), (max(-x0, 0), max(x1 - w, 0)), (0, 0))
    if any(p for pair in pad for p in pair):
        crop = np.pad(crop, pad, mode="edge")
    return resize_square(crop, size)


def whole_image(image: np.ndarray) -> Box:
    """The box of an already aligned face crop (`--no-detect`)."""
    return Box(0, 0, image.shape[1], image.shape[0])


def to_results(predictions, boxes: list[Box], taxonomy, topk: int = 3) -> list[FaceResult]:
    """The predictor's `Predictions` for a batch of crops, one `FaceResult` per box.

    The coarse probability is the coarse group's column of `coarse_probs` (the summed probability
    of its fine labels), in `taxonomy.coarse` order.
    """
    top = predictions.topk(topk)
    out = []
    for i, box in enumerate(boxes):
        probs = predictions.probs[i]
        fine = predictions.fine[i]
        coarse = predictions.coarse[i] if predictions.coarse is not None else None
        coarse_prob = None
        if coarse is not None and predictions.coarse_probs is not None:
            coarse_prob = float(predictions.coarse_probs[i, taxonomy.coarse.index(coarse)])
        valence = predictions.valence[i] if predictions.valence is not None else None
        out.append(FaceResult(box, fine, float(probs.max()), coarse, coarse_prob, valence or None,
                              [(str(k), float(p)) for k, p in top[i]], probs))
    return out
