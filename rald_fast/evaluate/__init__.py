"""Evaluation: `python -m rald_fast.evaluate` and `python -m rald_fast.bank` (command.py).

- `run`: `load_run`, a trained checkpoint with its model, config, taxonomy and a data split: the
  one loader behind evaluation, reference-bank building and the experiments.
- `metrics`: predictions over a split (`predict_split`) and the paper's accuracies
  (`compute_metrics`).
- `reports`: Table 1 (valence / coarse / fine) and confusion matrices.
- `reference_bank`: ITRR's reference bank (batch-independent inference).
"""

from __future__ import annotations

__all__ = ["compute_metrics", "load_run", "predict_split"]


def __getattr__(name: str):
    if name in ("compute_metrics", "predict_split"):
        from rald_fast.evaluate import metrics

        return getattr(metrics, name)
    if name == "load_run":
        from rald_fast.evaluate.run import load_run

        return load_run
    raise AttributeError(f"module 'rald_fast.evaluate' has no attribute {name!r}")
