"""Readers for the datasets researchers already have on disk, in the layouts they ship in.

`--data rafdb | affectnet | fgemotions | folder` turns a dataset directory into one `SplitList` per
split (image files, fine label indices, optional face boxes); `dataset.load_split` then decodes them
through the same path as the synthetic data. Trees, commands and the paper's numbers for each
layout: docs/DATASETS.md.

- rafdb: the official RAF-DB basic release, `EmoLabel/list_patition_label.txt` (`train_00001.jpg 5`,
  labels 1-7 = surprise, fear, disgust, happiness, sadness, anger, neutral) and
  `Image/aligned/train_00001_aligned.jpg` (or `Image/original/train_00001.jpg` with
  `--rafdb-images original`); the split comes from the file-name prefix.
- affectnet: see `affectnet.py`.
- fgemotions: FG-Emotions key frames. Its public layout is undocumented, so both likely ones are
  read: class folders `<split>/<fine_label>/*.jpg`, or a list file `<split>.txt` of `path label`
  lines with the fine label by name or 0-based index (Table 1 order). The list file wins if both
  exist.
- folder: any `<split>/<class>/**/*.jpg` tree; classes come from `--taxonomy` (a fine -> coarse file
  gives the user's own hierarchy) or, without one, are the sorted class-folder names (flat, RALD-L).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rald_fast.config import DataConfig
from rald_fast.data.affectnet import read_affectnet
from rald_fast.data.dataset import DataError, SplitList, parse_label
from rald_fast.hierarchy import BASIC7, Taxonomy, flat, load_taxonomy
from rald_fast.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

READERS = ("rafdb", "affectnet", "fgemotions", "folder")
# split names tried when --train-split / --test-split are auto (AffectNet: see affectnet.py)
DEFAULT_SPLITS = {"train": ("train",), "test": ("test", "val", "validation")}
RAFDB_LABELS = "EmoLabel/list_patition_label.txt"  # sic: the release's spelling


def default_taxonomy(d: DataConfig, root: Path | None) -> Taxonomy:
    """`--taxonomy` when given, else the dataset's own label set."""
    if d.taxonomy:
        return load_taxonomy(d.taxonomy)
    if d.data == "rafdb" or (d.data == "affectnet" and d.affectnet_classes == 7):
        return load_taxonomy("basic7")
    if d.data == "affectnet":
        return load_taxonomy("affectnet8")
    if d.data == "folder":
        split_dir = _find_split_dir(root, "train", _given(d.train_split))
        classes = sorted(c.name for c in _class_dirs(split_dir))
        if not classes:
            raise DataError(f"{split_dir}: no class folders (expected {split_dir}/<class>/*.jpg)")
        log.info("--data folder: flat taxonomy of %d classes from %s", len(classes), split_dir)
        return flat(root.name or "folder", classes)
    return load_taxonomy("fg-emotions")  # synthetic, labelfile, fgemotions


def split_source(d: DataConfig, taxonomy: Taxonomy, which: str, root: Path) -> Path | SplitList:
    """What `dataset.load_split` reads for split `which` ("train"/"test") of any `--data`."""
    if d.data in ("synthetic", "labelfile"):
        return root / f"{which}.csv"
    return read_split(d, taxonomy, which, root)


def read_split(d: DataConfig, taxonomy: Taxonomy, which: str, root: Path) -> SplitList:
    """The training ("train") or test ("test") split of dataset `d.data` under `root`."""
    name = _given(d.train_split if which == "train" else d.test_split)
    if d.data == "rafdb":
        return read_rafdb(root, name or which, taxonomy, d.rafdb_images)
    if d.data == "affectnet":
        return read_affectnet(root, which, name, taxonomy, d.affectnet_classes)
    if d.data == "fgemotions":
        return read_fgemotions(root, which, name, taxonomy)
    if d.data == "folder":
        return read_class_folders(_find_split_dir(root, which, name), taxonomy)
    raise ValueError(f"--data {d.data!r} has no reader; choose from {', '.join(READERS)}")


def _given(split: str) -> str | None:
    return None if split in ("", "auto") else split


# --- RAF-DB ----------------------------------------------------------------------------------
def rafdb_base(root: Path) -> Path:
    """The folder holding EmoLabel/ and Image/: the data root itself or its `basic/`."""
    for base in (root, root / "basic"):
        if (base / RAFDB_LABELS).is_file():
            return base
    raise DataError(f"--data rafdb --data-root {root}: no {RAFDB_LABELS} "
                    f"(nor basic/{RAFDB_LABELS})")


def read_rafdb(root: Path, split: str, taxonomy: Taxonomy, images: str = "aligned") -> SplitList:
    base = rafdb_base(root)
    label_file = base / RAFDB_LABELS
    image_dir = base / "Image" / images
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: no such folder (--rafdb-images {images})")
    lower = [f.lower() for f in taxonomy.fine]
    paths, labels = [], []
    with open(label_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label_file}:{lineno}"
            if len(fields) != 2 or not fields[1].isdigit() or not 1 <= int(fields[1]) <= 7:
                raise DataError(f"{where}: expected '<name>.jpg <label 1-7>', got {line.strip()!r}")
            name, code = fields[0], int(fields[1])
            if not name.startswith(split + "_"):
                continue
            emotion = BASIC7[code - 1]
            if emotion not in lower:
                raise DataError(f"{where}: label {code} ({emotion}) is not a label of taxonomy "
                                f"{taxonomy.name!r} ({', '.join(taxonomy.fine)})")
            stem = Path(name).stem
            paths.append(image_dir / (f"{stem}_aligned.jpg" if images == "aligned" else name))
            labels.append(lower.index(emotion))
    if not paths:
        raise DataError(f"{label_file}: split {split!r} is empty (no image name starts with "
                        f"'{split}_')")
    return SplitList(split, paths, labels, None, str(label_file))


# --- FG-Emotions -----------------------------------------------------------------------------
def read_fgemotions(root: Path, which: str, name: str | None, taxonomy: Taxonomy) -> SplitList:
    for split in ([name] if name else DEFAULT_SPLITS[which]):
        if (root / f"{split}.txt").is_file():
            if (root / split).is_dir():
                log.info("fgemotions: both %s.txt and %s/ exist; reading the list file", split,
                         split)
            return read_list_file(root / f"{split}.txt", taxonomy)
        if (root / split).is_dir():
            return read_class_folders(root / split, taxonomy)
    tried = ", ".join(f"{s}.txt or {s}/" for s in ([name] if name else DEFAULT_SPLITS[which]))
    raise DataError(f"--data fgemotions --data-root {root}: no {which} split ({tried}); "
                    f"name it with --{which}-split")


def read_list_file(path: Path, taxonomy: Taxonomy) -> SplitList:
    """Lines `path label` (or `path,label`), paths relative to the list's folder; '#' comments."""
    paths, labels = [], []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.rsplit(maxsplit=1)
            if len(fields) != 2:
                fields = text.rsplit(",", 1)
            where = f"{path}:{lineno}"
            if len(fields) != 2 or not fields[0].strip():
                raise DataError(f"{where}: expected '<image path> <label>', got {text!r}")
            rel = fields[0].strip().rstrip(",")
            paths.append(path.parent / rel)
            labels.append(parse_label(fields[1], taxonomy, where))
    if not paths:
        raise DataError(f"{path}: split {path.stem!r} is empty (no 'path label' lines)")
    return SplitList(path.stem, paths, labels, None, str(path))


# --- class folders (fgemotions, folder) ------------------------------------------------------
def _find_split_dir(root: Path, which: str, name: str | None) -> Path:
    names = [name] if name else DEFAULT_SPLITS[which]
    for split in names:
        if (root / split).is_dir():
            return root / split
    raise DataError(f"--data-root {root}: no {which} split folder "
                    f"({' or '.join(str(root / n) for n in names)}); name it with --{which}-split")


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_class_folders(split_dir: Path, taxonomy: Taxonomy) -> SplitList:
    """`<split>/<class>/**/<image>`: the class is the top folder's name (a label or its index)."""
    paths, labels = [], []
    loose = [p for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        log.warning("%s: ignoring %d image(s) outside any class folder, e.g. %s", split_dir,
                    len(loose), loose[0].name)
    for class_dir in _class_dirs(split_dir):
        label = parse_label(class_dir.name, taxonomy, f"{class_dir} (class folder)")
        files = sorted(p for p in class_dir.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not p.name.startswith("."))
        if not files:
            log.warning("%s: class folder holds no image", class_dir)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{split_dir}: split {split_dir.name!r} is empty (no images in "
                        f"{split_dir}/<class>/)")
    return SplitList(split_dir.name, paths, labels, None, str(split_dir))
