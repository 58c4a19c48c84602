#!/usr/bin/env python
"""Build ONNX, AOTInductor .pt2 and TensorRT artifacts from a checkpoint (see --help).

The work is done by rald_fast.export.build; this file only makes the documented command work from a
checkout, with or without `pip install -e .`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rald_fast.export.build import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
