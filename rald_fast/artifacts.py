"""What travels with every exported artifact, and how it is checked on the way back in: the artifact
format, read by the export builder (rald_fast/export) and by the predictor (rald_fast/predict) alike.

Every artifact (ONNX, AOTInductor `.pt2`, TensorRT engine, Torch-TensorRT program) carries the same
metadata: the artifact format version, the input contract (name, layout, dtype, value range, size,
mean/std, channel order), the output names, the taxonomy (fine labels, coarse groups, valence), the
ITRR inference mode and where the weights came from. ONNX keeps it in `metadata_props`, `.pt2` in
AOTInductor's metadata (readable from C++ with `AOTIModelPackageLoader::get_metadata()`), and every
artifact also gets a `<file>.json` beside it; a TensorRT engine has nowhere else to keep it, so its
sidecar also records the engine's SHA-256, and a sidecar from another build is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import rald_fast

from rald_fast.errors import ArtifactError
from rald_fast.files import atomic_write_text

if TYPE_CHECKING:  # torch-free at import: the pycuda engine runner reads sidecars without torch
    from rald_fast.preprocess import Preprocess
    from rald_fast.hierarchy import Taxonomy

ARTIFACT_FORMAT = "rald_fast-artifact"
ARTIFACT_VERSION = 1
METADATA_KEY = "rald_fast"
INPUT_NAME, OUTPUT_NAMES = "images", ("logits", "probs")
# ITRR modes whose answer for an image does not depend on its batch-mates ("none": no ITRR): the only ones
# a server may batch users' requests in (rald_fast/serve, the Triton repository)
BATCH_INDEPENDENT_MODES = ("bank", "self", "none")
# what `rald_fast.predict.Predictor` reads, by file suffix (python -m rald_fast.predict --backend)
KINDS = {".pt": "checkpoint", ".pth": "checkpoint", ".ckpt": "checkpoint", ".onnx": "onnx",
         ".pt2": "pt2", ".ts": "torchscript", ".engine": "tensorrt", ".plan": "tensorrt",
         ".ep": "torch_tensorrt"}


def build_metadata(cfg, taxonomy: Taxonomy, preprocess: Preprocess, itrr_mode: str,
                   checkpoint: str, precision: str = "fp32", trained_on: dict | None = None) -> dict:
    """The metadata of an artifact; `trained_on` is the checkpoint's provenance (synthetic or the
    dataset and its size), repeated so that every consumer can tell a synthetic-only model."""
    s = preprocess.image_size
    return {
        "format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "rald_fast": rald_fast.__version__,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, s, s], "dtype": "float32",
                  "layout": "NCHW", "channel_order": preprocess.channel_order, "value_range": [0, 255],
                  "normalised_inside": True},
        "outputs": {"logits": ["batch", taxonomy.num_fine], "probs": ["batch", taxonomy.num_fine]},
        "preprocess": preprocess.to_dict(), "taxonomy": taxonomy.to_dict(), "itrr_mode": itrr_mode,
        "precision": precision, "variant": cfg.variant, "checkpoint": str(checkpoint),
        "trained_on": trained_on or {},
    }


def check_metadata(meta: dict | None, path: str | Path) -> dict:
    """The metadata itself, or ArtifactError saying what was expected."""
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: not a rald_fast artifact (no {METADATA_KEY!r} metadata of format "
                            f"{ARTIFACT_FORMAT!r}); build one with `python export/build_trt.py`")
    if meta.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {meta.get('version')} (rald_fast "
                            f"{meta.get('rald_fast')}), this rald_fast reads version {ARTIFACT_VERSION}; "
                            f"re-export it from its checkpoint")
    return meta


def sidecar_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}.json")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_sidecar(artifact: str | Path, meta: dict, with_hash: bool = False) -> Path:
    meta = dict(meta, artifact=Path(artifact).name)
    if with_hash:
        meta["sha256"] = file_sha256(artifact)
    path = sidecar_path(artifact)
    atomic_write_text(path, json.dumps(meta, indent=2))
    return path


def read_sidecar(artifact: str | Path, require_hash: bool = False) -> dict:
    path = sidecar_path(artifact)
    if not path.exists():
        raise ArtifactError(f"{artifact}: its metadata file {path} is missing (it holds the labels and "
                            f"preprocessing); rebuild with `python export/build_trt.py`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable metadata ({e})") from None
    check_metadata(meta, path)
    if require_hash and meta.get("sha256") != file_sha256(artifact):
        raise ArtifactError(f"{artifact}: does not match its metadata {path} (SHA-256 differs): the "
                            f"engine or the metadata comes from another build")
    return meta
