"""Embedded default dataset: procedurally drawn faces with a fine-grained expression taxonomy.

What: ``generate(SyntheticConfig())`` draws cartoon faces (numpy + PIL, no downloads) labelled with
the FG-Emotions taxonomy (6 coarse groups, 33 fine classes; the paper's Table 1) and writes them as PNG
files plus ``train.csv`` / ``test.csv`` (``path,label,clean_label``) and ``manifest.json``.

Why: FG-Emotions itself cannot be shipped. RALD targets the three properties this generator
reproduces, so the pipeline can be run, tested and compared end to end on any machine:

* small inter-class differences: each coarse group has a base expression (a vector of
  ``faces.EXPR_PARAMS`` action parameters: brows, eyes, gaze, mouth, cheeks, nose wrinkles, blush);
  a fine class is the base plus a small offset in 3 parameters, drawn from a seed fixed by the
  taxonomy (never by ``SyntheticConfig.seed``), so class prototypes are the same for every seed;
* large intra-class differences: identity (head shape, skin, hair, eye spacing, nose), pose,
  lighting, occlusion (glasses, sunglasses, hands, rectangles), background clutter, blur, noise,
  and per-sample jitter of the expression around its class prototype;
* label ambiguity: a share ``flip_prob`` of *training* labels is replaced by a near class (90 %
  a sibling in the same coarse group, 10 % another group). Test labels are never flipped; both the
  given and the clean label are recorded.

Every sample is a pure function of ``(config, split, index)`` (numpy ``SeedSequence`` per sample;
image and label flip use separate streams, so ``flip_prob`` does not change the pixels), hence the
same config gives byte-identical files whatever the order or number of workers.

Limits: cartoons, not photographs: features learnt here do not transfer to real faces, and
absolute accuracies say nothing about FG-Emotions. Fine classes are separable only up to the
expression jitter (see ``oracle_features``); names other than the FG-Emotions coarse groups get a
random (seeded by name) base expression.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rald_fast.files import atomic_write_text
from rald_fast.data.drawn_faces import EXPR_PARAMS, N_PARAMS, render, sample_look
from rald_fast.hierarchy import FG_EMOTIONS as VALENCE_GROUPS

GENERATOR_VERSION = "3"  # bump whenever drawing or sampling changes (invalidates caches)
SPLITS = {"train": 0, "test": 1}

# coarse group -> fine classes of FG-Emotions (the taxonomy of rald_fast.hierarchy, valence dropped)
FG_EMOTIONS: dict[str, list[str]] = {c: f for groups in VALENCE_GROUPS.values() for c, f in groups.items()}

# Base expression per coarse group, in the order of faces.EXPR_PARAMS:
# brow_inner brow_height eye_open gaze_x gaze_y mouth_curve mouth_open mouth_width mouth_asym
# cheek_raise nose_wrinkle blush
COARSE_BASES: dict[str, list[float]] = {
    "fear":      [0.7, 0.6, 0.7, 0.0, 0.0, -0.3, 0.45, 0.4, 0.0, 0.0, 0.0, -0.3],
    "sadness":   [0.8, -0.2, -0.4, 0.0, 0.5, -0.8, 0.0, -0.2, 0.0, 0.0, 0.0, 0.0],
    "anger":     [-0.9, -0.5, -0.2, 0.0, 0.0, -0.4, 0.1, -0.3, 0.0, 0.0, 0.6, 0.2],
    "surprise":  [0.1, 1.0, 1.0, 0.0, -0.1, 0.0, 1.0, -0.4, 0.0, 0.0, 0.0, 0.0],
    "happiness": [0.0, 0.1, -0.2, 0.0, 0.0, 0.9, 0.3, 0.6, 0.0, 0.7, 0.0, 0.1],
    "love":      [0.2, 0.2, -0.5, 0.0, 0.2, 0.5, 0.1, 0.1, 0.0, 0.3, 0.0, 0.8],
}
FINE_STEP = 0.45      # size of one fine-class offset in a parameter (times fine_offset_scale)
FINE_DIMS = 3         # parameters moved by each fine class
JITTER = 0.12         # per-sample std of every expression parameter (times difficulty)
SIBLING_SHARE = 0.9   # share of label flips that stay inside the coarse group
# Sided parameters get a random sign per sample (either side), so a horizontal flip never changes
# the class: fine offsets there are magnitudes only, and horizontal-flip augmentation is safe.
SIDED = [EXPR_PARAMS.index("gaze_x"), EXPR_PARAMS.index("mouth_asym")]


def _fg_emotions() -> dict[str, list[str]]:
    return {k: list(v) for k, v in FG_EMOTIONS.items()}


@dataclass
class SyntheticConfig:
    image_size: int = 64          # output images are image_size x image_size RGB
    train_per_class: int = 60     # training images per fine class
    test_per_class: int = 20      # test images per fine class
    flip_prob: float = 0.1        # share of training labels replaced by a near class (label noise)
    seed: int = 0                 # generation seed (class prototypes do not depend on it)
    difficulty: float = 1.0       # scales the within-class nuisance (identity, pose, light, ...)
    fine_offset_scale: float = 1.0  # scales the between-class (fine) differences inside a group
    taxonomy: dict[str, list[str]] = field(default_factory=_fg_emotions)  # coarse -> fine names

    def to_dict(self) -> dict:
        """Normalised JSON-able form (ints as int, floats as float) used for the digest."""
        d = asdict(self)
        for k in ("image_size", "train_per_class", "test_per_class", "seed"):
            d[k] = int(d[k])
        for k in ("flip_prob", "difficulty", "fine_offset_scale"):
            d[k] = float(d[k])
        d["taxonomy"] = {str(c): [str(f) for f in fs] for c, fs in self.taxonomy.items()}
        return d


def class_names(taxonomy: dict[str, list[str]]) -> list[str]:
    """Fine class names in taxonomy order (the class index order)."""
    return [f for fs in taxonomy.values() for f in fs]


def coarse_index(taxonomy: dict[str, list[str]]) -> np.ndarray:
    """Coarse group index of each fine class."""
    return np.array([g for g, fs in enumerate(taxonomy.values()) for _ in fs], dtype=np.int64)


def _name_seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "little")


def class_prototypes(cfg: SyntheticConfig) -> np.ndarray:
    """(C_fine, N_PARAMS) expression prototypes; depends on the taxonomy and fine_offset_scale only.

    Per group, 64 sparse candidate offsets are drawn from a seed fixed by the group's names and the
    fine classes take them in farthest-point order, so siblings are spread apart.
    """
    protos = []
    for coarse, fines in cfg.taxonomy.items():
        rng = np.random.default_rng(_name_seed("rald_fast.synthetic", coarse, *fines))
        base = COARSE_BASES.get(coarse)
        base = np.asarray(base, float) if base is not None else rng.normal(0, 0.6, N_PARAMS)
        cands = np.zeros((64, N_PARAMS))
        for c in cands:
            dims = rng.choice(N_PARAMS, FINE_DIMS, replace=False)
            c[dims] = rng.choice([-1.0, 1.0], FINE_DIMS) * rng.uniform(0.7, 1.0, FINE_DIMS)
            c[SIDED] = np.abs(c[SIDED])
        chosen = [0]
        dist = np.linalg.norm(cands - cands[0], axis=1)
        while len(chosen) < len(fines):
            j = int(np.argmax(dist))
            chosen.append(j)
            dist = np.minimum(dist, np.linalg.norm(cands - cands[j], axis=1))
        protos += [base + FINE_STEP * cfg.fine_offset_scale * cands[j] for j in chosen]
    return np.stack(protos)


def _flip(clean: int, taxonomy: dict[str, list[str]], rng: np.random.Generator) -> int:
    groups = coarse_index(taxonomy)
    sib = np.flatnonzero((groups == groups[clean]) & (np.arange(len(groups)) != clean))
    other = np.flatnonzero(groups != groups[clean])
    if len(sib) and (rng.uniform() < SIBLING_SHARE or not len(other)):
        return int(rng.choice(sib))
    pool = other if len(other) else np.flatnonzero(np.arange(len(groups)) != clean)
    return int(rng.choice(pool)) if len(pool) else clean


def split_size(cfg: SyntheticConfig, split: str) -> int:
    per = cfg.train_per_class if split == "train" else cfg.test_per_class
    return per * len(class_names(cfg.taxonomy))


def sample_labels(cfg: SyntheticConfig, split: str, index: int) -> tuple[int, int]:
    """(clean, given) fine class indices of one sample. Classes are interleaved: index % C."""
    clean = index % len(class_names(cfg.taxonomy))
    if split != "train" or cfg.flip_prob <= 0:
        return clean, clean
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS[split], index, 1]))
    return clean, (_flip(clean, cfg.taxonomy, rng) if rng.uniform() < cfg.flip_prob else clean)


def _expression(cfg: SyntheticConfig, protos: np.ndarray, index: int, rng) -> np.ndarray:
    e = protos[index % len(protos)] + rng.normal(0, JITTER * cfg.difficulty, N_PARAMS)
    e[SIDED] *= rng.choice([-1.0, 1.0])
    return e


def sample_expression(cfg: SyntheticConfig, split: str, index: int, protos=None) -> np.ndarray:
    """The expression parameters of one sample, as drawn (what the oracle sees)."""
    protos = class_prototypes(cfg) if protos is None else protos
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS[split], index, 0]))
    return _expression(cfg, protos, index, rng)


def render_sample(cfg: SyntheticConfig, split: str, index: int, protos=None):
    """(PIL image, clean label index, given label index, expression parameters) of one sample."""
    protos = class_prototypes(cfg) if protos is None else protos
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS[split], index, 0]))
    expr = _expression(cfg, protos, index, rng)
    img = render(expr, sample_look(rng, cfg.difficulty), cfg.image_size, rng)
    clean, given = sample_labels(cfg, split, index)
    return img, clean, given, expr


def oracle_features(cfg: SyntheticConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Debug: (expression parameters (N, P), clean labels (N,)) of a split, without drawing.

    Sided parameters are given as magnitudes (their sign is a per-sample nuisance)."""
    protos = class_prototypes(cfg)
    n = split_size(cfg, split)
    x = np.stack([sample_expression(cfg, split, i, protos) for i in range(n)])
    x[:, SIDED] = np.abs(x[:, SIDED])
    return x, np.arange(n) % len(protos)


def config_digest(cfg: SyntheticConfig) -> str:
    blob = json.dumps({"config": cfg.to_dict(), "version": GENERATOR_VERSION})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_root() -> Path:
    env = os.environ.get("RALD_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rald_fast" / "synthetic"


def dataset_dir(cfg: SyntheticConfig, root: Path | None = None) -> Path:
    return Path(root if root is not None else default_root()) / config_digest(cfg)


def is_synthetic_dir(path: Path) -> bool:
    """True for a folder this generator wrote (it holds our manifest.json)."""
    try:
        m = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and {"version", "digest", "config"} <= set(m)


def _manifest_ok(d: Path, cfg: SyntheticConfig) -> bool:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (m.get("version") == GENERATOR_VERSION and m.get("config") == cfg.to_dict()
            and all((d / f"{s}.csv").is_file() for s in SPLITS))


def _render_range(args) -> list[tuple[int, int, int]]:
    """Worker: draw and write samples [lo, hi) of a split; returns (index, clean, given)."""
    cfg_dict, out_dir, split, lo, hi = args
    cfg = SyntheticConfig(**cfg_dict)
    protos = class_prototypes(cfg)
    rows = []
    for i in range(lo, hi):
        img, clean, given, _ = render_sample(cfg, split, i, protos)
        img.save(Path(out_dir) / split / f"{split}_{i:05d}.png", format="PNG")
        rows.append((i, clean, given))
    return rows


def generate(cfg: SyntheticConfig, root: Path | None = None, *, force: bool = False,
             workers: int = 1) -> Path:
    """Write the dataset of ``cfg`` under ``root/<digest>/`` (cached) and return that directory.

    Files are drawn in a sibling temp directory, ``manifest.json`` is written last (atomically) and
    the directory is then renamed into place; a directory without a valid manifest is regenerated.
    ``workers > 1`` draws in parallel processes (fork where available); the output is identical.
    """
    final = dataset_dir(cfg, root)
    if not force and _manifest_ok(final, cfg):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for s in SPLITS:
        (tmp / s).mkdir(parents=True)
    names = class_names(cfg.taxonomy)
    cfg_dict = cfg.to_dict()
    jobs = []
    for s in SPLITS:
        n = split_size(cfg, s)
        step = max(1, -(-n // (4 * max(1, workers))))
        jobs += [(cfg_dict, str(tmp), s, lo, min(n, lo + step)) for lo in range(0, n, step)]
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        # fork where available: works from scripts without a __main__ guard; workers only use
        # numpy and PIL, so forking a process that has torch loaded is safe here.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as ex:
            results = list(ex.map(_render_range, jobs))
    else:
        results = [_render_range(j) for j in jobs]
    rows: dict[str, list] = {s: [] for s in SPLITS}
    for job, res in zip(jobs, results):
        rows[job[2]] += res
    for s in SPLITS:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "clean_label"])
        for i, clean, given in sorted(rows[s]):
            w.writerow([f"{s}/{s}_{i:05d}.png", names[given], names[clean]])
        atomic_write_text(tmp / f"{s}.csv", buf.getvalue())
    manifest = {"version": GENERATOR_VERSION, "digest": final.name, "config": cfg_dict,
                "counts": {s: len(rows[s]) for s in SPLITS},
                "flipped": {s: sum(c != g for _, c, g in rows[s]) for s in SPLITS},
                "classes": names, "expression_params": list(EXPR_PARAMS)}
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
    if final.exists():
        if not force and _manifest_ok(final, cfg):   # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:   # lost a race against a concurrent generate() of the same config
        shutil.rmtree(tmp, ignore_errors=True)
        if not _manifest_ok(final, cfg):
            raise
    return final
