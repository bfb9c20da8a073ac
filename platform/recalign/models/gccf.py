"""GCCF / LR-GCCF (Chen et al., AAAI 2020): linear graph convolution with self-loops.

As configured by RLMRec's reference code (HKUDS/RLMRec ``encoder/models/general_cf/gccf.py``
and ``config/modelconf/gccf.yml``), restated:

* adjacency ``Â = D^-1/2 (A + I) D^-1/2`` over the users+items bipartite graph — the identity
  is added *before* the degrees are taken (the data handler's ``self_loop=True`` path);
* ``E(l+1) = Â E(l)``, linear (no weight matrix: the reference keeps a ``W`` per layer but its
  comment says "performs better without W" and never applies it; we do not create it — an
  unused ``W`` would only add a decaying term to the L2 sum);
* the final representation **concatenates** the layers: ``[E0 ‖ E1 ‖ … ‖ EL]``, so its width
  is ``dim·(L+1)`` (``out_dim``; 96 at the published 2 layers). Alignment objectives read the
  width from the representations.
* loss: BPR (mean over the batch) + ``reg_weight · Σ ||W||²`` over both full ID tables.

Edge dropout: the config lists ``keep_rate: 0.8`` (and REFERENCE.md repeats it), but the
reference ``cal_loss`` always propagates on the full adjacency, so the published numbers were
obtained without it. The preset carries ``keep_rate 0.8`` and ``edge_dropout False`` (the
code's behaviour); ``edge_dropout: true`` applies the 0.8 keep rate as in LightGCN.

Propagation modes: full graph, and sampled (``train.propagation.mode: sampled``): each batch
propagates over the fan-out neighbourhood of its nodes sampled from the *self-looped* adjacency
(``self_loops``), so a node's self-loop is one of its sampled edges; exact inference
concatenates the layers (:meth:`combine_layers`). ID tables are
:class:`recalign.tables.IdTables`, so sharded tables work.
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
from recalign.models.contrastive import bpr_loss, pick_rows
from recalign.models.registry import register_backbone, resolve_params
from recalign.tables.collection import IdTables
from recalign.tables.optim import TableOptimizerSpec


class GCCFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(32, ge=1)
    layers: int = Field(2, ge=0)
    reg_weight: float = Field(1e-6, ge=0)
    keep_rate: float = Field(0.8, gt=0, le=1, description="edge keep rate if edge_dropout")
    edge_dropout: bool = Field(False, description="apply keep_rate in training (the reference "
                               "code does not)")


#: HKUDS/RLMRec gccf.yml (amazon / yelp / steam), REFERENCE.md "Other backbones"
PRESETS: dict[str, dict[str, object]] = {
    "rlmrec-amazon-book": {"dim": 32, "layers": 2, "reg_weight": 1e-6, "keep_rate": 0.8,
                           "edge_dropout": False},
    "rlmrec-yelp": {"dim": 32, "layers": 2, "reg_weight": 1e-6, "keep_rate": 0.8,
                    "edge_dropout": False},
    "rlmrec-steam": {"dim": 32, "layers": 2, "reg_weight": 1e-6, "keep_rate": 0.8,
                     "edge_dropout": False},
}


@register_backbone("gccf")
class GCCF(Backbone):
    Params: ClassVar[type[BaseModel]] = GCCFParams
    PRESETS: ClassVar[dict[str, dict[str, object]]] = PRESETS
    self_loops: ClassVar[bool] = True
    # GCCF keeps rising slowly for 300+ epochs on Amazon-book, with plateaus of 5 validations:
    # patience 5 stopped 3 of 3 seeds 20-50 epochs early (~1% validation Recall@20 lost),
    # patience 10 none before 300 (docs/results.md, "GCCF: early stopping on a slow rise")
    TRAIN_DEFAULTS: ClassVar[dict[str, dict[str, object]]] = {"train": {"patience": 10}}

    def __init__(self, graph: NormalizedGraph | None, params: GCCFParams | None = None, *,
                 optimizer: TableOptimizerSpec | None = None,
                 tables: IdTables | None = None, n_users: int | None = None,
                 n_items: int | None = None, table_backend: str = "torchrec",
                 device: torch.device | str = "cpu") -> None:
        self._init_graph_backbone(graph, params or GCCFParams(), tables=tables,
                                  optimizer=optimizer, n_users=n_users, n_items=n_items,
                                  table_backend=table_backend, device=device)
        self.out_dim = self.params.dim * (self.params.layers + 1)

    @classmethod
    def build(cls, train: sp.spmatrix, params: GCCFParams | dict | None = None, *,
              preset: str | None = None, optimizer: TableOptimizerSpec | None = None,
              full_graph: bool = True, table_backend: str = "torchrec",
              device: torch.device | str = "cpu") -> "GCCF":
        p = resolve_params("gccf", GCCFParams, PRESETS, params, preset)
        if not full_graph:
            return cls(None, p, optimizer=optimizer, n_users=train.shape[0],
                       n_items=train.shape[1], table_backend=table_backend, device=device)
        return cls(normalized_adjacency(train, self_loops=True), p, optimizer=optimizer,
                   table_backend=table_backend, device=device)

    def combine_layers(self, layers: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(layers, dim=-1)

    def _final(self, layer0_hook: Layer0Hook | None, sub: Subgraph | None = None):
        graph = self.graph if sub is None else sub.graph
        if graph is None:
            raise RuntimeError("GCCF built for sampled propagation: pass a subgraph")
        u0, i0 = layer0_rows(self.tables, sub)
        ego = torch.cat([u0, i0], 0)
        if layer0_hook is not None:
            ego = layer0_hook(ego)
        values = None
        if self.training and self.params.edge_dropout and self.params.keep_rate < 1.0:
            values = graph.edge_dropout(self.params.keep_rate)
        final = self.combine_layers(propagate(graph, ego, self.params.layers, values))
        nu = u0.shape[0]
        return u0, i0, final[:nu], final[nu:]

    def forward(self, layer0_hook: Layer0Hook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, u, i = self._final(layer0_hook)
        return u, i

    def rec_forward(self, batch: BPRBatch, layer0_hook: Layer0Hook | None = None) -> RecOutput:
        """Full mode: all nodes; a :class:`SampledBatch`: its subgraph's nodes (as LightGCN)."""
        sub = getattr(batch, "subgraph", None)
        u0, i0, users_all, items_all = self._final(layer0_hook, sub)
        bu, bp, bn, extras = batch_rows(batch, sub)
        u, p, n = pick_rows(users_all, items_all, bu, bp, bn)
        bpr = bpr_loss(u, p, n)
        reg = self.params.reg_weight * (u0.square().sum() + i0.square().sum())
        losses = {"loss": bpr + reg, "bpr": bpr.detach(), "reg": reg.detach()}
        return RecOutput(losses=losses, users=u, pos=p, neg=n, all_users=users_all,
                         all_items=items_all, batch=batch, layer0_users=u0, layer0_items=i0,
                         extras=extras)
