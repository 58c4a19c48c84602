"""GPU check of the two kernels: correctness at RALD's shapes, then timings, in one prepared run.

`run_kernel_checks_and_bench(out)` fills `out` (a dict, JSON-ready) with
- "env": GPU, versions, git revision;
- "checks": Triton vs the fp32 reference per case and dtype (fp32, fp16, bf16): max errors of the
  output and of every gradient, PyTorch's own error in that dtype, pass = err <= 2 x PyTorch's + atol
  (flash-attention's rule); top-k index agreement, D error and the kernel's extra peak memory;
- "attention" / "topk": one row per (case, implementation, mode) timed with triton.testing.do_bench
  (median and 20/80 % quantiles in ms), TFLOP/s and peak extra memory;
- "targets": issue 4's targets (fwd+bwd >= 3x eager and >= compiled flex_attention; top-k over
  65,536 keys >= 5x torch.topk on the materialised relation).
Every step is guarded: an error is recorded under "errors" and the run goes on, so one device session
returns everything it could measure. Script use: `python bench/gpu_kernels.py [--quick] [--out F]`
(default output bench/results/kernels_<gpu>_<date>.json).
"""

from __future__ import annotations

import argparse
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

from rald_fast.kernels import attention, attention_ref, neighbour_targets, neighbour_targets_ref

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECK_ATTN = ["hlrr_c39", "lgifo_n256", "itrr_n256", "itrr_bank64k_n128"]
ODD_CASES = [kc.AttnCase("odd_5x7_bias", 8, 5, 7, 64, True, True),
             kc.AttnCase("odd_127x39_d40", 8, 127, 39, 40, False, True)]
FLEX_CASES = ["hlrr_c39", "itrr_n256", "itrr_bank64k_n128"]  # flex compiles once per shape


def _guard(out: dict, what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - record and go on: device time is scarce
        out.setdefault("errors", []).append({"what": what, "error": repr(exc)[:500],
                                             "trace": traceback.format_exc()[-2000:]})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def _max_err(a, b) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def check_attention(case: kc.AttnCase, dtype_name: str, device: str = "cuda") -> dict:
    """Triton vs the fp32 reference, output and all gradients (device="cpu" under the interpreter
    runs the same logic, which the kernel tests do to keep this script working)."""
    dtype = DTYPES[dtype_name]
    inp = kc.attn_inputs(case, device, dtype)
    names = [n for n in ("q", "k", "v", "table") if inp[n] is not None]
    leaves = [inp[n] for n in names]
    ref32 = {n: inp[n].detach().float().requires_grad_() for n in names}
    args32 = [ref32.get(n) for n in ("q", "k", "v", "table")]
    out = attention(inp["q"], inp["k"], inp["v"], kc.SCALE, inp["table"], inp["xi"], backend="triton")
    low = attention_ref(inp["q"], inp["k"], inp["v"], kc.SCALE, inp["table"], inp["xi"])
    truth = attention_ref(*args32[:3], kc.SCALE, args32[3], inp["xi"])
    g = inp["grad_out"]
    got = dict(zip(names, torch.autograd.grad(out, leaves, g)))
    pyt = dict(zip(names, torch.autograd.grad(low, leaves, g)))
    want = dict(zip(names, torch.autograd.grad(truth, list(ref32.values()), g.float())))
    atol = 1e-4 if dtype == torch.float32 else 1e-3
    row = {"case": case.name, "dtype": dtype_name, "ok": True}
    for name, a, b, c in [("out", out, low, truth)] + [(f"d{n}", got[n], pyt[n], want[n]) for n in names]:
        err, ref_err = _max_err(a, c), _max_err(b, c)
        row[name] = {"err": err, "torch_err": ref_err}
        row["ok"] &= bool(err <= 2 * ref_err + atol)
    return row


def check_topk(case: kc.TopkCase, dtype_name: str, device: str = "cuda") -> dict:
    """Triton vs the reference: index agreement, D error, extra peak memory (CUDA only)."""
    inp = kc.topk_inputs(case, device, DTYPES[dtype_name])
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    d, idx, _ = neighbour_targets(inp["q"], inp["k"], inp["p"], case.k, kc.SCALE,
                                  key_offset=inp["key_offset"], backend="triton")
    extra = torch.cuda.max_memory_allocated() - base if cuda else float("nan")
    d_ref, idx_ref, _ = neighbour_targets_ref(inp["q"], inp["k"], inp["p"], case.k, kc.SCALE,
                                              key_offset=inp["key_offset"])
    same = (idx == idx_ref).all(1)
    d_err = _max_err(d[same], d_ref[same]) if same.any() else float("nan")
    agree = same.float().mean().item()
    return {"case": case.name, "dtype": dtype_name, "idx_rows_equal": agree, "d_err_equal_rows": d_err,
            "extra_peak_mb": extra / 2**20, "ok": bool(agree >= 0.99 and d_err <= 1e-4)}


def _time(step, rep_ms: int) -> dict:
    import triton.testing

    step()  # compile outside the timing
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    med, lo, hi = triton.testing.do_bench(step, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"ms": med, "ms_p20": lo, "ms_p80": hi, "peak_mb": peak}


def bench_attention(out: dict, cases, rep_ms: int, flex_cases) -> None:
    rows = out.setdefault("attention", [])
    for case in cases:
        for mode in ("fwd", "fwd_bwd"):
            inp = kc.attn_inputs(case, "cuda", torch.bfloat16, requires_grad=mode == "fwd_bwd")
            for impl in ("eager", "sdpa", "flex", "triton"):
                if impl == "flex" and case.name not in flex_cases:
                    continue
                step = kc.attn_step(impl, inp, backward=mode == "fwd_bwd")
                t = _guard(out, f"attention {case.name} {impl} {mode}", _time, step, rep_ms)
                if t is not None:
                    flops = kc.attn_flops(case, mode == "fwd_bwd")
                    rows.append(dict(case=case.name, impl=impl, mode=mode, dtype="bf16", **t,
                                     tflops=flops / (t["ms"] * 1e-3) / 1e12))
            del inp
            torch.cuda.empty_cache()


def bench_topk(out: dict, cases, rep_ms: int) -> None:
    rows = out.setdefault("topk", [])
    for case in cases:
        inp = kc.topk_inputs(case, "cuda", torch.bfloat16)
        for impl in ("reference", "torch_topk", "triton"):
            t = _guard(out, f"topk {case.name} {impl}", _time, kc.topk_step(impl, case, inp), rep_ms)
            if t is not None:
                rows.append(dict(case=case.name, impl=impl, dtype="bf16", **t,
                                 tflops=kc.topk_flops(case) / (t["ms"] * 1e-3) / 1e12))
        del inp
        torch.cuda.empty_cache()


def summarise_targets(out: dict) -> dict:
    ms = {(r["case"], r["impl"], r.get("mode")): r["ms"] for r in out.get("attention", []) + out.get("topk", [])}
    targets = {}
    for (case, impl, mode), t in ms.items():
        if impl != "triton":
            continue
        if mode == "fwd_bwd":
            eager, flex = ms.get((case, "eager", mode)), ms.get((case, "flex", mode))
            targets[f"attention {case}: speedup vs eager (>= 3)"] = eager / t if eager else None
            if flex:
                targets[f"attention {case}: speedup vs flex (>= 1)"] = flex / t
        elif mode is None and case.startswith("bank64k"):
            base = ms.get((case, "torch_topk", None))
            targets[f"topk {case}: speedup vs torch.topk (>= 5)"] = base / t if base else None
    return targets


def run_kernel_checks_and_bench(out: dict, *, quick: bool = False, rep_ms: int = 100) -> dict:
    """Fill `out` (module docstring) and return it. quick: fewer cases, for a short device slot."""
    if not torch.cuda.is_available():
        out["skipped"] = "no CUDA device"
        return out
    t0 = time.time()
    out["env"] = kc.environment()
    by_name = {c.name: c for c in kc.ATTN_CASES}
    checks = out.setdefault("checks", [])
    dtypes = ["bf16", "fp32"] if quick else ["fp32", "fp16", "bf16"]
    for case in [by_name[n] for n in CHECK_ATTN] + ODD_CASES:
        for dt in dtypes:
            row = _guard(out, f"check attention {case.name} {dt}", check_attention, case, dt)
            if row is not None:
                checks.append(row)
    topk_cases = [c for c in kc.TOPK_CASES if c.name in ("batch_n256", "bank64k_n256")]
    for case in topk_cases:
        for dt in ("bf16", "fp32"):
            row = _guard(out, f"check topk {case.name} {dt}", check_topk, case, dt)
            if row is not None:
                checks.append(row)
    out["checks_ok"] = all(r["ok"] for r in checks) and not out.get("errors")
    attn_cases = [by_name[n] for n in ("hlrr_c39", "itrr_n256", "itrr_bank64k_n128")] if quick else kc.ATTN_CASES
    bench_attention(out, attn_cases, rep_ms, FLEX_CASES[:1] + FLEX_CASES[2:] if quick else FLEX_CASES)
    bench_topk(out, kc.TOPK_CASES[-2:] if quick else kc.TOPK_CASES, rep_ms)
    out["targets"] = summarise_targets(out)
    out["seconds"] = time.time() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases and dtypes")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default under bench/results/)")
    args = ap.parse_args()
    out = run_kernel_checks_and_bench({}, quick=args.quick)
    if args.out is None:
        gpu = out.get("env", {}).get("device", "cpu").replace(" ", "_")
        args.out = Path(__file__).parent / "results" / f"kernels_{gpu}_{time.strftime('%Y%m%d_%H%M')}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out.get(k) for k in ("checks_ok", "targets", "errors", "seconds")}, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
