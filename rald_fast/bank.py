"""`python -m rald_fast.bank --checkpoint CKPT`: build ITRR's reference bank (see --help).

Kept as its own command name; the work is `rald_fast.evaluate.command.bank_main`.
"""

import sys

from rald_fast.cli import run_cli
from rald_fast.evaluate.command import bank_main as main

if __name__ == "__main__":
    sys.exit(run_cli(main))
