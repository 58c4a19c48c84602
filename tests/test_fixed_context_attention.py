"""ITRR's batch-independent attention: each query over a fixed key set (the reference bank) plus its own key.

`kernels.attention_fixed_context` is held against `kernels.attention_ref` run one query at a time over
the explicit key set [bank keys; own key], and `AttentionBlock.forward_fixed_context` against the same
reference followed by the block's `finish`.
"""

from __future__ import annotations

import math

import pytest
import torch

from rald_fast import kernels
from rald_fast.models.blocks import AttentionBlock

SCALE = 0.125
def explicit_reference(q, k, v, scale, bank_k=None, bank_v=None):
    """attention_ref of each query i over the keys [bank_k; k_i] and values [bank_v; v_i]."""
    rows = []
    for i in range(q.shape[1]):
        keys, vals = k[:, i:i + 1], v[:, i:i + 1]
        if bank_k is not None:
            keys, vals = torch.cat([bank_k, keys], 1), torch.cat([bank_v, vals], 1)
        rows.append(kernels.attention_ref(q[:, i:i + 1], keys, vals, scale))
    return torch.cat(rows, 1)


def _inputs(m: int, dtype=torch.float64, h: int = 2, n: int = 5, d: int = 4, dv: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 3).to(dtype)  # * 3: peaked softmax

    q, k, v = r(h, n, d), r(h, n, d), r(h, n, dv)
    bank_k, bank_v = (r(h, m, d), r(h, m, dv)) if m is not None else (None, None)
    return q, k, v, bank_k, bank_v


def test_hand_computed_single_query():
    # logits [ln 3 (bank), 0 (own)] -> softmax [3/4, 1/4] -> 3/4 * 8 + 1/4 * 4 = 7
    q, k, v = torch.tensor([[[1.0]]]), torch.tensor([[[0.0]]]), torch.tensor([[[4.0]]])
    bank_k, bank_v = torch.tensor([[[math.log(3.0)]]]), torch.tensor([[[8.0]]])
    out = kernels.attention_fixed_context(q, k, v, 1.0, bank_k, bank_v)
    assert out.shape == (1, 1, 1)
    assert out.item() == pytest.approx(7.0, abs=1e-5)


@pytest.mark.parametrize("bank", ["none", "empty"])
def test_no_bank_returns_v(bank):
    q, k, v, _, _ = _inputs(None)
    bank_k, bank_v = (None, None) if bank == "none" else (torch.zeros(2, 0, 4, dtype=q.dtype),
                                                          torch.zeros(2, 0, 3, dtype=q.dtype))
    out = kernels.attention_fixed_context(q, k, v, SCALE, bank_k, bank_v)
    assert torch.equal(out, v)
    torch.testing.assert_close(out, explicit_reference(q, k, v, SCALE), rtol=0, atol=1e-12)


def test_bank_matches_explicit_key_set_float64():
    """float64 in, float64 softmax: the reference to rounding (the softmax never drops below float32)."""
    for m in (1, 7):
        q, k, v, bank_k, bank_v = _inputs(m)
        out = kernels.attention_fixed_context(q, k, v, SCALE, bank_k, bank_v)
        assert out.dtype == torch.float64 and out.shape == v.shape
        torch.testing.assert_close(out, explicit_reference(q, k, v, SCALE, bank_k, bank_v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [1, 7])
def test_bank_matches_explicit_key_set(m):
    """The same comparison at float32 precision: inputs float32, reference float64 on the same numbers."""
    q, k, v, bank_k, bank_v = _inputs(m, torch.float32)
    out = kernels.attention_fixed_context(q, k, v, SCALE, bank_k, bank_v)
    assert out.dtype == torch.float32 and out.shape == (2, 5, 3)
    ref = explicit_reference(q.double(), k.double(), v.double(), SCALE, bank_k.double(), bank_v.double())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    # the bank matters: without it the answer is v
    assert (out - v).abs().max() > 0.1


def test_rows_are_independent():
    q, k, v, bank_k, bank_v = _inputs(7)
    out = kernels.attention_fixed_context(q, k, v, SCALE, bank_k, bank_v)
    perm = torch.tensor([3, 0, 4, 2, 1])
    permuted = kernels.attention_fixed_context(q[:, perm], k[:, perm], v[:, perm], SCALE, bank_k, bank_v)
    torch.testing.assert_close(permuted, out[:, perm], rtol=0, atol=1e-12)
    alone = kernels.attention_fixed_context(q[:, 2:3], k[:, 2:3], v[:, 2:3], SCALE, bank_k, bank_v)
    torch.testing.assert_close(alone, out[:, 2:3], rtol=0, atol=1e-12)
    # changing another image's key and value leaves row 0 alone
    k2, v2 = k.clone(), v.clone()
    k2[:, 1:], v2[:, 1:] = 100.0, -100.0
    other = kernels.attention_fixed_context(q, k2, v2, SCALE, bank_k, bank_v)
    torch.testing.assert_close(other[:, 0], out[:, 0], rtol=0, atol=1e-12)


def test_shape_errors():
    q, k, v, bank_k, bank_v = _inputs(7)
    bad = [
        (q, k[:, :4], v, None, None),                 # k has fewer rows than q
        (q, k[..., :3], v, None, None),               # key width differs from the query's
        (q, k, v[:, :4], None, None),                 # v has fewer rows than q
        (q, k, v[:1], None, None),                    # v has fewer heads
        (q, k, v, bank_k, None),                      # bank keys without values
        (q, k, v, bank_k, bank_v[:, :6]),             # bank keys and values differ in length
        (q, k, v, bank_k[:1], bank_v[:1]),            # bank has fewer heads
        (q, k, v, bank_k[..., :3], bank_v),           # bank key width differs from the query's
    ]
    for args in bad:
        with pytest.raises(ValueError, match="attention_fixed_context"):
            kernels.attention_fixed_context(args[0], args[1], args[2], SCALE, args[3], args[4])


def _block() -> AttentionBlock:
    torch.manual_seed(0)
    return AttentionBlock(dim=8, heads=2, scale=SCALE).double().eval()


def test_block_forward_fixed_context_with_bank():
    block = _block()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    bank_tokens = torch.randn(7, 8, generator=g, dtype=torch.float64)
    bank_k, bank_v = block.context_kv(bank_tokens)
    assert bank_k.shape == bank_v.shape == (2, 7, 4)
    with torch.no_grad():
        out = block.forward_fixed_context(x, bank_k, bank_v)
        q, k = block.project_qk(x, x)
        v = block.split_heads(block.w_v(x))
        expected = block.finish(explicit_reference(q, k, v, SCALE, bank_k, bank_v), x)
        # and as ordinary attention of each image over [bank tokens; itself]
        rows = torch.cat([block(x[i:i + 1], torch.cat([bank_tokens, x[i:i + 1]]), backend="reference")
                          for i in range(len(x))])
    assert out.shape == (5, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, rows, rtol=0, atol=1e-12)


def test_block_forward_fixed_context_without_bank_is_self_mode():
    block = _block()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        out = block.forward_fixed_context(x)
        expected = block.finish(block.split_heads(block.w_v(x)), x)
        alone = block.forward_fixed_context(x[1:2])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(alone, out[1:2], rtol=0, atol=1e-12)
