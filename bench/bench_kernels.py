"""pytest-benchmark suites of the two kernels at RALD's shapes (cases in kernel_cases.py).

`pytest bench/ --benchmark-only --benchmark-group-by=group` prints each case's implementations side
by side; compare ratios within one run, not absolute times across machines. On CUDA (bf16): eager
composite, SDPA with a materialised bias, compiled flex_attention and the Triton kernels, forward and
forward + backward; top-k aggregation by the reference, torch.topk on the materialised relation and
the streaming kernel, with peak memory in extra_info. Each is timed three ways (`timing`): one
synchronised call, 20 back-to-back calls then one synchronisation ("loop20": the launch-bound time a
training step sees; extra_info's calls_per_round divides it), and CUDA-graph replay ("graph", CUDA
only). Without CUDA (fp32): the CPU-sized cases of the reference paths only (eager, SDPA; reference,
torch.topk), which say nothing about the kernels.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import (
    ATTN_CASES,
    CUDA_ONLY,
    TIMINGS,
    TOPK_CASES,
    attn_flops,
    attn_inputs,
    attn_step,
    timed_step,
    topk_flops,
    topk_inputs,
    topk_step,
)

from rald_fast import kernels

CUDA = torch.cuda.is_available() and kernels.HAS_TRITON and not kernels.interpret_mode()


def _skip_unless_runnable(cpu_sized: bool, impl: str, timing: str = "call") -> None:
    if impl in CUDA_ONLY and not CUDA:
        pytest.skip(f"{impl} needs CUDA")
    if timing == "graph" and not CUDA:
        pytest.skip("CUDA-graph replay needs CUDA")
    if not CUDA and not cpu_sized:
        pytest.skip("too large for the CPU reference benchmarks")


def _peak_memory_mb(step) -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@pytest.mark.parametrize("timing", TIMINGS)
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("impl", ["eager", "sdpa", "flex", "triton"])
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: c.name)
def test_attention(bench_env, device, case, impl, mode, timing):
    _skip_unless_runnable(case.cpu, impl, timing)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    inp = attn_inputs(case, device, dtype, requires_grad=mode == "fwd_bwd")
    fn = attn_step(impl, inp, backward=mode == "fwd_bwd")
    fn()  # compile / autotune outside the timing (and before any graph capture)
    step, calls = timed_step(fn, timing)
    bench_env.group = f"attention {case.name} {mode} {timing}"
    bench_env.extra_info.update(case=case.name, impl=impl, mode=mode, timing=timing, calls_per_round=calls,
                                dtype=str(dtype), flops=attn_flops(case, mode == "fwd_bwd"),
                                peak_mem_mb=_peak_memory_mb(fn))
    bench_env(step)


@pytest.mark.parametrize("timing", TIMINGS)
@pytest.mark.parametrize("impl", ["reference", "torch_topk", "triton"])
@pytest.mark.parametrize("case", TOPK_CASES, ids=lambda c: c.name)
def test_neighbour_targets(bench_env, device, case, impl, timing):
    _skip_unless_runnable(case.cpu, impl, timing)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    inp = topk_inputs(case, device, dtype)
    fn = topk_step(impl, case, inp)
    fn()
    step, calls = timed_step(fn, timing)
    bench_env.group = f"neighbour_targets {case.name} {timing}"
    bench_env.extra_info.update(case=case.name, impl=impl, timing=timing, calls_per_round=calls, dtype=str(dtype),
                                flops=topk_flops(case), peak_mem_mb=_peak_memory_mb(fn))
    bench_env(step)
