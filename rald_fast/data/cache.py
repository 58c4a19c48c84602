"""The decoded cache: each split decoded once into a memory-mapped uint8 file that every later run and
every process on the node map, so that memory per process does not grow with the dataset.

Why: decoding a split into each process's memory costs N x 3 x S x S bytes per process (AffectNet's
287,000 training images at 224 px: 43 GB, times 8 ranks on a node). Mapped from one file, the pixels
live once in the OS page cache, shared by every process; training reads its rows with `pread`
(`DecodedStore.read_rows`, used by `loader.py`), so its own resident memory stays flat.

Layout of `<cache dir>/` (`--cache-dir`; default `$RALD_FAST_CACHE/decoded`, else
`~/.cache/rald_fast/decoded`):
- `<key>.u8`: the kept images, raw C-order uint8 rows (K, 3, S, S), no header;
- `<key>.json`: the index: format, key, shape, the listing rows kept, labels, source paths, the skipped
  images with their reasons, the preprocessing, and `complete: true`;
- `<key>.lock`: serialises the build: the first process decodes, the others wait and then map.

The key hashes the cache format, the decode version, the image size and the split's listing (every
file's absolute path, size and modification time, its label and face box), so a changed dataset or
image size makes a new cache. Both files are written under temporary names in the same directory
(the index last) and renamed into place when complete, so a crash, a full disk or a bad image under
`--on-bad-image fail` leaves no cache behind. An index of another format or key, an incomplete
one, or a data file of the wrong size is rebuilt, never half-read.

The cache does not trust what it finds: the index carries the SHA-256 of its own content
(`index_sha256`), so an edited or damaged index (a label shifted by hand) is rebuilt, and the SHA-256
of up to 64 rows spread over the data file (`sample_sha256`, computed when built and checked every
time it is mapped: a few MB read), so a data file overwritten or zeroed at the same size is rebuilt.
The labels of the rows are also checked against the split's listing each time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rald_fast.data.dataset import (Split, SplitList, bad_image_error, check_bad_image_policy, decode_rows,
                                    kept_labels, kept_paths)
from rald_fast.errors import DataError
from rald_fast.files import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = "rald_fast.decoded/2"   # the layout of the files above (2: content checks)
SAMPLE_ROWS = 64  # rows whose bytes are hashed to check the data file (`sample_digest`)
DECODE_VERSION = "1"  # bump when dataset.decode_image / rald_fast.preprocess change the pixels
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def default_cache_dir() -> Path:
    env = os.environ.get("RALD_FAST_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "rald_fast") / "decoded"


@dataclass
class DecodedStore:
    """A complete cache file: K rows of (3, size, size) uint8, read by `pread` or mapped."""

    path: str
    count: int
    size: int
    built: bool = False   # this process decoded it (False: an existing cache was mapped)

    @property
    def row_bytes(self) -> int:
        return 3 * self.size * self.size

    def array(self) -> np.ndarray:
        """The rows, memory-mapped read-only (K, 3, S, S)."""
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.count, 3, self.size, self.size))

    def tensor(self) -> torch.Tensor:
        """`array()` as a tensor sharing its pages; read-only: never write into it."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
            return torch.from_numpy(self.array())

    def read_rows(self, rows, out: np.ndarray | None = None) -> np.ndarray:
        """Rows `rows` copied into `out` (len(rows), 3, S, S) with one `pread` each: the file's pages
        stay in the shared page cache, not in this process's resident memory."""
        rows = np.asarray(rows, dtype=np.int64)
        if out is None:
            out = np.empty((len(rows), 3, self.size, self.size), dtype=np.uint8)
        fd = self._fd()
        flat = out.reshape(len(rows), self.row_bytes)
        for j, r in enumerate(rows):
            if not 0 <= r < self.count:
                raise IndexError(f"row {r} outside {self.path} ({self.count} rows)")
            got = os.preadv(fd, [flat[j]], int(r) * self.row_bytes)
            if got != self.row_bytes:
                raise DataError(f"{self.path}: short read at row {r} (the cache file changed underneath)")
        return out

    def _fd(self) -> int:
        """A descriptor per process (opened on first use after a fork or unpickling)."""
        if getattr(self, "_pid", None) != os.getpid():
            self._fd_value, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd_value

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd_value", "_pid")}


def listing_key(paths, labels, boxes, image_size: int, extra: dict | None = None) -> str:
    """The cache key of a split listing: format, decode version, image size, and per file its absolute
    path, size and mtime (a missing file hashes as such and fails in the decode), label and box."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "decode": DECODE_VERSION, "size": int(image_size),
                                   "extra": extra or {}}, sort_keys=True).encode())
    boxes = boxes if boxes is not None else [None] * len(paths)
    for p, y, b in zip(paths, labels, boxes):
        p = os.path.abspath(p)
        try:
            st = os.stat(p)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        box = None if b is None else [float(v) for v in b]
        h.update(json.dumps([p, *stamp, int(y), box]).encode() + b"\n")
    return h.hexdigest()[:24]


def cache_files(cache_dir: str | Path, key: str) -> tuple[Path, Path, Path]:
    d = Path(cache_dir)
    return d / f"{key}.u8", d / f"{key}.json", d / f"{key}.lock"


def read_index(cache_dir: str | Path, key: str, size: int) -> tuple[dict | None, str]:
    """(the index, "") of a complete cache of `key` at image size `size`, or (None, why not)."""
    data, index_path, _ = cache_files(cache_dir, key)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no cache yet"
    except (OSError, ValueError) as e:
        return None, f"unreadable index {index_path} ({e})"
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        return None, f"{index_path} has format {index.get('format') if isinstance(index, dict) else None!r}, " \
                     f"not {CACHE_FORMAT!r}"
    count = len(index.get("rows", []))
    if index.get("key") != key or index.get("complete") is not True or \
            index.get("shape") != [count, 3, size, size] or len(index.get("labels", [])) != count:
        return None, f"{index_path} is incomplete or describes another split"
    try:
        actual = data.stat().st_size
    except OSError:
        return None, f"{data} is missing"
    if actual != count * 3 * size * size:
        return None, f"{data} holds {actual} bytes, the index says {count * 3 * size * size}"
    if index.get("index_sha256") != index_digest(index):
        return None, f"{index_path} was edited or damaged (its content hash does not match)"
    try:
        sample = sample_digest(data, count, 3 * size * size)
    except OSError as e:
        return None, f"{data} cannot be read ({e})"
    if sample != index.get("sample_sha256"):
        return None, f"{data} no longer holds the images the index describes (the checksum of sampled rows differs)"
    return index, ""


def index_digest(index: dict) -> str:
    """SHA-256 of the index's content (every field but the digest itself), canonical JSON."""
    body = {k: v for k, v in index.items() if k != "index_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def sample_rows(count: int) -> list[int]:
    """Up to SAMPLE_ROWS row indices spread evenly over 0..count-1 (first and last included)."""
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, min(count, SAMPLE_ROWS))}) if count else []


def sample_digest(path: str | Path, count: int, row_bytes: int) -> str:
    """SHA-256 of the bytes of `sample_rows(count)` of the data file at `path`."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        for r in sample_rows(count):
            h.update(os.pread(fd, row_bytes, r * row_bytes))
    finally:
        os.close(fd)
    return h.hexdigest()


@contextlib.contextmanager
def build_lock(path: Path):
    """An exclusive `flock` on `path` (processes on one node; a shared file system may not honour it)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def open_or_build(cache_dir: str | Path, key: str, count: int, size: int, fill, meta: dict,
                  what: str) -> tuple[DecodedStore, dict]:
    """The store and index of cache `key`, built first when missing or invalid.

    Args:
        fill: `fill(write) -> (keep mask (count,), skipped [(path, reason)])`, calling
            `write(i, (3, size, size) uint8)` for every row it keeps (from any thread).
        meta: what else the index records (labels of every listed row, paths, split, source, ...).
        what: the split, for messages.
    """
    cache_dir = Path(cache_dir)
    index, why = read_index(cache_dir, key, size)
    if index is None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            lock = build_lock(cache_files(cache_dir, key)[2])
            lock.__enter__()
        except OSError as e:
            raise DataError(f"{cache_dir}: cannot create the decoded cache here ({e.strerror or e}); "
                            "choose another --cache-dir or pass --no-decoded-cache") from None
        try:
            index, why2 = read_index(cache_dir, key, size)   # another process may have built it
            if index is None:
                if why != "no cache yet":
                    log.warning("decoded cache: %s; rebuilding it", why)
                index = _build(cache_dir, key, count, size, fill, meta, what)
                index["_built"] = True
        finally:
            lock.__exit__(None, None, None)
    built = bool(index.pop("_built", False))
    store = DecodedStore(str(cache_files(cache_dir, key)[0]), len(index["rows"]), size, built)
    if not built:
        log.info("%s: %d decoded images mapped from the cache %s", what, store.count, store.path)
    return store, index


def _allocate(path: Path, total: int) -> int:
    """A descriptor of a new data file of `total` bytes; a full disk fails here, before any decoding."""
    free = shutil.disk_usage(path.parent).free
    if free < total:
        raise OSError(errno.ENOSPC, f"needs {total / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, total)
    except OSError as e:
        if e.errno in DISK_FULL:
            os.close(fd)
            raise
        os.ftruncate(fd, total)  # a file system without fallocate
    return fd


def _fill_rows(fd: int, count: int, row: int, fill) -> tuple[np.ndarray, list]:
    """Run `fill(write)` into the data file, then compact the kept rows to its front (skips are rare).
    Returns (the kept listing rows, the skipped images)."""
    def write(i: int, image: np.ndarray) -> None:
        buf = memoryview(np.ascontiguousarray(image, dtype=np.uint8)).cast("B")
        if len(buf) != row:
            raise ValueError(f"row {i}: {len(buf)} bytes, expected {row}")
        _pwrite_all(fd, buf, i * row)

    keep, skipped = fill(write)
    rows = np.flatnonzero(keep)
    if len(rows) < count:
        buf = np.empty(row, dtype=np.uint8)
        for j, i in enumerate(rows):
            if i != j:
                os.preadv(fd, [buf], int(i) * row)
                _pwrite_all(fd, memoryview(buf), j * row)
        os.ftruncate(fd, len(rows) * row)
    os.fsync(fd)
    return rows, skipped


def _build(cache_dir: Path, key: str, count: int, size: int, fill, meta: dict, what: str) -> dict:
    """Decode into a temporary data file, then publish it and, last, its index (module docstring)."""
    data, index_path, _ = cache_files(cache_dir, key)
    tmp_data = cache_dir / f".{key}.u8.tmp-{os.getpid()}"
    row, t0 = 3 * size * size, time.perf_counter()
    total = count * row
    try:
        fd = _allocate(tmp_data, total)
        try:
            rows, skipped = _fill_rows(fd, count, row, fill)
        finally:
            os.close(fd)
        labels, paths = np.asarray(meta.pop("labels")), meta.pop("paths")
        index = {"format": CACHE_FORMAT, "key": key, "decode": DECODE_VERSION,
                 "shape": [len(rows), 3, size, size], "rows": rows.tolist(), "labels": labels[rows].tolist(),
                 "paths": [paths[i] for i in rows], "skipped": [list(s) for s in skipped], **meta,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": True,
                 "sample_sha256": sample_digest(tmp_data, len(rows), row)}
        index["index_sha256"] = index_digest(index)
        index_path.unlink(missing_ok=True)  # an invalid old index: never pair it with the new data
        os.replace(tmp_data, data)
        fsync_dir(cache_dir)
        atomic_write_text(index_path, json.dumps(index))  # last: only a complete cache has an index
    except BaseException as e:
        tmp_data.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise DataError(f"{cache_dir}: the disk is full: the decoded cache of {what} ({count} images at "
                            f"{size} px, {total / 1e9:.2f} GB) could not be written ({e.strerror or e}); nothing "
                            "was left behind. Free space, choose another --cache-dir, or pass "
                            "--no-decoded-cache") from None
        if isinstance(e, OSError):
            raise DataError(f"{cache_dir}: cannot write the decoded cache of {what} ({e}); nothing was left "
                            "behind. Choose another --cache-dir or pass --no-decoded-cache") from None
        raise
    log.info("%s: decoded %d images into the cache %s (%.2f GB, %.0f s)", what, len(rows), data,
             len(rows) * row / 1e9, time.perf_counter() - t0)
    return index


def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    while len(buf):
        n = os.pwrite(fd, buf, offset)
        buf, offset = buf[n:], offset + n


def load_cached_split(lst: SplitList, image_size: int, cache_dir: str | Path, progress: bool = False,
                      on_bad_image: str = "fail", workers: int = 0) -> Split:
    """`dataset.load_split` through the cache: decode once (`workers` threads, the bad-image policy
    and messages of `dataset.decode_rows`), then map. A cache built with skips refuses to load under
    `--on-bad-image fail`, with the first skipped image's message."""
    check_bad_image_policy(on_bad_image)
    key = listing_key(lst.paths, lst.labels, lst.boxes, image_size)
    meta = {"labels": list(lst.labels), "paths": [os.path.abspath(p) for p in lst.paths], "split": lst.name,
            "source": str(lst.source), "preprocess": {"image_size": image_size, "decode": "rald_fast.preprocess: "
                                                      "open_rgb (EXIF upright, box crop, RGB), resize_square "
                                                      "(PIL bilinear)"}}

    def fill(write):
        return decode_rows(lst, image_size, write, progress, on_bad_image, workers)

    store, index = open_or_build(cache_dir, key, len(lst.paths), image_size, fill, meta, f"split {lst.name!r}")
    if index["labels"] != [int(lst.labels[r]) for r in index["rows"]]:  # a consistent edit of both files
        raise DataError(f"{cache_files(cache_dir, key)[1]}: its labels disagree with the listing of split "
                        f"{lst.name!r} ({lst.source}); delete the cache file (or pass --no-decoded-cache)")
    skipped = [tuple(s) for s in index["skipped"]]
    if skipped and not store.built:
        if on_bad_image == "fail":
            raise bad_image_error(DataError(skipped[0][1]), lst.name)
        log.warning("%s: %d of %d images could not be decoded and are skipped (the cache %s lists them)",
                    lst.name, len(skipped), len(lst.paths), cache_files(cache_dir, key)[1])
    keep = np.zeros(len(lst.paths), dtype=bool)
    keep[index["rows"]] = True
    return Split(store.tensor(), kept_labels(lst, keep), kept_paths(lst, keep), skipped, store=store)


def generated_split(cache_dir: str | Path, name: str, labels, size: int, render, workers: int = 0):
    """A split whose pixels come from `render(i) -> (3, size, size) uint8` instead of image files, through
    the same cache (benchmarks and tests: e.g. 100,000 procedurally filled images without 100,000 files).
    The key hashes `name`, the labels and the size: change `name` whenever `render` changes."""
    labels = [int(y) for y in labels]
    count = len(labels)
    key = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "generated": name, "size": int(size),
                                     "labels": labels}).encode()).hexdigest()[:24]
    paths = [f"{name}/{i}" for i in range(count)]

    def fill(write):
        def one(i):
            write(i, render(i))
        if workers > 0:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, range(count)))
        else:
            for i in range(count):
                one(i)
        return np.ones(count, dtype=bool), []

    meta = {"labels": labels, "paths": paths, "split": name, "source": f"generated: {name}",
            "preprocess": {"image_size": size, "decode": "generated (no image files)"}}
    store, _ = open_or_build(cache_dir, key, count, size, fill, meta, f"generated split {name!r}")
    return Split(store.tensor(), torch.tensor(labels, dtype=torch.long), paths, [], store=store)
