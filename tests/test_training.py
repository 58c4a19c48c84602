"""The training loop: resume is exact, checkpoints are atomic, bad data stops with a clear message."""

import json

import pytest
import torch

from rald_fast.checkpoint import CheckpointError, load_checkpoint
from rald_fast.files import atomic_write
from rald_fast.config import make_config
from rald_fast.data.dataset import DataError
from rald_fast.revision import code_revision
from rald_fast.train.loop import TrainingError, fit, run_revisions

TINY = dict(synth_train_per_class=1, synth_test_per_class=1, batch_size=16, eval_batch_size=16,
            image_size=32, progress=False)


def tiny_cfg(out, **kw):
    return make_config("tiny", "rald", out=str(out), **{**TINY, **kw})


@pytest.mark.parametrize("bank", [0, 24])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, bank):
    fit(tiny_cfg(tmp_path / "straight", epochs=2, nnldl_bank=bank))
    fit(tiny_cfg(tmp_path / "cut", epochs=1, nnldl_bank=bank))
    cfg = tiny_cfg(tmp_path / "cut", epochs=2, nnldl_bank=bank)
    fit(cfg, resume=str(tmp_path / "cut" / "last.pt"))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a.epoch == b.epoch == 2
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_seeded_run_is_bit_identical_run_to_run(tmp_path):
    """Two runs of one seeded config on one machine give the same numbers (timings aside), and
    every epoch reports what NNLDL did: neighbour purity against chance and ITRR's entropy."""
    rows = []
    for name in ("one", "two"):
        fit(tiny_cfg(tmp_path / name, epochs=2, nnldl_warmup=1))
        rows.append([json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    timing = {"train_images_per_s", "test_images_per_s"}
    for a, b in zip(*rows):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    first, last = rows[0]
    for key in ("train_nn_purity_fine", "train_nn_chance_fine", "train_nn_purity_coarse",
                "train_nn_chance_coarse", "train_itrr_entropy"):
        assert key in first and key in last, key
    assert "train_kl" not in first and "train_kl" in last  # --nnldl-warmup 1: CE alone in epoch 1
    assert {"test_nn_purity_fine", "test_nn_chance_fine", "test_nn_purity_fine_cosine_f"} <= set(last)
    a = load_checkpoint(tmp_path / "one" / "last.pt").model
    b = load_checkpoint(tmp_path / "two" / "last.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_is_complete(tmp_path):
    summary = fit(tiny_cfg(tmp_path, epochs=1))
    for name in ("config.json", "taxonomy.json", "metrics.jsonl", "metrics.csv", "last.pt",
                 "summary.json"):
        assert (tmp_path / name).is_file(), name
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt.format == "rald_fast.checkpoint/2" and ckpt.epoch == 1 and ckpt.optimizer and ckpt.scheduler
    assert ckpt.config["variant"] == "rald" and ckpt.taxonomy["name"] == "fg-emotions"
    assert ckpt.preprocess["image_size"] == 32 and ckpt.best["epoch"] == 1 and ckpt.rng is not None
    assert ckpt.provenance["synthetic"] and ckpt.provenance["train_images"] == 33  # one per class
    assert summary["final"]["test_acc"] >= 0
    assert json.loads((tmp_path / "config.json").read_text())["variant"] == "rald"
    # the code that trained it: this checkout's commit (+dirty when rald_fast/ is edited), every epoch
    rev = code_revision()
    assert rev is None or len(rev.removesuffix("+dirty")) == 12
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["revision"] == rev and summary["revisions"] == [rev] and rows[0]["revision"] == rev


def test_run_revisions_flags_a_run_trained_by_two_revisions(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "revision": "aaa"}\n{"epoch": 2, "revision": "bbb"}\n')
    assert run_revisions(tmp_path) == {"revision": None, "revisions": ["aaa", "bbb"]}


def test_non_finite_loss_stops_and_leaves_no_summary(tmp_path):
    with pytest.raises(TrainingError, match="non-finite loss.*--lr"):
        fit(tiny_cfg(tmp_path, epochs=3, lr=1e30))
    assert not (tmp_path / "summary.json").exists()


def test_atomic_write_leaves_old_file_on_crash(tmp_path):
    path = tmp_path / "x.pt"
    atomic_write(path, lambda f: f.write(b"old"))

    def crash(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)


def write_labelfile_dataset(root, rows, test_rows=None):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", rows), ("test", test_rows or rows)):
        text = "path,label\n"
        for name, label in lines:
            if not (root / name).exists():
                Image.new("RGB", (20, 20), (120, 80, 60)).save(root / name)
            text += f"{name},{label}\n"
        (root / f"{split}.csv").write_text(text)


def test_unknown_label_names_file_and_line(tmp_path):
    write_labelfile_dataset(tmp_path / "d", [("a.png", "panic"), ("b.png", "joyful")])
    with pytest.raises(DataError, match=r"train\.csv:3: unknown label 'joyful'"):
        fit(tiny_cfg(tmp_path / "run", data="labelfile", data_root=str(tmp_path / "d")))


def test_missing_and_corrupt_images_are_named(tmp_path):
    d = tmp_path / "d"
    write_labelfile_dataset(d, [("a.png", "panic"), ("b.png", "worry")])
    (d / "b.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"b\.png: cannot decode image"):
        fit(tiny_cfg(tmp_path / "run", data="labelfile", data_root=str(d)))
    (d / "b.png").unlink()
    with pytest.raises(DataError, match=r"b\.png: image file not found"):
        fit(tiny_cfg(tmp_path / "run", data="labelfile", data_root=str(d)))


def test_grayscale_and_rgba_images_are_converted(tmp_path):
    from PIL import Image

    from rald_fast.data.dataset import decode_image

    Image.new("L", (10, 12), 7).save(tmp_path / "g.png")
    Image.new("RGBA", (10, 12), (1, 2, 3, 4)).save(tmp_path / "a.png")
    assert decode_image(tmp_path / "g.png", 16).shape == (3, 16, 16)
    assert decode_image(tmp_path / "a.png", 16).shape == (3, 16, 16)
