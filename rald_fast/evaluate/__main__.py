"""`python -m rald_fast.evaluate`: the command line of rald_fast/evaluate/command.py (see --help)."""

import sys

from rald_fast.evaluate.command import cli

sys.exit(cli())
