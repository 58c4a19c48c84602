"""The model reads like the paper: shapes, equivariance, the bias lookup, LGIFO's values, variants."""

import pytest
import torch

from rald_fast.config import VARIANTS, make_config
from rald_fast.hierarchy import fg_emotions, load_taxonomy
from rald_fast.kernels.testing import assert_close
from rald_fast.models import build_model, rald_loss

TAX = fg_emotions()


def has_module(model, name: str) -> bool:
    """Which of itrr / hlrr / lgifo / hierarchy_bias this model instance really has."""
    if name == "hierarchy_bias":
        return getattr(model, "bias_table", None) is not None
    return getattr(model, name, None) is not None


def tiny_model(variant="rald", taxonomy=TAX, **kw):
    cfg = make_config("tiny", variant, dropout=0.0, **kw)
    return build_model(cfg, taxonomy), cfg


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_runs_and_has_its_modules(variant):
    taxonomy = load_taxonomy("basic7") if variant == "rald-l" else TAX
    model, cfg = tiny_model(variant, taxonomy)
    want = VARIANTS[variant]
    for name in ("itrr", "hlrr", "lgifo"):
        assert has_module(model, name) == want[name], name
    assert has_module(model, "hierarchy_bias") == (want["hlrr"] and variant != "rald-l")
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, taxonomy.num_fine, (6,))
    out = model(x)
    assert out["logits"].shape == (6, taxonomy.num_fine)
    parts = rald_loss(out, y, cfg.loss, cfg.model.scale)
    assert ("kl" in parts) == want["nnldl"]
    assert torch.isfinite(parts["loss"])
    parts["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_itrr_is_permutation_equivariant():
    model, _ = tiny_model("g")
    model.eval()
    feats = torch.randn(9, 512)
    perm = torch.randperm(9)
    with torch.no_grad():
        a = model.head_outputs(feats)["logits"]
        b = model.head_outputs(feats[perm])["logits"]
    assert_close(b, a[perm], atol=1e-5, rtol=1e-5, name="permuted logits")
    # and the batch does matter: drop one image and the others change (the paper's batch mode)
    with torch.no_grad():
        c = model.head_outputs(feats[:8])["logits"]
    assert not torch.allclose(c, a[:8], atol=1e-4)


def test_hlrr_bias_is_looked_up_from_xi():
    model, cfg = tiny_model("rald")
    xi = model.xi
    assert torch.equal(xi, torch.from_numpy(TAX.xi(cfg.model.sigma)))
    table = model.bias_table
    assert table.shape == (cfg.model.heads, cfg.model.sigma + 1)
    assert (table[:, 1:] < table[:, :-1]).all(), "initialised decreasing in xi"
    # the label tokens change when (and only when) a used entry of the table changes
    with torch.no_grad():
        base = model.label_tokens().clone()
        table[:, 7] += 5.0  # xi never takes the value 7 in FG-Emotions
        assert torch.equal(model.label_tokens(), base)
        table[:, 2] += 5.0  # siblings
        assert not torch.allclose(model.label_tokens(), base)
    model.label_tokens().sum().backward()
    used = torch.zeros(cfg.model.sigma + 1, dtype=torch.bool)
    used[xi.unique()] = True
    assert (table.grad[:, ~used] == 0).all() and (table.grad[:, used] != 0).any()


@pytest.mark.parametrize("residual", [True, False])
def test_hlrr_attention_equals_manual_biased_softmax(residual):
    model, cfg = tiny_model("rald", input_residual=residual)
    blk = model.hlrr
    with torch.no_grad():
        h = model.label_proj(model.label_vectors)                         # (C, D)
        q, k = blk.project_qk(h, h)
        v = blk.split_heads(blk.w_v(h))
        logits = cfg.model.scale * q @ k.transpose(1, 2) + model.bias_table[:, model.xi]
        attn = logits.softmax(-1) @ v                                      # eq. (10)
        m = blk.w_msa(attn.transpose(0, 1).reshape(h.shape[0], -1))
        m = m + h if residual else m                                       # paper: no residual
        expected = blk.norm(m + blk.ffn(m))                                # eq. (12)
        assert_close(model.label_tokens(), expected, atol=1e-5, rtol=1e-5, name="S~")


@pytest.mark.parametrize("residual", [True, False])
def test_lgifo_values_are_label_tokens_unprojected(residual):
    model, cfg = tiny_model("rald", input_residual=residual)
    blk = model.lgifo
    assert isinstance(blk.w_v, torch.nn.Identity)                         # eq. (13): V~_s = S~
    model.eval()
    with torch.no_grad():
        s = model.label_tokens()
        x = torch.randn(4, 512)
        q, k = blk.project_qk(x, s)
        attn = (cfg.model.scale * q @ k.transpose(1, 2)).softmax(-1)      # (h, N, C)
        vals = s.view(s.shape[0], cfg.model.heads, -1).transpose(0, 1)    # S~ split by head
        m = blk.w_msa((attn @ vals).transpose(0, 1).reshape(4, -1))
        m = m + x if residual else m
        assert_close(blk(x, s), blk.norm(m + blk.ffn(m)), atol=1e-5, rtol=1e-5, name="F^")


def test_label_branch_does_not_depend_on_images():
    model, _ = tiny_model("rald")
    model.eval()
    with torch.no_grad():
        s = model.label_tokens()
        a = model(torch.randn(3, 3, 32, 32))["logits"]
        b = model.head_outputs(model.backbone_features(torch.zeros(3, 3, 32, 32)), s)
        assert b["logits"].shape == a.shape


def test_rald_l_has_no_bias_on_flat_labels():
    model, _ = tiny_model("rald-l", load_taxonomy("basic7"))
    assert has_module(model, "hlrr") and not has_module(model, "hierarchy_bias")
    assert model.label_vectors.shape[0] == 7


def test_training_steps_reduce_the_loss():
    model, cfg = tiny_model("rald")
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 33, (12,))
    losses = []
    for _ in range(8):
        parts = rald_loss(model(x), y, cfg.loss, cfg.model.scale)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses
