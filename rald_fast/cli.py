"""Shared command-line plumbing: bad input becomes one clear message and a non-zero exit."""

from __future__ import annotations

import os
import sys

from rald_fast.checkpoint import CheckpointError
from rald_fast.data.dataset import DataError
from rald_fast.hierarchy import TaxonomyError
from rald_fast.models.backbone import BackboneWeightsError
from rald_fast.semantics import MissingLabelVectorError
from rald_fast.training import TrainingError

# errors that describe bad input (the message names the file, line or option); anything else is a bug
USER_ERRORS = (ValueError, FileNotFoundError, DataError, CheckpointError, TaxonomyError,
               BackboneWeightsError, MissingLabelVectorError, TrainingError)


def run_cli(main) -> int:
    """Run `main()`; print a user error as `error: ...` (exit 2) instead of a traceback.

    Set RALD_FAST_DEBUG=1 to see the traceback instead.
    """
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint is intact; continue with --resume",
              file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("RALD_FAST_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
