"""Inputs users really have (issue 22): each case failed on the earlier main and holds here.

docs/RELIABILITY.md lists every case with the test that holds it. Prediction: faces in large photos,
16-bit images, the pixel limit, --strict keeping what was done, one PIL image. Training: a one-class
dataset, a batch of one, a finished run, a user's folder given to the synthetic source, --out naming
a file, a NaN learning rate. The decoded cache: an edited index, a zeroed data file. Paper cuts: a JSON
file named .pt, NaN in JSON, the resize method in artifacts, sidecar permissions, --help.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rald_fast.cli import run_cli
from rald_fast.errors import DataError, ImageTooLarge

TINY = dict(epochs=1, synth_train_per_class=1, synth_test_per_class=1, batch_size=16, eval_batch_size=16,
            image_size=32, progress=False)


def predict_cli(argv, capsys):
    from rald_fast.predict.command import main

    code = run_cli(lambda: main([*argv, "--no-progress"]))
    out, err = capsys.readouterr()
    return code, out, err


def rows_of(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.strip() and json.loads(x)["status"] != "note"]


# --- prediction --------------------------------------------------------------------------------
def test_a_face_in_a_phone_sized_photo_is_found(checkpoint, astronaut, tmp_path, capsys):
    """6000 x 4000 with the astronaut (face about 100 px) pasted in: found at the default --min-face."""
    from rald_fast.predict.faces import HaarFaceDetector

    photo = np.full((4000, 6000, 3), 200, np.uint8)
    photo[1000:1512, 2000:2512] = astronaut
    Image.fromarray(photo).save(tmp_path / "wide.jpg", quality=90)
    code, out, err = predict_cli(["--model", str(checkpoint), str(tmp_path / "wide.jpg"), "--format", "jsonl"],
                                 capsys)
    rows = rows_of(out)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], err
    x, y, w, h = rows[0]["box"]
    assert 2100 < x < 2250 and 1000 < y < 1150 and 80 < w < 140
    # the pyramid reaches the scale at which a --min-face face is SURE px: full resolution here
    assert HaarFaceDetector(min_face=24).levels(4000, 6000)[-1][0] == 1.0
    assert HaarFaceDetector(min_face=200).levels(4000, 6000)[-1][0] < 0.25


def test_16_bit_images_decode_by_their_depth_not_to_white(checkpoint, astronaut, tmp_path, capsys):
    from rald_fast.preprocess import open_rgb

    grey = np.asarray(Image.fromarray(astronaut).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "face16.png")
    assert Image.open(tmp_path / "face16.png").mode.startswith("I;16")
    rgb = np.asarray(open_rgb(tmp_path / "face16.png"))
    np.testing.assert_array_equal(rgb[..., 0], grey // 257)          # 16 -> 8 bits, not clipped to 255
    code, out, _ = predict_cli(["--model", str(checkpoint), str(tmp_path / "face16.png"), "--format", "jsonl"],
                               capsys)
    assert code == 0 and [r["status"] for r in rows_of(out)] == ["ok"]
    # 32-bit integer and float grey too
    Image.fromarray((grey.astype(np.int32))).save(tmp_path / "face32.tif")
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "face32.tif"))[..., 0], grey // 257)
    Image.fromarray(grey.astype(np.float32) / 65535).save(tmp_path / "facef.tif")
    assert abs(np.asarray(open_rgb(tmp_path / "facef.tif"))[..., 0].astype(int) - grey // 257).max() <= 1


def test_over_the_pixel_limit_is_one_line_and_no_pillow_warning(checkpoint, tmp_path, capsys):
    from rald_fast.preprocess import open_rgb

    Image.new("L", (9500, 9500), 128).save(tmp_path / "huge.png")  # 90 MP: Pillow would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with pytest.raises(DataError, match=r"huge\.png: 9500 x 9500 = 90 MP is over the pixel limit of 50 MP") as e:
            open_rgb(tmp_path / "huge.png", max_pixels=50_000_000)
        assert isinstance(e.value, ImageTooLarge)  # its own type: the service answers it with 413
        assert open_rgb(tmp_path / "huge.png", max_pixels=None).size == (9500, 9500)
    code, out, err = predict_cli(["--model", str(checkpoint), str(tmp_path / "huge.png"), "--max-pixels", "50",
                                  "--format", "jsonl"], capsys)
    assert code == 1 and "over the pixel limit of 50 MP (--max-pixels)" in err
    assert "DecompressionBomb" not in err and rows_of(out)[0]["status"] == "error"


def test_a_small_face_in_a_large_photo_below_the_limit_is_found(astronaut, tmp_path):
    """A 95 px face in a 4000 x 4000 scan (the 12000 x 12000 case scaled down for the test suite)."""
    from rald_fast.predict.faces import HaarFaceDetector
    from rald_fast.preprocess import open_rgb

    scan = np.full((4000, 4000, 3), 230, np.uint8)
    scan[2000:2512, 3000:3512] = astronaut
    Image.fromarray(scan).save(tmp_path / "scan.png")
    boxes = HaarFaceDetector()(np.asarray(open_rgb(tmp_path / "scan.png")))
    assert len(boxes) == 1 and 3150 < boxes[0].x < 3200 and 80 < boxes[0].w < 120


def test_strict_stops_with_the_rows_already_computed_written(checkpoint, astronaut, tmp_path, capsys):
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, out, err = predict_cli(["--model", str(checkpoint), str(tmp_path / "a.png"), str(tmp_path / "b.jpg"),
                                  "--strict", "--format", "jsonl"], capsys)
    assert code == 2 and "error:" in err and "b.jpg" in err
    assert [(r["source"], r["status"]) for r in rows_of(out)] == [(str(tmp_path / "a.png"), "ok")]


def test_predictor_takes_one_image_or_many_pil_or_numpy(predictor, astronaut):
    pil = Image.fromarray(astronaut)
    one = predictor.predict(pil).probs
    assert one.shape == (1, 33)
    np.testing.assert_allclose(predictor.predict([pil, astronaut]).probs, np.concatenate([one, one]), atol=1e-6)
    np.testing.assert_allclose(predictor.predict(astronaut).probs, one, atol=1e-6)
    np.testing.assert_allclose(predictor.predict(pil.convert("L")).probs.shape, (1, 33))


# --- training ----------------------------------------------------------------------------------
def train_cli(argv, capsys):
    from rald_fast.train.command import main

    code = run_cli(lambda: main(argv))
    out, err = capsys.readouterr()
    return code, out, err


def faces_folder(root: Path, classes: dict[str, int], splits=("train", "test")) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_a_one_class_dataset_is_refused_naming_it(tmp_path, capsys):
    root = faces_folder(tmp_path / "one", {"happiness": 3})
    code, _, err = train_cli(["--preset", "tiny", "--variant", "a", "--data", "folder", "--data-root", str(root),
                              "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2 and "has 1 fine label(s) (happiness): a classifier needs two or more" in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_batch_of_one_is_refused_for_the_relations_and_allowed_for_resnet18(tmp_path, capsys):
    from rald_fast.config import make_config

    code, _, err = train_cli(["--preset", "tiny", "--batch-size", "1", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--batch-size 1: ITRR relates the images of a batch" in err
    assert make_config("tiny", "a", batch_size=1).optim.batch_size == 1


def test_a_finished_run_is_never_overwritten_without_being_asked(tmp_path, capsys):
    from rald_fast.config import make_config
    from rald_fast.train.loop import fit

    out = tmp_path / "run"
    fit(make_config("tiny", "a", out=str(out), **TINY))
    before = (out / "last.pt").read_bytes()
    code, _, err = train_cli(["--preset", "tiny", "--variant", "a", "--out", str(out)], capsys)
    assert code == 2 and "holds a finished run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "last.pt").read_bytes() == before
    args = ["--preset", "tiny", "--variant", "a", "--out", str(out), "--synth-train-per-class", "1",
            "--synth-test-per-class", "1", "--image-size", "32", "--epochs", "1", "--overwrite"]
    assert train_cli(args, capsys)[0] == 0


def test_a_users_folder_is_never_written_to_by_the_synthetic_source(tmp_path, capsys):
    root = faces_folder(tmp_path / "my_faces", {"happiness": 2, "sadness": 2})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    code, _, err = train_cli(["--preset", "tiny", "--data-root", str(root), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "not rald_fast's synthetic data" in err and "--data folder" in err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


@pytest.mark.parametrize("command", ["train", "evaluate", "bank", "export"])
def test_out_naming_an_existing_file_is_one_error_line(command, checkpoint, tmp_path, capsys):
    from rald_fast.evaluate.command import bank_main
    from rald_fast.evaluate.command import main as evaluate_main
    from rald_fast.export.build import main as export_main
    from rald_fast.train.command import main as train_main

    target = tmp_path / "some.jpg"
    target.write_bytes(b"a user's photo")
    argv = {"train": (train_main, ["--preset", "tiny", "--out", str(target)]),
            "evaluate": (evaluate_main, ["--checkpoint", str(checkpoint), "--out", str(target)]),
            "bank": (bank_main, ["--checkpoint", str(checkpoint), "--out", str(target)]),
            "export": (export_main, ["--checkpoint", str(checkpoint), "--formats", "onnx", "--out", str(target)])}
    main, args = argv[command]
    code = run_cli(lambda: main(args))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --out {target}") and len(err.strip().splitlines()) == 1, err
    assert target.read_bytes() == b"a user's photo"


def test_a_nan_learning_rate_stops_before_anything_is_written(tmp_path, capsys):
    code, _, err = train_cli(["--preset", "tiny", "--lr", "nan", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "--lr must be a finite number" in err
    assert not (tmp_path / "run").exists()


# --- the decoded cache -------------------------------------------------------------------------
def cached(tmp_path):
    from rald_fast.data.cache import load_cached_split
    from rald_fast.data.dataset import SplitList

    root = faces_folder(tmp_path / "ds", {"a": 4, "b": 4}, splits=("train",))
    paths = sorted((root / "train").rglob("*.png"))
    labels = [0 if p.parent.name == "a" else 1 for p in paths]
    lst = SplitList("train", paths, labels, None, str(root))
    return lambda: load_cached_split(lst, 16, tmp_path / "cache"), labels


def test_an_edited_cache_index_is_detected_and_rebuilt(tmp_path):
    load, labels = cached(tmp_path)
    first = load()
    index_path = next((tmp_path / "cache").glob("*.json"))
    index = json.loads(index_path.read_text())
    index["rows"][5] = index["rows"][4]                               # the edit: every later row shifts
    index_path.write_text(json.dumps(index))
    again = load()
    assert again.labels.tolist() == labels and again.store.built       # rebuilt, labels right
    assert np.array_equal(again.images.numpy(), first.images.numpy())


def test_a_zeroed_cache_data_file_is_detected_and_rebuilt(tmp_path):
    load, _ = cached(tmp_path)
    first = load().images.numpy().copy()
    data = next((tmp_path / "cache").glob("*.u8"))
    data.write_bytes(bytes(data.stat().st_size))                       # same size, all zeros
    again = load()
    assert again.store.built and np.array_equal(again.images.numpy(), first)


# --- paper cuts --------------------------------------------------------------------------------
def test_a_json_file_named_pt_is_said_to_be_json_without_torchs_advice(tmp_path):
    from rald_fast.checkpoint import load_checkpoint
    from rald_fast.errors import CheckpointError

    path = tmp_path / "model.pt"
    path.write_text('{"not": "a checkpoint"}')
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "not a PyTorch file: it looks like JSON text" in str(e.value)
    assert "weights_only" not in str(e.value) and "code execution" not in str(e.value)


def test_flat_taxonomy_runs_write_strict_json(tmp_path):
    from rald_fast.config import make_config
    from rald_fast.train.loop import fit

    root = faces_folder(tmp_path / "flat", {"happiness": 3, "sadness": 3})
    fit(make_config("tiny", "a", data="folder", data_root=str(root), out=str(tmp_path / "run"),
                    cache_dir=str(tmp_path / "c"), **{**TINY, "batch_size": 4, "eval_batch_size": 4}))

    def strict(text):
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))

    summary = strict((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["test_coarse_acc"] is None and not math.isnan(summary["final"]["test_acc"])
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        strict(line)


def test_artifacts_record_the_resize_and_sidecars_are_readable(exported_artifacts):
    from rald_fast.artifacts import read_sidecar
    from rald_fast.files import FILE_MODE

    onnx = next(exported_artifacts["out"].glob("*.onnx"))
    meta = read_sidecar(onnx)
    assert "PIL" in meta["preprocess"]["resize"] and "BILINEAR" in meta["preprocess"]["resize"]
    sidecar = onnx.with_name(onnx.name + ".json")
    assert os.stat(sidecar).st_mode & 0o777 == FILE_MODE and FILE_MODE & 0o044  # not mkstemp's 0600


def test_help_says_what_users_need(capsys):
    from rald_fast.export.build import invoked_as
    from rald_fast.predict.command import build_parser
    from rald_fast.train.command import build_parser as train_parser

    text = build_parser().format_help()
    assert ".ts" in text and "torchscript" in text and "JSON lines" in text and "--max-pixels" in text
    assert invoked_as("/usr/bin/rald-export") == "rald-export"
    assert invoked_as("export/build_trt.py") == "python export/build_trt.py"
    assert invoked_as("/x/rald_fast/export/__main__.py") == "python -m rald_fast.export"
    train = " ".join(train_parser([]).format_help().split())
    for plain in ("each image attends to the other images of its batch", "label tokens attend to each other",
                  "each image attends to the label tokens", "no path between them in the label hierarchy"):
        assert plain in train, plain
