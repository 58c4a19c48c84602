"""Drawing helpers for the procedural face generator (see ``rald_fast.data.synthetic``).

A face is drawn from two things:

* an *expression*: a vector of ``len(EXPR_PARAMS)`` action parameters, 0 = neutral, about [-1, 1];
* a *look*: everything that is not the expression (identity, pose, lighting, occlusion, clutter,
  noise), sampled by :func:`sample_look` with a ``difficulty`` knob that scales its spread.

Drawing happens at ``SUPERSAMPLE`` x the output size with PIL ``ImageDraw`` and is downsampled
(box filter) for antialiasing. Everything is a pure function of its arguments and the numpy
``Generator`` passed in, so a seeded generator gives byte-identical images.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

EXPR_PARAMS = (
    "brow_inner",    # + raises the inner ends of the brows (sad/fear), - knits them down (anger)
    "brow_height",   # + lifts both brows (surprise), also draws forehead lines
    "eye_open",      # + wide open, - narrowed / drooping lids
    "gaze_x",        # pupil position, + = towards image right
    "gaze_y",        # pupil position, + = down
    "mouth_curve",   # + smile (corners up), - frown
    "mouth_open",    # 0 closed, 1 = wide open (negative is treated as closed)
    "mouth_width",   # + stretched, - pursed
    "mouth_asym",    # + lifts the right corner only (smirk / contempt)
    "cheek_raise",   # + cheek arcs, nasolabial folds and a squint of the lower lid
    "nose_wrinkle",  # + wrinkles at the nose bridge and a frown line between the brows
    "blush",         # + red cheeks, - pale face
)
N_PARAMS = len(EXPR_PARAMS)
SUPERSAMPLE = 2

_SKIN_LIGHT = np.array([243.0, 208.0, 182.0])
_SKIN_DARK = np.array([104.0, 66.0, 46.0])
_HAIR = np.array([[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 160, 95],
                  [150, 60, 30], [160, 160, 160], [40, 40, 60]], dtype=float)


def _u(rng: np.random.Generator, mid: float, half: float, difficulty: float) -> float:
    """Uniform in mid +- half*difficulty."""
    return float(mid + rng.uniform(-half, half) * difficulty)


def _col(c) -> tuple[int, int, int]:
    return tuple(int(min(255.0, max(0.0, float(v)))) for v in c[:3])


def _mix(a, b, t: float):
    t = min(1.0, max(0.0, float(t)))
    return (1.0 - t) * np.asarray(a, dtype=float) + t * np.asarray(b, dtype=float)


def sample_look(rng: np.random.Generator, difficulty: float = 1.0) -> dict:
    """Sample everything that is not the expression. ``difficulty`` scales each spread."""
    d = float(difficulty)
    skin = _mix(_SKIN_LIGHT, _SKIN_DARK, rng.uniform(0, 1) * min(d, 1.0) + 0.15 * (1 - min(d, 1.0)))
    skin = skin + rng.normal(0, 6, 3) * d
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3)
    p_occ = min(1.0, 0.08 * d)   # per occluder kind
    return {
        "face_w": _u(rng, 1.0, 0.15, d), "face_h": _u(rng, 1.0, 0.12, d),
        "skin": skin, "hair": hair, "hair_style": int(rng.integers(3)),
        "fringe": _u(rng, 0.6, 0.15, d), "eye_sep": _u(rng, 0.42, 0.07, d),
        "eye_size": _u(rng, 1.0, 0.15, d), "eye_y": _u(rng, 0.0, 0.03, d),
        "iris": _mix([40, 30, 20], [60, 110, 150], rng.uniform()),
        "nose": _u(rng, 1.0, 0.3, d), "mouth_y": _u(rng, 0.0, 0.03, d),
        "brow_w": _u(rng, 1.0, 0.3, d), "lip": _mix(skin, [190, 60, 70], rng.uniform(0.3, 0.7)),
        "cloth": rng.uniform(20, 235, 3),
        "angle": _u(rng, 0.0, 15.0, d), "scale": _u(rng, 1.0, 0.06, d),
        "shift": rng.uniform(-0.03, 0.03, 2) * d,
        "bg": rng.uniform(30, 225, 3), "n_clutter": int(rng.integers(0, int(1 + 4 * d) + 1)),
        "light_dir": float(rng.uniform(0, 2 * math.pi)),
        "light_amp": float(rng.uniform(0, 0.35) * d),
        "brightness": _u(rng, 1.0, 0.15, d), "contrast": _u(rng, 1.0, 0.2, d),
        "glasses": bool(rng.uniform() < p_occ), "sunglasses": bool(rng.uniform() < 0.25),
        "hand": bool(rng.uniform() < 0.7 * p_occ), "rect": bool(rng.uniform() < p_occ),
        "noise": float(rng.uniform(0, 6) * d), "blur": float(rng.uniform(0, 0.6) * d),
    }


def _draw_clutter(dr: ImageDraw.ImageDraw, S: int, n: int, rng: np.random.Generator) -> None:
    for _ in range(n):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * S
        w, h = rng.uniform(0.05, 0.5, 2) * S
        c = _col(rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        if kind == 0:
            dr.rectangle([x0, y0, x0 + w, y0 + h], fill=c)
        elif kind == 1:
            dr.ellipse([x0, y0, x0 + w, y0 + h], fill=c)
        else:
            dr.line([x0, y0, x0 + w, y0 + h], fill=c, width=int(rng.integers(2, 8)))


def _line_shade(skin, strength: float):
    """Colour of a wrinkle line: skin darkened by ``strength`` in [0, 1]."""
    return _col(_mix(skin, skin * 0.45, 0.75 * float(np.clip(strength, 0, 1))))


class _Face:
    """Where the parts of one face go: the expression parameters and the geometry every part shares
    (computed once, in the order and with the arithmetic the drawing has always used)."""

    def __init__(self, S: int, e: np.ndarray, lk: dict):
        (self.bi, self.bh, self.eo, self.gx, self.gy, self.mc, self.mo, self.mw, self.ma, self.ck, self.nw,
         self.bl) = [float(v) for v in e]
        self.S, self.lk = S, lk
        self.cx, self.cy = 0.5 * S, 0.5 * S
        self.A, self.B = 0.27 * S * lk["face_w"], 0.34 * S * lk["face_h"]
        self.skin = _mix(lk["skin"], [215, 210, 205], 0.3 * max(-self.bl, 0.0))
        self.hair, self.dark = lk["hair"], lk["skin"] * 0.35
        self.ey = self.cy - 0.12 * self.B + lk["eye_y"] * S                 # eye line
        self.ew = 0.075 * S * lk["eye_size"]                               # eye half-width
        self.eh = self.ew * float(np.clip(0.5 + 0.32 * self.eo, 0.08, 0.95))  # upper lid opening
        self.low = self.eh * float(np.clip(1 - 0.45 * max(self.ck, 0), 0.3, 1))  # lower lid
        self.nz, self.ny = lk["nose"], self.cy + 0.22 * self.B             # nose size, nose tip line
        self.my = self.cy + 0.5 * self.B + lk["mouth_y"] * S               # mouth line
        self.hw = (0.1 + 0.035 * self.mw) * S * lk["face_w"]               # mouth half-width


def _draw_head(dr: ImageDraw.ImageDraw, f: _Face) -> None:
    """Body, neck, hair behind, ears, head, fringe, blush."""
    S, cx, cy, A, B, lk, skin, hair = f.S, f.cx, f.cy, f.A, f.B, f.lk, f.skin, f.hair
    dr.ellipse([cx - 0.5 * S, cy + 0.95 * B, cx + 0.5 * S, cy + 2.2 * B], fill=_col(lk["cloth"]))
    dr.rectangle([cx - 0.35 * A, cy + 0.6 * B, cx + 0.35 * A, cy + 1.15 * B],
                 fill=_col(skin * 0.85))
    if lk["hair_style"] == 1:
        dr.rounded_rectangle([cx - 1.15 * A, cy - 1.1 * B, cx + 1.15 * A, cy + 0.9 * B],
                             radius=0.4 * A, fill=_col(hair))
    for s in (-1, 1):
        dr.ellipse([cx + s * A - 0.12 * A, cy - 0.15 * B, cx + s * A + 0.12 * A, cy + 0.15 * B],
                   fill=_col(skin * 0.92))
    dr.ellipse([cx - A, cy - B, cx + A, cy + B], fill=_col(skin))
    if lk["hair_style"] != 2:   # fringe: a chord over the top of the head
        ang = math.degrees(math.asin(np.clip(lk["fringe"], -0.99, 0.99)))
        dr.chord([cx - 1.04 * A, cy - 1.06 * B, cx + 1.04 * A, cy + 1.0 * B],
                 180 + ang, 360 - ang, fill=_col(hair))
    if f.bl > 0:
        bc = _col(_mix(skin, [225, 85, 95], 0.55 * min(f.bl, 1.0)))
        for s in (-1, 1):
            x = cx + s * 0.55 * A
            dr.ellipse([x - 0.2 * A, cy + 0.15 * B, x + 0.2 * A, cy + 0.33 * B], fill=bc)


def _draw_eyes(dr: ImageDraw.ImageDraw, f: _Face) -> None:
    """Each eye (white, iris, pupil, lid), the crease of a cheek push and the brow."""
    S, cx, A, lk, ey, ew, eh, low = f.S, f.cx, f.A, f.lk, f.ey, f.ew, f.eh, f.low
    for s in (-1, 1):
        ex = cx + s * lk["eye_sep"] * A
        dr.ellipse([ex - ew, ey - eh, ex + ew, ey + low], fill=(245, 245, 240))
        r = min(0.5 * ew, 0.95 * min(eh, low))
        px = ex + np.clip(f.gx, -1, 1) * (ew - r) * 0.9
        py = ey + np.clip(f.gy, -1, 1) * 0.3 * eh
        dr.ellipse([px - r, py - r, px + r, py + r], fill=_col(lk["iris"]))
        dr.ellipse([px - 0.45 * r, py - 0.45 * r, px + 0.45 * r, py + 0.45 * r],
                   fill=(10, 10, 10))
        dr.arc([ex - ew, ey - eh, ex + ew, ey + eh], 180, 360, fill=_col(f.dark),
               width=max(2, S // 80))
        if f.ck > 0.05:   # cheek push: crease under the eye
            dr.arc([ex - ew, ey - 0.2 * eh, ex + ew, ey + low + 0.35 * ew], 20, 160,
                   fill=_line_shade(f.skin, f.ck), width=max(1, S // 110))
        # brow: inner end near the centre line
        base = ey - eh - 0.055 * S - 0.04 * S * f.bh
        xi, xo = cx + s * 0.16 * A, cx + s * (lk["eye_sep"] * A + 1.2 * ew)
        yi, yo = base - 0.05 * S * f.bi, base + 0.012 * S * f.bi
        xm, ym = 0.5 * (xi + xo), 0.5 * (yi + yo) - 0.012 * S
        dr.line([(xi, yi), (xm, ym), (xo, yo)], fill=_col(f.hair * 0.8),
                width=int(max(2, 0.022 * S * lk["brow_w"])), joint="curve")


def _draw_lines_and_nose(dr: ImageDraw.ImageDraw, f: _Face) -> None:
    """Forehead and frown lines, the nose and its wrinkles."""
    S, cx, A, ey, skin, nz, ny = f.S, f.cx, f.A, f.ey, f.skin, f.nz, f.ny
    if f.bh > 0.25:       # forehead lines
        for k in range(2):
            y = ey - 0.2 * S - 0.035 * S * (k + f.bh)
            dr.arc([cx - 0.5 * A, y, cx + 0.5 * A, y + 0.08 * S], 200, 340,
                   fill=_line_shade(skin, f.bh - 0.25), width=max(1, S // 110))
    if f.nw > 0.05 or f.bi < -0.3:   # frown lines between the brows
        st = max(f.nw, -f.bi - 0.3)
        for s in (-1, 1):
            x = cx + s * 0.035 * S
            dr.line([(x, ey - 0.09 * S), (x - s * 0.005 * S, ey - 0.04 * S)],
                    fill=_line_shade(skin, st), width=max(1, S // 110))
    dr.line([(cx, ey + 0.02 * S), (cx + 0.02 * S * nz, ny)], fill=_col(skin * 0.8),
            width=max(1, S // 100))
    dr.arc([cx - 0.06 * S * nz, ny - 0.03 * S * nz, cx + 0.06 * S * nz, ny + 0.02 * S * nz],
           10, 170, fill=_col(skin * 0.6), width=max(2, S // 70))
    if f.nw > 0.05:
        for s in (-1, 1):
            x = cx + s * 0.04 * S * nz
            for k in range(2):
                y = ey + 0.02 * S + k * 0.02 * S
                dr.line([(x, y), (x + s * 0.03 * S, y + 0.01 * S)], fill=_line_shade(skin, f.nw),
                        width=max(1, S // 100))


def _draw_mouth(dr: ImageDraw.ImageDraw, f: _Face) -> None:
    """Nasolabial folds, the open mouth and teeth, the lips."""
    S, cx, hw, my = f.S, f.cx, f.hw, f.my
    xs = np.linspace(-1, 1, 17)
    mid = my - 0.05 * S * f.mc * xs ** 2 + 0.035 * S * f.ma * np.clip(xs, 0, None) ** 2 * -1
    gap = 0.075 * S * max(f.mo, 0.0) * (1 - xs ** 2)
    up, lo = mid - 0.35 * gap, mid + 0.65 * gap
    X = cx + hw * xs
    if f.ck > 0.05:       # nasolabial folds
        for s, yc in ((-1, mid[0]), (1, mid[-1])):
            dr.line([(cx + s * 0.09 * S * f.nz, f.ny), (cx + s * (hw + 0.02 * S), yc)],
                    fill=_line_shade(f.skin, f.ck), width=max(1, S // 100))
    if f.mo > 0.08:
        dr.polygon(list(zip(X, up)) + list(zip(X[::-1], lo[::-1])), fill=(70, 20, 28))
        if f.mo > 0.3:
            teeth = up + 0.3 * gap
            dr.polygon(list(zip(X[2:-2], up[2:-2])) + list(zip(X[-3:1:-1], teeth[-3:1:-1])),
                       fill=(235, 232, 220))
    lw = max(2, S // 55)
    dr.line(list(zip(X, up)), fill=_col(f.lk["lip"]), width=lw, joint="curve")
    dr.line(list(zip(X, lo)), fill=_col(f.lk["lip"] * 0.9), width=lw + 1, joint="curve")


def _draw_occluders(dr: ImageDraw.ImageDraw, f: _Face) -> None:
    """Glasses (or sunglasses) and a hand over the chin, as the look says."""
    S, cx, A, lk, ey = f.S, f.cx, f.A, f.lk, f.ey
    if lk["glasses"]:
        r = 1.45 * f.ew
        for s in (-1, 1):
            ex = cx + s * lk["eye_sep"] * A
            box = [ex - r, ey - 0.85 * r, ex + r, ey + 0.85 * r]
            dr.ellipse(box, fill=(15, 15, 20) if lk["sunglasses"] else None,
                       outline=(20, 20, 20), width=max(2, S // 70))
        dr.line([(cx - lk["eye_sep"] * A + r, ey), (cx + lk["eye_sep"] * A - r, ey)],
                fill=(20, 20, 20), width=max(2, S // 70))
    if lk["hand"]:
        hx = cx + (0.5 - lk["fringe"]) * 3.0 * A      # deterministic from the look
        hy = f.my + 0.05 * S
        hand, edge = _col(lk["skin"] * 0.95), _col(lk["skin"] * 0.7)
        dr.ellipse([hx - 0.13 * S, hy - 0.02 * S, hx + 0.13 * S, hy + 0.2 * S], fill=hand)
        for k in range(4):
            fx, top = hx - 0.1 * S + k * 0.065 * S, hy - 0.12 * S - 0.02 * S * (k % 3)
            dr.rounded_rectangle([fx, top, fx + 0.055 * S, hy + 0.05 * S], radius=0.025 * S,
                                 fill=hand, outline=edge)


def _draw_face(dr: ImageDraw.ImageDraw, S: int, e: np.ndarray, lk: dict) -> None:
    """One face with expression `e` and look `lk`, back to front (deterministic: no randomness here)."""
    f = _Face(S, e, lk)
    for part in (_draw_head, _draw_eyes, _draw_lines_and_nose, _draw_mouth, _draw_occluders):
        part(dr, f)


def render(expr: np.ndarray, look: dict, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one RGB face image of ``size`` x ``size`` pixels."""
    S = size * SUPERSAMPLE
    bg = Image.new("RGB", (S, S), _col(look["bg"]))
    _draw_clutter(ImageDraw.Draw(bg), S, look["n_clutter"], rng)
    face = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    _draw_face(ImageDraw.Draw(face), S, np.asarray(expr, dtype=float), look)
    # pose: output p = c + t + s R (q - c)  =>  q = c + R^T (p - c - t) / s
    th = math.radians(look["angle"])
    c, t, s = S / 2.0, look["shift"] * S, look["scale"]
    a, b = math.cos(th) / s, math.sin(th) / s
    ox, oy = c + t[0], c + t[1]
    coeffs = (a, b, c - a * ox - b * oy, -b, a, c + b * ox - a * oy)
    face = face.transform((S, S), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    bg.paste(face, (0, 0), face)
    if look["rect"]:
        x0, y0 = rng.uniform(0.1, 0.7, 2) * S
        w, h = rng.uniform(0.15, 0.4, 2) * S
        ImageDraw.Draw(bg).rectangle([x0, y0, x0 + w, y0 + h], fill=_col(rng.uniform(0, 255, 3)))
    img = bg.resize((size, size), Image.BOX)
    if look["blur"] > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(look["blur"] * size / 64))
    x = np.asarray(img, dtype=np.float32)
    g = np.linspace(-1, 1, size, dtype=np.float32)
    ramp = math.cos(look["light_dir"]) * g[None, :] + math.sin(look["light_dir"]) * g[:, None]
    x = x * (1 + look["light_amp"] * ramp)[..., None] * look["brightness"]
    m = x.mean()
    x = (x - m) * look["contrast"] + m
    x = x + rng.normal(0, look["noise"], x.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "RGB")
