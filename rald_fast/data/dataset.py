"""One decode path for every dataset: a split's list of files becomes uint8 tensors, in memory or
memory-mapped from the decoded cache (`cache.py`).

The synthetic data, a `path,label` CSV (`--data labelfile`) and the readers of real datasets
(`readers.py`: RAF-DB, AffectNet, FG-Emotions, class folders) all end here, so training sees the
same pixels whatever the source: PIL decode, optional face-box crop (AffectNet's CSV boxes),
conversion to RGB (grayscale, palette and RGBA images included), resize to the model's input size,
uint8 tensor.

Data hygiene: a label outside the taxonomy stops the run naming file and line; an empty
split is an error; an image that cannot be decoded is reported with its path and reason and either
stops the run or is skipped and counted (`--on-bad-image`); file names found in both splits are
reported.
"""

from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rald_fast.errors import DataError
from rald_fast.hierarchy import Taxonomy
from rald_fast.preprocess import Box, open_rgb, resize_square

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "fail")


@dataclass
class SplitList:
    """One split as a reader lists it, before decoding: files, fine label indices, face boxes."""

    name: str                            # split name, for messages ("train", "validation", ...)
    paths: list[Path]
    labels: list[int]                    # indices into the taxonomy's fine labels
    boxes: list[Box | None] | None = None  # one per path (None: whole image); None: no crops at all
    source: str = ""                     # label file or directory the list was read from


@dataclass
class Split:
    """Decoded images (N, 3, S, S) uint8, fine label indices (N,), and their source files."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of dropped images
    sample_weights: torch.Tensor | None = None  # (N,) per-image draw weights (--balanced), or None
    # the decoded cache's file when `images` is memory-mapped from it (`cache.DecodedStore`; read-only
    # pages shared by every process), None when the images are in this process's memory
    store: object | None = None

    def __len__(self) -> int:
        return len(self.labels)


def parse_label(value: str, taxonomy: Taxonomy, where: str) -> int:
    """A fine label given by name (case-insensitive) or by its 0-based index in the taxonomy."""
    value = value.strip()
    if value in taxonomy.fine:
        return taxonomy.fine.index(value)
    lower = [f.lower() for f in taxonomy.fine]
    if value.lower() in lower:
        return lower.index(value.lower())
    if value.isdigit() and int(value) < taxonomy.num_fine:
        return int(value)
    raise DataError(f"{where}: unknown label {value!r}; taxonomy {taxonomy.name!r} has "
                    f"{taxonomy.num_fine} fine labels ({', '.join(taxonomy.fine[:8])}, ...)")


def read_label_file(csv_path: Path, taxonomy: Taxonomy) -> tuple[list[Path], list[int]]:
    """Rows of `path,label`; a header row naming `path` and `label` is required."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: label file not found")
    paths, labels = [], []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}:1: expected a header with 'path' and 'label' columns, "
                            f"got {reader.fieldnames}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            if not row.get("path") or row.get("label") is None:
                raise DataError(f"{where}: missing path or label")
            if "\n" in row["path"] or "\r" in row["path"] or None in row:
                raise DataError(f"{where}: a row spans several lines or has extra columns (an unmatched '\"'?)")
            paths.append(csv_path.parent / row["path"])
            labels.append(parse_label(row["label"], taxonomy, where))
    if not paths:
        raise DataError(f"{csv_path}: the split is empty")
    return paths, labels


def decode_image(path: Path, size: int, box: Box | None = None) -> np.ndarray:
    """(3, size, size) uint8 RGB through the one preprocessing path (`rald_fast.preprocess`):
    decode, upright, crop to `box` if given, RGB, resize. DataError names the file."""
    return resize_square(open_rgb(path, box), size).transpose(2, 0, 1)


def check_bad_image_policy(on_bad_image: str) -> None:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"--on-bad-image must be skip or fail, got {on_bad_image!r}")


def load_split(source: str | Path | SplitList, taxonomy: Taxonomy, image_size: int,
               progress: bool = False, on_bad_image: str = "fail", workers: int = 0) -> Split:
    """Decode a split into this process's memory: `source` is a `path,label` CSV file or a reader's
    `SplitList` (the decoded cache's twin: `cache.load_cached_split`; `build.decode_split` chooses).

    Args:
        on_bad_image: "fail" stops at the first image that cannot be decoded (path and reason in the
            message); "skip" logs each one, drops it and logs the count at the end.
        workers: decode threads (PIL releases the GIL while decoding); 0 decodes in this thread.
    """
    check_bad_image_policy(on_bad_image)
    lst = split_list(source, taxonomy)
    images = np.empty((len(lst.paths), 3, image_size, image_size), dtype=np.uint8)

    def write(i: int, image: np.ndarray) -> None:
        images[i] = image

    keep, skipped = decode_rows(lst, image_size, write, progress, on_bad_image, workers)
    if skipped:
        images = images[keep]
    return Split(torch.from_numpy(images), kept_labels(lst, keep), kept_paths(lst, keep), skipped)


def split_list(source: str | Path | SplitList, taxonomy: Taxonomy) -> SplitList:
    """The checked listing of a split: a reader's `SplitList`, or the rows of a `path,label` CSV."""
    if isinstance(source, SplitList):
        lst = source
    else:
        paths, labels = read_label_file(Path(source), taxonomy)
        lst = SplitList(Path(source).stem, paths, labels, None, str(source))
    where = lst.source or lst.name
    if not lst.paths:
        raise DataError(f"{where}: split {lst.name!r} is empty (no images)")
    if len(lst.labels) != len(lst.paths) or (lst.boxes is not None and
                                             len(lst.boxes) != len(lst.paths)):
        raise ValueError(f"{where}: paths, labels and boxes differ in length")
    for p, y in zip(lst.paths, lst.labels):
        if not 0 <= y < taxonomy.num_fine:
            raise DataError(f"{p}: label index {y} is outside taxonomy {taxonomy.name!r} "
                            f"(0..{taxonomy.num_fine - 1})")
    return lst


def kept_labels(lst: SplitList, keep: np.ndarray) -> torch.Tensor:
    return torch.tensor(lst.labels, dtype=torch.long)[torch.from_numpy(keep)]


def kept_paths(lst: SplitList, keep: np.ndarray) -> list[str]:
    return [str(p) for p, k in zip(lst.paths, keep) if k]


def bad_image_error(err: DataError, split: str) -> DataError:
    """The error `--on-bad-image fail` stops with."""
    return DataError(f"{err} [split {split!r}; --on-bad-image skip drops such images]")


def decode_rows(lst: SplitList, image_size: int, write, progress: bool = False, on_bad_image: str = "fail",
                workers: int = 0) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode every image of `lst` and hand it to `write(i, (3, S, S) uint8)` (from `workers`
    threads when > 0); returns the keep mask (N,) and the skipped (path, reason), applying the
    bad-image policy (`load_split`)."""
    where = lst.source or lst.name
    boxes = lst.boxes if lst.boxes is not None else [None] * len(lst.paths)
    keep = np.ones(len(lst.paths), dtype=bool)
    skipped: list[tuple[str, str]] = []

    def decode(i: int):
        try:
            write(i, decode_image(lst.paths[i], image_size, boxes[i]))
            return None
        except DataError as e:
            return e

    indices = range(len(lst.paths))
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    results = pool.map(decode, indices) if pool else map(decode, indices)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(lst.paths), desc=f"decode {lst.name}", unit="img",
                       leave=False)
    try:
        for i, err in enumerate(results):
            if err is None:
                continue
            if on_bad_image == "fail":
                raise bad_image_error(err, lst.name)
            keep[i] = False
            skipped.append((str(lst.paths[i]), str(err)))
            log.warning("skipping bad image: %s", err)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if skipped:
        log.warning("%s: skipped %d of %d images that could not be decoded (--on-bad-image skip)",
                    lst.name, len(skipped), len(lst.paths))
        if not keep.any():
            raise DataError(f"{where}: split {lst.name!r} is empty: every image failed to decode")
    return keep, skipped


def report_duplicates(splits: dict[str, Split]) -> list[str]:
    """Warn about file names found in more than one split (a likely leak); returns the names."""
    seen: dict[str, set[str]] = {}
    same_file: set[str] = set()
    owner: dict[str, str] = {}
    for name, split in splits.items():
        for p in split.paths:
            base = Path(p).name
            seen.setdefault(base, set()).add(name)
            resolved = str(Path(p).resolve())
            if owner.setdefault(resolved, name) != name:
                same_file.add(resolved)
    dups = sorted(b for b, s in seen.items() if len(s) > 1)
    if dups:
        log.warning("%d file name(s) appear in more than one split (%s), e.g. %s: check that no "
                    "image is both trained and tested on", len(dups), " and ".join(splits),
                    ", ".join(dups[:5]))
    if same_file:
        log.warning("%d file(s) are in more than one split, e.g. %s", len(same_file),
                    ", ".join(sorted(same_file)[:3]))
    return dups


def class_balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) weights 1 / count(class): every class is drawn equally often (`--balanced`)."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return (1.0 / counts.clamp(min=1))[labels]


def epoch_order(split: Split, generator: torch.Generator) -> torch.Tensor:
    """Image order of one training epoch: a permutation, or N class-balanced draws with replacement
    when the split carries sample weights (AffectNet is heavily imbalanced)."""
    n = len(split)
    if split.sample_weights is None:
        return torch.randperm(n, generator=generator)
    return torch.multinomial(split.sample_weights, n, replacement=True, generator=generator)
