"""SGL (Wu et al., SIGIR 2021): self-supervised graph learning with edge-dropout views.

As RLMRec's reference (HKUDS/RLMRec ``general_cf/sgl.py``, ``sgl.yml``, ``augmentation:
edge_drop``), restated:

* encoder: LightGCN propagation on ``Â = D^-1/2 A D^-1/2`` (no self-loops), final = **sum** of
  layers 0..L;
* each step: two views, each on its own edge-dropout of ``Â`` (keep 0.8, one mask per view
  shared by all layers — SGL-ED; kept values not rescaled), plus the clean full-graph forward;
* BPR on the **clean** forward (no dropout), mean over the batch;
* InfoNCE between the views (cosine / τ) for the batch's users, positive *and* negative items,
  candidates all users / all items of view 2, rows not deduplicated, summed and divided by the
  batch size, × ``cl_weight`` (:func:`recalign.models.contrastive.batch_view_info_nce`);
* L2 ``reg_weight · Σ||W||²`` over both full tables.

The candidates are all nodes, as in the RLMRec code (and the SGL paper's Σ over all users);
SELFRec-style in-batch candidates would be cheaper but are a different objective, so they are
not used. Cost: the all-candidate terms dominate a step (B × N × d products, N ≈ 10k); they run
through :func:`recalign.models.contrastive.weighted_row_lse` (blockwise, fused, no B × N tensor
kept) on the batch's *distinct* rows weighted by multiplicity — the same loss and gradients as
the row-by-row reference, ~2.5× faster per step on Amazon-book (tests compare the two).

The layer-0 hook (alignment) is applied once per step and the same rewritten layer 0 feeds all
three forwards. The representations handed to alignments are the clean forward's.
:class:`SGL` builds the clean forward and the views with one ``_encode``; a subclass changes
only ``_augmentation`` (SimGCL: per-layer noise instead of edge dropout).
Propagation modes: full graph, and sampled (``train.propagation.mode: sampled``): the clean
forward and both views propagate over the batch's sampled fan-out neighbourhood (SGL drops
edges of that subgraph), and the InfoNCE candidates are the subgraph's users / items instead of
all nodes — a cheaper, neighbourhood-restricted contrast (an approximation of the paper's
all-node denominator, which sampled mode exists to avoid). ID tables are
:class:`recalign.tables.IdTables` (shardable).
"""

from __future__ import annotations

from typing import ClassVar

import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field

from recalign.data.graph import NormalizedGraph, normalized_adjacency, propagate
from recalign.data.sampler import BPRBatch
from recalign.data.subgraph import Subgraph
from recalign.models.base import Backbone, Layer0Hook, RecOutput, batch_rows, layer0_rows
from recalign.models.contrastive import batch_view_info_nce, bpr_loss, pick_rows
from recalign.models.registry import register_backbone, resolve_params
from recalign.tables.collection import IdTables
from recalign.tables.optim import TableOptimizerSpec


class GraphCLParams(BaseModel):
    """Settings shared by the LightGCN-encoder contrastive backbones (SGL, SimGCL)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(32, ge=1)
    layers: int = Field(3, ge=0)
    reg_weight: float = Field(1e-5, ge=0)
    cl_weight: float = Field(0.1, ge=0)
    temperature: float = Field(0.2, gt=0)


class SGLParams(GraphCLParams):
    keep_rate: float = Field(0.8, gt=0, le=1, description="edge keep rate of each view")


def graph_cl_presets(amazon: dict, yelp: dict, steam: dict,
                     **common: object) -> dict[str, dict[str, object]]:
    """The three RLMRec presets: dim 32 plus ``common`` plus each data set's own values."""
    return {name: {"dim": 32, **common, **own} for name, own in
            (("rlmrec-amazon-book", amazon), ("rlmrec-yelp", yelp), ("rlmrec-steam", steam))}


#: HKUDS/RLMRec sgl.yml; REFERENCE.md "Other backbones" (SGL base row)
PRESETS: dict[str, dict[str, object]] = graph_cl_presets(
    {"layers": 3, "reg_weight": 1e-5, "cl_weight": 0.1, "temperature": 0.2},
    {"layers": 3, "reg_weight": 1e-6, "cl_weight": 1e-3, "temperature": 0.1},
    {"layers": 2, "reg_weight": 1e-5, "cl_weight": 0.1, "temperature": 0.5},
    keep_rate=0.8)


@register_backbone("sgl")
class SGL(Backbone):
    Params: ClassVar[type[BaseModel]] = SGLParams
    PRESETS: ClassVar[dict[str, dict[str, object]]] = PRESETS
    #: include the negative items' InfoNCE term (SGL: yes; SimGCL: no)
    cl_on_negatives: ClassVar[bool] = True

    def __init__(self, graph: NormalizedGraph | None, params: BaseModel | None = None, *,
                 optimizer: TableOptimizerSpec | None = None,
                 tables: IdTables | None = None, n_users: int | None = None,
                 n_items: int | None = None, table_backend: str = "torchrec",
                 device: torch.device | str = "cpu") -> None:
        self._init_graph_backbone(graph, params or self.Params(), tables=tables,
                                  optimizer=optimizer, n_users=n_users, n_items=n_items,
                                  table_backend=table_backend, device=device)
        self.out_dim = self.params.dim

    @classmethod
    def build(cls, train: sp.spmatrix, params: BaseModel | dict | None = None, *,
              preset: str | None = None, optimizer: TableOptimizerSpec | None = None,
              full_graph: bool = True, table_backend: str = "torchrec",
              device: torch.device | str = "cpu") -> "SGL":
        p = resolve_params(cls.name, cls.Params, cls.PRESETS, params, preset)
        if not full_graph:
            return cls(None, p, optimizer=optimizer, n_users=train.shape[0],
                       n_items=train.shape[1], table_backend=table_backend, device=device)
        return cls(normalized_adjacency(train), p, optimizer=optimizer,
                   table_backend=table_backend, device=device)

    # ------------------------------------------------------------------ views
    def _encode(self, ego: torch.Tensor, view: bool, graph: NormalizedGraph | None = None,
                n_users: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of layers 0..L on ``graph`` (default: the full graph; ``view`` False) or on one
        augmented view of it; (users, items) split at ``n_users`` (the graph's user rows)."""
        graph = self._graph(None) if graph is None else graph
        n_users = self.n_users if n_users is None else n_users
        kwargs = self._augmentation(graph) if view else {}
        final = self.combine_layers(propagate(graph, ego, self.params.layers, **kwargs))
        return final[:n_users], final[n_users:]

    def _augmentation(self, graph: NormalizedGraph) -> dict:
        """``propagate`` arguments of one augmented view: SGL drops edges (a fresh mask per view,
        shared by its layers); subclasses override (SimGCL perturbs each layer)."""
        return {"values": graph.edge_dropout(self.params.keep_rate)}

    def _ego(self, layer0_hook: Layer0Hook | None, sub: Subgraph | None = None):
        u0, i0 = layer0_rows(self.tables, sub)
        ego = torch.cat([u0, i0], 0)
        if layer0_hook is not None:
            ego = layer0_hook(ego)
        return u0, i0, ego

    def _graph(self, sub: Subgraph | None) -> NormalizedGraph:
        graph = self.graph if sub is None else sub.graph
        if graph is None:
            raise RuntimeError(f"{self.name} built for sampled propagation: pass a subgraph")
        return graph

    def forward(self, layer0_hook: Layer0Hook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode(self._ego(layer0_hook)[2], view=False)

    def rec_forward(self, batch: BPRBatch, layer0_hook: Layer0Hook | None = None) -> RecOutput:
        sub = getattr(batch, "subgraph", None)
        graph = self._graph(sub)
        u0, i0, ego = self._ego(layer0_hook, sub)
        nu = u0.shape[0]
        users_all, items_all = self._encode(ego, False, graph, nu)
        bu, bp, bn, extras = batch_rows(batch, sub)
        u, p, n = pick_rows(users_all, items_all, bu, bp, bn)
        bpr = bpr_loss(u, p, n)
        reg = self.params.reg_weight * (u0.square().sum() + i0.square().sum())
        losses = {"bpr": bpr, "reg": reg}
        loss = bpr + reg
        if self.params.cl_weight > 0:
            cl = self.params.cl_weight * batch_view_info_nce(
                self._encode(ego, True, graph, nu), self._encode(ego, True, graph, nu), bu, bp,
                bn if self.cl_on_negatives else None, self.params.temperature)
            losses["cl"] = cl
            loss = loss + cl
        out = {"loss": loss, **{k: v.detach() for k, v in losses.items()}}
        return RecOutput(losses=out, users=u, pos=p, neg=n, all_users=users_all,
                         all_items=items_all, batch=batch, layer0_users=u0, layer0_items=i0,
                         extras=extras)
