"""NNLDL (eqs. 18-19) on cases small enough to compute by hand."""

import math

import pytest
import torch

from rald_fast.config import LossConfig
from rald_fast.models import nnldl_loss


def qk_for_relation(rel_logits: torch.Tensor):
    """One head of width N whose scaled logits q k^T equal `rel_logits` (scale 1): q = rel, k = I."""
    n = rel_logits.shape[0]
    return rel_logits.unsqueeze(0), torch.eye(n).unsqueeze(0)


def test_hand_computed_three_images_k1():
    # relation logits: image 0 is closest to 2, image 1 to 0, image 2 to 1 (self logits are large:
    # they count in the softmax normaliser but an image is never its own neighbour)
    rel = torch.tensor([[9.0, 0.0, 2.0], [3.0, 9.0, 1.0], [0.0, 4.0, 9.0]])
    q, k = qk_for_relation(rel)
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    logits = p.log().requires_grad_()
    loss = nnldl_loss(logits, q, k, 1.0, LossConfig(k=1))[0]
    # D = P of the single neighbour: D0 = P2, D1 = P0, D2 = P1
    d = p[[2, 0, 1]]
    expected = -(d * p.log()).sum() / (3 * 3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_hand_computed_weights_k2():
    rel = torch.tensor([[5.0, 1.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    q, k = qk_for_relation(rel)
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    logits = p.log().requires_grad_()
    loss = nnldl_loss(logits, q, k, 1.0, LossConfig(k=2))[0]
    # row 0: softmax over [5, 1, 0] -> weights of 1 and 2 are e^1 : e^0 after renormalising
    w = torch.tensor([math.e, 1.0]) / (math.e + 1)
    d0 = w[0] * p[1] + w[1] * p[2]
    d1 = 0.5 * p[0] + 0.5 * p[2]   # equal relation to 0 and 2
    d2 = 0.5 * p[0] + 0.5 * p[1]
    d = torch.stack([d0, d1, d2])
    expected = -(d * p.log()).sum() / (3 * 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_stop_gradient_and_gradient_option():
    torch.manual_seed(1)
    n, c = 5, 4
    q, k = torch.randn(2, n, 8, requires_grad=True), torch.randn(2, n, 8, requires_grad=True)
    logits = torch.randn(n, c, requires_grad=True)
    loss = nnldl_loss(logits, q, k, 0.125, LossConfig(k=2))[0]
    loss.backward()
    assert q.grad is None and k.grad is None, "no gradient may reach the relation through D"
    # with stop-gradient, d loss / d logits = -(D - P * sum(D)) / (N C) = (P - D) / (N C)
    p = logits.detach().softmax(-1)
    from rald_fast.kernels import neighbour_targets_ref

    d, _, _ = neighbour_targets_ref(q.detach(), k.detach(), p, 2, 0.125)
    assert torch.allclose(logits.grad, (p - d) / (n * c), atol=1e-6)
    logits.grad = None
    loss = nnldl_loss(logits, q, k, 0.125, LossConfig(k=2, nnldl_grad=True))[0]
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert not torch.allclose(logits.grad, (p - d) / (n * c), atol=1e-6)


def test_fewer_than_k_plus_one_images_uses_all_others():
    rel = torch.tensor([[3.0, 1.0], [0.0, 3.0]])
    q, k = qk_for_relation(rel)
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    loss = nnldl_loss(p.log(), q, k, 1.0, LossConfig(k=5))[0]
    d = p[[1, 0]]   # the only other image, with weight 1
    assert loss.item() == pytest.approx((-(d * p.log()).sum() / 4).item(), rel=1e-6)


def test_single_image_has_no_neighbour():
    q, k = torch.randn(1, 1, 4), torch.randn(1, 1, 4)
    assert nnldl_loss(torch.randn(1, 3), q, k, 1.0, LossConfig())[0].item() == 0.0


def test_bank_is_fifo_newest_first_and_capped():
    from rald_fast.models import NeighbourMemory

    bank = NeighbourMemory(3)
    bank.push(torch.zeros(2, 2, 4), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    bank.push(torch.ones(2, 2, 4), torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    assert len(bank) == 3 and bank.keys.shape == (2, 3, 4)
    assert torch.equal(bank.preds, torch.tensor([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]]))
    assert torch.equal(bank.keys[:, 2], torch.zeros(2, 4))


def test_bank_supplies_neighbours_to_a_single_image():
    from rald_fast.models import NeighbourMemory

    bank = NeighbourMemory(4)
    # bank keys e0, e1; the query relates more to e1
    bank.push(torch.eye(2).unsqueeze(0), torch.tensor([[0.9, 0.1], [0.3, 0.7]]))
    q, k = torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[5.0, 5.0]]])  # own key: self, excluded
    p = torch.tensor([[0.6, 0.4]])
    loss = nnldl_loss(p.log(), q, k, 1.0, LossConfig(k=1), bank)[0]
    d = torch.tensor([[0.3, 0.7]])
    assert loss.item() == pytest.approx((-(d * p.log()).sum() / 2).item(), rel=1e-6)
    assert len(bank) == 3 and torch.allclose(bank.preds[0], p[0])   # the batch was pushed


def test_relations_rank_like_their_definition():
    """relation_qk: each reading is one head-averaged softmax of scale * q k^T."""
    from rald_fast.models.losses import relation_qk

    torch.manual_seed(0)
    q, k = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    f, ft = torch.randn(6, 8), torch.randn(6, 8)
    out = {"itrr_q": q, "itrr_k": k, "backbone_features": f, "itrr_features": ft}
    assert relation_qk(out, "attention", 0.125, 0.1) == (q, k, 0.125)
    qs, ks, s = relation_qk(out, "symmetric", 0.125, 0.1)
    logits = s * qs @ ks.transpose(1, 2)
    assert torch.allclose(logits, logits.transpose(1, 2), atol=1e-6)            # symmetric
    assert torch.allclose(logits, 0.0625 * (q @ k.transpose(1, 2) + k @ q.transpose(1, 2)), atol=1e-6)
    for name, feats in (("cosine-f", f), ("cosine-ftilde", ft)):
        qc, kc, s = relation_qk(out, name, 0.125, 0.1)
        unit = feats / feats.norm(dim=1, keepdim=True)
        assert s == pytest.approx(10.0) and qc.shape == (1, 6, 8)
        assert torch.allclose(qc[0] @ kc[0].T, unit @ unit.T, atol=1e-6)


def test_neighbour_stats_by_hand():
    from rald_fast.models.losses import neighbour_stats

    labels = torch.tensor([0, 0, 1, 2])          # fine labels; coarse: 0, 1 -> 0 and 2 -> 1
    coarse_of = torch.tensor([0, 0, 1])
    idx = torch.tensor([[1], [2], [0], [0]])     # neighbour of each image
    s = neighbour_stats(idx, labels, labels, coarse_of)
    assert s["nn_purity_fine"].item() == pytest.approx(1 / 4)             # only image 0 -> 1
    assert s["nn_chance_fine"].item() == pytest.approx((1 / 3 + 1 / 3 + 0 + 0) / 4)
    assert s["nn_purity_coarse"].item() == pytest.approx(3 / 4)           # 0->1, 1->2, 2->0 share coarse 0
    assert s["nn_chance_coarse"].item() == pytest.approx((2 / 3 + 2 / 3 + 2 / 3 + 0) / 4)


def test_warmup_leaves_l_kl_out_but_reports_neighbours():
    from rald_fast.config import make_config
    from rald_fast.hierarchy import fg_emotions
    from rald_fast.models import build_model, rald_loss

    cfg = make_config("tiny", "rald")
    model = build_model(cfg, fg_emotions())
    out = model(torch.randn(6, 3, 32, 32))
    labels, coarse_of = torch.arange(6), torch.as_tensor(fg_emotions().coarse_of_fine())
    warm = rald_loss(out, labels, cfg.loss, 0.125, use_nnldl=False, coarse_of=coarse_of)
    full = rald_loss(out, labels, cfg.loss, 0.125, coarse_of=coarse_of)
    assert "kl" not in warm and warm["loss"].item() == pytest.approx(warm["ce"].item())
    assert full["loss"].item() == pytest.approx((full["ce"] + full["kl"]).item(), rel=1e-6)
    for parts in (warm, full):
        assert {"nn_purity_fine", "nn_chance_fine", "nn_purity_coarse", "itrr_entropy"} <= set(parts)
        assert 0.0 <= parts["itrr_entropy"].item() <= 1.0 + 1e-6
