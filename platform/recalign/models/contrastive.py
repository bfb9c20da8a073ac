"""Losses shared by the CF backbones: BPR, L2 over parameters, InfoNCE, log-sum-exp contrast.

One definition each, reused by LightGCN's relatives (GCCF, SGL, SimGCL), DCCF and AutoCF, so a
backbone never carries its own copy. Conventions follow the RLMRec/SSLRec reference
(``models/loss_utils.py``), restated:

* :func:`info_nce` — cosine similarities (rows L2-normalised with ``sqrt(1e-8 + ||x||²)``) over a
  temperature; the positive of row ``b`` of the first view is row ``b`` of the second view, the
  candidates are the rows of ``candidates`` (which should contain the positives). Returns the
  **sum** over rows; callers divide by their batch size as the reference does. Computed with
  ``logsumexp`` — the same value as the reference's ``log(sum(exp(.)))`` without its overflow.
* :func:`log_sum_exp_contrast` — AutoCF's uniformity term: mean over rows of
  ``log Σ_c exp(<row, c>)``, raw inner products, no temperature, no normalisation.
* :func:`l2_sum` — ``Σ ||W||²_F`` over tensors (reference ``reg_params``: not halved, not divided
  by the batch size).
"""

from __future__ import annotations

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


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(1e-8 + x.square().sum(-1, keepdim=True))


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, candidates: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Σ_b [ -cos(a_b, p_b)/τ + log Σ_c exp(cos(a_b, c)/τ) ] over rows b (a sum, not a mean)."""
    a, p, c = _unit(anchor), _unit(positive), _unit(candidates)
    a = a / temperature  # scale the B rows, not the B x N score matrix
    return (row_logsumexp_mm(a, c) - (a * p).sum(-1)).sum()


def log_sum_exp_contrast(rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """mean_b log Σ_c exp(<rows_b, c>) (AutoCF's ``contrast``; raw inner products)."""
    return row_logsumexp_mm(rows, candidates).mean()


__all__ = ["bpr_loss", "info_nce", "l2_sum", "log_sum_exp_contrast", "row_logsumexp_mm"]


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
    reference ``cal_infonce_loss(anc1, anc2, user_embeds2)``: rows are not deduplicated, so a
    user appearing twice in the batch counts twice.
    """
    (u1, i1), (u2, i2) = view1, view2
    loss = info_nce(u1.index_select(0, users), u2.index_select(0, users), u2, temperature)
    loss = loss + info_nce(i1.index_select(0, pos), i2.index_select(0, pos), i2, temperature)
    if neg is not None:
        loss = loss + info_nce(i1.index_select(0, neg), i2.index_select(0, neg), i2, temperature)
    return loss / users.numel()


__all__ += ["batch_view_info_nce"]
