"""Triton availability and interpreter mode for rald_fast.kernels.

When Triton runs kernels in its CPU interpreter is decided once per process, when `triton` is
imported: `import triton` decorates Triton's own language functions written in Triton (`tl.zeros`,
`tl.max`, `tl.sum`, `tl.cdiv`, ... in triton/language/standard.py) as interpreted or compiled
functions according to TRITON_INTERPRET at that moment, and a kernel of one mode cannot call
functions of the other ("Cannot call @triton.jit'd outside of the scope of a kernel"). Setting the
variable later (a test fixture, monkeypatch.setenv) changes what a later `@triton.jit` produces but
not Triton's standard library, so it cannot turn the interpreter on. `torch._dynamo` (any
torch.compile) imports triton too, so in a test process it is usually imported early.

This module therefore reads the mode from Triton's standard library itself (`interpret_mode`) and
decorates the package's kernels with the same mode (`jit`), whatever TRITON_INTERPRET says by the
time rald_fast is imported. Tests that need the interpreter run in-process when the process was
started with TRITON_INTERPRET=1, and otherwise in a subprocess that sets it (testing.py).
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of PyTorch on Linux; elsewhere the reference paths are used.
    import triton

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    HAS_TRITON = False

MAX_TOPK = 32  # largest k of the Triton top-k (kept in registers)


def _stdlib_mode() -> bool | None:
    """True / False when Triton's standard library was decorated interpreted / compiled."""
    std = getattr(triton.language, "standard", None)
    for name in ("zeros", "cdiv", "max", "sum", "sigmoid"):
        kind = type(getattr(std, name, None)).__name__
        if kind == "InterpretedFunction":
            return True
        if kind == "JITFunction":
            return False
    return None


def _env_mode() -> bool:
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_INTERPRET = False
if HAS_TRITON:
    _mode = _stdlib_mode()
    _INTERPRET = _env_mode() if _mode is None else _mode


def interpret_mode() -> bool:
    """Whether Triton kernels run in the CPU interpreter in this process (fixed at triton import)."""
    return _INTERPRET


def jit(fn):
    """`triton.jit` in the process's mode (module docstring), not in TRITON_INTERPRET's current value."""
    if _INTERPRET:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    from triton.runtime.jit import JITFunction

    return JITFunction(fn)


def check_launchable(t: torch.Tensor, op: str) -> None:
    """Raise a clear error when the Triton kernels of `op` cannot run on `t`'s device."""
    if not HAS_TRITON:
        raise RuntimeError(f"{op}: backend='triton' needs the `triton` package; use backend='reference'.")
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpret_mode():
        return
    raise RuntimeError(
        f"{op}: backend='triton' needs CUDA tensors (got {t.device.type}); on CPU it runs only in "
        "Triton's interpreter, which needs TRITON_INTERPRET=1 in the environment before triton is first "
        "imported (slow: tests only). Use backend='reference' or 'auto'."
    )


def can_launch(t: torch.Tensor) -> bool:
    """True when the Triton kernels can run on `t` (CUDA, or CPU under the interpreter)."""
    return HAS_TRITON and (t.device.type == "cuda" or (t.device.type == "cpu" and interpret_mode()))


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device`, used to size split-K grids (a small constant on CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: fp32 inputs follow torch's matmul precision setting (tf32 allowed or
    not), as `torch.matmul` would; fp16/bf16 inputs ignore the value."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def next_pow2(n: int, lo: int = 16) -> int:
    """Smallest power of two >= max(n, lo): block sizes (`tl.dot` needs every dim >= 16)."""
    return max(lo, 1 << max(0, int(n) - 1).bit_length())


# The interpreter pays a few milliseconds of Python per tl op whatever the tile size, so under it the
# sequence tiles grow by this factor (fewer loop trips, same code). Tests set it to 1 to run the GPU
# tiling itself on small shapes.
INTERPRET_TILE_FACTOR = 4


def tile(n: int, gpu_tile: int) -> int:
    """Tile along a sequence of length n: gpu_tile (times INTERPRET_TILE_FACTOR when interpreted),
    shrunk to the next power of two >= max(n, 16) for short sequences."""
    cap = gpu_tile * (INTERPRET_TILE_FACTOR if interpret_mode() else 1)
    return min(cap, next_pow2(n))
