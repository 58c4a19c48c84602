"""Drawing the answers on a photo: each face's box and label, coloured by valence, and a banner.

Used by `python -m rald_fast.predict --annotate` and `rald_fast.predict.pipeline`'s callers; OpenCV
draws (imported when drawing, like every use of cv2 here: rald_fast/predict/faces.py).
"""

from __future__ import annotations

import numpy as np

from rald_fast.predict.faces import FaceResult, _cv2

VALENCE_COLOURS = {"pleasant": (60, 200, 90), "unpleasant": (230, 70, 60)}  # RGB
OTHER_COLOUR = (250, 200, 40)


def face_label(r: FaceResult) -> str:
    text = f"{r.fine} {r.fine_prob:.2f}"
    return f"{text} | {r.coarse}" if r.coarse and r.coarse != r.fine else text


def draw_faces(image: np.ndarray, results: list[FaceResult], banner: str | None = None) -> np.ndarray:
    """A copy of RGB `image` with each face's box and label drawn, coloured by valence.

    Text size follows the image size, so labels read the same on every face; a label goes above
    its box, or inside the box's top edge when there is no room above. `banner` (for example
    "model trained on synthetic faces only") is written across the bottom of the image.
    """
    cv2 = _cv2()
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    scale = float(np.clip(max(h, w) / 1000, 0.4, 2.0))
    thick = max(1, round(scale * 1.5))
    font = cv2.FONT_HERSHEY_SIMPLEX
    for r in results:  # every box first, so no box is drawn over a label
        x, y, bw, bh = r.box
        colour = VALENCE_COLOURS.get(r.valence or "", OTHER_COLOUR)
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), colour, thick)
    for r in results:
        x, y, bw, bh = r.box
        colour = VALENCE_COLOURS.get(r.valence or "", OTHER_COLOUR)
        text = face_label(r)
        (tw, th), base = cv2.getTextSize(text, font, scale, max(1, thick - 1))
        ty = y - base - 2 if y - th - base - 2 >= 0 else y + th + 2
        tx = min(max(x, 0), max(w - tw, 0))
        cv2.rectangle(out, (tx, ty - th - 2), (tx + tw, ty + base), colour, -1)
        cv2.putText(out, text, (tx, ty), font, scale, (0, 0, 0), max(1, thick - 1), cv2.LINE_AA)
    if banner:
        (tw, th), base = cv2.getTextSize(banner, font, scale, max(1, thick - 1))
        fit = min(scale, scale * (w - 4) / max(tw, 1))  # shrink a long banner to the image width
        (tw, th), base = cv2.getTextSize(banner, font, fit, 1)
        cv2.rectangle(out, (0, h - th - base - 4), (w - 1, h - 1), (0, 0, 0), -1)
        cv2.putText(out, banner, (2, h - base - 2), font, fit, (255, 255, 255), 1, cv2.LINE_AA)
    return out
