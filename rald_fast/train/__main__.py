"""`python -m rald_fast.train`: the command line of rald_fast/train/command.py (see --help)."""

import sys

from rald_fast.cli import run_cli
from rald_fast.train.command import main

sys.exit(run_cli(main))
