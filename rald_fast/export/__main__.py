"""`python -m rald_fast.export`: the same command as `python export/build_trt.py` (see --help)."""

import sys

from rald_fast.export.build import cli

sys.exit(cli())
