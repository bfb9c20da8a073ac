"""The blocked row log-sum-exp (RLMRec-Con's InfoNCE denominators) against the direct form."""

from __future__ import annotations

import pytest
import torch

from recalign.align.row_logsumexp import row_logsumexp_sum


def _direct(a, b, scale, bias=None, weight=None):
    logits = scale * a @ b.T + (0 if bias is None else bias)
    lse = torch.logsumexp(logits, dim=1)
    return (lse * weight).sum() if weight is not None else lse.sum()


@pytest.mark.parametrize("block", [1, 7, 40, 1 << 20])  # 1 row per block ... everything at once
def test_value_and_gradients_match_direct(block: int) -> None:
    g = torch.Generator().manual_seed(block)
    a = torch.randn(13, 5, generator=g, requires_grad=True)
    b = torch.randn(6, 5, generator=g, requires_grad=True)
    bias = torch.log(torch.tensor([1.0, 2, 1, 3, 1, 1]))
    weight = torch.tensor([1.0, 2, 1, 1, 4, 1, 1, 1, 2, 1, 1, 1, 3])
    for kw in ({}, {"bias": bias}, {"weight": weight}, {"bias": bias, "weight": weight}):
        ref = _direct(a, b, 2.5, **kw)
        ga, gb = torch.autograd.grad(ref, (a, b))
        got = row_logsumexp_sum(a, b, 2.5, block_elements=block, **kw)
        ha, hb = torch.autograd.grad(got, (a, b))
        assert float(got) == pytest.approx(float(ref), rel=1e-5)
        torch.testing.assert_close(ha, ga, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(hb, gb, rtol=1e-4, atol=1e-5)


def test_gradcheck_and_partial_gradients() -> None:
    a = torch.randn(9, 4, dtype=torch.double, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    bias = torch.randn(5, dtype=torch.double)
    weight = torch.rand(9, dtype=torch.double) + 0.5
    assert torch.autograd.gradcheck(
        lambda x, y: row_logsumexp_sum(x, y, 1.7, bias, weight, block_elements=10), (a, b))
    # candidates without gradient (fixed vectors): only the rows get one, the same as direct
    fixed = b.detach()
    (ga,) = torch.autograd.grad(row_logsumexp_sum(a, fixed, 1.7, block_elements=10), (a,))
    (want,) = torch.autograd.grad(_direct(a, fixed, 1.7), (a,))
    torch.testing.assert_close(ga, want)
    # large logits do not overflow (log-sum-exp is shifted per row)
    big = row_logsumexp_sum(a.detach() * 100, b.detach(), 10.0, block_elements=10)
    assert torch.isfinite(big)
    assert float(big) == pytest.approx(float(_direct(a.detach() * 100, b.detach(), 10.0)))


def test_empty_rows_give_zero() -> None:
    assert float(row_logsumexp_sum(torch.zeros(0, 3), torch.randn(4, 3), 1.0)) == 0.0
