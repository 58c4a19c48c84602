"""Label-file datasets: a CSV of `path,label[,...]` beside the images, decoded once into memory.

The synthetic data and any dataset written in this layout go through this one reader and decode path:
PIL decode, conversion to RGB (grayscale, palette and RGBA images included), resize to the model's
input size, uint8 tensor kept in memory. Labels are fine label names of the taxonomy (or their
0-based index). Bad input stops with a message naming the file and line.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rald_fast.hierarchy import Taxonomy

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset file or image that cannot be used."""


@dataclass
class Split:
    """Decoded images (N, 3, S, S) uint8, fine label indices (N,), and their source files."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def parse_label(value: str, taxonomy: Taxonomy, where: str) -> int:
    value = value.strip()
    if value in taxonomy.fine:
        return taxonomy.fine.index(value)
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
            paths.append(csv_path.parent / row["path"])
            labels.append(parse_label(row["label"], taxonomy, where))
    if not paths:
        raise DataError(f"{csv_path}: the split is empty")
    return paths, labels


def decode_image(path: Path, size: int) -> np.ndarray:
    """(3, size, size) uint8 RGB; raises DataError naming the file."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def load_split(csv_path: str | Path, taxonomy: Taxonomy, image_size: int,
               progress: bool = False) -> Split:
    paths, labels = read_label_file(Path(csv_path), taxonomy)
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc=f"decode {Path(csv_path).name}", unit="img", leave=False)
    images = np.stack([decode_image(p, image_size) for p in it])
    return Split(torch.from_numpy(images), torch.tensor(labels, dtype=torch.long),
                 [str(p) for p in paths])
