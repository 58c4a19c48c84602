"""Evaluation: `python -m rald_fast.evaluate` and `python -m rald_fast.bank` (command.py).

- `run`: `load_run`, a trained checkpoint with its model, config, taxonomy and a data split: the
  one loader behind evaluation, reference-bank building and the experiments.
- `metrics`: predictions over a split (`predict_split`) and the paper's accuracies
  (`compute_metrics`).
- `reports`: Table 1 (valence / coarse / fine) and confusion matrices.
- `reference_bank`: ITRR's reference bank (batch-independent inference).
"""
