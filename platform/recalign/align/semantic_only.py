"""The "semantic vectors only" ranker of the RLMRec ablation: no CF embeddings at all.

Users and items are represented only by their semantic vectors passed through one projection
MLP (the same shape as RLMRec's sigma_down: ``d_s -> (d_s+d)//2 -> d``); items are ranked by
the inner product of the user's and the item's projections. The MLP is trained with the same
BPR loss, sampler, schedule and early stopping as the CF backbones (it implements the
:class:`~recalign.models.base.Backbone` interface, so :func:`recalign.train.loop.fit` trains
and evaluates it), so the only thing that differs from a backbone is the input: semantic
vectors instead of ID embeddings. Entities without a vector have a zero input row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recalign.align.rlmrec_con import projection_mlp
from recalign.align.semantic import SemanticVectors
from recalign.data.sampler import BPRBatch
from recalign.models.base import Backbone, Layer0Hook, RecOutput


class SemanticOnly(Backbone):
    """Scores = <mlp(s_u), mlp(s_i)>; trained with BPR + L2 over the MLP."""

    name = "semantic-only"

    def __init__(self, semantic: SemanticVectors, dim: int = 32, reg_weight: float = 1e-6,
                 chunk: int = 8192) -> None:
        super().__init__(semantic.n_users, semantic.n_items)
        self.mlp = projection_mlp(semantic.dim, dim)
        self.reg_weight = float(reg_weight)
        self.chunk = int(chunk)
        self.out_dim = dim
        self.register_buffer("sem_users", semantic.users.vectors, persistent=False)
        self.register_buffer("sem_items", semantic.items.vectors, persistent=False)

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
