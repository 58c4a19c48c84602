"""`python -m rald_fast.evaluate`: the command line of rald_fast/evaluate/command.py (see --help)."""

import sys

from rald_fast.cli import run_cli
from rald_fast.evaluate.command import main

sys.exit(run_cli(main))
