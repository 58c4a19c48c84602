"""rald_fast: RALD fine-grained facial expression recognition (Liu et al., Acta Electronica Sinica 2024).

Arranged by stage (docs/ARCHITECTURE.md has the map and the data flow):
- commands, one package each: `train` (python -m rald_fast.train), `evaluate` (python -m
  rald_fast.evaluate, and python -m rald_fast.bank), `predict` (python -m rald_fast.predict,
  `rald_fast.predict.Predictor`), `export` (python -m rald_fast.export = export/build_trt.py),
  `experiments` (the paper's tables and figures);
- the model and its data: `models` (RALD, losses, folding), `kernels` (the attention and top-k ops,
  Triton beside a PyTorch reference), `data` (readers, synthetic faces, splits, augmentation);
- the core: `config`, `hierarchy`, `semantics`, `preprocess` (the one image -> input path),
  `checkpoint` (the schema and its atomic I/O), `device`, `errors`, `cli`.

Image file -> prediction: preprocess.open_rgb -> (face crop) -> preprocess.resize_square ->
preprocess.normalize -> ResNet18 -> ITRR -> LGIFO (label tokens from HLRR) -> fine head -> softmax.
"""

__version__ = "0.1.0"
