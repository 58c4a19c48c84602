"""`python -m rald_fast.predict`: the command line of rald_fast/predict/command.py (see --help)."""

import sys

from rald_fast.predict.command import cli

sys.exit(cli())
