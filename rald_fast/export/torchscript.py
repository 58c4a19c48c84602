"""TorchScript (`.ts`) artifact of the folded model: `torch.jit.trace`, for libtorch builds that cannot
load this torch's AOTInductor `.pt2` (older or newer libtorch, no matching compiler at build time).

TorchScript is deprecated in torch 2.14 (`torch.jit.trace` / `torch.jit.load` still work and warn with
a FutureWarning); `.pt2` is the primary C++ artifact. The trace has a dynamic batch axis (the folded
model reads the batch size from the tensor, never as a Python int; `check_trace` runs the trace at a
second batch size to make sure). Metadata travels as TorchScript "extra files" inside the archive:
`rald_fast` (the JSON) and the same plain-string fields as the `.pt2` (`rald_fast.version`,
`rald_fast.image_size`, `rald_fast.fine`, ...), which C++ reads through `torch::jit::load(path,
device, extra_files)` without a JSON parser (cpp/rald_predict.cpp); `<file>.json` is written beside it
as for every artifact.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from rald_fast.artifacts import METADATA_KEY, ArtifactError, check_metadata
from rald_fast.export.formats import flat_metadata
from rald_fast.files import atomic_path


@contextlib.contextmanager
def _quiet_jit():
    """Without the FutureWarning torch 2.14 gives for every TorchScript call (docs/DEPLOY.md says it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def export_torchscript(folded: nn.Module, path: str | Path, meta: dict, max_batch: int,
                       device: str = "cpu") -> Path:
    """Traced TorchScript archive with the metadata as extra files; checked at batch 1 and 2."""
    path, s = Path(path), meta["preprocess"]["image_size"]
    folded = folded.eval().to(device)
    gen = torch.Generator().manual_seed(0)
    example = (torch.rand(2, 3, s, s, generator=gen) * 255).to(device)
    other = (torch.rand(min(3, max_batch), 3, s, s, generator=gen) * 255).to(device)
    with atomic_path(path) as tmp, _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(folded, (example,), check_inputs=[(other,)], check_tolerance=1e-4)
        torch.jit.save(traced, str(tmp), _extra_files=flat_metadata(meta))
    return path


def load_torchscript(path: str | Path, device: torch.device | str = "cpu"):
    """(module, metadata) of a `.ts` artifact; ArtifactError when it is not a rald_fast one."""
    extra = {METADATA_KEY: ""}
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=torch.device(device), _extra_files=extra)
    except Exception as e:  # noqa: BLE001  RuntimeError / zipfile errors from the archive reader
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ArtifactError(f"{path}: cannot load as a TorchScript archive ({type(e).__name__}: {first})") from None
    try:
        meta = json.loads(extra[METADATA_KEY]) if extra[METADATA_KEY] else None
    except json.JSONDecodeError:
        meta = None
    return module.eval(), check_metadata(meta, path)
