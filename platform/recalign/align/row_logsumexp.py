"""Weighted sum of row-wise log-sum-exp of ``scale * a @ b.T (+ bias)``, in row blocks.

InfoNCE denominators against a large candidate set (RLMRec-Con's user term takes every user's
projected vector as a candidate) make a rows x candidates logit matrix: 4,096 batch users x 1M
users is 16 GB in fp32 before autograd keeps its softmax for the backward. Here the forward
keeps only one row-block of logits at a time and each row's log-sum-exp; the backward
recomputes each block's logits and turns them into softmax weights in place. Memory is
O(block + rows + candidates); the product is computed twice. Written by hand because neither
torch nor a well-kept library offers a blocked log-sum-exp with this backward on CPU and GPU.
"""

from __future__ import annotations

from typing import Any

import torch

#: logits per block (4 MB in fp32): large enough for efficient products, small enough for cache
BLOCK_ELEMENTS = 1 << 20


def row_logsumexp_sum(a: torch.Tensor, b: torch.Tensor, scale: float,
                      bias: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                      block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """``sum_r weight_r * logsumexp_c(scale * a_r . b_c + bias_c)``; no gradient to bias/weight.

    ``a``: rows x d, ``b``: candidates x d, ``bias``: per candidate (e.g. log multiplicity of a
    deduplicated candidate), ``weight``: per row (e.g. multiplicity of a deduplicated row)."""
    if a.shape[0] == 0:
        return a.new_zeros(())
    rows = max(1, int(block_elements) // max(1, b.shape[0]))
    bias = None if bias is None else bias.detach().to(a.dtype)
    weight = None if weight is None else weight.detach().to(a.dtype)
    return _RowLogSumExp.apply(a, b, float(scale), bias, weight, rows)


def _logits(a: torch.Tensor, b: torch.Tensor, scale: float, bias: torch.Tensor | None,
            buf: torch.Tensor) -> torch.Tensor:
    # into one buffer per call: a fresh block per product costs page faults on CPU
    out = torch.mm(a, b.T, out=buf[: a.shape[0]]).mul_(scale)
    return out.add_(bias) if bias is not None else out


class _RowLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, scale: float,
                bias: torch.Tensor | None, weight: torch.Tensor | None,
                rows: int) -> torch.Tensor:
        lse = a.new_empty(a.shape[0])
        buf = a.new_empty(min(rows, a.shape[0]), b.shape[0])
        for s in range(0, a.shape[0], rows):
            lse[s:s + rows] = torch.logsumexp(_logits(a[s:s + rows], b, scale, bias, buf), dim=1)
        ctx.save_for_backward(a, b, bias, weight, lse)
        ctx.scale, ctx.rows = scale, rows
        return (lse * weight).sum() if weight is not None else lse.sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b, bias, weight, lse = ctx.saved_tensors
        scale, rows = ctx.scale, ctx.rows
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ga = torch.empty_like(a) if need_a else None
        gb = torch.zeros_like(b) if need_b else None
        buf = a.new_empty(min(rows, a.shape[0]), b.shape[0])
        for s in range(0, a.shape[0], rows):
            blk = a[s:s + rows]
            # d lse_r / d logit_rc = softmax_rc; times the row's weight and the chain's scale
            p = _logits(blk, b, scale, bias, buf).sub_(lse[s:s + rows, None]).exp_()
            coef = grad * scale
            p.mul_(coef * weight[s:s + rows, None] if weight is not None else coef)
            if ga is not None:
                ga[s:s + rows] = p @ b
            if gb is not None:
                gb.addmm_(p.T, blk)
        return ga, gb, None, None, None, None
