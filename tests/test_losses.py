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
    loss = nnldl_loss(logits, q, k, 1.0, LossConfig(k=1))
    # D = P of the single neighbour: D0 = P2, D1 = P0, D2 = P1
    d = p[[2, 0, 1]]
    expected = -(d * p.log()).sum() / (3 * 3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_hand_computed_weights_k2():
    rel = torch.tensor([[5.0, 1.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    q, k = qk_for_relation(rel)
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    logits = p.log().requires_grad_()
    loss = nnldl_loss(logits, q, k, 1.0, LossConfig(k=2))
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
    loss = nnldl_loss(logits, q, k, 0.125, LossConfig(k=2))
    loss.backward()
    assert q.grad is None and k.grad is None, "no gradient may reach the relation through D"
    # with stop-gradient, d loss / d logits = -(D - P * sum(D)) / (N C) = (P - D) / (N C)
    p = logits.detach().softmax(-1)
    from rald_fast.kernels import neighbour_targets_ref

    d, _, _ = neighbour_targets_ref(q.detach(), k.detach(), p, 2, 0.125)
    assert torch.allclose(logits.grad, (p - d) / (n * c), atol=1e-6)
    logits.grad = None
    loss = nnldl_loss(logits, q, k, 0.125, LossConfig(k=2, nnldl_grad=True))
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert not torch.allclose(logits.grad, (p - d) / (n * c), atol=1e-6)


def test_fewer_than_k_plus_one_images_uses_all_others():
    rel = torch.tensor([[3.0, 1.0], [0.0, 3.0]])
    q, k = qk_for_relation(rel)
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    loss = nnldl_loss(p.log(), q, k, 1.0, LossConfig(k=5))
    d = p[[1, 0]]   # the only other image, with weight 1
    assert loss.item() == pytest.approx((-(d * p.log()).sum() / 4).item(), rel=1e-6)


def test_single_image_has_no_neighbour():
    q, k = torch.randn(1, 1, 4), torch.randn(1, 1, 4)
    assert nnldl_loss(torch.randn(1, 3), q, k, 1.0, LossConfig()).item() == 0.0


def test_bank_is_fifo_newest_first_and_capped():
    from rald_fast.models import NeighbourBank

    bank = NeighbourBank(3)
    bank.push(torch.zeros(2, 2, 4), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    bank.push(torch.ones(2, 2, 4), torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    assert len(bank) == 3 and bank.keys.shape == (2, 3, 4)
    assert torch.equal(bank.preds, torch.tensor([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]]))
    assert torch.equal(bank.keys[:, 2], torch.zeros(2, 4))


def test_bank_supplies_neighbours_to_a_single_image():
    from rald_fast.models import NeighbourBank

    bank = NeighbourBank(4)
    # bank keys e0, e1; the query relates more to e1
    bank.push(torch.eye(2).unsqueeze(0), torch.tensor([[0.9, 0.1], [0.3, 0.7]]))
    q, k = torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[5.0, 5.0]]])  # own key: self, excluded
    p = torch.tensor([[0.6, 0.4]])
    loss = nnldl_loss(p.log(), q, k, 1.0, LossConfig(k=1), bank)
    d = torch.tensor([[0.3, 0.7]])
    assert loss.item() == pytest.approx((-(d * p.log()).sum() / 2).item(), rel=1e-6)
    assert len(bank) == 3 and torch.allclose(bank.preds[0], p[0])   # the batch was pushed
