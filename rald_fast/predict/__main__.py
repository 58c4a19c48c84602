"""`python -m rald_fast.predict`: the command line of rald_fast/predict/command.py (see --help)."""

import sys

from rald_fast.cli import run_cli
from rald_fast.predict.command import main

sys.exit(run_cli(main))
