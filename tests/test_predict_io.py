"""The rows of `python -m rald_fast.predict` (face_rows, RowWriter) and its input listing (list_inputs).

No model: FaceResults are built by hand, so every value in the rows is known.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from rald_fast.predict.faces import Box, FaceResult
from rald_fast.predict.media import Input, is_video, list_inputs
from rald_fast.predict.pipeline import Frame, RowWriter, face_rows

COLUMNS = ["source", "frame", "face", "x", "y", "w", "h", "status", "fine", "fine_prob", "coarse", "coarse_prob",
           "valence", "top1_label", "top1_prob", "top2_label", "top2_prob", "message"]


def _results() -> list[FaceResult]:
    return [FaceResult(Box(10, 20, 30, 40), "worry", 0.123456789, "fear", 0.87654321, "unpleasant",
                       [("worry", 0.123456789), ("panic", 0.1)], np.zeros(3, np.float32)),
            FaceResult(Box(0, 1, 2, 3), "sad", 0.5, None, None, None,
                       [("sad", 0.5), ("angry", 0.25)], np.zeros(3, np.float32))]


def _frames() -> list[Frame]:
    return [Frame("clip.mp4", 12, results=_results(), boxes=[r.box for r in _results()]),
            Frame("empty.jpg", 0),
            Frame("broken.jpg", 0, error="broken.jpg: cannot decode image (bad)")]


def _rows() -> list[dict]:
    return [row for f in _frames() for row in face_rows(f)]


def test_face_rows_error_and_no_face():
    assert face_rows(Frame("broken.jpg", 3, error="broken.jpg: boom")) == [
        {"source": "broken.jpg", "frame": 3, "face": None, "box": None, "status": "error",
         "message": "broken.jpg: boom"}]
    assert face_rows(Frame("empty.jpg", 0)) == [
        {"source": "empty.jpg", "frame": 0, "face": None, "box": None, "status": "no_face",
         "message": "no face found"}]
    # an error wins over results
    assert face_rows(Frame("x.jpg", 0, results=_results(), error="late"))[0]["status"] == "error"


def test_face_rows_two_faces():
    rows = face_rows(_frames()[0])
    assert rows == [
        {"source": "clip.mp4", "frame": 12, "face": 0, "box": [10, 20, 30, 40], "status": "ok", "fine": "worry",
         "fine_prob": 0.123457, "coarse": "fear", "coarse_prob": 0.876543, "valence": "unpleasant",
         "topk": [["worry", 0.123457], ["panic", 0.1]], "message": ""},
        {"source": "clip.mp4", "frame": 12, "face": 1, "box": [0, 1, 2, 3], "status": "ok", "fine": "sad",
         "fine_prob": 0.5, "coarse": None, "coarse_prob": None, "valence": None,
         "topk": [["sad", 0.5], ["angry", 0.25]], "message": ""}]
    assert all(type(v) is int for v in rows[0]["box"])


def test_row_writer_csv():
    buf = io.StringIO()
    w = RowWriter(buf, "csv", topk=2)
    assert w.columns == COLUMNS
    for row in _rows():
        w.write(row)
    text = buf.getvalue()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    got = list(csv.DictReader(io.StringIO(text)))
    assert len(got) == 4
    assert got[0] == {"source": "clip.mp4", "frame": "12", "face": "0", "x": "10", "y": "20", "w": "30", "h": "40",
                      "status": "ok", "fine": "worry", "fine_prob": "0.123457", "coarse": "fear",
                      "coarse_prob": "0.876543", "valence": "unpleasant", "top1_label": "worry",
                      "top1_prob": "0.123457", "top2_label": "panic", "top2_prob": "0.1", "message": ""}
    assert (got[1]["x"], got[1]["y"], got[1]["w"], got[1]["h"]) == ("0", "1", "2", "3")
    assert (got[1]["coarse"], got[1]["coarse_prob"], got[1]["valence"]) == ("", "", "")
    assert (got[1]["top2_label"], got[1]["top2_prob"]) == ("angry", "0.25")
    empty = {c: "" for c in COLUMNS}
    assert got[2] == {**empty, "source": "empty.jpg", "frame": "0", "status": "no_face", "message": "no face found"}
    assert got[3] == {**empty, "source": "broken.jpg", "frame": "0", "status": "error",
                      "message": "broken.jpg: cannot decode image (bad)"}


def test_row_writer_csv_fewer_topk_than_columns():
    buf = io.StringIO()
    w = RowWriter(buf, "csv", topk=3)
    assert w.columns[-7:] == ["top1_label", "top1_prob", "top2_label", "top2_prob", "top3_label", "top3_prob",
                              "message"]
    w.write(face_rows(_frames()[0])[0])
    row = next(csv.DictReader(io.StringIO(buf.getvalue())))
    assert (row["top2_label"], row["top3_label"], row["top3_prob"]) == ("panic", "", "")


def test_row_writer_jsonl_round_trip():
    buf = io.StringIO()
    w = RowWriter(buf, "jsonl", topk=2)
    rows = _rows()
    for row in rows:
        w.write(row)
    lines = buf.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_row_writer_note_line():
    note = "model trained on synthetic faces only: labels mean nothing"
    buf = io.StringIO()
    w = RowWriter(buf, "csv", topk=2, note=note)
    w.write(_rows()[0])
    lines = buf.getvalue().splitlines()
    assert lines[0] == f"# {note}"
    assert lines[1] == ",".join(COLUMNS)
    got = list(csv.DictReader(io.StringIO("\n".join(lines[1:]) + "\n")))
    assert len(got) == 1 and got[0]["fine"] == "worry"

    buf = io.StringIO()
    w = RowWriter(buf, "jsonl", topk=2, note=note)
    w.write(_rows()[0])
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0] == {"status": "note", "message": note}
    assert lines[1] == _rows()[0]

    for fmt in ("csv", "jsonl"):  # no note: nothing before the header / the first row
        buf = io.StringIO()
        RowWriter(buf, fmt, topk=2, note=None)
        assert buf.getvalue() == (",".join(COLUMNS) + "\n" if fmt == "csv" else "")


def test_row_writer_bad_format():
    with pytest.raises(ValueError, match="csv or jsonl"):
        RowWriter(io.StringIO(), "tsv", topk=1)


# --- list_inputs ---------------------------------------------------------------------------------
def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_list_inputs_tree(tmp_path):
    root = tmp_path / "photos"
    for rel in ["b.jpg", "a.png", "sub/c.mp4", "sub/d.JPG", "sub/deeper/f.webp",   # found
                ".hidden.png", ".cache/e.png", "sub/.g.jpg", "notes.txt", "sub/data.csv"]:  # skipped
        _touch(root / rel)
    _touch(tmp_path / "nomedia" / "readme.txt")
    _touch(tmp_path / "nomedia" / ".x.png")
    first = _touch(tmp_path / "z_first.jpg")
    odd = _touch(tmp_path / "scan.xyz")
    movie = _touch(tmp_path / "MOVIE.MP4")
    missing = tmp_path / "gone"

    got = list_inputs([str(first), str(root), str(tmp_path / "nomedia"), str(missing), str(odd), str(movie)])
    assert [(i.path, i.kind, i.name) for i in got] == [
        (first, "image", Path("z_first.jpg")),
        (root / "a.png", "image", Path("photos/a.png")),
        (root / "b.jpg", "image", Path("photos/b.jpg")),
        (root / "sub/c.mp4", "video", Path("photos/sub/c.mp4")),
        (root / "sub/d.JPG", "image", Path("photos/sub/d.JPG")),
        (root / "sub/deeper/f.webp", "image", Path("photos/sub/deeper/f.webp")),
        (tmp_path / "nomedia", "missing", Path("nomedia")),
        (missing, "missing", Path("gone")),
        (odd, "image", Path("scan.xyz")),      # named explicitly: tried as an image, reported later
        (movie, "video", Path("MOVIE.MP4")),
    ]
    problems = {i.path: i.problem for i in got if i.kind == "missing"}
    assert str(tmp_path / "nomedia") in problems[tmp_path / "nomedia"]
    assert "no image or video" in problems[tmp_path / "nomedia"]
    assert str(missing) in problems[missing] and "no such file" in problems[missing]
    assert all(i.problem is None for i in got if i.kind != "missing")


def test_list_inputs_keeps_the_given_order(tmp_path):
    a, b = _touch(tmp_path / "a.jpg"), _touch(tmp_path / "b.jpg")
    assert [i.path for i in list_inputs([str(b), str(a), str(b)])] == [b, a, b]
    assert list_inputs([]) == []
    assert list_inputs([str(a)]) == [Input(a, "image", Path("a.jpg"))]


def test_is_video():
    assert is_video(Path("x.mp4")) and is_video(Path("x.MOV")) and is_video(Path("dir/x.webm"))
    assert not is_video(Path("x.jpg")) and not is_video(Path("x.mp4.txt")) and not is_video(Path("mp4"))
