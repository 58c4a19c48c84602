"""`python -m rald_fast.train`: the command line of rald_fast/train/command.py (see --help)."""

import sys

from rald_fast.train.command import cli

sys.exit(cli())
