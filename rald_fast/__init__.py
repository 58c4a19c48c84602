"""rald_fast: RALD fine-grained facial expression recognition (Liu et al., Acta Electronica Sinica 2024).

Library layout: `config` (dataclass configs and presets), `hierarchy` (taxonomies, xi of eq. 9),
`semantics` (label word vectors), `data` (synthetic and label-file datasets), `models` (RALD, losses),
`kernels` (the attention and top-k op interface), `training` / `evaluation` (the loops behind the
`train` and `evaluate` command lines), `reports` (tables and figures), `checkpoint` (atomic I/O).
"""

__version__ = "0.1.0"
