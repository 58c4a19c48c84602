"""`python -m rald_fast.bank --checkpoint CKPT`: build ITRR's reference bank (see --help).

Kept as its own command name; the work is `rald_fast.evaluate.command.bank_main`.
"""

import sys

from rald_fast.evaluate.command import bank_cli

if __name__ == "__main__":
    sys.exit(bank_cli())
