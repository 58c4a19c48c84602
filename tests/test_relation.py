"""ITRR's relation R_v (SPEC 3.1): each switch that makes it learn, and the fair parameter groups.

- a tied init gives a symmetric relation at step 0;
- RelationNorm removes the per-key effect (a key scored alike by every query);
- the temperature is learnable, capped and takes no weight decay;
- L_KL's gradient reaches W_Q through the neighbour weights r and not through the neighbours'
  predictions (`--nnldl-relation-grad`); eq. (19)'s two normalisers;
- folding keeps the outputs with every switch on (exports: tests/conftest.py trains the shared
  checkpoint with them on);
- the backbone and the fine head train at the same rate in RALD and in the bare ResNet18.
"""

import math

import pytest
import torch

from rald_fast.config import make_config
from rald_fast.hierarchy import fg_emotions
from rald_fast.models import build_model, nnldl_loss, rald_loss
from rald_fast.models.blocks import AttentionBlock, RelationNorm
from rald_fast.models.folded import fold
from rald_fast.preprocess import Preprocess

TAX = fg_emotions()
LEARNING = dict(itrr_qk_norm=True, itrr_tied_init=True, itrr_temperature_cap=10.0)


def post_relu_features(n=32, d=512, seed=0):
    """Features like a ResNet's pooled output: non-negative with a large shared mean."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + 1.0).relu()


def relation_logits(block, x):
    q, k = block.project_qk(x, x)
    return block.scale * q @ k.transpose(1, 2)                     # (h, N, N)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_tied_init_gives_a_symmetric_relation_at_step_0(qk_norm):
    torch.manual_seed(0)
    block = AttentionBlock(512, 8, 0.125, tie_qk_init=True, qk_norm=qk_norm, temperature_cap=10.0)
    assert torch.equal(block.w_q.weight, block.w_k.weight)
    r = relation_logits(block, post_relu_features())
    torch.testing.assert_close(r, r.transpose(1, 2), atol=1e-5, rtol=1e-5)
    untied = relation_logits(AttentionBlock(512, 8, 0.125, qk_norm=qk_norm), post_relu_features())
    assert (untied - untied.transpose(1, 2)).abs().max() > 0.1


def per_key_share(r):
    """Share of the logit variance across keys that is a per-key effect shared by every query."""
    r = r.detach()
    off = ~torch.eye(r.shape[-1], dtype=torch.bool)
    r = r.masked_fill(~off, float("nan"))
    key_effect = r.nanmean(1, keepdim=True)                          # (h, 1, N): mean over queries
    centred = r - r.nanmean(2, keepdim=True)                         # per-query centring
    shared = (key_effect - key_effect.nanmean(2, keepdim=True)).expand_as(r)
    return float(torch.nansum(shared[:, off] ** 2) / torch.nansum(centred[:, off] ** 2))


def test_relation_norm_removes_the_per_key_effect():
    torch.manual_seed(0)
    x = post_relu_features(64)
    plain = AttentionBlock(512, 8, 0.125, tie_qk_init=True).train()
    normed = AttentionBlock(512, 8, 0.125, tie_qk_init=True, qk_norm=True).train()
    normed.load_state_dict(plain.state_dict(), strict=False)
    # the key's mean logit over all queries (self included) is exactly zero once the batch is centred
    r = relation_logits(normed, x)
    assert r.mean(1).abs().max() < 1e-4
    assert per_key_share(relation_logits(plain, x)) > 0.3
    assert per_key_share(r) < 0.1


def test_relation_norm_uses_running_statistics_at_inference_and_survives_a_batch_of_one():
    norm = RelationNorm(8).train()
    x = torch.randn(16, 8) * 3 + 5
    norm(x)
    before = norm.running_mean.clone()
    one = norm(x[:1])                                                # training batch of one: no stats
    assert torch.equal(norm.running_mean, before) and torch.isfinite(one).all()
    norm.eval()
    scale, shift = norm.as_affine()
    torch.testing.assert_close(norm(x), x * scale + shift)
    # at inference a row does not depend on its batch-mates
    torch.testing.assert_close(norm(x[:3])[0], norm(x)[0])


def test_temperature_is_learnable_capped_and_not_decayed():
    model = build_model(make_config("tiny", "rald", **LEARNING), TAX)
    block = model.itrr
    assert block.temperature().item() == pytest.approx(1.0)
    with torch.no_grad():
        block.log_temperature.fill_(5.0)                            # e^5 > cap 10
    assert block.temperature().item() == pytest.approx(10.0)
    relation_logits(block, post_relu_features(8)).sum().backward()
    assert block.log_temperature.grad == 0                          # capped: no push beyond
    groups = {g["name"]: g for g in model.param_groups(0.05, 0.1, 1.0)}
    assert groups["temperature"]["params"] == [block.log_temperature]
    assert groups["temperature"]["weight_decay"] == 0.0 and groups["temperature"]["lr"] == 0.05
    with pytest.raises(ValueError, match="--itrr-temperature-cap"):
        make_config("tiny", "rald", itrr_temperature_cap=0.5)


def _kl_grads(relation_grad: bool):
    """d L_KL / d W_Q and d L_KL / d logits, with logits a leaf independent of W_Q."""
    torch.manual_seed(0)
    block = AttentionBlock(64, 4, 0.125, qk_norm=True, tie_qk_init=True)
    cfg = make_config("tiny", "rald", nnldl_relation_grad=relation_grad).loss
    x = post_relu_features(12, 64)
    q, k = block.project_qk(x, x)
    logits = torch.randn(12, 33, generator=torch.Generator().manual_seed(1), requires_grad=True)
    kl, _, _ = nnldl_loss(logits, q, k, 0.125, cfg)
    kl.backward()
    return block.w_q.weight.grad, logits.grad


def test_kl_gradient_reaches_the_relation_through_r_only():
    wq_stop, logits_stop = _kl_grads(False)
    wq_rel, logits_rel = _kl_grads(True)
    assert wq_stop is None                                          # the printed target: no signal
    assert wq_rel is not None and wq_rel.norm() > 0                 # through the weights r
    # the neighbours' predictions stay a target: d/d logits is the stop-gradient one exactly
    torch.testing.assert_close(logits_rel, logits_stop, atol=0, rtol=0)
    with pytest.raises(ValueError, match="--nnldl-relation-grad"):
        make_config("tiny", "rald", nnldl_grad=True, nnldl_relation_grad=True)


def test_eq19_normalisers():
    torch.manual_seed(0)
    q, k = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    logits = torch.randn(10, 33)
    printed = nnldl_loss(logits, q, k, 0.125, make_config("tiny", "rald").loss)[0]
    image = nnldl_loss(logits, q, k, 0.125, make_config("tiny", "rald", nnldl_normaliser="image").loss)[0]
    torch.testing.assert_close(image, 33 * printed)
    with pytest.raises(ValueError, match="--nnldl-normaliser"):
        make_config("tiny", "rald", nnldl_normaliser="batch")


def trained_steps(cfg, steps=3):
    """`cfg`'s model after a few SGD steps on random images (running statistics and temperature move)."""
    torch.manual_seed(0)
    model = build_model(cfg, TAX)
    opt = torch.optim.SGD(model.param_groups(0.05, 0.1, 1.0), lr=0.05)
    for i in range(steps):
        x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(i))
        parts = rald_loss(model(x), torch.randint(0, 33, (16,)), cfg.loss, cfg.model.scale)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("switch", ["itrr_qk_norm", "itrr_tied_init", "itrr_temperature_cap", "all"])
@pytest.mark.parametrize("mode", ["batch", "bank", "self"])
def test_folding_keeps_the_outputs_with_each_switch_on(switch, mode):
    on = LEARNING if switch == "all" else {switch: LEARNING[switch]}
    cfg = make_config("tiny", "rald", dropout=0.0, nnldl_relation_grad=True, **on)
    model = trained_steps(cfg)
    if model.itrr.log_temperature is not None:
        with torch.no_grad():
            model.itrr.log_temperature.fill_(math.log(3.0))
    pre = Preprocess(32)
    with torch.no_grad():
        model.set_reference_bank(model.backbone_features(torch.randn(9, 3, 32, 32)))
        x = torch.randint(0, 256, (6, 3, 32, 32)).float()
        want = model.head_outputs(model.backbone_features(pre.normalize(x)), itrr_mode=mode)["logits"]
        folded = fold(model, pre, mode)
        got = folded(x)[0]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert not any(isinstance(m, RelationNorm) for m in folded.modules())
    assert hasattr(folded.itrr, "w_q") == (mode != "self")          # `self` needs no Q, K


def test_shared_parameters_train_alike_in_rald_and_resnet18():
    rald = build_model(make_config("tiny", "rald", **LEARNING), TAX)
    base = build_model(make_config("tiny", "a"), TAX)
    groups = {g["name"]: g for g in rald.param_groups(0.05, 0.1, 1.0)}
    names = {id(p): n for n, p in rald.named_parameters()}
    shared = {names[id(p)] for p in groups["shared"]["params"]}
    assert shared == {n for n, _ in base.named_parameters()}        # backbone + fine head, nothing else
    assert groups["shared"]["lr"] == 0.05 and groups["added"]["lr"] == pytest.approx(0.005)
    assert {names[id(p)] for p in groups["relation"]["params"]} == {"itrr.w_q.weight", "itrr.w_k.weight"}
    (only,) = base.param_groups(0.05, 0.1, 1.0)
    assert only["name"] == "shared" and only["lr"] == 0.05
    every = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in rald.parameters())  # each parameter exactly once
    printed = {g["name"]: g for g in build_model(make_config("tiny", "rald"), TAX).param_groups(0.05, 0.1)}
    assert printed["relation"]["lr"] == pytest.approx(0.005)        # -1: as --attn-lr-mult


def test_a_config_saved_before_the_relation_options_loads_as_it_trained():
    from rald_fast.config import SAVED_BEFORE, Config

    saved = make_config("tiny", "rald", **LEARNING).to_dict()
    for section in ("model", "loss", "optim"):
        for key in SAVED_BEFORE:
            saved[section].pop(key, None)
    cfg = Config.from_dict(saved)
    assert not cfg.model.itrr_qk_norm and cfg.model.itrr_temperature_cap == 0 and not cfg.model.itrr_tied_init
    assert cfg.loss.nnldl_normaliser == "printed" and cfg.optim.relation_lr_mult == -1
    assert Config.from_dict(make_config("tiny", "rald", **LEARNING).to_dict()).model.itrr_qk_norm  # saved: kept
