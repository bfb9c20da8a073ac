"""Losses shared by the CF backbones: BPR, L2 over parameters, InfoNCE, log-sum-exp contrast.

One definition each, reused by LightGCN's relatives (GCCF, SGL, SimGCL), DCCF and AutoCF, so a
backbone never carries its own copy. Conventions follow the RLMRec/SSLRec reference
(``models/loss_utils.py``), restated:

* :func:`info_nce` — cosine similarities (rows L2-normalised with ``sqrt(1e-8 + ||x||²)``) over a
  temperature; the positive of row ``b`` of the first view is row ``b`` of the second view, the
  candidates are the rows of ``candidates`` (which should contain the positives). Returns the
  **sum** over rows; callers divide by their batch size as the reference does. Computed with
  ``logsumexp`` — the same value as the reference's ``log(sum(exp(.)))`` without its overflow.
  Optional per-row ``weights`` let a caller pass each distinct row once with its multiplicity
  (exact: a repeated row contributes the same term each time).
* :func:`weighted_row_lse` — ``Σ_b w_b logsumexp_c <x_b, y_c>``, blockwise, with its gradient
  formed in the forward (no B × N matrix kept): the hot path of SGL, SimGCL, DCCF and AutoCF.
* :func:`log_sum_exp_contrast` — AutoCF's uniformity term: mean over rows of
  ``log Σ_c exp(<row, c>)``, raw inner products, no temperature, no normalisation.
* :func:`l2_sum` — ``Σ ||W||²_F`` over tensors (reference ``reg_params``: not halved, not divided
  by the batch size).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F


def bpr_loss(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``softplus(<u, n> - <u, p>)`` (= -log σ(<u,p> - <u,n>))."""
    return F.softplus((users * neg).sum(-1) - (users * pos).sum(-1)).mean()


def l2_sum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``Σ ||W||²`` over ``tensors`` (a 0-d tensor; 0 for an empty iterable)."""
    total: torch.Tensor | None = None
    for w in tensors:
        s = w.square().sum()
        total = s if total is None else total + s
    return total if total is not None else torch.zeros(())


class _RowLogSumExpMM(torch.autograd.Function):
    """``lse_b = log Σ_c exp(<x_b, y_c>)`` without materialising autograd's intermediates.

    The generic ``logsumexp(x @ y.T)`` keeps the score matrix, recomputes ``exp`` in backward
    and (with a temperature) divides the whole matrix twice; here the forward turns the score
    matrix into the softmax in place and keeps only that, and the backward is two matrix
    products — about half the passes over the B × N matrix that dominates SGL/SimGCL steps.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor):  # type: ignore[override]
        s = x @ y.T
        m = s.max(dim=-1, keepdim=True).values
        s.sub_(m).exp_()
        z = s.sum(-1, keepdim=True)
        s.div_(z)
        ctx.save_for_backward(x, y, s)
        return (m + z.log()).squeeze(-1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, y, p = ctx.saved_tensors
        gp = p * g.unsqueeze(-1)
        gx = gp @ y if ctx.needs_input_grad[0] else None
        gy = gp.T @ x if ctx.needs_input_grad[1] else None
        return gx, gy


def row_logsumexp_mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(x @ y.T, dim=-1)``, computed with less memory traffic (same value)."""
    return _RowLogSumExpMM.apply(x, y)


class _WeightedRowLSE(torch.autograd.Function):
    """``Σ_b w_b · log Σ_c exp(<x_b, y_c>)`` in row blocks, gradients formed in the forward.

    The B × N score matrix is never materialised: each block of ``block`` rows is scored,
    turned into its softmax in place (one fused kernel), reduced to its log-sum-exp, and — when
    gradients are wanted — immediately used for ``∂/∂x_b = w_b · p_b Y`` and
    ``∂/∂Y += (w ⊙ p)ᵀ X_b`` while it is still in cache. The backward only scales the two saved
    gradients by the incoming scalar. Same value and gradients as
    ``(w * torch.logsumexp(x @ y.T, -1)).sum()`` up to float rounding (tests check this).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,  # type: ignore[override]
                block: int, need_grad: bool):
        b, n = x.shape[0], y.shape[0]
        total = x.new_zeros(())
        gx = torch.empty_like(x) if need_grad else None
        gy = torch.zeros_like(y) if need_grad else None
        s_buf = x.new_empty((min(block, b), n))
        p_buf = x.new_empty((min(block, b), n))
        yt = y.T
        for lo in range(0, b, block):
            xb = x[lo:lo + block]
            wb = w[lo:lo + block].unsqueeze(-1)
            s, p = s_buf[: xb.shape[0]], p_buf[: xb.shape[0]]
            torch.mm(xb, yt, out=s)
            m = s.amax(-1, keepdim=True)
            torch.softmax(s, -1, out=p)
            # the row maximum of the softmax is exp(0)/Σ = 1/Σ: lse = m + log Σ = m - log max p
            total += (wb * (m - p.amax(-1, keepdim=True).log())).sum()
            if need_grad:
                torch.mm(p, y, out=gx[lo:lo + block])
                gx[lo:lo + block].mul_(wb)
                gy.addmm_(p.T, xb * wb)
        ctx.save_for_backward(gx, gy)
        return total

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        gx, gy = ctx.saved_tensors
        if gx is None:
            raise RuntimeError("weighted_row_lse was computed without gradients")
        return gx * g, gy * g, None, None, None


def weighted_row_lse(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None,
                     block: int = 64) -> torch.Tensor:
    """``Σ_b w_b · logsumexp_c <x_b, y_c>`` (a 0-d tensor; ``w`` = 1 when ``weights`` is None).

    The workhorse of every all-candidate contrastive term (SGL/SimGCL InfoNCE, DCCF, AutoCF):
    blockwise and fused (:class:`_WeightedRowLSE`), so its cost is the three B × N × d matrix
    products and one softmax pass, with no B × N tensor kept for the backward. Gradients flow to
    ``x`` and ``y`` (not to ``weights``); rows of ``x`` may be rows of ``y`` (autograd adds).
    """
    w = x.new_ones(x.shape[0]) if weights is None else weights.to(x.dtype)
    need = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    if x.shape[0] == 0:
        return (x.sum() + y.sum()) * 0.0
    return _WeightedRowLSE.apply(x, y, w.detach(), block, need)


def unique_counts(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique ids, how often each occurs): a sum over ``ids``' rows of a per-id term
    equals the count-weighted sum over the unique ids — exact deduplication of repeated rows."""
    uniq, counts = torch.unique(ids, return_counts=True)
    return uniq, counts


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (eps 1e-8 inside the root, as the reference code)."""
    return x / torch.sqrt(1e-8 + x.square().sum(-1, keepdim=True))


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, candidates: torch.Tensor,
             temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_b w_b [ -cos(a_b, p_b)/τ + log Σ_c exp(cos(a_b, c)/τ) ] over rows b (a sum, not a mean).

    ``weights`` (default 1) let a caller pass each distinct row once with its multiplicity."""
    a, p, c = unit_rows(anchor), unit_rows(positive), unit_rows(candidates)
    a = a / temperature  # scale the B rows, not the B x N score matrix
    pos = (a * p).sum(-1)
    pos = pos.sum() if weights is None else (weights.to(pos.dtype) * pos).sum()
    return weighted_row_lse(a, c, weights) - pos


def log_sum_exp_contrast(rows: torch.Tensor, candidates: torch.Tensor,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean_b log Σ_c exp(<rows_b, c>) (AutoCF's ``contrast``; raw inner products).

    With ``weights`` (multiplicities of distinct rows) the mean is ``Σ w·lse / Σ w``."""
    total = weighted_row_lse(rows, candidates, weights)
    return total / (rows.shape[0] if weights is None else float(weights.sum()))


__all__ = ["bpr_loss", "info_nce", "l2_sum", "log_sum_exp_contrast", "row_logsumexp_mm",
           "unique_counts", "unit_rows", "weighted_row_lse"]


def pick_rows(users_all: torch.Tensor, items_all: torch.Tensor, users: torch.Tensor,
              pos: torch.Tensor, neg: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of a batch's users, positive and negative items.

    ``index_select``: its backward (``index_add_``) is deterministic on CPU, unlike advanced
    indexing's ``index_put_`` with parallel accumulation.
    """
    return (users_all.index_select(0, users), items_all.index_select(0, pos),
            items_all.index_select(0, neg))


__all__ += ["pick_rows"]


def batch_view_info_nce(view1: tuple[torch.Tensor, torch.Tensor],
                        view2: tuple[torch.Tensor, torch.Tensor], users: torch.Tensor,
                        pos: torch.Tensor, neg: torch.Tensor | None,
                        temperature: float) -> torch.Tensor:
    """SGL/SimGCL cross-view InfoNCE of a batch, divided by the batch size.

    Each view is ``(all user reprs, all item reprs)``. For the batch's users (and positive
    items, and negative items unless ``neg`` is None) the anchor is the row in view 1, the
    positive the same row in view 2, the candidates **all** users (items) of view 2 — the
    RLMRec reference ``cal_infonce_loss(anc1, anc2, user_embeds2)``: rows are not deduplicated,
    so a user appearing twice in the batch counts twice.

    Computed exactly that way but without the repeated work: a repeated row contributes the
    same term each time, so each distinct user (item) is scored once and weighted by its
    multiplicity; the positive- and negative-item terms share their candidates (all items of
    view 2), so their distinct items go through one log-sum-exp together, weighted by
    (count as positive + count as negative). About 28% fewer rows than the batch on
    Amazon-book (≈3,400 distinct users of 4,096; ≈5,400 distinct items of 8,192 pos+neg).
    """
    (u1, i1), (u2, i2) = view1, view2
    uu, uc = unique_counts(users)
    loss = info_nce(u1.index_select(0, uu), u2.index_select(0, uu), u2, temperature, uc)
    items = pos if neg is None else torch.cat([pos, neg])
    ii, ic = unique_counts(items)
    loss = loss + info_nce(i1.index_select(0, ii), i2.index_select(0, ii), i2, temperature, ic)
    return loss / users.numel()


__all__ += ["batch_view_info_nce"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 1.0,
            similarity: str = "dot") -> torch.Tensor:
    """Mean NT-Xent over the 2B rows of two views ``[B, d]`` (SimCLR; CL4SRec and DuoRec's
    ``info_nce``): row ``i`` of one view is positive for row ``i`` of the other, the other
    2B - 2 rows of both views are its negatives; ``similarity`` ``dot`` (their setting) or
    ``cos``."""
    z = torch.cat([z1, z2])
    if similarity == "cos":
        z = unit_rows(z)
    elif similarity != "dot":
        raise ValueError(f"similarity {similarity!r}: expected dot or cos")
    logits = (z @ z.T) / temperature
    n = z1.shape[0]
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -math.inf)
    target = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(logits, target)


__all__ += ["nt_xent"]
