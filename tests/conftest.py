"""Shared fixtures: every RNG seeded, synthetic data cached per session, tiny configs."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
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


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what=""):
    """torch.testing.assert_close, plus the first mismatching index in the message."""
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{what}: first mismatch at {idx}: {actual[idx].item()} vs "
                             f"{expected[idx].item()} ({int(bad.sum())} of {bad.numel()} differ)")
