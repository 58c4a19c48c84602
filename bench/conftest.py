"""pytest-benchmark setup for bench/: collects bench_*.py, records the environment with each result.

Run: `pytest bench/ --benchmark-only` (add `--benchmark-json bench/results/<name>.json` to keep the
raw numbers). Without CUDA only the CPU reference cases run, and they compare reference paths only.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch
from kernel_cases import environment


def pytest_collect_file(file_path: Path, parent):
    """Collect bench_*.py here unless the project's `python_files` already does."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture
def bench_env(benchmark):
    benchmark.extra_info.update(environment())
    return benchmark


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
