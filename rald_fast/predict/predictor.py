"""One Python API over every rald_fast artifact: `Predictor.load(path).predict(images)`.

    from rald_fast.predict import Predictor
    p = Predictor.load("model.onnx")            # or last.pt, model.pt2, model.ts, model.engine, model_trt.ep
    out = p.predict(list_of_rgb_uint8_arrays)   # any sizes; resized like the training data
    out.fine, out.coarse, out.valence, out.probs, out.topk(3)

Backends: a training checkpoint (folded in memory, PyTorch), ONNX (ONNX Runtime), AOTInductor `.pt2`
(`torch._inductor.aoti_load_package`), TorchScript `.ts` (`torch.jit.load`, deprecated), a serialized
TensorRT engine (TensorRT 10 runtime) and a Torch-TensorRT program (`.ep`). Each reads the
preprocessing and the taxonomy from the artifact's own metadata (rald_fast/artifacts.py), so
every backend answers the same way; predictions are batch-independent (ITRR in `bank` or `self`
mode) unless a checkpoint is loaded with itrr_mode="batch".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rald_fast.device import resolve_device
from rald_fast.errors import CheckpointError
from rald_fast.artifacts import KINDS, METADATA_KEY, ArtifactError, build_metadata, check_metadata, read_sidecar
from rald_fast.export import tensorrt as trt_export
from rald_fast.export.torchscript import load_torchscript
from rald_fast.hierarchy import Taxonomy
from rald_fast.predict.pipeline import predict_faces
from rald_fast.preprocess import Preprocess, as_rgb_array, resize_square





@dataclass
class Predictions:
    """Fine probabilities (N, C_f) and the labels derived from them through the taxonomy."""

    probs: np.ndarray
    taxonomy: Taxonomy

    @property
    def fine_index(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def fine(self) -> list[str]:
        return [self.taxonomy.fine[i] for i in self.fine_index]

    @property
    def coarse(self) -> list[str] | None:
        if self.taxonomy.is_flat:
            return None
        return [self.taxonomy.parent[i] for i in self.fine_index]

    @property
    def valence(self) -> list[str] | None:
        coarse = self.coarse
        if coarse is None or not self.taxonomy.valence:
            return None
        return [self.taxonomy.valence.get(c, "") for c in coarse]

    @property
    def coarse_probs(self) -> np.ndarray | None:
        """(N, C_c): each coarse group's probability, the sum over its fine labels."""
        if self.taxonomy.is_flat:
            return None
        out = np.zeros((len(self.probs), len(self.taxonomy.coarse)), dtype=self.probs.dtype)
        np.add.at(out.T, self.taxonomy.coarse_of_fine(), self.probs.T)
        return out

    def topk(self, k: int = 3) -> list[list[tuple[str, float]]]:
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [[(self.taxonomy.fine[j], float(row[j])) for j in idx] for row, idx in zip(self.probs, order)]

    def __len__(self) -> int:
        return len(self.probs)


def as_float_nchw(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) 0..255: the input every exported artifact takes."""
    return x.permute(0, 3, 1, 2).float().contiguous()


def _probs_of(module, device: torch.device):
    """uint8 NHWC x -> probs of an exported module that takes float32 NCHW 0..255 and returns
    (logits, probs), run on `device` without autograd."""
    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        return module(as_float_nchw(x).to(device))[1]
    return run


class Predictor:
    """Loads any rald_fast artifact and predicts fine/coarse/valence labels for RGB images."""

    def __init__(self, run, meta: dict, path: Path, kind: str, device: torch.device,
                 max_batch: int | None = None):
        self._run, self.meta, self.path, self.kind, self.device = run, meta, path, kind, device
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        self.taxonomy = Taxonomy.from_dict(meta["taxonomy"])
        self.itrr_mode = meta["itrr_mode"]
        self.max_batch = max_batch
        # what the model was trained on (rald_fast.checkpoint.Checkpoint.provenance); {} when unknown
        self.trained_on = meta.get("trained_on") or {}

    @property
    def synthetic(self) -> bool:
        """True when the model only ever saw rald_fast's synthetic faces."""
        return bool(self.trained_on.get("synthetic"))

    def provenance_note(self) -> str | None:
        """A warning to show with every answer of a synthetic-only model (None otherwise)."""
        if not self.synthetic:
            return None
        return (f"model {self.path.name} was trained on synthetic faces only "
                f"({self.trained_on.get('train_images', '?')} drawn images, no real photographs): its labels "
                f"for real faces are not meaningful; train on a real dataset (docs/DATASETS.md)")

    # --- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device: str = "auto", backend: str | None = None,
             itrr_mode: str | None = None, precision: str = "fp32", compile: str | None = None) -> Predictor:
        """`backend` defaults to the file's suffix (see KINDS). For checkpoints only (exported
        artifacts have theirs built in): `itrr_mode` (None = bank if stored, else self), and the fast
        path's `precision` (fp32 | bf16 | fp16) and `compile` (a torch.compile mode, e.g.
        "max-autotune-no-cudagraphs", or None); see rald_fast/models/fast.py."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: no such model file")
        kind = backend or KINDS.get(path.suffix.lower())
        if kind not in set(KINDS.values()):
            raise ArtifactError(f"{path}: unknown model kind {path.suffix or backend!r}; expected a checkpoint "
                              f"(.pt), .onnx, .pt2, .ts, a TensorRT .engine or a Torch-TensorRT .ep")
        if kind != "checkpoint" and (itrr_mode is not None or precision != "fp32" or compile is not None):
            raise ArtifactError(f"{path}: itrr_mode, precision and compile apply to checkpoints only; a {kind} "
                                f"artifact's were fixed at export (python export/build_trt.py)")
        try:
            dev = resolve_device(device)
        except ValueError as e:
            raise ArtifactError(str(e)) from None
        if kind == "checkpoint":
            return cls._load_checkpoint(path, dev, itrr_mode, precision, compile)
        loaders = {"onnx": cls._load_onnx, "pt2": cls._load_pt2, "torchscript": cls._load_torchscript,
                   "tensorrt": cls._load_tensorrt, "torch_tensorrt": cls._load_torch_tensorrt}
        return loaders[kind](path, dev)

    @classmethod
    def _load_checkpoint(cls, path, device, itrr_mode, precision="fp32", compile=None):
        """The fast path (rald_fast/models/fast.py): the folded model on uint8 NHWC input, in `precision`,
        with a CUDA graph per batch size on a GPU."""
        # the model code (and Triton, through it) is loaded only here: reading an exported artifact, or
        # `python -m rald_fast.predict --help`, never needs it (docs/ARCHITECTURE.md, "Imports")
        from rald_fast.models import load_model
        from rald_fast.models.fast import DTYPES, FastEngine, fast_module
        from rald_fast.models.folded import fold

        if precision not in DTYPES:
            raise ArtifactError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
        try:
            loaded = load_model(path, device)
        except (CheckpointError, KeyError) as e:
            raise ArtifactError(f"{path}: not a rald_fast training checkpoint ({e})") from None
        folded = fold(loaded.model, loaded.preprocess, itrr_mode).eval()
        meta = build_metadata(loaded.cfg, loaded.taxonomy, loaded.preprocess, folded.itrr_mode, str(path),
                              trained_on=loaded.provenance)
        engine = FastEngine(fast_module(folded, precision), device, compile=compile)
        predictor = cls(engine, meta, path, "checkpoint", device)
        predictor.module, predictor.precision = folded, precision
        return predictor

    @classmethod
    def _load_onnx(cls, path, device):
        import onnx
        import onnxruntime as ort

        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as e:  # onnx raises DecodeError and friends from protobuf
            raise ArtifactError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
        meta = check_metadata(json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None, path)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(path), providers=providers)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(["probs"], {"images": as_float_nchw(x).numpy()})[0])
        return cls(run, meta, path, "onnx", device)

    @classmethod
    def _load_pt2(cls, path, device):
        try:
            sidecar = read_sidecar(path)
        except ArtifactError:
            sidecar = None
        if sidecar is not None and sidecar.get("backend") == "torch_tensorrt":
            import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops the package calls)
        try:
            package = torch._inductor.aoti_load_package(str(path))
        except Exception as e:  # noqa: BLE001  AOTI raises RuntimeError / zipfile errors / ...
            raise ArtifactError(f"{path}: cannot load as an AOTInductor package ({type(e).__name__}: {e}); "
                              f"a .pt2 must be built on a machine like this one (same CPU ISA or GPU)") from None
        stored = package.get_metadata().get(METADATA_KEY)
        meta = check_metadata(json.loads(stored) if stored else sidecar, path)
        target = torch.device(package.get_metadata().get("AOTI_DEVICE_KEY", "cpu"))

        return cls(_probs_of(package, target), meta, path, "pt2", target, meta.get("max_batch"))

    @classmethod
    def _load_torchscript(cls, path, device):
        module, meta = load_torchscript(path, device)

        return cls(_probs_of(module, device), meta, path, "torchscript", device, meta.get("max_batch"))

    @classmethod
    def _load_tensorrt(cls, path, device):
        gap = trt_export.missing(need_torch_tensorrt=False)
        if gap:
            raise ArtifactError(f"{path}: cannot run a TensorRT engine here: {gap}")
        meta = read_sidecar(path, require_hash=True)
        runner = trt_export.EngineRunner(path)
        return cls(lambda x: runner(as_float_nchw(x))["probs"], meta, path, "tensorrt", torch.device("cuda"),
                   runner.max_batch)

    @classmethod
    def _load_torch_tensorrt(cls, path, device):
        gap = trt_export.missing()
        if gap:
            raise ArtifactError(f"{path}: cannot run a Torch-TensorRT program here: {gap}")
        import torch_tensorrt  # noqa: F401

        meta = read_sidecar(path)
        module, cuda = torch.export.load(str(path)).module(), torch.device("cuda")
        return cls(_probs_of(module, cuda), meta, path, "torch_tensorrt", cuda, meta.get("max_batch"))

    # --- prediction -----------------------------------------------------------------------------
    def to_batch(self, images) -> torch.Tensor:
        """uint8 (N, S, S, 3) RGB from one image or many: a PIL image, an (H, W, 3) / (H, W) uint8 array,
        an (N, H, W, 3) array, or a list of PIL images and arrays of any size (resized as the training
        data was)."""
        s = self.preprocess.image_size
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        if not isinstance(images, (list, tuple)):
            raise ArtifactError(f"images must be a PIL image, a uint8 RGB array (H, W, 3) / (N, H, W, 3), or a "
                                f"list of them, got {type(images).__name__}")
        out = np.empty((len(images), s, s, 3), dtype=np.uint8)
        for i, im in enumerate(images):
            try:
                out[i] = resize_square(as_rgb_array(im, f"image {i}"), s)
            except ValueError as e:
                raise ArtifactError(str(e)) from None
        return torch.from_numpy(out)

    def predict(self, images, batch_size: int | None = None) -> Predictions:
        x = self.to_batch(images)
        step = min(b for b in (batch_size, self.max_batch, 256) if b)
        probs = [self._run(x[i:i + step]).float().cpu() for i in range(0, len(x), step)]
        probs = torch.cat(probs) if probs else torch.empty(0, self.taxonomy.num_fine)
        return Predictions(probs.numpy(), self.taxonomy)

    def predict_faces(self, image, **kwargs):
        """Every face of one RGB image: detection, crop, prediction (rald_fast/predict/faces.py)."""
        return predict_faces(self, image, **kwargs)

    def __repr__(self) -> str:
        trained = ", SYNTHETIC training data" if self.synthetic else ""
        return (f"Predictor({self.kind}: {self.path}, {self.taxonomy.num_fine} fine labels, "
                f"{self.preprocess.image_size}px, ITRR {self.itrr_mode}, {self.device}{trained})")
