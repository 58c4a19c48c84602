"""The fast inference path (rald_fast/models/fast.py) answers as the plain folded model does.

uint8 NHWC / NCHW input with the normalisation folded into conv1 (exact at the zero-padded border),
channels_last, ITRR's `self` mode as one linear map, bf16 / fp16 within their rounding, and the
Predictor's checkpoint path (the same engine) against the folded module. CUDA-graph replay runs only
on a GPU (bench/gpu_headline.py checks it there).
"""

import pytest
import torch

from rald_fast.models.fast import FastEngine, SelfModeITRR, fast_module
from rald_fast.models.folded import fold
from test_folding import PRE, images, trained_like, with_bank


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@pytest.mark.parametrize("variant", ["rald", "a", "g"])
@pytest.mark.parametrize("mode", ["self", "bank", "batch"])
def test_fast_module_gives_the_folded_models_outputs(variant, mode):
    folded = fold(with_bank(trained_like(variant)), PRE, mode)
    x = images(6)
    with torch.no_grad():
        want_logits, want = folded(x)
        logits, got = fast_module(folded, "fp32")(nhwc(x))
        _, got_nchw = fast_module(folded, "fp32", layout="nchw")(x.to(torch.uint8))
    torch.testing.assert_close(logits, want_logits, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(got_nchw, want, atol=1e-6, rtol=1e-4)
    assert got.dtype == torch.float32


def test_normalisation_folding_is_exact_at_the_border():
    """A uniform mean-colour image: the folded conv1 must see zeros everywhere, padding included."""
    folded = fold(trained_like("a"), PRE, "self")
    fast = fast_module(folded, "fp32")
    mean = (255 * folded.pixel_mean.reshape(3)).round()
    x = mean.reshape(1, 3, 1, 1).expand(2, 3, 32, 32).clone()
    x[1, :, :4, :] = 0  # an edge that differs from the mean colour
    with torch.no_grad():
        torch.testing.assert_close(fast(nhwc(x))[0], folded(x)[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype,atol", [("bf16", 2e-2), ("fp16", 5e-3)])  # probabilities; bf16 has 8 bits
def test_half_precisions_stay_within_their_rounding(dtype, atol):
    folded = fold(trained_like("rald"), PRE, "self")
    x = images(8)
    with torch.no_grad():
        want = folded(x)[1]
        got = fast_module(folded, dtype)(nhwc(x))[1]
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < atol
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.75


def test_self_mode_itrr_is_one_linear_map_without_q_k():
    fast = fast_module(fold(trained_like("rald"), PRE, "self"), "fp32")
    assert isinstance(fast.itrr, SelfModeITRR)
    assert not any(n.startswith("itrr.w_") for n, _ in fast.named_parameters())
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_engine_on_cpu_is_the_module_and_the_predictor_uses_it(exported_artifacts):
    from rald_fast.models import load_model
    from rald_fast.predict import Predictor

    loaded = load_model(exported_artifacts["ckpt"])
    folded = fold(loaded.model, loaded.preprocess)
    x = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    engine = FastEngine(fast_module(folded), "cpu")
    predictor = Predictor.load(exported_artifacts["ckpt"], device="cpu")
    assert isinstance(predictor._run, FastEngine) and not engine.use_graphs
    with torch.no_grad():
        want = folded(x.permute(0, 3, 1, 2).float())[1]
    torch.testing.assert_close(engine(x), want, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(predictor.predict(x.numpy()).probs), want, atol=1e-6, rtol=1e-4)
    bf16 = Predictor.load(exported_artifacts["ckpt"], device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and (torch.from_numpy(bf16.predict(x.numpy()).probs) - want).abs().max() < 2e-2
