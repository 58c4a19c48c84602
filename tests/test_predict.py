"""Photo and video prediction: faces found, one row per face, per-frame rows, drawn copies, bad input.

A real photograph comes from scikit-image's bundled sample data (`skimage.data.astronaut()`, in the
wheel, no download); the model is a tiny RALD trained once per session on synthetic faces, so the
labels mean nothing and only the form of the answers is checked.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data as skdata

from rald_fast.cli import run_cli
from rald_fast.predict.command import main
from rald_fast.predict.drawing import draw_faces
from rald_fast.predict.faces import Box, HaarFaceDetector, crop_face
from rald_fast.predict.pipeline import predict_faces

ASTRONAUT_FACE = (176, 66, 95, 95)  # (x, y, w, h) of the one face, as OpenCV's cascade finds it


@pytest.fixture(scope="session")
def three_faces(astronaut) -> np.ndarray:
    """The astronaut's face pasted three times on a plain canvas."""
    face = astronaut[30:200, 140:310]
    canvas = np.full((240, 640, 3), 235, np.uint8)
    for x in (20, 230, 440):
        canvas[35:205, x:x + 170] = face
    return canvas


@pytest.fixture(scope="session")
def photos(tmp_path_factory, astronaut, three_faces) -> dict[str, Path]:
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    paths = {"astronaut": d / "astronaut.jpg", "three": d / "three.png", "blank": d / "blank.png",
             "corrupt": d / "corrupt.jpg", "text": d / "notes.txt", "video": d / "clip.mp4",
             "bad_video": d / "broken.mp4"}
    Image.fromarray(astronaut).save(paths["astronaut"], quality=92)
    Image.fromarray(three_faces).save(paths["three"])
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(paths["blank"])
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    paths["text"].write_text("hello")
    paths["bad_video"].write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    writer = cv2.VideoWriter(str(paths["video"]), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    frame = cv2.cvtColor(cv2.resize(astronaut, (256, 256)), cv2.COLOR_RGB2BGR)
    for i in range(6):  # the face drifts one pixel a frame
        writer.write(np.roll(frame, i, axis=1))
    writer.release()
    return paths


def run(argv, capsys) -> tuple[int, str, str]:
    """The command in-process (as `python -m rald_fast.predict` runs it): (status, stdout, stderr)."""
    code = run_cli(lambda: main([*argv, "--no-progress"]))
    out, err = capsys.readouterr()
    return code, out, err


def csv_rows(text: str) -> list[dict]:
    """The CSV rows; the first line of a synthetic-trained model's output is a `# ` note."""
    lines = text.splitlines(keepends=True)
    assert lines and lines[0].startswith("# model") and "synthetic faces only" in lines[0]
    return list(csv.DictReader(io.StringIO("".join(lines[1:]))))


def json_rows(text: str) -> list[dict]:
    """The JSON rows after the leading `note` line."""
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0]["status"] == "note" and "synthetic faces only" in rows[0]["message"]
    return rows[1:]


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


# --- the Python API ---------------------------------------------------------------------------
def test_astronaut_face_is_found_and_predicted(predictor, astronaut):
    results = predict_faces(predictor, astronaut, topk=4)
    assert len(results) == 1
    r, tax = results[0], predictor.taxonomy
    assert iou(r.box, ASTRONAUT_FACE) > 0.8, r.box
    assert r.probs.shape == (tax.num_fine,) and abs(r.probs.sum() - 1) < 1e-4
    assert r.fine in tax.fine and r.fine_prob == pytest.approx(r.probs.max(), abs=1e-6)
    assert r.coarse == tax.parent[tax.fine_index(r.fine)]
    assert r.valence == tax.valence[r.coarse]
    assert r.coarse_prob >= r.fine_prob - 1e-6  # the group's sum includes its own fine label
    labels, probs = zip(*r.topk)
    assert len(r.topk) == 4 and labels[0] == r.fine and list(probs) == sorted(probs, reverse=True)


def test_no_detect_treats_the_image_as_one_crop(predictor, astronaut):
    face = astronaut[66:161, 176:271]
    (r,) = predict_faces(predictor, face, detect=False)
    assert r.box == Box(0, 0, 95, 95)
    np.testing.assert_allclose(r.probs, predictor.predict([face]).probs[0], atol=1e-6)  # same resize


def test_results_do_not_depend_on_batch_mates(predictor, astronaut):
    size = predictor.preprocess.image_size
    face = crop_face(astronaut, Box(*ASTRONAUT_FACE), size)
    rng = np.random.default_rng(0)
    others = rng.integers(0, 256, (7, size, size, 3), dtype=np.uint8)
    alone = predictor.predict(face[None]).probs[0]
    for batch, index in ((np.concatenate([face[None], others]), 0),
                         (np.concatenate([others[:3], face[None]]), 3)):
        np.testing.assert_allclose(predictor.predict(batch).probs[index], alone, atol=1e-5)


def test_crop_is_square_centred_and_padded_at_the_border():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :, 0] = np.arange(200, dtype=np.uint8)[None, :]
    crop = crop_face(image, Box(0, 10, 40, 20), size=48, margin=0.5)  # 80 px square, half outside
    assert crop.shape == (48, 48, 3)
    assert (crop[:, :12, 0] == 0).all()  # left part repeats column 0
    assert crop[24, 24, 0] == pytest.approx(20, abs=2)  # centre of the crop = centre of the box
    with pytest.raises(ValueError, match="margin"):
        crop_face(image, Box(0, 0, 10, 10), 48, margin=-0.1)


def test_detector_finds_every_face_left_to_right(three_faces):
    boxes = HaarFaceDetector()(three_faces)
    assert len(boxes) == 3
    assert [b.x for b in boxes] == sorted(b.x for b in boxes)
    assert HaarFaceDetector(min_face=150)(three_faces) == []


def test_detector_on_bundled_lfw_faces():
    """scikit-image's LFW subset: 100 real faces and 100 non-face patches (25 px, upscaled)."""
    patches = skdata.lfw_subset()
    detector = HaarFaceDetector(min_face=20)
    found = []
    for patch in patches:
        grey = cv2.resize((patch * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
        grey = cv2.copyMakeBorder(grey, 25, 25, 25, 25, cv2.BORDER_REPLICATE)
        found.append(len(detector(np.repeat(grey[..., None], 3, axis=2))) > 0)
    assert np.mean(found[:100]) >= 0.95  # measured 0.99
    assert np.mean(found[100:]) <= 0.05  # measured 0.00


def test_draw_faces_marks_the_box(predictor, astronaut):
    results = predict_faces(predictor, astronaut)
    drawn = draw_faces(astronaut, results)
    assert drawn.shape == astronaut.shape and not np.array_equal(drawn, astronaut)
    x, y, w, h = results[0].box
    assert not np.array_equal(drawn[y + h // 2, x], astronaut[y + h // 2, x])  # left edge drawn


def test_a_model_trained_on_synthetic_faces_says_so(checkpoint, predictor, photos, capsys, tmp_path):
    assert predictor.synthetic and predictor.trained_on["data"] == "synthetic"
    assert "synthetic faces only" in predictor.provenance_note() and "SYNTHETIC" in repr(predictor)
    code, out, err = run(["--model", str(checkpoint), str(photos["astronaut"])], capsys)
    assert code == 0 and err.startswith("warning: model last.pt was trained on synthetic faces only")
    assert len(csv_rows(out)) == 1
    # exported artifacts carry it too, and a real-data model has no note
    from rald_fast.config import make_config
    from rald_fast.artifacts import build_metadata
    from rald_fast.predict.pipeline import RowWriter

    meta = build_metadata(make_config("tiny"), predictor.taxonomy, predictor.preprocess, "self", "x.pt",
                          trained_on={"data": "rafdb", "synthetic": False})
    assert meta["trained_on"]["synthetic"] is False
    real = io.StringIO()
    RowWriter(real, "csv", 3, note=None)
    assert real.getvalue().startswith("source,")


# --- the command line -------------------------------------------------------------------------
def test_cli_one_row_for_the_astronaut(checkpoint, photos, capsys):
    code, out, err = run(["--model", str(checkpoint), str(photos["astronaut"]), "--topk", "2"], capsys)
    assert code == 0, err
    (row,) = csv_rows(out)
    assert row["status"] == "ok" and row["source"] == str(photos["astronaut"])
    assert iou([int(row[k]) for k in "xywh"], ASTRONAUT_FACE) > 0.8
    assert row["fine"] == row["top1_label"] and row["coarse"] and row["valence"]
    assert float(row["top1_prob"]) >= float(row["top2_prob"]) and "top3_label" not in row


def test_cli_one_row_per_face_and_batch_size_does_not_matter(checkpoint, photos, capsys):
    outs = []
    for batch in ("1", "5"):
        code, out, err = run(["--model", str(checkpoint), str(photos["three"]), str(photos["astronaut"]),
                              "--format", "jsonl", "--batch-size", batch], capsys)
        assert code == 0, err
        outs.append(json_rows(out))
    rows = outs[0]
    assert [(r["source"], r["face"]) for r in rows] == [(str(photos["three"]), i) for i in range(3)] \
        + [(str(photos["astronaut"]), 0)]
    assert len({tuple(r["box"]) for r in rows[:3]}) == 3
    for a, b in zip(*outs):
        assert a["fine"] == b["fine"]
        np.testing.assert_allclose([p for _, p in a["topk"]], [p for _, p in b["topk"]], atol=1e-5)


def test_cli_video_gives_rows_per_frame_and_an_annotated_video(checkpoint, photos, tmp_path, capsys):
    code, out, err = run(["--model", str(checkpoint), str(photos["video"]), "--every", "2",
                          "--annotate", str(tmp_path / "ann"), "--output", str(tmp_path / "rows.csv")],
                         capsys)
    assert code == 0, err
    rows = csv_rows((tmp_path / "rows.csv").read_text())
    assert [int(r["frame"]) for r in rows] == [0, 2, 4]
    assert all(r["status"] == "ok" for r in rows)
    cap = cv2.VideoCapture(str(tmp_path / "ann" / "clip.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 3


def test_cli_annotate_writes_viewable_images(checkpoint, photos, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("astronaut", "blank"):
        (folder / "sub" / photos[name].name).write_bytes(photos[name].read_bytes())
    (folder / "readme.txt").write_text("not picked up from a folder")
    code, out, err = run(["--model", str(checkpoint), str(folder), "--annotate", str(tmp_path / "ann")],
                         capsys)
    assert code == 0, err
    assert [r["status"] for r in csv_rows(out)] == ["ok", "no_face"]
    drawn = cv2.imread(str(tmp_path / "ann" / "in" / "sub" / "astronaut.jpg"))
    assert drawn is not None and drawn.shape == (512, 512, 3)
    # the synthetic-only banner: a black strip with white text across the bottom
    strip = drawn[-6:, :, :].astype(int)
    assert (strip.max(axis=2) < 60).mean() > 0.5 and strip.max() > 200
    assert cv2.imread(str(tmp_path / "ann" / "in" / "sub" / "blank.png")) is not None


def test_cli_bad_inputs_are_named_and_the_run_goes_on(checkpoint, photos, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    bad = [photos["corrupt"], photos["text"], photos["bad_video"], tmp_path / "missing.jpg",
           tmp_path / "empty"]
    code, out, err = run(["--model", str(checkpoint), *map(str, bad), str(photos["blank"]),
                          str(photos["astronaut"])], capsys)
    assert code == 1
    rows = csv_rows(out)
    assert [r["status"] for r in rows] == ["error"] * 5 + ["no_face", "ok"]
    for path, reason in zip(bad, ("cannot decode image", "cannot decode image",
                                  "cannot open as a video", "no such file", "folder holds no image")):
        assert f"skipped: {path}: {reason}" in err
    assert rows[5]["fine"] == "" and rows[5]["message"] == "no face found"


def test_cli_strict_stops_at_the_first_bad_input(checkpoint, photos, capsys):
    code, out, err = run(["--model", str(checkpoint), str(photos["astronaut"]), str(photos["corrupt"]),
                          "--strict"], capsys)
    assert code == 2
    assert err.startswith("warning: ") and f"\nerror: {photos['corrupt']}: cannot decode image" in err


@pytest.mark.parametrize("option, message", [(["--margin", "-1"], "--margin must be >= 0"),
                                             (["--every", "0"], "--every must be >= 1"),
                                             (["--batch-size", "0"], "--batch-size must be >= 1"),
                                             (["--annotate", "{astronaut}"], "--annotate .* not a folder")])
def test_cli_bad_options(checkpoint, photos, capsys, option, message):
    option = [o.format(astronaut=photos["astronaut"]) for o in option]
    code, _, err = run(["--model", str(checkpoint), str(photos["astronaut"]), *option], capsys)
    assert code == 2 and re.match(f"error: {message}", err), err


def test_wrong_model_artifact_is_named(photos, tmp_path):
    """Through `python -m`, so the entry point and its exit status are covered too."""
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not an ONNX model")
    proc = subprocess.run([sys.executable, "-m", "rald_fast.predict", "--model", str(fake),
                           str(photos["astronaut"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {fake}: not a readable ONNX file") and proc.stdout == ""


@pytest.mark.parametrize("name, message", [("absent.pt", "no such file"),
                                           ("weights.txt", "unknown model kind"),
                                           ("fake.pt", "not a rald_fast training checkpoint")])
def test_missing_or_unknown_model_is_named(photos, tmp_path, capsys, name, message):
    model = tmp_path / name
    if name != "absent.pt":
        model.write_text("not a model")
    code, out, err = run(["--model", str(model), str(photos["astronaut"])], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error:") and str(model) in err and message in err, err
