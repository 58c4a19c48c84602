"""Tests of the embedded synthetic face dataset (tiny configs, a few seconds in all)."""

from __future__ import annotations

import csv
import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rald_fast.data.synthetic import (
    FG_EMOTIONS,
    SyntheticConfig,
    class_names,
    class_prototypes,
    coarse_index,
    config_digest,
    generate,
    oracle_features,
)


def tiny(**kw) -> SyntheticConfig:
    base = {"image_size": 32, "train_per_class": 2, "test_per_class": 1}
    base.update(kw)
    return SyntheticConfig(**base)


def rows(d: Path, split: str) -> list[dict]:
    with open(d / f"{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def all_files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return generate(tiny(), tmp_path_factory.mktemp("syn"))


def test_default_config_is_fg_emotions():
    cfg = SyntheticConfig()
    assert (cfg.image_size, cfg.train_per_class, cfg.test_per_class) == (64, 60, 20)
    assert cfg.flip_prob == 0.1 and cfg.difficulty == 1.0 and cfg.fine_offset_scale == 1.0
    assert len(cfg.taxonomy) == 6 and len(class_names(cfg.taxonomy)) == 33
    cfg.taxonomy["fear"].append("x")          # default_factory: no shared mutable default
    assert len(FG_EMOTIONS["fear"]) == 5 and len(SyntheticConfig().taxonomy["fear"]) == 5


def test_layout_csv_and_images(tiny_dir):
    cfg = tiny()
    names = set(class_names(cfg.taxonomy))
    m = json.loads((tiny_dir / "manifest.json").read_text())
    assert m["counts"] == {"train": 66, "test": 33} and m["config"] == cfg.to_dict()
    for split, n in (("train", 66), ("test", 33)):
        assert (tiny_dir / f"{split}.csv").read_text().splitlines()[0] == "path,label,clean_label"
        r = rows(tiny_dir, split)
        assert len(r) == n
        assert {x["label"] for x in r} <= names and {x["clean_label"] for x in r} == names
        for x in r[:5]:
            with Image.open(tiny_dir / x["path"]) as im:
                assert im.size == (32, 32) and im.mode == "RGB"
                im.load()


def test_deterministic_across_roots_and_workers(tiny_dir, tmp_path):
    a = generate(tiny(), tmp_path / "a")
    b = generate(tiny(), tmp_path / "b", workers=2)
    assert a.name == b.name == tiny_dir.name
    files = all_files(a)
    assert files == all_files(b) == all_files(tiny_dir)
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors


def test_cache_hit_does_not_rewrite(tmp_path):
    d = generate(tiny(), tmp_path)
    before = {p: (d / p).stat().st_mtime_ns for p in all_files(d)}
    assert generate(tiny(), tmp_path) == d
    assert {p: (d / p).stat().st_mtime_ns for p in all_files(d)} == before


def test_parameter_change_gives_new_directory():
    base = config_digest(tiny())
    for kw in ({"seed": 1}, {"flip_prob": 0.2}, {"difficulty": 0.5}, {"image_size": 48},
               {"fine_offset_scale": 2.0}, {"taxonomy": {"a": ["x", "y"], "b": ["z"]}}):
        assert config_digest(tiny(**kw)) != base
    assert config_digest(tiny(flip_prob=0)) == config_digest(tiny(flip_prob=0.0))


def test_incomplete_directory_is_regenerated(tmp_path):
    d = generate(tiny(), tmp_path)
    (d / "manifest.json").unlink()
    (d / "train" / "train_00000.png").write_bytes(b"garbage")
    assert generate(tiny(), tmp_path) == d
    assert (d / "manifest.json").is_file()
    with Image.open(d / "train" / "train_00000.png") as im:
        assert im.size == (32, 32)


def test_flip_prob_zero_and_test_never_flipped(tmp_path):
    d = generate(tiny(flip_prob=0.0), tmp_path)
    assert all(x["label"] == x["clean_label"] for x in rows(d, "train"))
    d = generate(tiny(flip_prob=1.0, train_per_class=6), tmp_path)
    assert all(x["label"] == x["clean_label"] for x in rows(d, "test"))


def test_flip_prob_one_flips_to_mostly_siblings(tmp_path):
    cfg = tiny(flip_prob=1.0, train_per_class=6)
    d = generate(cfg, tmp_path)
    names = class_names(cfg.taxonomy)
    group = dict(zip(names, coarse_index(cfg.taxonomy)))
    r = rows(d, "train")
    assert all(x["label"] != x["clean_label"] for x in r)
    sib = np.mean([group[x["label"]] == group[x["clean_label"]] for x in r])
    assert 0.75 < sib < 1.0
    # image pixels do not depend on flip_prob (separate random streams)
    d0 = generate(tiny(flip_prob=0.0, train_per_class=6), tmp_path)
    assert (d / "train" / "train_00007.png").read_bytes() == (d0 / "train" / "train_00007.png").read_bytes()


def test_prototypes_fixed_by_taxonomy_and_separable():
    p0 = class_prototypes(tiny(seed=0))
    assert np.array_equal(p0, class_prototypes(tiny(seed=7, difficulty=2.0)))
    assert not np.array_equal(p0, class_prototypes(tiny(fine_offset_scale=0.5)))
    g = coarse_index(FG_EMOTIONS)
    dist = np.linalg.norm(p0[:, None] - p0[None], axis=-1)
    same = (g[:, None] == g[None]) & ~np.eye(len(g), dtype=bool)
    assert dist[same].min() > 0.3                       # siblings differ ...
    assert dist[same].mean() < dist[g[:, None] != g[None]].mean()   # ... less than groups do
    x, y = oracle_features(tiny(train_per_class=4), "train")
    assert x.shape == (4 * 33, 12) and np.array_equal(y, np.arange(4 * 33) % 33)
