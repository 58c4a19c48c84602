"""GPU check of the two kernels: correctness at RALD's shapes, then timings, in one prepared run.

`run_kernel_checks_and_bench(out)` fills `out` (a dict, JSON-ready) with
- "env": GPU, versions, git revision;
- "estimate": the run's Triton / flex compile count and its estimated seconds (`estimate_seconds`);
- "checks": Triton vs the float64 reference per case and dtype, run with TF32 off (`exact_fp32`:
  the kernels' fp32 `tl.dot` follows torch's matmul precision): max errors of the output and of every
  gradient, PyTorch's own error in that dtype, pass = err <= 2 x PyTorch's + atol (flash-attention's
  rule); top-k index agreement, D error and the kernel's extra peak memory, for both tile strategies
  of the top-k kernels (`rows_per_program` in the row: "block", "all");
- "attention" / "topk": one row per (case, implementation, mode), bf16, timed three ways: do_bench
  (median and 20/80 % quantiles, ms), a launch-bound loop of back-to-back calls (`loop_ms`) and CUDA
  graph replay (`graph_ms`); TFLOP/s, peak extra memory, and whether TF32 was on (`tf32`);
- "targets": the kernel targets of docs/PERFORMANCE.md per timing kind (fwd+bwd >= 3x eager and
  >= compiled flex_attention; top-k over 65,536 keys >= 5x the PyTorch path: matmul, softmax, head mean, topk, gather),
  for each top-k tile strategy, and the ratio of the two strategies' times (default / "all": > 1 when
  "all" is faster), from which topk_triton.DEFAULT_ROWS_PER_PROGRAM is to be chosen.
The top-k rows time "triton" (the kernels' default strategy, "block" until measured otherwise) and
"triton_all" (rows_per_program="all": one row block of all N <= 256 queries, each key tile read once
per pass) side by side, same cases, same timing kinds.
Every step is guarded: an error is recorded under "errors" and the run goes on, so one device session
returns everything it could measure; the suite's alarm (TimeoutError) is not swallowed but ends the
run, and `save` is called after every row, so what was measured is on disk.
Script use: `python bench/gpu_kernels.py [--quick] [--out F]`
(default output bench/results/kernels_<gpu>_<date>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path

import torch

try:
    from bench import kernel_cases as kc  # imported from the repository root
except ImportError:  # run as a script: bench/ and the repository root (rald_fast) go on the path
    _here = Path(__file__).resolve().parent
    sys.path[:0] = [str(_here), str(_here.parent)]
    import kernel_cases as kc

from rald_fast.kernels import (attention, attention_ref, neighbour_targets, neighbour_targets_ref,
                               neighbour_targets_triton)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECK_ATTN = ["hlrr_c39", "lgifo_n256", "itrr_n256", "itrr_bank64k_n128"]
ODD_CASES = [kc.AttnCase("odd_5x7_bias", 8, 5, 7, 64, True, True),
             kc.AttnCase("odd_127x39_d40", 8, 127, 39, 40, False, True)]
FLEX_CASES = ["hlrr_c39", "itrr_n256", "itrr_bank64k_n128"]  # flex compiles once per shape


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for the duration (cuBLAS, cuDNN, and the kernels' `dot_precision`, which follows
    torch's matmul precision): the fp32 checks compare IEEE fp32 with the float64 truth."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def _guard(out: dict, what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except TimeoutError:  # the suite's alarm: the item's time is up, stop here (not the next step)
        raise
    except Exception as exc:  # noqa: BLE001 - record and go on: device time is scarce
        out.setdefault("errors", []).append({"what": what, "error": repr(exc)[:500],
                                             "trace": traceback.format_exc()[-2000:]})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def _max_err(a, b) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def check_attention(case: kc.AttnCase, dtype_name: str, device: str = "cuda") -> dict:
    """Triton vs the float64 reference, output and all gradients, with TF32 off (`exact_fp32`), so
    the fp32 rows compare IEEE fp32 with the truth; PyTorch's own error in the same dtype sets the
    bar (err <= 2 x PyTorch's + atol, flash-attention's rule). device="cpu" under the interpreter
    runs the same logic, which the kernel tests do to keep this script working."""
    with exact_fp32():
        return _check_attention(case, dtype_name, device)


def _check_attention(case: kc.AttnCase, dtype_name: str, device: str) -> dict:
    dtype = DTYPES[dtype_name]
    inp = kc.attn_inputs(case, device, dtype)
    names = [n for n in ("q", "k", "v", "table") if inp[n] is not None]
    leaves = [inp[n] for n in names]
    ref64 = {n: inp[n].detach().double().requires_grad_() for n in names}
    args64 = [ref64.get(n) for n in ("q", "k", "v", "table")]
    out = attention(inp["q"], inp["k"], inp["v"], kc.SCALE, inp["table"], inp["xi"], backend="triton")
    low = attention_ref(inp["q"], inp["k"], inp["v"], kc.SCALE, inp["table"], inp["xi"])
    truth = attention_ref(*args64[:3], kc.SCALE, args64[3], inp["xi"])
    g = inp["grad_out"]
    got = dict(zip(names, torch.autograd.grad(out, leaves, g)))
    pyt = dict(zip(names, torch.autograd.grad(low, leaves, g)))
    want = dict(zip(names, torch.autograd.grad(truth, list(ref64.values()), g.double())))
    atol = 1e-4 if dtype == torch.float32 else 1e-3
    row = {"case": case.name, "dtype": dtype_name, "tf32": False, "truth": "float64", "ok": True}
    for name, a, b, c in [("out", out, low, truth)] + [(f"d{n}", got[n], pyt[n], want[n]) for n in names]:
        err, ref_err = _max_err(a, c), _max_err(b, c)
        row[name] = {"err": err, "torch_err": ref_err}
        row["ok"] &= bool(err <= 2 * ref_err + atol)
    return row


TOPK_IMPLS = ("reference", "torch_topk", "triton", "triton_all")  # timed; kernel_cases.TOPK_IMPLS
TOPK_ROWS = {"triton": None, "triton_all": "all"}  # the Triton impls' rows_per_program (None: the default)


def topk_rows(rows_per_program: str | None) -> str:
    """The tile strategy a top-k row ran with: rows_per_program, or the kernels' default for None."""
    from rald_fast.kernels import topk_triton  # needs triton: only where a top-k kernel runs

    return rows_per_program or topk_triton.DEFAULT_ROWS_PER_PROGRAM


def check_topk(case: kc.TopkCase, dtype_name: str, device: str = "cuda", rows_per_program: str | None = None) -> dict:
    """Triton vs the reference with TF32 off: index agreement, D error, extra peak memory (CUDA).
    rows_per_program: the kernels' tile strategy ("block", "all"); None: the public dispatcher
    (neighbour_targets, backend="triton") with the kernels' default."""
    with exact_fp32():
        return _check_topk(case, dtype_name, device, rows_per_program)


def _check_topk(case: kc.TopkCase, dtype_name: str, device: str, rows_per_program: str | None) -> dict:
    inp = kc.topk_inputs(case, device, DTYPES[dtype_name])
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    if rows_per_program is None:
        d, idx, _ = neighbour_targets(inp["q"], inp["k"], inp["p"], case.k, kc.SCALE,
                                      key_offset=inp["key_offset"], backend="triton")
    else:
        d, idx, _ = neighbour_targets_triton(inp["q"], inp["k"], inp["p"], case.k, kc.SCALE,
                                             key_offset=inp["key_offset"], rows_per_program=rows_per_program)
    extra = torch.cuda.max_memory_allocated() - base if cuda else float("nan")
    d_ref, idx_ref, _ = neighbour_targets_ref(inp["q"], inp["k"], inp["p"], case.k, kc.SCALE,
                                              key_offset=inp["key_offset"])
    same = (idx == idx_ref).all(1)
    d_err = _max_err(d[same], d_ref[same]) if same.any() else float("nan")
    agree = same.float().mean().item()
    return {"case": case.name, "dtype": dtype_name, "rows_per_program": topk_rows(rows_per_program), "tf32": False,
            "idx_rows_equal": agree, "d_err_equal_rows": d_err, "extra_peak_mb": extra / 2**20,
            "ok": bool(agree >= 0.99 and d_err <= 1e-4)}


def _peak_extra_mb(step) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _time_loop(step, iters: int) -> float:
    """Launch-bound time: `iters` back-to-back calls, one synchronisation, ms per call (what a
    training step sees for these tiny, launch-bound attentions)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / iters


def _time_graph(step, iters: int) -> float:
    """The same call captured once in a CUDA graph and replayed: ms per replay (launch overhead gone)."""
    return _time_loop(kc.cuda_graph(step), iters)


def _time(step, rep_ms: int, iters: int = 100) -> dict:
    """do_bench median / quantiles (ms), the launch-bound loop and the CUDA-graph replay (ms per
    call), and the extra peak memory. TF32 as set by the caller (recorded in the row)."""
    import triton.testing

    step()  # compile outside the timing
    peak = _peak_extra_mb(step)
    med, lo, hi = triton.testing.do_bench(step, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    row = {"ms": med, "ms_p20": lo, "ms_p80": hi, "peak_mb": peak, "loop_ms": _time_loop(step, iters),
           "tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
    try:
        row["graph_ms"] = _time_graph(step, iters)
    except Exception as exc:  # noqa: BLE001 - some paths cannot be captured; the row keeps the rest
        row["graph_error"] = repr(exc)[:300]
    return row


ATTN_IMPLS = ("eager", "sdpa", "flex", "triton")


def bench_attention(out: dict, cases, rep_ms: int, flex_cases, save=None) -> None:
    rows = out.setdefault("attention", [])
    for case in cases:
        for mode in ("fwd", "fwd_bwd"):
            inp = kc.attn_inputs(case, "cuda", torch.bfloat16, requires_grad=mode == "fwd_bwd")
            for impl in ATTN_IMPLS:
                if impl == "flex" and case.name not in flex_cases:
                    continue
                step = kc.attn_step(impl, inp, backward=mode == "fwd_bwd")
                t = _guard(out, f"attention {case.name} {impl} {mode}", _time, step, rep_ms)
                if t is not None:
                    flops = kc.attn_flops(case, mode == "fwd_bwd")
                    rows.append(dict(case=case.name, impl=impl, mode=mode, dtype="bf16", **t,
                                     tflops=flops / (t["ms"] * 1e-3) / 1e12))
                if save:
                    save()
            del inp
            torch.cuda.empty_cache()


def bench_topk(out: dict, cases, rep_ms: int, save=None) -> None:
    rows = out.setdefault("topk", [])
    for case in cases:
        inp = kc.topk_inputs(case, "cuda", torch.bfloat16)
        for impl in TOPK_IMPLS:
            t = _guard(out, f"topk {case.name} {impl}", _time, kc.topk_step(impl, case, inp), rep_ms)
            if t is not None:
                extra = {"rows_per_program": topk_rows(TOPK_ROWS[impl])} if impl in TOPK_ROWS else {}
                rows.append(dict(case=case.name, impl=impl, dtype="bf16", **extra, **t,
                                 tflops=kc.topk_flops(case) / (t["ms"] * 1e-3) / 1e12))
            if save:
                save()
        del inp
        torch.cuda.empty_cache()


def summarise_targets(out: dict) -> dict:
    """The targets of docs/PERFORMANCE.md from the rows, per timing kind (do_bench, launch-bound loop, graph)."""
    rows = out.get("attention", []) + out.get("topk", [])
    targets = {}
    for kind in ("ms", "loop_ms", "graph_ms"):
        ms = {(r["case"], r["impl"], r.get("mode")): r[kind] for r in rows if r.get(kind)}
        for (case, impl, mode), t in ms.items():
            if impl not in ("triton", "triton_all"):
                continue
            if mode == "fwd_bwd":
                eager, flex = ms.get((case, "eager", mode)), ms.get((case, "flex", mode))
                targets[f"attention {case} [{kind}]: speedup vs eager (>= 3)"] = eager / t if eager else None
                if flex:
                    targets[f"attention {case} [{kind}]: speedup vs flex (>= 1)"] = flex / t
            elif mode is None and case.startswith("bank64k"):
                base = ms.get((case, "torch_topk", None))  # matmul, softmax, head mean, topk, gather
                label = "" if impl == "triton" else " rows_per_program=all"
                targets[f"topk {case}{label} [{kind}]: speedup vs the PyTorch path (>= 5)"] = base / t if base else None
                if impl == "triton_all" and ms.get((case, "triton", None)):  # the default's choice, no target
                    targets[f"topk {case} [{kind}]: default / all time (> 1: all faster)"] = (
                        ms[(case, "triton", None)] / t)
    return targets


def plan(quick: bool) -> dict:
    """What a run checks and times: (case, dtype) checks, timed cases, flex cases."""
    by_name = {c.name: c for c in kc.ATTN_CASES}
    if quick:  # fp32 (TF32 off) where the bias and odd sizes are, bf16 at every checked shape
        checks = [(by_name[n], "bf16") for n in CHECK_ATTN] + [(c, "bf16") for c in ODD_CASES]
        checks += [(by_name["hlrr_c39"], "fp32")] + [(c, "fp32") for c in ODD_CASES]
        attn = [by_name[n] for n in ("hlrr_c39", "itrr_n256", "itrr_bank64k_n128")]
        flex, topk = ["hlrr_c39", "itrr_n256"], kc.TOPK_CASES[-2:]
    else:
        checks = [(c, dt) for c in [by_name[n] for n in CHECK_ATTN] + ODD_CASES for dt in ("fp32", "fp16", "bf16")]
        attn, flex, topk = kc.ATTN_CASES, FLEX_CASES, kc.TOPK_CASES
    topk_checks = [(c, dt, rows) for c in kc.TOPK_CASES if c.name in ("batch_n256", "bank64k_n256")
                   for dt in ("bf16", "fp32") for rows in (None, "all")]
    return dict(checks=checks, topk_checks=topk_checks, attn=attn, flex=flex, topk=topk)


# seconds per compile on the device machine's host (Triton: a specialisation of one kernel; flex:
# one torch.compile of flex_attention, forward or forward + backward) and per timed row (do_bench
# warm-up + rep, a 100-call loop, a graph capture and 100 replays; the 64k-key rows are slower)
TRITON_COMPILE_S, FLEX_COMPILE_S, ROW_S = 2.0, 20.0, 1.0


def estimate_seconds(p: dict) -> dict:
    """An honest cost of `plan(...)`: count the compiles rather than guess a total. Triton kernels
    specialise on dtype, bias, block sizes and the integer arguments' divisibility by 16, so each
    attention check compiles its forward and its backward (1 fused, or 2 split kernels) unless an
    earlier check had the same key; each top-k (dtype, tile strategy) compiles 3 kernels, "all" once
    more per row-block size (BLOCK_M = next power of two >= N, <= 256) of its checks and timed cases."""
    keys = set()
    for case, dt in p["checks"]:
        keys.add((case.Lq > 256 or case.Lk > 256, case.bias, dt, case.Lq % 16 == 0, case.Lk % 16 == 0, case.D))
    for case in p["attn"]:  # bf16 timing rows
        keys.add((case.Lq > 256 or case.Lk > 256, case.bias, "bf16", case.Lq % 16 == 0, case.Lk % 16 == 0, case.D))
    attn_compiles = sum(3 if big else 2 for big, *_ in keys)
    def topk_key(case, dt, rows):
        return (dt, rows) if rows != "all" else (dt, rows, min(256, 1 << max(0, case.N - 1).bit_length()))

    topk_keys = {topk_key(*c) for c in p["topk_checks"]}
    topk_keys |= {topk_key(case, "bf16", TOPK_ROWS[impl]) for case in p["topk"] for impl in TOPK_ROWS}
    topk_compiles = 3 * len(topk_keys)
    flex_compiles = 2 * len(p["flex"])
    rows = 2 * len(p["attn"]) * len(ATTN_IMPLS) + len(TOPK_IMPLS) * len(p["topk"])
    seconds = ((attn_compiles + topk_compiles) * TRITON_COMPILE_S + flex_compiles * FLEX_COMPILE_S
               + rows * ROW_S + 2 * (len(p["checks"]) + len(p["topk_checks"])))
    return dict(triton_compiles=attn_compiles + topk_compiles, flex_compiles=flex_compiles, timed_rows=rows,
                seconds=round(seconds))


def run_kernel_checks_and_bench(out: dict, *, quick: bool = False, rep_ms: int = 100, save=None) -> dict:
    """Fill `out` (module docstring) and return it. quick: fewer cases, for a short device slot.
    save: called after every check and timed row, so a run cut short keeps what it measured."""
    if not torch.cuda.is_available():
        out["skipped"] = "no CUDA device"
        return out
    save = save or (lambda: None)
    t0 = time.time()
    p = plan(quick)
    out["env"] = kc.environment()
    out["estimate"] = estimate_seconds(p)
    checks = out.setdefault("checks", [])
    for case, dt in p["checks"]:
        row = _guard(out, f"check attention {case.name} {dt}", check_attention, case, dt)
        if row is not None:
            checks.append(row)
        save()
    for case, dt, rows in p["topk_checks"]:
        row = _guard(out, f"check topk {case.name} {dt} {rows or 'default'}", check_topk, case, dt, "cuda", rows)
        if row is not None:
            checks.append(row)
        save()
    out["checks_ok"] = all(r["ok"] for r in checks) and not out.get("errors")
    bench_attention(out, p["attn"], rep_ms, p["flex"], save)
    bench_topk(out, p["topk"], rep_ms, save)
    out["targets"] = summarise_targets(out)
    out["seconds"] = time.time() - t0
    save()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases and dtypes")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default under bench/results/)")
    args = ap.parse_args()
    if args.out is None:
        gpu = kc.environment()["device"].replace(" ", "_")
        args.out = Path(__file__).parent / "results" / f"kernels_{gpu}_{time.strftime('%Y%m%d_%H%M')}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out: dict = {}

    def save():  # rewritten after every row: a killed run keeps what it measured
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1, default=str))
        tmp.replace(args.out)

    run_kernel_checks_and_bench(out, quick=args.quick, save=save)
    save()
    print(json.dumps({k: out.get(k) for k in ("checks_ok", "targets", "errors", "seconds")}, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
