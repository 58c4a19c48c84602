"""Image encoder F_v (paper eq. 1): torchvision ResNet18, global-average-pooled 512-d features.

Weights come only from a local file the user names (`--backbone-weights PATH`); nothing is downloaded.
Accepted files: a torchvision ResNet18 state dict, or the checkpoints FER repositories pass around
(MS-Celeb-1M ResNet18: a dict holding `state_dict` or `model`, keys prefixed `module.` / `backbone.` /
`_orig_mod.`, a classifier of another size). What matches by name and shape is loaded; what was
skipped, had the wrong shape or is missing is reported; a file of which nothing matches is refused.
Loading never executes code from the file (`torch.load(weights_only=True)`): a pickle that would
need to is refused with a message naming what it wanted to run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from rald_fast.checkpoint import read_torch_file, strip_state_prefixes
from rald_fast.errors import BackboneWeightsError, CheckpointError

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.", "backbone.", "base.", "features.", "encoder.", "model.")


def build_resnet18(weights: str | None = None) -> nn.Module:
    """ResNet18 without its classifier: (N, 3, H, W) -> (N, 512)."""
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    if weights:
        load_backbone_weights(net, weights)
    return net


def _unwrap(obj) -> dict:
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return _unwrap(obj[key])
    return obj


def read_state_dict(path: str | Path) -> dict:
    """The tensors of a weights file, read without executing code from it (`checkpoint.read_torch_file`)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"--backbone-weights {path}: no such file")
    try:
        obj = read_torch_file(path)
    except CheckpointError as e:
        raise BackboneWeightsError(f"--backbone-weights {e}") from None
    state = _unwrap(obj)
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise BackboneWeightsError(f"--backbone-weights {path}: not a state dict of tensors "
                                   f"(got {type(state).__name__})")
    dropped = sorted(str(k) for k, v in state.items() if not torch.is_tensor(v))
    if dropped:
        log.info("backbone weights %s: ignoring non-tensor entries %s", path, ", ".join(dropped))
    return strip_state_prefixes({k: v for k, v in state.items() if torch.is_tensor(v)}, _PREFIXES)


def load_backbone_weights(net: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load what matches by name and shape; report what was skipped and what is missing.

    Returns {"loaded", "skipped" (unexpected names and wrong shapes), "mismatched" (wrong shapes
    only), "missing"}; refuses a file of which no weight matches (BN step counters do not count).
    """
    state = read_state_dict(path)
    own = net.state_dict()
    used = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    skipped = sorted(set(state) - set(used))
    missing = sorted(set(own) - set(used))
    if not any(not k.endswith("num_batches_tracked") for k in used):
        raise BackboneWeightsError(
            f"--backbone-weights {path}: no weight matches a ResNet18 by name and shape "
            f"(first keys: {list(state)[:5]}; shape mismatches: {mismatched[:5]})")
    net.load_state_dict(used, strict=False)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:4]]
    log.info("backbone weights %s: loaded %d of %d tensors; skipped %d (%s)%s", path, len(used),
             len(own), len(skipped), ", ".join(skipped[:6]) or "none",
             f"; wrong shape: {'; '.join(shapes)}" if shapes else "")
    if missing:
        log.warning("backbone weights %s: %d ResNet18 tensors missing, left at random init: %s",
                    path, len(missing), ", ".join(missing[:8]))
    return {"loaded": sorted(used), "skipped": skipped, "mismatched": mismatched,
            "missing": missing}
