"""AffectNet reader (`--data affectnet`): the two layouts the dataset ships in.

1. The manually annotated CSV release (Mollahosseini et al., 2017): `training.csv` and
   `validation.csv` (in the data root or in `Manually_Annotated_file_lists/`) with columns
   `subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks, expression,
   valence, arousal`, images under `Manually_Annotated_Images/` (or `Manually_Annotated/...`). The
   images are whole photographs: each is cropped to its CSV face box before resizing.
2. The newer release: `train_set/` and `val_set/`, each `images/<id>.jpg` (already cropped faces)
   and `annotations/<id>_exp.npy` (the expression code; valence, arousal, landmarks are ignored).

Expression codes: 0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger,
7 contempt, 8 none, 9 uncertain, 10 no face. Codes 8-10 are always dropped, and contempt too with
`--affectnet-classes 7` (the paper's AffectNet-7). Labels are mapped by name onto the taxonomy, so
the default basic7 taxonomy (RAF-DB order) and affectnet8 (code order) both work.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from rald_fast.data.dataset import DataError, SplitList
from rald_fast.hierarchy import AFFECTNET8, Taxonomy
from rald_fast.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

COLUMNS = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
           "facial_landmarks", "expression", "valence", "arousal"]
NON_FACE = {8: "none", 9: "uncertain", 10: "no-face"}
CSV_SPLITS = {"train": "training", "test": "validation"}
NPY_SPLITS = {"train": "train_set", "test": "val_set"}
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images",
              "Manually_Annotated", ".")


def code_to_index(code: int, classes: int, taxonomy: Taxonomy, where: str) -> int | None:
    """Fine label index of an expression code; None for a code that is dropped."""
    if code in NON_FACE or (classes == 7 and code == 7):
        return None
    if not 0 <= code <= 7:
        raise DataError(f"{where}: expression code {code} is not an AffectNet code (0-10)")
    name = AFFECTNET8[code]
    lower = [f.lower() for f in taxonomy.fine]
    if name not in lower:
        hint = "; --affectnet-classes 7 drops contempt" if code == 7 else ""
        raise DataError(f"{where}: expression {code} ({name}) is not a label of taxonomy "
                        f"{taxonomy.name!r} ({', '.join(taxonomy.fine)}){hint}")
    return lower.index(name)


def read_affectnet(root: Path, which: str, name: str | None, taxonomy: Taxonomy,
                   classes: int = 7) -> SplitList:
    """The `which` ("train"/"test") split, named `name` or the layout's default name."""
    npy_name = name or NPY_SPLITS[which]
    if (root / npy_name / "annotations").is_dir():
        return _read_npy_release(root / npy_name, taxonomy, classes)
    csv_name = name or CSV_SPLITS[which]
    candidates = [root / f"{csv_name}.csv",
                  root / "Manually_Annotated_file_lists" / f"{csv_name}.csv"]
    for path in candidates:
        if path.is_file():
            return _read_csv_release(path, root, taxonomy, classes)
    tried = [str(p) for p in candidates] + [str(root / npy_name / "annotations")]
    raise DataError(f"--data affectnet --data-root {root}: no {which} split found (tried "
                    f"{', '.join(tried)}); name it with --{which}-split")


def _image_dir(root: Path, first: str) -> Path:
    """The images folder: the first candidate holding the CSV's first image, else the first one."""
    dirs = [root / d for d in IMAGE_DIRS if (root / d).is_dir()]
    for d in dirs:
        if (d / first).is_file():
            return d
    return dirs[0]


def _read_csv_release(path: Path, root: Path, taxonomy: Taxonomy, classes: int) -> SplitList:
    paths, labels, boxes = [], [], []
    dropped: Counter = Counter()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        rows = iter(reader)
        first = next(rows, None)
        if first is None:
            raise DataError(f"{path}: the split is empty")
        if first and first[0].strip() == COLUMNS[0]:
            col = {c.strip(): i for i, c in enumerate(first)}
            missing = [c for c in COLUMNS[:5] + ["expression"] if c not in col]
            if missing:
                raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
            pending = []
        else:  # validation.csv of the original release comes without a header
            log.info("%s: no header row, assuming the release's column order", path)
            col = {c: i for i, c in enumerate(COLUMNS)}
            pending = [first]
        base = None
        for row in itertools.chain(pending, rows):
            where = f"{path}:{reader.line_num}"
            if not row or not "".join(row).strip():
                continue
            try:
                rel = row[col["subDirectory_filePath"]].strip()
                x, y, w, h = (float(row[col[k]]) for k in COLUMNS[1:5])
                code = int(float(row[col["expression"]]))
            except (IndexError, ValueError) as e:
                raise DataError(f"{where}: cannot read the row ({e}); expected the columns "
                                f"{', '.join(COLUMNS)}") from None
            index = code_to_index(code, classes, taxonomy, where)
            if index is None:
                dropped[AFFECTNET8[code] if code == 7 else NON_FACE[code]] += 1
                continue
            base = base or _image_dir(root, rel)
            paths.append(base / rel)
            labels.append(index)
            boxes.append((x, y, x + w, y + h))
    _log_dropped(path, dropped, len(paths))
    return SplitList(path.stem, paths, labels, boxes, str(path))


def _read_npy_release(split_dir: Path, taxonomy: Taxonomy, classes: int) -> SplitList:
    images_dir, ann_dir = split_dir / "images", split_dir / "annotations"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: no such folder (expected images/<id>.jpg beside "
                        "annotations/<id>_exp.npy)")
    files = sorted((p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))
    paths, labels = [], []
    dropped: Counter = Counter()
    for img in files:
        exp = ann_dir / f"{img.stem}_exp.npy"
        if not exp.is_file():
            raise DataError(f"{img}: no expression annotation {exp}")
        try:
            code = int(float(np.load(exp, allow_pickle=False).item()))
        except (ValueError, TypeError, OSError, EOFError) as e:  # numpy's ways to say "unreadable"
            raise DataError(f"{exp}: cannot read the expression code ({e})") from None
        index = code_to_index(code, classes, taxonomy, str(exp))
        if index is None:
            dropped[AFFECTNET8[code] if code == 7 else NON_FACE[code]] += 1
            continue
        paths.append(img)
        labels.append(index)
    _log_dropped(split_dir, dropped, len(paths))
    return SplitList(split_dir.name, paths, labels, None, str(split_dir))


def _log_dropped(where: Path, dropped: Counter, kept: int) -> None:
    if dropped:
        log.info("%s: kept %d images, dropped %s", where, kept,
                 ", ".join(f"{n} {k}" for k, n in sorted(dropped.items())))
