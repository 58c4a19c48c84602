"""The pieces of a fast training step: mixed precision, compiled halves, the global-batch forward.

- `--amp bf16|fp16`: the forward and the loss run under `torch.autocast`; fp16 adds a
  `torch.amp.GradScaler` (bf16 has fp32's range and needs none). The losses compute in fp32 anyway.
- `--compile`: `torch.compile` of the model's two halves, the backbone (`backbone_features`) and the
  head (`head_outputs`: ITRR, HLRR, LGIFO, classifier). Under torchrun the all-gather of the features
  sits between them and stays eager; the loss, with its memory-bank side effects, stays eager too.
  Evaluation uses the eager model (no second compilation for eval-mode graphs).
- `TrainForward`: backbone on this process's rows, features all-gathered (rald_fast/train/distributed.py),
  head on the global batch; with one process it is the plain model forward.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch
from torch import nn

from rald_fast.models import RALD
from rald_fast.train.distributed import SINGLE, DistInfo, gather_rows

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(amp: str, device: torch.device):
    """`torch.autocast` for --amp bf16 / fp16 on `device`, a no-op context for --amp none."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def check_amp(amp: str, device: torch.device) -> None:
    """Fail early, naming --amp, when autocast in that dtype does not work on `device` here
    (PyTorch disables an unsupported autocast with a warning; a run would silently be fp32)."""
    if amp == "none":
        return
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16 or none")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with autocast_context(amp, device):
                a = torch.ones(4, 4, device=device)
                got = (a @ a).dtype
    except (RuntimeError, ValueError, UserWarning) as e:
        raise ValueError(f"--amp {amp}: autocast is not supported on {device.type} by this PyTorch "
                         f"({str(e).splitlines()[0]}); use --amp none" +
                         (" or --amp bf16" if amp == "fp16" else "")) from None
    if got != AMP_DTYPES[amp]:
        raise ValueError(f"--amp {amp}: autocast on {device.type} computed a matmul in {got}; "
                         "use --amp none")


def make_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its 5-bit exponent underflows small gradients), else None."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


class TrainForward(nn.Module):
    """The training forward: `forward(x, sizes)` runs the backbone on this process's rows `x`,
    all-gathers the features of every process (`sizes`: rows per rank) and runs the head on the
    global batch. Returns the model's output dict for the global batch.

    Args:
        model: the RALD (its state dict is the checkpoint's; this wrapper adds no state).
        info: the process group (`distributed.SINGLE` for one process).
        compile: torch.compile the backbone and the head separately (True: inductor; a string
            names another torch.compile backend, e.g. "aot_eager" in the CPU tests).
    """

    def __init__(self, model: RALD, info: DistInfo = SINGLE, compile: bool | str = False):
        super().__init__()
        self.model, self.info = model, info
        self.features_fn = model.backbone_features
        self.head_fn = model.head_outputs
        if compile:
            kw = {"backend": compile} if isinstance(compile, str) else {}
            self.features_fn = torch.compile(self.features_fn, **kw)
            self.head_fn = torch.compile(self.head_fn, **kw)

    def forward(self, x: torch.Tensor, sizes: list[int]) -> dict:
        feats = gather_rows(self.features_fn(x), sizes, self.info)  # (B, D): the global batch
        return self.head_fn(feats)

