"""`python -m rald_fast.serve`: the command line of rald_fast/serve/command.py (see --help)."""

import sys

from rald_fast.serve.command import cli

sys.exit(cli())
