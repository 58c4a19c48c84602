"""Image encoder F_v (SPEC 2, eq. 1): torchvision ResNet18, global-average-pooled 512-d features.

Weights come only from a local file the user names (`--backbone-weights PATH`); nothing is downloaded.
Accepted files: a torchvision ResNet18 state dict, or the checkpoints FER repositories pass around
(MS-Celeb-1M ResNet18: a dict holding `state_dict` or `model`, keys prefixed `module.` / `backbone.` /
`_orig_mod.`, a classifier of another size). Loading never executes code from the file
(`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.", "backbone.", "base.", "features.", "encoder.", "model.")


class BackboneWeightsError(ValueError):
    """A backbone weights file that cannot be used."""


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


def strip_prefixes(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_backbone_weights(net: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load what matches by name and shape; report what was skipped and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"--backbone-weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BackboneWeightsError(
            f"--backbone-weights {path}: refused, the file needs arbitrary code to unpickle "
            f"({str(e).splitlines()[0]}). Re-save it as a plain state dict "
            "(torch.save(model.state_dict(), ...)) in a trusted environment.") from None
    except Exception as e:
        raise BackboneWeightsError(f"--backbone-weights {path}: cannot read ({e})") from None
    state = _unwrap(obj)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BackboneWeightsError(f"--backbone-weights {path}: not a state dict of tensors")
    state = strip_prefixes(state)
    own = net.state_dict()
    used = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(used))
    missing = sorted(set(own) - set(used))
    if not used:
        raise BackboneWeightsError(f"--backbone-weights {path}: no tensor matches a ResNet18 "
                                   f"(first keys: {list(state)[:5]})")
    net.load_state_dict(used, strict=False)
    log.info("backbone weights %s: loaded %d tensors, skipped %d (%s), missing %d (%s)", path,
             len(used), len(skipped), ", ".join(skipped[:6]), len(missing), ", ".join(missing[:6]))
    return {"loaded": sorted(used), "skipped": skipped, "missing": missing}
