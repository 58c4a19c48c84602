"""Which code made a number: the git revision of the rald_fast package and whether it was edited.

Every training run records it (each line of metrics.jsonl, and summary.json), so a table built from
runs can refuse to mix revisions (`python -m rald_fast.experiments study`). "Dirty" means a tracked file
under `rald_fast/` or `setup.py` differs from the commit: those are what change a trained model;
edited docs or tests do not. An installed copy outside a git checkout has no revision (None).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_revision() -> str | None:
    """'<12-hex commit>' or '<commit>+dirty' for the checkout this package runs from; None outside git.

    Read once per process: a run that is resumed by a later process records that process's revision.
    """
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "--short=12", "HEAD")
    if top is None or commit is None or not (Path(top) / "rald_fast").resolve() == PACKAGE_DIR:
        return None
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ":/rald_fast", ":/setup.py")
    return commit + ("+dirty" if changed else "")
