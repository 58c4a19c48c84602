"""The decoded cache (rald_fast/data/cache.py) and the batch loader over it (train/loader.py): built once and
reused across runs and processes, keyed by the listing and the image size, rebuilt when stale or foreign,
nothing left behind by a full disk or a bad image, and the loader hands each process its own rows."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rald_fast.data import cache as cache_mod
from rald_fast.data import dataset as dataset_mod
from rald_fast.data.cache import listing_key
from rald_fast.data.build import decode_split
from rald_fast.data.dataset import SplitList, load_split
from rald_fast.train.loader import batch_loader, global_batches
from rald_fast.errors import DataError
from rald_fast.hierarchy import load_taxonomy
from rald_fast.train.distributed import SINGLE, DistInfo

TAXONOMY = load_taxonomy("fg-emotions")


def write_images(root, n: int = 12, seed: int = 0) -> SplitList:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = root / f"im{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (10 + i % 3, 12, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return SplitList("train", paths, [i % TAXONOMY.num_fine for i in range(n)], None, str(root))


def files(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock"))


def test_cache_is_built_once_then_mapped_without_decoding(tmp_path, monkeypatch):
    lst = write_images(tmp_path / "d")
    memory = load_split(lst, TAXONOMY, 16)
    first = decode_split(lst, TAXONOMY, 16, cache_dir=tmp_path / "c", workers=2)
    assert first.store.built and torch.equal(first.images, memory.images)
    assert torch.equal(first.labels, memory.labels) and first.paths == memory.paths
    [index] = [p for p in (tmp_path / "c").iterdir() if p.suffix == ".json"]
    meta = json.loads(index.read_text())
    assert meta["complete"] and meta["shape"] == [12, 3, 16, 16] and meta["preprocess"]["image_size"] == 16
    assert meta["paths"][0] == os.path.abspath(lst.paths[0]) and meta["skipped"] == []

    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(dataset_mod, "decode_image", no_decode)
    again = decode_split(lst, TAXONOMY, 16, cache_dir=tmp_path / "c")
    assert not again.store.built and torch.equal(again.images, memory.images)
    assert torch.equal(again.labels, memory.labels)


def test_key_follows_files_labels_and_image_size(tmp_path):
    lst = write_images(tmp_path / "d", 4)
    key = listing_key(lst.paths, lst.labels, None, 16)
    assert listing_key(lst.paths, lst.labels, None, 16) == key
    assert listing_key(lst.paths, lst.labels, None, 32) != key
    assert listing_key(lst.paths, [0, 0, 0, 0], None, 16) != key
    assert listing_key(lst.paths, lst.labels, [(0, 0, 5, 5)] * 4, 16) != key
    Image.new("RGB", (30, 30), (1, 2, 3)).save(lst.paths[2])        # a changed image
    st = os.stat(lst.paths[2])
    os.utime(lst.paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert listing_key(lst.paths, lst.labels, None, 16) != key


@pytest.mark.parametrize("damage", ["format", "incomplete", "truncated", "missing-data", "garbage-index"])
def test_stale_or_broken_cache_is_rebuilt(tmp_path, damage):
    lst = write_images(tmp_path / "d", 5)
    decode_split(lst, TAXONOMY, 8, cache_dir=tmp_path / "c")
    good = load_split(lst, TAXONOMY, 8)
    data, index, _ = cache_mod.cache_files(tmp_path / "c", listing_key(lst.paths, lst.labels, None, 8))
    meta = json.loads(index.read_text())
    if damage == "format":
        index.write_text(json.dumps({**meta, "format": "rald_fast.decoded/0"}))
    elif damage == "incomplete":
        index.write_text(json.dumps({k: v for k, v in meta.items() if k != "complete"}))
    elif damage == "truncated":
        with open(data, "r+b") as f:
            f.truncate(100)
    elif damage == "missing-data":
        data.unlink()
    else:
        index.write_text("{not json")
    again = decode_split(lst, TAXONOMY, 8, cache_dir=tmp_path / "c")
    assert again.store.built and torch.equal(again.images, good.images)


def test_full_disk_leaves_no_cache_and_says_so(tmp_path, monkeypatch):
    lst = write_images(tmp_path / "d", 6)

    def full(fd, buf, offset):
        if offset >= 2 * 3 * 8 * 8:   # a few rows in: the disk fills up mid-write
            raise OSError(errno.ENOSPC, "No space left on device")
        os.pwrite(fd, buf, offset)

    monkeypatch.setattr(cache_mod, "_pwrite_all", full)
    with pytest.raises(DataError, match=f"{tmp_path / 'c'}: the disk is full.*nothing was left behind"):
        decode_split(lst, TAXONOMY, 8, cache_dir=tmp_path / "c")
    assert files(tmp_path / "c") == []
    monkeypatch.undo()
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(DataError, match="the disk is full.*GB free"):
        decode_split(lst, TAXONOMY, 8, cache_dir=tmp_path / "c")
    assert files(tmp_path / "c") == []


def test_bad_images_through_the_cache(tmp_path):
    lst = write_images(tmp_path / "d", 6)
    lst.paths[1].write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"im001\.png: cannot decode image.*--on-bad-image skip"):
        decode_split(lst, TAXONOMY, 8, cache_dir=tmp_path / "c")       # fail: no cache is left
    assert files(tmp_path / "c") == []
    memory = load_split(lst, TAXONOMY, 8, on_bad_image="skip")
    cached = decode_split(lst, TAXONOMY, 8, on_bad_image="skip", cache_dir=tmp_path / "c")
    assert len(cached) == 5 and torch.equal(cached.images, memory.images)   # the kept rows, compacted
    assert cached.paths == memory.paths and cached.skipped == memory.skipped
    assert torch.equal(decode_split(lst, TAXONOMY, 8, on_bad_image="skip", cache_dir=tmp_path / "c").images,
                       memory.images)
    with pytest.raises(DataError, match=r"im001\.png: cannot decode image.*split 'train'"):
        decode_split(lst, TAXONOMY, 8, cache_dir=tmp_path / "c")       # the cached skip, under fail


def _load_in_process(args):
    lst, cache_dir = args
    torch.set_num_threads(1)
    split = decode_split(lst, TAXONOMY, 16, cache_dir=cache_dir)
    return split.store.built, split.images.numpy().tobytes(), split.store.path


def test_two_processes_build_the_cache_once_and_share_it(tmp_path):
    lst = write_images(tmp_path / "d", 40)
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_load_in_process, [(lst, tmp_path / "c")] * 2)
    assert sorted(r[0] for r in results) == [False, True]     # one decoded, the other mapped its file
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2]
    assert load_split(lst, TAXONOMY, 16).images.numpy().tobytes() == results[0][1]


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_gives_each_process_its_rows_and_leaves_the_global_rng(tmp_path, workers):
    split = decode_split(write_images(tmp_path / "d", 11), TAXONOMY, 8, cache_dir=tmp_path / "c")
    batches = global_batches(split, torch.Generator().manual_seed(0), 4, world_size=2)
    assert [len(b) for b in batches] == [4, 4, 3]
    state = torch.get_rng_state()
    parts = [list(batch_loader(split, batches, DistInfo(rank=r, world_size=2), workers)) for r in range(2)]
    whole = list(batch_loader(split, batches, SINGLE, workers))
    assert torch.equal(torch.get_rng_state(), state)
    for b, x0, x1, x in zip(batches, *parts, whole):
        assert x.dtype == torch.uint8 and torch.equal(x, split.images[b])
        assert torch.equal(torch.cat([x0, x1]), x) and len(x0) == (len(b) + 1) // 2
