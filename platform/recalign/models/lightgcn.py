"""LightGCN (He et al., 2020) as configured by RLMRec's reference code (HKUDS/RLMRec, SSLRec).

Propagation: ``E^(l+1) = Â E^(l)`` with ``Â = D^-1/2 A D^-1/2`` over the (users+items)
bipartite graph of the training interactions, no self-loops, no weights, no non-linearity; the
final representation is the **sum** ``E^(0) + E^(1) + ... + E^(L)`` (the reference code's
choice; the LightGCN paper averages). ``E^(0)`` are the ID embeddings of the ``user`` and
``item`` TorchRec tables, xavier-uniform initialised.

Training-time edge dropout: every stored entry of ``Â`` is kept independently with probability
``keep_rate`` (0.8), a fresh mask per step; kept values are *not* rescaled and degrees are not
recomputed (reference ``SpAdjEdgeDrop``: ``vals[mask]``, the ``/ keep_rate`` commented out).
The two directions (u, i) and (i, u) of an edge are dropped independently. Evaluation uses the
full ``Â``.

Loss for a batch of B (user, positive, negative) triples, as the reference ``cal_loss``::

    bpr = (1/B) Σ_b softplus(s(u_b, n_b) - s(u_b, p_b))          s = inner product of final reprs
    reg = reg_weight · Σ_{W ∈ model.parameters()} ||W||²_F       (reference ``reg_params``)
    loss = bpr + reg

i.e. the L2 term is over *all* parameters — the full user and item tables, not only the batch
rows — as a plain sum of squares (not halved, not divided by the batch size), added every step,
and the optimizer is Adam(lr 1e-3, weight_decay 0). LightGCN's only parameters are the two
tables, so ``reg`` here is over both full tables. (An alignment module that owns parameters
should add the same term over its own parameters to match the reference's ``reg_params(self)``
of the combined model.)
"""

from __future__ import annotations

from typing import ClassVar

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from recalign.data.graph import NormalizedGraph, normalized_adjacency, spmm
from recalign.data.sampler import BPRBatch
from recalign.data.subgraph import Subgraph
from recalign.errors import ConfigError
from recalign.models.base import Backbone, Layer0Hook, RecOutput, batch_rows, layer0_rows
from recalign.models.registry import register_backbone
from recalign.tables.collection import IdTables
from recalign.tables.optim import TableOptimizerSpec


class LightGCNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(32, ge=1, description="embedding size")
    layers: int = Field(3, ge=0, description="propagation layers L")
    reg_weight: float = Field(1e-6, ge=0, description="L2 weight over all parameters")
    keep_rate: float = Field(0.8, gt=0, le=1, description="edge keep probability in training")


#: published settings (REFERENCE.md, "LightGCN settings per data set", Base row;
#: HKUDS/RLMRec encoder/config/modelconf/lightgcn.yml)
PRESETS: dict[str, dict[str, float | int]] = {
    "rlmrec-amazon-book": {"dim": 32, "layers": 3, "reg_weight": 1e-6, "keep_rate": 0.8},
    "rlmrec-yelp": {"dim": 32, "layers": 3, "reg_weight": 1e-6, "keep_rate": 0.8},
    "rlmrec-steam": {"dim": 32, "layers": 2, "reg_weight": 1e-6, "keep_rate": 0.8},
}


def lightgcn_params(preset: str | None = None, **overrides: object) -> LightGCNParams:
    """Parameters from a preset (``model.preset``) with overrides on top."""
    base: dict[str, object] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown lightgcn preset {preset!r} (model.preset); known: "
                              f"{', '.join(sorted(PRESETS))}")
        base.update(PRESETS[preset])
    base.update(overrides)
    return LightGCNParams(**base)


@register_backbone("lightgcn")
class LightGCN(Backbone):
    Params: ClassVar[type[BaseModel]] = LightGCNParams
    PRESETS: ClassVar[dict[str, dict[str, float | int]]] = PRESETS

    def __init__(self, graph: NormalizedGraph | None, params: LightGCNParams | None = None, *,
                 optimizer: TableOptimizerSpec | None = None,
                 tables: IdTables | None = None, n_users: int | None = None,
                 n_items: int | None = None, table_backend: str = "torchrec",
                 device: torch.device | str = "cpu") -> None:
        self._init_graph_backbone(graph, params or LightGCNParams(), tables=tables,
                                  optimizer=optimizer, n_users=n_users, n_items=n_items,
                                  table_backend=table_backend, device=device)

    @classmethod
    def build(cls, train: sp.spmatrix, params: LightGCNParams | dict | None = None, *,
              preset: str | None = None,
              optimizer: TableOptimizerSpec | None = None,
              full_graph: bool = True, table_backend: str = "torchrec",
              device: torch.device | str = "cpu") -> "LightGCN":
        """From a users × items training matrix (the tables initialise from torch's RNG).

        ``full_graph=False`` (sampled propagation) skips building the full adjacency."""
        if isinstance(params, LightGCNParams):
            p = params if preset is None else lightgcn_params(preset, **params.model_dump(
                exclude_unset=True))
        else:
            p = lightgcn_params(preset, **(params or {}))
        if not full_graph:
            return cls(None, p, optimizer=optimizer, n_users=train.shape[0],
                       n_items=train.shape[1], table_backend=table_backend, device=device)
        return cls(normalized_adjacency(train), p, optimizer=optimizer,
                   table_backend=table_backend, device=device)

    # ------------------------------------------------------------------ forward
    def _propagate(self, ego: torch.Tensor, graph: NormalizedGraph | None = None) -> torch.Tensor:
        graph = self.graph if graph is None else graph
        if graph is None:
            raise RuntimeError("LightGCN built for sampled propagation: pass a subgraph")
        values = (graph.edge_dropout(self.params.keep_rate)
                  if self.training and self.params.keep_rate < 1.0 else graph.values)
        # the transpose's values serve every layer's backward: permute them once per step
        t_values = (graph.transpose_values(values)
                    if ego.requires_grad and torch.is_grad_enabled() else None)
        acc = ego
        h = ego
        for _ in range(self.params.layers):
            h = spmm(graph, h, values, t_values)
            acc = acc + h
        return acc

    def _final(self, layer0_hook: Layer0Hook | None, sub: Subgraph | None = None):
        """(layer-0 users, layer-0 items, final users, final items): of all nodes (full mode)
        or of the subgraph's nodes (``sub``, sampled mode) — the same propagation code."""
        u0, i0 = layer0_rows(self.tables, sub)
        graph = None if sub is None else sub.graph
        nu = u0.shape[0]
        ego = torch.cat([u0, i0], 0)
        if layer0_hook is not None:
            ego = layer0_hook(ego)
        final = self._propagate(ego, graph)
        return u0, i0, final[:nu], final[nu:]

    def subgraph_forward(self, sub: Subgraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user, item) representations of the subgraph's nodes (sampled inference)."""
        _, _, u, i = self._final(None, sub)
        return u, i

    def forward(self, layer0_hook: Layer0Hook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, u, i = self._final(layer0_hook)
        return u, i

    def rec_forward(self, batch: BPRBatch, layer0_hook: Layer0Hook | None = None) -> RecOutput:
        """Full mode: propagate over all nodes. A :class:`SampledBatch` carries its subgraph:
        propagate over it; ``all_users``/``all_items``/``layer0_*`` are then the subgraph's
        rows (global ids in ``extras["user_ids"]``/``extras["item_ids"]``) and the L2 term
        covers the rows looked up for the step."""
        sub = getattr(batch, "subgraph", None)
        u0, i0, users_all, items_all = self._final(layer0_hook, sub)
        bu, bp, bn, extras = batch_rows(batch, sub)
        # index_select: its backward (index_add_) is deterministic on CPU, unlike the backward
        # of advanced indexing (index_put_ with parallel atomic adds when threads > 1)
        u = users_all.index_select(0, bu)
        p = items_all.index_select(0, bp)
        n = items_all.index_select(0, bn)
        pos_s = (u * p).sum(-1)
        neg_s = (u * n).sum(-1)
        bpr = F.softplus(neg_s - pos_s).mean()
        reg = self.params.reg_weight * (u0.square().sum() + i0.square().sum())
        losses = {"loss": bpr + reg, "bpr": bpr.detach(), "reg": reg.detach()}
        return RecOutput(losses=losses, users=u, pos=p, neg=n, all_users=users_all,
                         all_items=items_all, batch=batch, layer0_users=u0, layer0_items=i0,
                         extras=extras)
