"""Dataset readers: each published layout, built here in a temp dir, reads back the right
images, labels, class order and face crops; every bad input stops with its message; a 1-epoch run
trains on each layout."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rald_fast.config import make_config
from rald_fast.data.affectnet import read_affectnet
from rald_fast.data.dataset import (DataError, SplitList, class_balanced_weights, epoch_order,
                                    load_split, report_duplicates)
from rald_fast.data.readers import default_taxonomy, read_fgemotions, read_rafdb, read_split
from rald_fast.hierarchy import BASIC7, fg_emotions, load_taxonomy
from rald_fast.train.loop import build_data, fit

ROOT = Path(__file__).resolve().parents[1]
BASIC = load_taxonomy("basic7")


def img(path: Path, color=(200, 90, 40), size=(24, 24), mode="RGB", fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = color[0] if mode == "L" else (*color, 128) if mode == "RGBA" else color
    Image.new(mode, size, fill).save(path, fmt)
    return path


def corrupt(path: Path) -> Path:
    """A truncated JPEG: the header is there, the pixels are not."""
    img(path, size=(64, 64))
    path.write_bytes(path.read_bytes()[:120])
    return path


# --- fixtures in each exact layout ------------------------------------------------------------
def make_rafdb(root: Path, bad_line: str | None = None) -> Path:
    base = root / "basic"
    lines = [f"train_{i:05d}.jpg {i}" for i in range(1, 8)] + \
        [f"test_{i:04d}.jpg {8 - i}" for i in range(1, 8)]
    if bad_line:
        lines.insert(2, bad_line)
    (base / "EmoLabel").mkdir(parents=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines[:14]:
        stem = line.split()[0][:-4]
        img(base / "Image" / "aligned" / f"{stem}_aligned.jpg", color=(30 * int(line[-1]), 0, 0))
        img(base / "Image" / "original" / f"{stem}.jpg", size=(40, 30))
    # a grayscale JPEG and an RGBA PNG stored under the release's .jpg name
    img(base / "Image" / "aligned" / "train_00002_aligned.jpg", color=(77,), mode="L")
    img(base / "Image" / "aligned" / "train_00003_aligned.jpg", mode="RGBA", fmt="PNG")
    return root


def two_tone(path: Path, box=(10, 10, 30, 30)):
    """40x40 blue photo with a red 'face' inside `box`."""
    im = Image.new("RGB", (40, 40), (0, 0, 255))
    im.paste((255, 0, 0), box)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=95)


def make_affectnet_csv(root: Path, header=True, rows=None) -> Path:
    rows = rows or [("1/a.jpg", 0), ("1/b.jpg", 1), ("2/c.jpg", 7), ("2/d.jpg", 8), ("2/e.jpg", 10),
                    ("3/f.jpg", 6)]
    for split in ("training", "validation"):
        text = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks," \
               "expression,valence,arousal\n" if header or split == "training" else ""
        for rel, code in rows:
            two_tone(root / "Manually_Annotated_Images" / rel)
            text += f'{rel},10,10,20,20,"1.0;2.0;3.0",{code},0.1,-0.2\n'
        (root / f"{split}.csv").write_text(text)
    return root


def make_affectnet_npy(root: Path, codes=None) -> Path:
    codes = codes or {"2": "1", "10": "3", "7": "9", "3": "0"}
    for split in ("train_set", "val_set"):
        for i, code in codes.items():
            img(root / split / "images" / f"{i}.jpg")
            (root / split / "annotations").mkdir(parents=True, exist_ok=True)
            # a '<U1' string array, as the release ships it
            np.save(root / split / "annotations" / f"{i}_exp.npy", np.array(code))
    return root


def make_folders(root: Path, classes=("happiness", "sadness"), splits=("train", "test")) -> Path:
    for s in splits:
        for i, c in enumerate(classes):
            for j in range(3):
                img(root / s / c / f"{s}_{c}_{j}.jpg", color=(60 * i, 100, 20 * j))
    return root


def tiny_cfg(out, **kw):
    base = dict(batch_size=8, eval_batch_size=8, image_size=32, epochs=1, progress=False,
                out=str(out))
    return make_config("tiny", kw.pop("variant", "rald-l"), **{**base, **kw})


# --- RAF-DB ----------------------------------------------------------------------------------
def test_rafdb_split_from_prefix_labels_in_raf_order(tmp_path):
    root = make_rafdb(tmp_path)
    train = read_rafdb(root, "train", BASIC)
    names = [p.name for p in train.paths]
    assert names[:2] == ["train_00001_aligned.jpg", "train_00002_aligned.jpg"]
    assert train.labels == list(range(7))            # 1-7 -> surprise ... neutral
    assert BASIC.fine[0] == "surprise" and BASIC.fine[6] == "neutral"
    test = read_rafdb(root / "basic", "test", BASIC)  # the data root may also be basic/ itself
    assert test.labels == [6, 5, 4, 3, 2, 1, 0] and len(test.paths) == 7
    split = load_split(train, BASIC, 16)
    assert split.images.shape == (7, 3, 16, 16) and split.images.dtype == torch.uint8
    gray = split.images[1].float()
    assert torch.equal(gray[0], gray[1]) and abs(gray.mean().item() - 77) < 3
    original = read_rafdb(root, "train", BASIC, images="original")
    assert original.paths[0].name == "train_00001.jpg" and original.paths[0].is_file()


def test_rafdb_bad_label_line_names_file_and_line(tmp_path):
    root = make_rafdb(tmp_path, bad_line="train_00099.jpg 9")
    with pytest.raises(DataError, match=r"list_patition_label\.txt:3: expected .*'train_00099"):
        read_rafdb(root, "train", BASIC)


def test_rafdb_label_outside_a_user_taxonomy_and_empty_split(tmp_path):
    root = make_rafdb(tmp_path)
    four = tmp_path / "four.json"
    four.write_text('["surprise", "fear", "disgust", "happiness"]')
    with pytest.raises(DataError, match=r"list_patition_label\.txt:5: label 5 \(sadness\) is not"):
        read_rafdb(root, "train", load_taxonomy(str(four)))
    with pytest.raises(DataError, match="split 'val' is empty"):
        read_rafdb(root, "val", BASIC)
    with pytest.raises(DataError, match="no EmoLabel/list_patition_label.txt"):
        read_rafdb(tmp_path / "basic" / "Image", "train", BASIC)


# --- AffectNet -------------------------------------------------------------------------------
def test_affectnet_csv_drops_codes_maps_names_and_crops_faces(tmp_path, caplog):
    root = make_affectnet_csv(tmp_path)
    with caplog.at_level(logging.INFO):
        lst = read_affectnet(root, "train", None, BASIC, classes=7)
    assert [p.name for p in lst.paths] == ["a.jpg", "b.jpg", "f.jpg"]  # no contempt/none/no face
    assert [BASIC.fine[i] for i in lst.labels] == ["neutral", "happiness", "anger"]
    assert lst.boxes == [(10.0, 10.0, 30.0, 30.0)] * 3
    assert "dropped 1 contempt, 1 no-face, 1 none" in caplog.text
    face = load_split(lst, BASIC, 16).images.float().mean(dim=(2, 3))   # (N, 3) mean colour
    assert (face[:, 0] > 200).all() and (face[:, 2] < 50).all()          # red face, no blue photo
    eight = read_affectnet(root, "test", None, load_taxonomy("affectnet8"), classes=8)
    assert eight.labels == [0, 1, 7, 6] and eight.name == "validation"


def test_affectnet_csv_without_header_and_bad_rows(tmp_path):
    root = make_affectnet_csv(tmp_path, header=False)
    assert len(read_affectnet(root, "test", None, BASIC).paths) == 3
    make_affectnet_csv(tmp_path / "b", rows=[("1/a.jpg", 0), ("1/b.jpg", "x")])
    with pytest.raises(DataError, match=r"training\.csv:3: cannot read the row"):
        read_affectnet(tmp_path / "b", "train", None, BASIC)
    make_affectnet_csv(tmp_path / "c", rows=[("1/a.jpg", 12)])
    with pytest.raises(DataError, match=r"training\.csv:2: expression code 12 is not"):
        read_affectnet(tmp_path / "c", "train", None, BASIC)
    with pytest.raises(DataError, match=r"contempt.*--affectnet-classes 7"):
        read_affectnet(tmp_path, "train", None, BASIC, classes=8)
    with pytest.raises(DataError, match="no train split found.*--train-split"):
        read_affectnet(tmp_path / "c" / "Manually_Annotated_Images", "train", None, BASIC)


def test_affectnet_npy_release(tmp_path):
    root = make_affectnet_npy(tmp_path)
    lst = read_affectnet(root, "train", None, BASIC)
    assert [p.name for p in lst.paths] == ["2.jpg", "3.jpg", "10.jpg"]   # numeric id order, 9 gone
    assert [BASIC.fine[i] for i in lst.labels] == ["happiness", "neutral", "surprise"]
    assert lst.boxes is None and read_affectnet(root, "test", None, BASIC).name == "val_set"
    (root / "train_set" / "annotations" / "3_exp.npy").unlink()
    with pytest.raises(DataError, match=r"3\.jpg: no expression annotation"):
        read_affectnet(root, "train", None, BASIC)


# --- FG-Emotions and folders -----------------------------------------------------------------
def test_fgemotions_class_folders_and_list_file(tmp_path):
    fg = fg_emotions()
    make_folders(tmp_path, classes=("panic", "Relief", "lust"), splits=("train",))
    train = read_fgemotions(tmp_path, "train", None, fg)
    want = sorted(fg.fine.index(c) for c in ("panic", "relief", "lust"))
    assert sorted(set(train.labels)) == want
    assert len(train.paths) == 9
    img(tmp_path / "frames" / "a.jpg")
    img(tmp_path / "frames" / "b.jpg")
    (tmp_path / "test.txt").write_text("# key frames\nframes/a.jpg panic\n\nframes/b.jpg 12\n")
    test = read_fgemotions(tmp_path, "test", None, fg)
    assert test.labels == [fg.fine.index("panic"), 12] and test.paths[0].is_file()
    (tmp_path / "test.txt").write_text("frames/a.jpg panic\nframes/b.jpg joyful\n")
    with pytest.raises(DataError, match=r"test\.txt:2: unknown label 'joyful'"):
        read_fgemotions(tmp_path, "test", None, fg)
    (tmp_path / "test.txt").write_text("# nothing yet\n")
    with pytest.raises(DataError, match=r"test\.txt: split 'test' is empty"):
        read_fgemotions(tmp_path, "test", None, fg)


def test_folder_flat_taxonomy_user_taxonomy_and_unknown_class(tmp_path):
    root = make_folders(tmp_path / "mine", ("sadness", "happiness"), splits=("train", "val"))
    d = make_config(data="folder", data_root=str(root)).data
    tax = default_taxonomy(d, root)
    assert tax.fine == ("happiness", "sadness") and tax.is_flat and tax.name == "mine"
    test = read_split(d, tax, "test", root)              # test split falls back to val/
    assert test.name == "val" and test.labels == [0, 0, 0, 1, 1, 1]
    (tmp_path / "tax.json").write_text('{"bad": ["sadness"], "good": ["happiness"]}')
    d.taxonomy = str(tmp_path / "tax.json")
    tax = default_taxonomy(d, root)
    assert tax.fine == ("sadness", "happiness") and tax.coarse == ("bad", "good")
    assert read_split(d, tax, "train", root).labels == [1, 1, 1, 0, 0, 0]
    img(root / "train" / "anger" / "x.jpg")
    with pytest.raises(DataError, match=r"anger \(class folder\): unknown label 'anger'"):
        read_split(d, tax, "train", root)
    with pytest.raises(DataError, match=r"no train split folder.*--train-split"):
        read_split(d, tax, "train", tmp_path / "tax_dir_missing")


# --- data hygiene ----------------------------------------------------------------------------
def test_bad_images_fail_or_are_skipped_and_counted(tmp_path, caplog):
    good = [img(tmp_path / f"{i}.jpg") for i in range(3)]
    bad = corrupt(tmp_path / "bad.jpg")
    lst = SplitList("train", [*good, bad], [0, 1, 2, 3], source="x")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image .*--on-bad-image skip"):
        load_split(lst, BASIC, 16)
    with caplog.at_level(logging.WARNING):
        split = load_split(lst, BASIC, 16, on_bad_image="skip", workers=2)
    assert len(split) == 3 and split.labels.tolist() == [0, 1, 2]
    assert split.skipped[0][0] == str(bad) and "cannot decode" in split.skipped[0][1]
    assert "skipped 1 of 4 images" in caplog.text and "bad.jpg" in caplog.text
    with pytest.raises(DataError, match="every image failed to decode"):
        load_split(SplitList("train", [bad], [0]), BASIC, 16, on_bad_image="skip")
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_split(SplitList("test", [], []), BASIC, 16)
    with pytest.raises(DataError, match=r"0\.jpg: label index 9 is outside taxonomy 'basic7'"):
        load_split(SplitList("train", good[:1], [9]), BASIC, 16)


def test_default_policy_skips_in_train_and_fails_in_test(tmp_path, caplog):
    root = make_folders(tmp_path / "d")
    corrupt(root / "train" / "sadness" / "zz.jpg")
    with caplog.at_level(logging.WARNING):
        data = build_data(tiny_cfg(tmp_path / "run", data="folder", data_root=str(root)))
    assert len(data.train) == 6 and len(data.train.skipped) == 1
    assert "skipped 1 undecodable image(s) (train 1)" in caplog.text
    corrupt(root / "test" / "sadness" / "zz.jpg")
    with pytest.raises(DataError, match=r"test/sadness/zz\.jpg: cannot decode"):
        build_data(tiny_cfg(tmp_path / "run", data="folder", data_root=str(root)))
    data = build_data(tiny_cfg(tmp_path / "run", data="folder", data_root=str(root),
                               on_bad_image="skip"))
    assert len(data.test) == 6


def test_duplicate_names_across_splits_are_reported(tmp_path, caplog):
    a, b = img(tmp_path / "train" / "x.jpg"), img(tmp_path / "test" / "x.jpg")
    splits = {n: load_split(SplitList(n, [p], [0]), BASIC, 8)
              for n, p in (("train", a), ("test", b))}
    with caplog.at_level(logging.WARNING):
        assert report_duplicates(splits) == ["x.jpg"]
    assert "1 file name(s) appear in more than one split (train and test), e.g. x.jpg" \
        in caplog.text


def test_balanced_sampling_draws_classes_equally(tmp_path):
    labels = torch.tensor([0] * 90 + [1] * 10)
    split = load_split(SplitList("t", [img(tmp_path / "a.jpg")] * 100, labels.tolist()), BASIC, 8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(epoch_order(split, gen), torch.randperm(100, generator=gen.manual_seed(0)))
    split.sample_weights = class_balanced_weights(split.labels, BASIC.num_fine)
    draws = split.labels[torch.cat([epoch_order(split, gen) for _ in range(20)])]
    assert abs(draws.float().mean().item() - 0.5) < 0.05


def test_config_rejects_unknown_dataset_and_options():
    with pytest.raises(ValueError, match="--data must be one of synthetic, labelfile, rafdb"):
        make_config(data="imagenet")
    with pytest.raises(ValueError, match="--on-bad-image must be auto, skip or fail"):
        make_config(on_bad_image="ignore")
    with pytest.raises(ValueError, match="--affectnet-classes must be 7 or 8"):
        make_config(affectnet_classes=6)
    with pytest.raises(ValueError, match="--data rafdb needs --data-root DIR"):
        build_data(make_config(data="rafdb"))


# --- a short training run on each layout -----------------------------------------------------
@pytest.mark.parametrize("layout", ["affectnet-csv", "affectnet-npy", "fgemotions", "folder"])
def test_one_epoch_on_each_layout(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "affectnet-csv":
        kw = dict(data="affectnet", data_root=str(make_affectnet_csv(root)))
    elif layout == "affectnet-npy":
        kw = dict(data="affectnet", data_root=str(make_affectnet_npy(root)), affectnet_classes=8,
                  balanced=True)
    elif layout == "fgemotions":
        kw = dict(data="fgemotions", data_root=str(make_folders(root, ("panic", "relief"))),
                  variant="rald")
    else:
        kw = dict(data="folder", data_root=str(make_folders(root)))
    summary = fit(tiny_cfg(tmp_path / "run", **kw))
    assert summary["epochs"] == 1 and 0 <= summary["final"]["test_acc"] <= 1


def test_train_cli_on_rafdb(tmp_path):
    root = make_rafdb(tmp_path / "raf")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "rald_fast.train", "--data", "rafdb", "--data-root",
                        str(root), "--variant", "rald-l", "--preset", "tiny", "--image-size", "32",
                        "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test fine accuracy" in r.stdout
    assert "taxonomy basic7 (7 fine labels)" in r.stderr
    assert list(BASIC7) == list(load_taxonomy("basic7").fine)
