"""Training: `python -m rald_fast.train` (the command line: command.py).

- `loop`: build the data and the model, train epoch by epoch, evaluate, write the run directory and
  its checkpoints (`fit`).
- `step`: what one training step runs (the forward of the global batch, AMP, torch.compile).
- `distributed`: torchrun / DDP plumbing (docs/DISTRIBUTED.md).

`rald_fast.train.loop.fit(config)` is the Python entry point. This package file imports nothing, so
`python -m rald_fast.train --help` does not load the model code.
"""
