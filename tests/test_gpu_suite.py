"""bench/gpu_suite.py cannot break unseen: its whole flow runs on the CPU at tiny sizes (--dry-run),
and its `.pt2` (AOTInductor) path runs on a small module."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_covers_every_section(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--dry-run", "--out", str(out),
                           "--revision", "abc"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == [], result["errors"]
    assert result["finished"] and result["dry_run"]
    assert {"torch", "triton", "cuda", "device", "paper"} <= set(result["env"]) and result["env"]["revision"] == "abc"
    assert result["kernels"]["checks_ok"], result["kernels"]  # every bias case, TF32 off, float64 truth
    rows = {(r["model"], r["engine"], r["dtype"], r["batch"]) for r in result["inference"]}
    for model in ("resnet18", "rald"):
        for dt in ("fp32", "fp16"):
            assert {(model, "graphs", dt, 2), (model, "graphs", dt, 4)} <= rows
    assert {("rald", "max_autotune", "fp32", 4), ("rald", "pt2", "fp32", 4)} <= rows
    for r in result["inference"]:
        assert r["images_per_s"] > 0 and r["ms_p10"] <= r["ms_median"] <= r["ms_p90"]
        assert r["max_abs_prob_diff_vs_fp32"] < (1e-5 if r["dtype"] == "fp32" else 2e-2), r
    assert result["flops_per_image"]["rald"] > result["flops_per_image"]["resnet18"] > 0
    assert not list(tmp_path.rglob("*.pt2"))  # packages go to a temporary folder, never beside the results
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert any(x.get("engine") == "pt2" for x in lines)  # each row printed as it lands


def test_headline_dry_run_prints_every_item_and_fits_its_plan(tmp_path):
    """bench/gpu_headline.py on the CPU: the device image's missing packages hidden, one JSON line per
    result in the output and in OUT/headline.jsonl, the correctness check passing, the plan printed."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_headline.py"), "--dry-run", "--out",
                           str(tmp_path), "--revision", "abc", "--skip", "compiled_inference,compiled_train"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    printed = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    saved = [json.loads(x) for x in (tmp_path / "headline.jsonl").read_text().splitlines()]
    assert printed == saved
    kinds = {r["kind"] for r in saved}
    assert {"env", "dry_run", "calibrate", "build", "check", "inference", "ratio", "train", "kernels", "returned",
            "done"} <= kinds and "error" not in kinds, [r for r in saved if r["kind"] == "error"]
    env = saved[0]
    assert env["revision"] == "abc" and env["plan_estimates_s"]["inference"] > 0
    assert set(env["expected_within_budget"]) >= {"calibrate", "build", "check", "inference", "train"}
    assert {"gensim", "tensorrt", "pycuda"} <= set(next(r for r in saved if r["kind"] == "dry_run")["hidden_packages"])
    assert all(r["ok"] for r in saved if r["kind"] == "check")
    models = {(r["model"], r["batch"]) for r in saved if r["kind"] == "inference"}
    assert models == {("rald", 4), ("resnet18", 4), ("rald", 1), ("resnet18", 1)}
    assert next(r for r in saved if r["kind"] == "returned")["within_limits"]


def test_pt2_package_builds_loads_and_matches_eager(tmp_path):
    """The AOTInductor path of the suite on a small module (a ResNet18 takes minutes to build here)."""
    suite = load_suite()
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()

    class Images(torch.nn.Module):  # the folded model's interface: images -> (logits, probs)
        def __init__(self):
            super().__init__()
            self.net = module

        def forward(self, images):
            logits = self.net(images / 255.0)
            return logits, logits.softmax(-1)

    model = Images().eval()
    x = torch.rand(3, 3, 8, 8) * 255
    model(x)  # materialise the lazy layer
    engine, notes = suite.build_pt2(model, x[:2], tmp_path, dry=False, max_batch=8)
    assert notes["package_mib"] > 0
    for b in (1, 3):
        torch.testing.assert_close(engine(x[:b])[1], model(x[:b])[1], rtol=1e-5, atol=1e-6)


def load_bench(name: str):
    sys.path[:0] = [str(ROOT / "bench")]
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_kernel_cases_xi_fits_every_bias_case():
    """label_xi gives an (Lq, Lk) table for the odd bias cases too (it raised IndexError for Lq != 39)."""
    kc = load_bench("kernel_cases")
    full = kc.label_xi()
    assert full.shape == (39, 39) and full.diagonal().eq(0).all() and set(full.unique().tolist()) == {0, 1, 2, 500}
    assert kc.label_xi(5, 7).shape == (5, 7)
    assert torch.equal(kc.label_xi(5, 7), full[:5, :7])
    for case in [kc.AttnCase("odd_5x7_bias", 2, 5, 7, 16, True, True), kc.AttnCase("x", 2, 41, 3, 16, True, True)]:
        inp = kc.attn_inputs(case, "cpu", torch.float32)
        assert inp["xi"].shape == (case.Lq, case.Lk)


def test_kernel_guard_lets_the_alarm_through():
    """gpu_kernels._guard records errors and goes on, but the suite's TimeoutError ends the item."""
    import pytest

    gk = load_bench("gpu_kernels")
    out: dict = {}
    assert gk._guard(out, "boom", lambda: 1 / 0) is None and out["errors"][0]["what"] == "boom"

    def slow():
        raise TimeoutError("alarm")

    with pytest.raises(TimeoutError):
        gk._guard(out, "slow", slow)


def test_kernel_checks_run_with_tf32_off():
    """exact_fp32 turns TF32 off (the kernels' dot precision follows it) and restores the settings."""
    from rald_fast.kernels._runtime import dot_precision

    gk = load_bench("gpu_kernels")
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert dot_precision(torch.float32) == "tf32"
        with gk.exact_fp32():
            assert dot_precision(torch.float32) == "ieee" and not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(old)


def test_kernel_item_is_costed_from_its_compile_count():
    gk = load_bench("gpu_kernels")
    est = gk.estimate_seconds(gk.plan(True))
    assert est["triton_compiles"] >= 10 and est["flex_compiles"] == 4
    assert est["seconds"] >= est["triton_compiles"] * gk.TRITON_COMPILE_S + 4 * gk.FLEX_COMPILE_S
    cost, limit = load_suite().kernels_cost(dry=False)
    assert cost == est["seconds"] and limit > cost


def test_triton_sm90_records_every_kernel_the_gpu_runs_use():
    """bench/triton_sm90.py's recorder (the compile itself: its committed output, docs/PERFORMANCE.md):
    every kernel, the GPU's split plans (merge candidates beyond one split), bf16/fp16/fp32."""
    ts = load_bench("triton_sm90")
    seen = ts.record_specialisations()
    names = {kernel.fn.__name__ for kernel, *_ in seen.values()}
    assert names == {"_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_fused_kernel",
                     "_row_lse_kernel", "_topk_kernel", "_merge_kernel"}
    pointer_types = {t for _, _, sig, *_ in seen.values() for t in sig.values() if t.startswith("*")}
    assert {"*bf16", "*fp16", "*fp32"} <= pointer_types
    assert any(const.get("CAND_P", 0) > 8 for _, _, _, const, *_ in seen.values())  # several key splits
    assert len(seen) >= 60
