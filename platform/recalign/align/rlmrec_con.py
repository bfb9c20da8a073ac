"""RLMRec-Con: contrastive alignment of CF representations with projected semantic vectors.

As the paper and the authors' ``lightgcn_plus.py`` / ``loss_utils.cal_infonce_loss``: an MLP
sigma_down (``Linear(d_s, (d_s+d)//2) -> LeakyReLU -> Linear(., d)``, xavier-uniform weights)
maps semantic vectors into the CF space; for each batch row the CF representation ``e`` and
its own projected vector are the positive pair of an InfoNCE with cosine similarity / tau::

    infonce(e, p, C) = sum_rows [ -cos(e, p)/tau + log sum_{c in C} exp(cos(e, c)/tau) ]
    kd = kd_weight * (infonce(users, P_u[batch users], P_u[all users])
                      + infonce(pos, P_i[pos], P_i[pos])          # in-batch candidates
                      + infonce(neg, P_i[neg], P_i[neg])) / B     # omitted for AutoCF

Cosines use ``x / sqrt(1e-8 + |x|^2)`` as the reference. Rows whose entity has no semantic
vector are left out of every term (as numerators and as candidates); ``B`` stays the batch size.
Batch rows are deduplicated by id: a repeated user or item contributes one row of the
similarity matrix weighted by its count, and a repeated candidate ``log count`` inside the
sum, which gives the reference's value and gradients at ``U x U`` instead of ``B x B`` cost
(and each distinct semantic vector is projected once). ``reg_weight`` adds the reference's L2 over
the alignment's own parameters (its ``reg_params(self)`` covers the MLP too); it defaults to
the backbone's ``reg_weight``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recalign.align.base import Alignment, register_alignment
from recalign.align.precision import Bf16, autocast, resolve_bf16
from recalign.align.row_logsumexp import row_logsumexp_sum
from recalign.align.semantic import SemanticVectors
from recalign.models.contrastive import unit_rows


class ConParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kd_weight: float = Field(1e-2, ge=0, description="weight of the contrastive term")
    tau: float = Field(0.2, gt=0, description="InfoNCE temperature")
    neg_term: bool = Field(True, description="include the negative-item term (AutoCF: false)")
    user_candidates: str = Field("all", pattern="^(all|batch)$", description="all: every "
                                 "user's projection (reference); batch: the batch's users")
    reg_weight: float | None = Field(None, ge=0, description="L2 over the MLP; default: the "
                                     "backbone's reg_weight")
    bf16: Bf16 = Field(False, description="store the semantic vectors in bf16 and run the "
                       "projection MLP under CPU/GPU bf16 autocast; auto: where the hardware "
                       "multiplies bf16 natively (align/precision.py)")


def projection_mlp(d_in: int, d_out: int, hidden: int | None = None) -> nn.Sequential:
    """The authors' two-layer projection: Linear -> LeakyReLU -> Linear, xavier weights."""
    h = hidden if hidden is not None else (d_in + d_out) // 2
    mlp = nn.Sequential(nn.Linear(d_in, h), nn.LeakyReLU(), nn.Linear(h, d_out))
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
    return mlp


def infonce_sum(e: torch.Tensor, pos: torch.Tensor, cands: torch.Tensor, tau: float,
                row_weight: torch.Tensor | None = None,
                cand_count: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over rows of -cos(e, pos)/tau + log sum_c exp(cos(e, c)/tau) (reference form).

    ``row_weight`` / ``cand_count``: multiplicities of deduplicated rows / candidates, so that
    ``B`` batch rows with repeated ids cost ``U x U`` instead of ``B x B`` and give exactly the
    same value and gradients (a repeated candidate adds ``log count`` inside the sum)."""
    if e.shape[0] == 0:
        return e.new_zeros(())
    ne, np_, nc = unit_rows(e), unit_rows(pos), unit_rows(cands)
    nume = -(ne * np_).sum(-1) / tau
    if row_weight is not None:
        nume = nume * row_weight.to(nume.dtype)
    bias = None if cand_count is None else torch.log(cand_count.to(ne.dtype))
    # the rows x candidates logits in blocks: all users as candidates would not fit at scale
    return nume.sum() + row_logsumexp_sum(ne, nc, 1.0 / tau, bias, row_weight)


def dedupe(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unique ids, position of each one's first occurrence, counts)."""
    uniq, inv, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inv, torch.arange(ids.numel(), device=ids.device), reduce="amin")
    return uniq, first, counts


def own_l2(module: nn.Module) -> torch.Tensor:
    """Sum of squared entries of all parameters (reference ``reg_params``)."""
    return sum((p.square().sum() for p in module.parameters()), torch.zeros(()))


def backbone_reg_weight(backbone: Any) -> float:
    return float(getattr(getattr(backbone, "params", None), "reg_weight", 0.0) or 0.0)


@register_alignment("rlmrec-con")
class RLMRecCon(Alignment):
    Params: ClassVar[type[BaseModel]] = ConParams

    def __init__(self, semantic: SemanticVectors, dim: int, params: ConParams | None = None,
                 *, reg_weight: float = 0.0, device: torch.device | None = None) -> None:
        super().__init__()
        self.params = params or ConParams()
        self.reg_weight = self.params.reg_weight if self.params.reg_weight is not None else reg_weight
        self.mlp = projection_mlp(semantic.dim, dim)
        # bf16: the vectors are stored in bf16 (half the memory; autocast then converts nothing)
        self.bf16 = resolve_bf16(self.params.bf16, device)  # "auto": on the training device
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        users_with = torch.nonzero(semantic.users.mask).flatten()
        slot = torch.full((semantic.n_users,), -1, dtype=torch.long)
        slot[users_with] = torch.arange(users_with.numel())
        # only the users with a vector, in slot order: the user term projects all of them each
        # step, and a per-step gather of every user's row would copy the whole table
        self.register_buffer("sem_users", semantic.users.vectors[users_with].to(dtype),
                             persistent=False)
        self.register_buffer("sem_items", semantic.items.vectors.to(dtype), persistent=False)
        self.register_buffer("mask_users", semantic.users.mask, persistent=False)
        self.register_buffer("mask_items", semantic.items.mask, persistent=False)
        self.register_buffer("user_slot", slot, persistent=False)

    @classmethod
    def build(cls, semantic: SemanticVectors, dim: int, params: dict | ConParams | None = None,
              *, backbone: Any = None, device: torch.device | None = None,
              **_: Any) -> "RLMRecCon":
        p = params if isinstance(params, ConParams) else ConParams(**(params or {}))
        return cls(semantic, dim, p, reg_weight=backbone_reg_weight(backbone), device=device)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.bf16, x.device):
            y = self.mlp(x)
        return y.float()

    def _item_term(self, reps: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        keep = self.mask_items[ids]
        ids, reps = ids[keep], reps[keep]
        uniq, first, counts = dedupe(ids)
        proj = self._project(self.sem_items.index_select(0, uniq))
        # in-batch candidates: every batch row's projection, i.e. each distinct item x count
        return infonce_sum(reps[first], proj, proj, self.params.tau, counts, counts)

    def forward(self, out: Any) -> dict[str, torch.Tensor]:
        b = out.batch
        n = len(b)
        keep = self.mask_users[b.users]
        users, reps = b.users[keep], out.users[keep]
        uniq, first, counts = dedupe(users)
        if self.params.user_candidates == "all":
            cands = self._project(self.sem_users)
            pos_u = cands[self.user_slot[uniq]]
            cand_count = None
        else:
            cands = self._project(self.sem_users.index_select(0, self.user_slot[uniq]))
            pos_u, cand_count = cands, counts
        kd = infonce_sum(reps[first], pos_u, cands, self.params.tau, counts, cand_count)
        kd = kd + self._item_term(out.pos, b.pos)
        if self.params.neg_term:
            kd = kd + self._item_term(out.neg, b.neg)
        losses = {"align_con": self.params.kd_weight * kd / max(n, 1)}
        if self.reg_weight:
            losses["align_reg"] = self.reg_weight * own_l2(self)
        return losses
