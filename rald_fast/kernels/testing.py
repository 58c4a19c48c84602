"""Test helpers for the kernels (and for model tests that run them): comparisons, seeding, and a
pytest run in the other Triton mode.

Triton's CPU interpreter can only be switched on before `triton` is imported (see _runtime.py): a test
session runs in one mode, and tests that need the other run in a child process (`run_pytest_in_mode`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def run_pytest_in_mode(*args: str, interpret: bool, timeout: float = 1200.0) -> tuple[int, str]:
    """Run `pytest *args` in a child process whose Triton is interpreted (`interpret=True`, CUDA
    hidden) or compiled. Returns (exit code, combined output)."""
    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0")
    if interpret:
        env["CUDA_VISIBLE_DEVICES"] = ""
    root = Path(__file__).resolve().parents[2]  # repository root: rald_fast/ is importable from it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    return proc.returncode, proc.stdout + proc.stderr


def check_child_run(rc: int, output: str) -> None:
    """Fail unless the child pytest passed, ran something, and skipped nothing."""
    tail = output[-8000:]
    assert rc == 0, f"child pytest run failed (exit {rc}):\n{tail}"
    assert " passed" in output, f"child pytest run ran nothing:\n{tail}"
    assert " skipped" not in output, f"child pytest run skipped tests:\n{tail}"


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy (when installed) and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device


def first_mismatch(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> str:
    """'' when close, else a line naming the first mismatching index and the worst one."""
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    if a.shape != e.shape:
        return f"shape {tuple(a.shape)} != {tuple(e.shape)}"
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=False)
    if not bad.any():
        return ""
    first = tuple(int(i) for i in bad.nonzero()[0])
    err = (a - e).abs().nan_to_num(float("inf"))
    worst = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    return (f"{int(bad.sum())}/{bad.numel()} mismatched (atol={atol}, rtol={rtol}); first at {first}: "
            f"got {a[first].item():.6g}, expected {e[first].item():.6g}; worst at {worst}: "
            f"got {a[worst].item():.6g}, expected {e[worst].item():.6g}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float,
                 name: str = "tensor") -> None:
    """torch.allclose with a message that names the first mismatching index."""
    msg = first_mismatch(actual, expected, atol, rtol)
    if msg:
        raise AssertionError(f"{name}: {msg}")


def assert_within_ref_error(actual: torch.Tensor, ref_lowp: torch.Tensor, ref_fp32: torch.Tensor, *,
                            factor: float = 2.0, atol: float = 1e-5, name: str = "tensor") -> None:
    """Low-precision rule of flash-attention's tests: the kernel's max error against the fp32 truth
    stays within `factor` times PyTorch's own error in the same precision, plus atol."""
    truth = ref_fp32.detach().float()
    err = (actual.detach().float() - truth).abs().max().item()
    ref_err = (ref_lowp.detach().float() - truth).abs().max().item()
    if not err <= factor * ref_err + atol:
        msg = first_mismatch(actual, truth, atol=factor * ref_err + atol, rtol=0.0)
        raise AssertionError(f"{name}: max error {err:.3g} > {factor} x PyTorch's {ref_err:.3g} + {atol}; {msg}")


def kernel_device() -> str | None:
    """Where the Triton kernels run in this test session: "cuda" (compiled) on a GPU machine, "cpu"
    under Triton's interpreter, None when neither (the kernel tests then skip)."""
    from . import HAS_TRITON, interpret_mode

    if not HAS_TRITON:
        return None
    if interpret_mode():
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None
