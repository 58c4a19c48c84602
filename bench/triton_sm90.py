"""Compile every Triton kernel specialisation the GPU runs use, for sm_90 (H100/H200), with no GPU.

The GPU machine has Triton 3.6 while this machine tests with the Triton that torch brings (3.8): a
kernel that compiles here may not compile there. This script records, without launching anything,
every specialisation (kernel, argument types, constexprs, warps, stages) that the launchers of
rald_fast/kernels would launch on an H100/H200 (132 SMs, so the split plans are the GPU's) for the
shapes of bench/gpu_suite.py (the training step at batch 128 and 256: ITRR, HLRR with its bias,
LGIFO, NNLDL's top-k, forward and backward; bf16 and fp32 with and without TF32) and of
bench/kernel_cases.py (gpu_kernels.py's attention and top-k cases, fp32 / bf16 / fp16, both top-k tile
strategies), then compiles each to a cubin for sm_90 with the installed Triton and checks its shared
memory fits a block. One line per specialisation, then a summary; exit status 1 if any failed.

    python bench/triton_sm90.py                                    # the Triton installed here
    PYTHONPATH=/tmp/triton36 python bench/triton_sm90.py           # an overlay of triton==3.6.0
      (pip install --no-deps --target /tmp/triton36 triton==3.6.0)

What it does not check: integer-argument specialisation (Triton also specialises ints divisible by 16
at launch; these compile the general form) and anything that needs the GPU to run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import types
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "bench")]

import torch  # noqa: E402
import triton  # noqa: E402

from rald_fast.kernels import attention_launch, topk_triton  # noqa: E402

H100_SMS = 132
SM90_SMEM = 232448  # bytes of shared memory one block may use on sm_90
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
                torch.int64: "i64", torch.bool: "i1"}


class Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **meta)` records the specialisation."""

    def __init__(self, kernel, seen: dict):
        self.kernel, self.seen = kernel, seen
        self.name = kernel.fn.__name__

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, num_warps=4, num_stages=2, **constexprs):
        names = list(inspect.signature(self.kernel.fn).parameters)
        signature = {}
        for name, value in zip(names, args):
            if isinstance(value, torch.Tensor):
                signature[name] = "*" + TRITON_TYPES[value.dtype]
            elif isinstance(value, bool):
                signature[name] = "i1"
            elif isinstance(value, int):
                signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            else:
                signature[name] = "fp32"
        for name in constexprs:
            signature[name] = "constexpr"
        key = json.dumps([self.name, signature, constexprs, num_warps, num_stages], sort_keys=True, default=str)
        self.seen.setdefault(key, (self.kernel, names, signature, dict(constexprs), num_warps, num_stages))


def record_specialisations() -> dict:
    """Run the launchers on CPU tensors with recorders in place of the kernels (nothing is computed);
    the launch modules are restored afterwards."""
    import kernel_cases as kc

    seen: dict = {}
    patched = {attention_launch: ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel",
                                  "_attn_bwd_fused_kernel", "_sms"),
               topk_triton: ("_row_lse_kernel", "_topk_kernel", "_merge_kernel", "num_sms", "_splits")}
    saved = {(m, n): getattr(m, n) for m, names in patched.items() for n in names}
    precision = torch.get_float32_matmul_precision()
    gpu = types.SimpleNamespace(type="cuda")  # the GPU's split plans
    try:
        for (module, name), value in saved.items():
            if name.startswith("_") and name.endswith("_kernel"):
                setattr(module, name, Recorder(value, seen))
        attention_launch._sms = lambda device: H100_SMS
        topk_triton.num_sms = lambda device: H100_SMS
        splits = saved[topk_triton, "_splits"]
        topk_triton._splits = lambda n, m, bn, device, ns, cap=None: splits(n, m, bn, gpu, ns, cap)
        _launch_everything(kc)
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)
        torch.set_float32_matmul_precision(precision)
    return seen


def _launch_everything(kc) -> None:
    attn = [(c.H, c.Lq, c.Lk, c.D, c.bias) for c in kc.ATTN_CASES]
    topk = [(c.H, c.N, c.M, c.D, c.C, c.k) for c in kc.TOPK_CASES]
    for n in (128, 256):  # the suite's training step: ITRR, HLRR (39 label nodes, bias), LGIFO, NNLDL
        attn += [(8, n, n, 64, False), (8, 39, 39, 64, True), (8, n, 39, 64, False)]
        topk += [(8, n, n, 64, 33, 5)]
    for dtype in DTYPES.values():
        for tf32 in ((True, False) if dtype == torch.float32 else (True,)):
            torch.set_float32_matmul_precision("high" if tf32 else "highest")
            for H, Lq, Lk, D, bias in dict.fromkeys(attn):
                q, k, v = (torch.empty(H, L, D, dtype=dtype) for L in (Lq, Lk, Lk))
                table = torch.zeros(H, kc.SIGMA + 1) if bias else None
                xi = kc.label_xi(Lq, Lk) if bias else None
                out, lse = attention_launch.attention_fwd(q, k, v, 0.125, table, xi)
                attention_launch.attention_bwd(q, k, v, out, lse, torch.empty_like(out), 0.125, table, xi)
            for H, N, M, D, C, kk in dict.fromkeys(topk):
                q, k = torch.empty(H, N, D, dtype=dtype), torch.empty(H, M, D, dtype=dtype)
                for rows in topk_triton.ROWS_PER_PROGRAM:
                    lse = topk_triton.row_lse(q, k, 0.125, rows_per_program=rows)
                    top_v, top_i = topk_triton.topk_candidates(q, k, lse, kk, 0.125, True, 0,
                                                               rows_per_program=rows)
                    topk_triton.merge_aggregate(top_v, top_i, torch.empty(M, C, dtype=dtype), kk)


def compile_sm90(kernel, names, signature, constexprs, num_warps, num_stages):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(kernel, signature, {(names.index(n),): v for n, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="compile only the first N specialisations (0: all)")
    args = ap.parse_args(argv)
    t0 = time.time()
    seen = record_specialisations()
    todo = list(seen.values())[:args.limit or None]
    print(f"triton {triton.__version__}, torch {torch.__version__}: {len(seen)} specialisations for sm_90", flush=True)
    failed = 0
    for kernel, names, signature, const, warps, stages in todo:
        ptr_types = sorted({t for t in signature.values() if t.startswith("*")})
        what = (f"{kernel.fn.__name__} {'/'.join(ptr_types)} " +
                " ".join(f"{k}={v}" for k, v in sorted(const.items())) + f" warps={warps} stages={stages}")
        t1 = time.time()
        try:
            compiled = compile_sm90(kernel, names, signature, const, warps, stages)
            shared = compiled.metadata.shared
            ok = "cubin" in compiled.asm and shared <= SM90_SMEM
            print(f"{'ok  ' if ok else 'FAIL'} {what} shared={shared} ({time.time() - t1:.1f} s)", flush=True)
        except Exception as exc:  # noqa: BLE001 - report each failure and go on
            ok = False
            print(f"FAIL {what}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", flush=True)
        failed += not ok
    print(f"{len(todo) - failed} of {len(todo)} compiled for sm_90 with triton {triton.__version__} "
          f"in {time.time() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
