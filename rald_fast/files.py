"""Writing files so that a crash never leaves half of one: the one helper every writer uses.

`atomic_path(path)` gives a temporary name in the same folder; when the block ends without an error
the file is flushed to disk (fsync), given the usual permissions of a new file (the umask's, not
mkstemp's 0600: artifacts and their sidecars are meant to be shipped), renamed over `path` (atomic on
POSIX) and the folder's entry is made durable; on an error the temporary file is removed and `path`
is untouched. `atomic_write` / `atomic_write_text` are the callback and text forms. `to_json` writes
strict JSON (a NaN becomes null). Torch-free: the torch-free pycuda runner's sidecars use it too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file here


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside folder `path` durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` to write (by any library) in the block; then fsync, chmod, rename.
    `suffix`: the temporary name's ending, for writers that insist on one (AOTInductor wants `.pt2`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write) -> None:
    """Call `write(fileobj)` (binary) on a temporary file beside `path`, then commit it (`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _nulls(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nulls(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nulls(v) for v in obj]
    return obj


def to_json(obj, indent: int | None = None) -> str:
    """Strict JSON of `obj`: a NaN or infinite number (a flat taxonomy's coarse accuracy) becomes null,
    which every JSON reader accepts, where Python's default `NaN` is not JSON."""
    return json.dumps(_nulls(obj), indent=indent, allow_nan=False)
