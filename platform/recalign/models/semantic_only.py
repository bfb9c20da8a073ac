"""The "semantic vectors only" ranker of the RLMRec ablation: no CF embeddings at all.

Users and items are represented only by their semantic vectors passed through one projection
MLP (the same shape as RLMRec's sigma_down: ``d_s -> (d_s+d)//2 -> d``); items are ranked by
the inner product of the user's and the item's projections. It is a registered backbone
(``model.backbone: semantic-only``, vectors from ``align.semantic.users/items``), so the train
job trains it with the same BPR loss, sampler, schedule, early stopping and evaluation as the
CF backbones: the only thing that differs is the input (semantic vectors instead of ID
embeddings). It has no ID tables (``tables`` is None): nothing to shard, no layer-0 rows to
export or warm-start, and no CF representation for an alignment to act on. Entities without a
vector have a zero input row.
"""

from __future__ import annotations

from typing import Any, ClassVar

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from recalign.align.rlmrec_con import projection_mlp
from recalign.align.semantic import SemanticVectors
from recalign.data.sampler import BPRBatch
from recalign.errors import ConfigError
from recalign.models.base import Backbone, Layer0Hook, RecOutput
from recalign.models.registry import register_backbone, resolve_params


class SemanticOnlyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(32, ge=1, description="width of the projected user/item vectors")
    reg_weight: float = Field(1e-6, ge=0.0, description="L2 weight over the MLP's parameters")
    chunk: int = Field(8192, ge=1, description="rows projected at once at evaluation")


@register_backbone("semantic-only")
class SemanticOnly(Backbone):
    """Scores = <mlp(s_u), mlp(s_i)>; trained with BPR + L2 over the MLP."""

    Params = SemanticOnlyParams
    PRESETS: ClassVar[dict[str, dict[str, object]]] = {}
    needs_semantic: ClassVar[bool] = True
    tables = None

    def __init__(self, semantic: SemanticVectors, params: SemanticOnlyParams | None = None,
                 **kwargs: Any) -> None:
        p = params or SemanticOnlyParams(**kwargs)
        super().__init__(semantic.n_users, semantic.n_items)
        self.params = p
        self.mlp = projection_mlp(semantic.dim, p.dim)
        self.reg_weight = float(p.reg_weight)
        self.chunk = int(p.chunk)
        self.out_dim = p.dim
        self.register_buffer("sem_users", semantic.users.vectors, persistent=False)
        self.register_buffer("sem_items", semantic.items.vectors, persistent=False)

    @classmethod
    def build(cls, train: sp.spmatrix, params: SemanticOnlyParams | dict | None = None, *,
              preset: str | None = None, optimizer: Any = None,
              semantic: SemanticVectors | None = None) -> "SemanticOnly":
        """``optimizer`` is unused (no ID tables: the MLP is a dense parameter)."""
        if semantic is None:
            raise ConfigError("model.backbone semantic-only ranks by semantic vectors alone: "
                              "set align.semantic.users and align.semantic.items")
        if (semantic.n_users, semantic.n_items) != tuple(train.shape):
            raise ConfigError(f"semantic vectors cover {semantic.n_users} users x "
                              f"{semantic.n_items} items, the training matrix is "
                              f"{train.shape[0]} x {train.shape[1]}")
        return cls(semantic, resolve_params("semantic-only", SemanticOnlyParams, cls.PRESETS,
                                            params, preset))

    def _proj(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mlp(x[s:s + self.chunk]) for s in range(0, x.shape[0], self.chunk)])

    def forward(self, layer0_hook: Layer0Hook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._proj(self.sem_users), self._proj(self.sem_items)

    def rec_forward(self, batch: BPRBatch, layer0_hook: Layer0Hook | None = None) -> RecOutput:
        uu, ui = torch.unique(batch.users, return_inverse=True)
        items = torch.cat([batch.pos, batch.neg])
        iu, ii = torch.unique(items, return_inverse=True)
        pu = self.mlp(self.sem_users[uu])
        pi = self.mlp(self.sem_items[iu])
        u, p, n = pu[ui], pi[ii[: len(batch)]], pi[ii[len(batch):]]
        bpr = F.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean()
        reg = self.reg_weight * sum(w.square().sum() for w in self.mlp.parameters())
        losses = {"loss": bpr + reg, "bpr": bpr.detach(), "reg": reg.detach()}
        return RecOutput(losses=losses, users=u, pos=p, neg=n, all_users=pu, all_items=pi,
                         batch=batch)
