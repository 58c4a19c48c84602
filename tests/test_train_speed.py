"""Training-speed options: --amp (autocast, fp16's grad scaler) and --compile run on the CPU and
train like the fp32 eager step."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rald_fast.checkpoint import load_checkpoint
from rald_fast.config import make_config
from rald_fast.hierarchy import load_taxonomy
from rald_fast.models import build_model, rald_loss
from rald_fast.train.loop import fit
from rald_fast.train.step import TrainForward, autocast_context, check_amp

TINY = dict(synth_train_per_class=1, synth_test_per_class=1, batch_size=16, eval_batch_size=16,
            image_size=32, progress=False, reference_bank=0)
CPU = torch.device("cpu")


def test_unknown_amp_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="--amp"):
        make_config("tiny", amp="fp8")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_on_cpu(tmp_path, amp):
    try:
        check_amp(amp, CPU)
    except ValueError as e:  # the error names the option; nothing else to test here
        assert f"--amp {amp}" in str(e)
        pytest.skip(f"autocast {amp} unsupported on this CPU build: {e}")
    summary = fit(make_config("tiny", "rald", out=str(tmp_path), epochs=1, amp=amp, **TINY))
    assert math.isfinite(summary["final"]["train_loss"])
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt.config["run"]["amp"] == amp
    assert (ckpt.scaler is not None) == (amp == "fp16")  # fp16 keeps its loss scale on resume
    assert all(t.dtype == torch.float32 for t in ckpt.model.values() if t.is_floating_point())


def test_bf16_step_stays_close_to_fp32():
    cfg = make_config("tiny", "rald", image_size=32, dropout=0.0)
    model = build_model(cfg, load_taxonomy("fg-emotions")).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 33, (8,))
    losses = {}
    for amp in ("none", "bf16"):
        with autocast_context(amp, CPU):
            losses[amp] = rald_loss(TrainForward(model)(x, [8]), y, cfg.loss, cfg.model.scale)["loss"]
    assert losses["bf16"].dtype == torch.float32  # the losses compute in fp32
    assert losses["bf16"].item() == pytest.approx(losses["none"].item(), rel=2e-2)


def test_compiled_training_forward_matches_eager():
    """The whole training forward traces under torch.compile (kernel dispatch included). The
    aot_eager backend checks tracing and autograd without inductor's C++ build (next test)."""
    cfg = make_config("tiny", "rald", image_size=32, dropout=0.0)
    model = build_model(cfg, load_taxonomy("fg-emotions")).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 33, (8,))
    grads = {}
    for mode in (False, "aot_eager"):
        model.zero_grad()
        torch.manual_seed(0)
        loss = rald_loss(TrainForward(model, compile=mode)(x, [8]), y, cfg.loss, cfg.model.scale)["loss"]
        loss.backward()
        grads[mode] = (loss.item(), model.backbone.conv1.weight.grad.clone(), model.head.weight.grad.clone())
    assert grads["aot_eager"][0] == pytest.approx(grads[False][0], rel=1e-5)
    for a, b in zip(grads["aot_eager"][1:], grads[False][1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not os.environ.get("RALD_FAST_SLOW_TESTS"),
                    reason="inductor builds ResNet18's forward and backward in C++: about 3 min on a "
                           "2-core CPU; set RALD_FAST_SLOW_TESTS=1 to run")
def test_compile_option_trains_with_inductor(tmp_path):
    summary = fit(make_config("tiny", "rald", out=str(tmp_path), epochs=1, compile=True, **TINY))
    assert math.isfinite(summary["final"]["train_loss"])
    assert "_orig_mod" not in "".join(load_checkpoint(tmp_path / "last.pt").model)
