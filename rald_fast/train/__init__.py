"""Training: `python -m rald_fast.train` (the command line: command.py).

- `loop`: build the data and the model, train epoch by epoch, evaluate, write the run directory and
  its checkpoints (`fit`).
- `step`: what one training step runs (the forward of the global batch, AMP, torch.compile).
- `distributed`: torchrun / DDP plumbing (docs/DISTRIBUTED.md).

`from rald_fast.train import fit` is the Python entry point; it is imported on first use so that
`python -m rald_fast.train --help` stays fast.
"""

from __future__ import annotations

__all__ = ["fit"]


def __getattr__(name: str):
    if name == "fit":
        from rald_fast.train.loop import fit

        return fit
    raise AttributeError(f"module 'rald_fast.train' has no attribute {name!r}")
