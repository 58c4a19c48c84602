"""Shared fixtures: every RNG seeded, synthetic data cached per session, tiny configs."""

from __future__ import annotations

import os

import pytest

from rald_fast import kernels
from rald_fast.kernels.testing import seed_everything


@pytest.fixture(autouse=True)
def seeded():
    seed_everything(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def synthetic_cache(tmp_path_factory):
    """Synthetic datasets go to one temp cache for the session, never to ~/.cache."""
    path = tmp_path_factory.mktemp("synthetic_cache")
    old = os.environ.get("RALD_FAST_CACHE")
    os.environ["RALD_FAST_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RALD_FAST_CACHE", None)
    else:
        os.environ["RALD_FAST_CACHE"] = old


@pytest.fixture
def interpret():
    """Kernel tests that need Triton's interpreter: in-process when pytest runs with
    TRITON_INTERPRET=1, else skipped here and rerun by each file's test_interpreted_in_subprocess."""
    if not kernels.interpret_mode():
        pytest.skip("triton imported in compiled mode: run by test_interpreted_in_subprocess")
