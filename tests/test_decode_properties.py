"""Property-based (hypothesis): the image decoder and the dataset readers, fed random and damaged bytes,
give a decoded image or a clear error naming the file, never a crash, a hang or a silently wrong label.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rald_fast.data.dataset import read_label_file
from rald_fast.data.readers import read_list_file
from rald_fast.errors import DataError
from rald_fast.hierarchy import fg_emotions
from rald_fast.preprocess import open_rgb

TAX = fg_emotions()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encoded(fmt: str, mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


def decode(tmp_path: Path, data: bytes, name: str):
    path = tmp_path / name
    path.write_bytes(data)
    try:
        im = open_rgb(path, max_pixels=4_000_000)
    except DataError as e:
        assert str(path) in str(e)  # the error names the file
        return None
    assert im.mode == "RGB" and min(im.size) >= 1
    return im


@SETTINGS
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".png", ".jpg", ".bmp", ".gif", ".tif", ".webp"]))
def test_random_bytes_decode_or_fail_clearly(tmp_path, data, suffix):
    decode(tmp_path, data, "x" + suffix)


@SETTINGS
@given(fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]), mode=st.sampled_from(["RGB", "L", "RGBA"]),
       w=st.integers(1, 64), h=st.integers(1, 64), seed=st.integers(0, 2**16),
       cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8))
def test_damaged_images_decode_or_fail_clearly(tmp_path, fmt, mode, w, h, seed, cut, flips):
    if fmt == "JPEG" and mode == "RGBA":
        mode = "RGB"
    good = encoded(fmt, mode, (w, h), seed)
    assert decode(tmp_path, good, "ok." + fmt.lower()).size == (w, h)  # undamaged: always decodes
    damaged = bytearray(good[:max(1, int(len(good) * cut))] if cut < 1 else good)
    for where, value in flips:
        damaged[int(where * (len(damaged) - 1))] = value
    decode(tmp_path, bytes(damaged), "bad." + fmt.lower())


LABELS = st.sampled_from(TAX.fine)
JUNK = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@SETTINGS
@given(rows=st.lists(st.tuples(st.from_regex(r"[a-z]{1,8}\.png", fullmatch=True), LABELS), min_size=1, max_size=20),
       junk=st.lists(st.tuples(st.integers(0, 19), JUNK), max_size=3))
def test_label_files_give_the_written_labels_or_an_error_naming_the_line(tmp_path, rows, junk):
    lines = [f"{p},{label}" for p, label in rows]
    damaged = set()
    for where, text in junk:
        i = where % len(lines)
        lines[i], damaged = text, damaged | {i}
    csv_path = tmp_path / "split.csv"
    csv_path.write_text("path,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    try:
        paths, labels = read_label_file(csv_path, TAX)
    except DataError as e:
        assert str(csv_path) in str(e)
        return
    intact = [r for i, r in enumerate(rows) if i not in damaged]
    if not damaged:  # every label read back exactly as written
        assert [TAX.fine[y] for y in labels] == [label for _, label in rows]
        assert [p.name for p in paths] == [p for p, _ in rows]
    else:  # the intact rows keep their own labels: a damaged line never shifts the others
        got = dict(zip((p.name for p in paths), (TAX.fine[y] for y in labels)))
        for p, label in intact:
            if sum(q == p for q, _ in rows) == 1:  # a file named once keeps its label
                assert got.get(p) == label, (p, label, got.get(p))


@SETTINGS
@given(rows=st.lists(st.tuples(st.from_regex(r"[a-z]{1,8}/[a-z]{1,8}\.jpg", fullmatch=True), LABELS),
                     min_size=1, max_size=20),
       sep=st.sampled_from([" ", "\t", ","]))
def test_list_files_give_the_written_labels(tmp_path, rows, sep):
    path = tmp_path / "train.txt"
    path.write_text("# a comment\n" + "\n".join(f"{p}{sep}{label}" for p, label in rows) + "\n", encoding="utf-8")
    lst = read_list_file(path, TAX)
    assert [TAX.fine[y] for y in lst.labels] == [label for _, label in rows]
    assert [str(p.relative_to(tmp_path)) for p in lst.paths] == [p for p, _ in rows]


@SETTINGS
@given(text=st.text(max_size=400))
def test_any_list_file_text_parses_or_names_its_line(tmp_path, text):
    path = tmp_path / "test.txt"
    path.write_text(text, encoding="utf-8")
    try:
        lst = read_list_file(path, TAX)
    except DataError as e:
        assert str(path) in str(e)
        return
    assert len(lst.paths) == len(lst.labels) >= 1 and all(0 <= y < TAX.num_fine for y in lst.labels)


def test_a_truncated_png_is_refused_with_its_name():
    """The decoder is not vacuously permissive: a truncated PNG is a DataError."""
    with pytest.raises(DataError, match="cannot decode image"):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "t.png"
            p.write_bytes(encoded("PNG", "RGB", (8, 8), 0)[:40])
            open_rgb(p)
