"""Which faces the detector finds in photos of each size, and what it costs (docs/PREDICT.md's table).

For each photo size and --min-face, the astronaut's face (scikit-image's sample photo, no download) is
scaled to each face size and pasted on a plain grey photo; the row says whether the bundled detector
(`rald_fast.predict.faces.HaarFaceDetector`, its image pyramid) found it, the pyramid's levels and the
detection time on this machine. `python bench/detect_sizes.py --out FILE.json` writes the raw rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rald_fast.predict.faces import HaarFaceDetector  # noqa: E402

FACE_BOX = (176, 66, 95, 95)  # the astronaut's face in skimage.data.astronaut() (x, y, w, h)


def photo_with_face(height: int, width: int, face: int) -> np.ndarray:
    import skimage.data

    a = skimage.data.astronaut()
    x, y, w, _ = FACE_BOX
    scale = face / w
    patch = np.asarray(Image.fromarray(a).resize((round(512 * scale), round(512 * scale)), Image.BILINEAR))
    canvas = np.full((height, width, 3), 200, np.uint8)
    top, left = height // 3, width // 3
    ph, pw = min(patch.shape[0], height - top), min(patch.shape[1], width - left)
    canvas[top:top + ph, left:left + pw] = patch[:ph, :pw]
    return canvas, (left + round(x * scale), top + round(y * scale), face)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1280x960,4000x3000,6000x4000", help="photo sizes WxH, comma-separated")
    ap.add_argument("--min-faces", default="24,48,96", help="--min-face values")
    ap.add_argument("--faces", default="40,60,100,200", help="pasted face sizes in px")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        for min_face in (int(v) for v in args.min_faces.split(",")):
            det = HaarFaceDetector(min_face=min_face)
            for face in (int(v) for v in args.faces.split(",")):
                image, (fx, fy, fs) = photo_with_face(h, w, face)
                t0 = time.perf_counter()
                boxes = det(image)
                secs = time.perf_counter() - t0
                found = any(abs(b.x + b.w / 2 - fx - fs / 2) < fs / 2 and abs(b.y + b.h / 2 - fy - fs / 2) < fs / 2
                            for b in boxes)
                row = dict(photo=size, min_face=min_face, face=face, found=found, boxes=len(boxes),
                           seconds=round(secs, 2), levels=[round(s, 3) for s, _ in det.levels(h, w)])
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
