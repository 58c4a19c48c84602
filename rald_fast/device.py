"""The one device resolver of every command and API: `auto`, `cpu`, `cuda` or `cuda:N` (`parse_device`
checks the spelling, `resolve_device` also the machine)."""

from __future__ import annotations

import torch

DEVICE_CHOICES_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"


def parse_device(name: str | torch.device, option: str = "--device") -> torch.device | None:
    """The device `name` spells (None for auto), whether or not this machine has it: the check a config
    makes before any hardware is looked at (`config.validate`)."""
    name = str(name).strip().lower()
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{option} {name!r}: expected {DEVICE_CHOICES_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} {name!r}: expected {DEVICE_CHOICES_HELP}")
    return device


def resolve_device(name: str | torch.device, option: str = "--device") -> torch.device:
    """A torch.device for `name`; a CUDA device on a machine without one is an error naming `option`."""
    device = parse_device(name, option)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device
