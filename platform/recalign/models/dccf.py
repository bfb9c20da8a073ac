"""DCCF (Ren et al., SIGIR 2023): disentangled contrastive CF with global intents.

As RLMRec's reference (HKUDS/RLMRec ``general_cf/dccf.py``, ``dccf.yml``), restated. With
``E(l)`` the layer-``l`` embeddings of all nodes and ``Â = D^-1/2 A D^-1/2`` (no self-loops):

* graph message passing ``Z(l) = Â E(l)``;
* intent-aware aggregation over ``K`` (128) global intents per side, ``W_u, W_i ∈ R^{d×K}``:
  ``R_u(l) = softmax(E_u(l) W_u) W_uᵀ`` (rows: users), likewise items;
* adaptive augmentation, twice: for every edge (h, t) of ``A`` the weight
  ``α = (cos(x_h, x_t) + 1) / 2`` with ``x = Z(l)`` (graph-adaptive, G) or ``x = R(l)``
  (intent-adaptive, I); row-normalised ``D_α^-1 α`` (not symmetric); ``G(l) = Â_G E(l)``,
  ``I(l) = Â_I E(l)``. Gradients flow through the weights (:func:`recalign.models.augment.valued_spmm`:
  a CSR product with a hand-written backward, the same values as ``edge_spmm``);
* ``E(l+1) = Z(l) + R(l) + G(l) + I(l) + E(l)``; final = ``Σ_{l=0..L} E(l)``;
* loss: BPR (mean) + ``reg_weight · Σ||W||²`` over all parameters (both full tables *and* the
  intent matrices) + ``cl_weight ·`` Σ over layers of InfoNCE(Z, R), InfoNCE(Z, G),
  InfoNCE(Z, I) for the batch's **unique** users and **unique** positive items (the RLMRec
  variant drops SSLRec's negative items), candidates: the same unique rows of the second view
  (in-batch), temperature τ; every term — the item terms too — is divided by the number of
  unique users (the reference's normalisation, kept for reproduction).

No edge dropout. Full-graph propagation only (the adaptive masks are row-normalised over every
edge of a node's neighbourhood; on a sampled neighbourhood they would be a different
operator); shardable ID tables; the intents are dense parameters. Under data-parallel training
(``train.workers > 1``) each worker's in-batch InfoNCE candidates are its own share of the
batch, as in DDP training of any in-batch contrastive loss (tests bound the difference).
"""

from __future__ import annotations

from typing import ClassVar

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recalign.data.graph import NormalizedGraph, normalized_adjacency, spmm
from recalign.models.augment import EdgeCSR, valued_spmm
from recalign.data.sampler import BPRBatch
from recalign.models.base import Backbone, Layer0Hook, RecOutput
from recalign.models.contrastive import bpr_loss, info_nce, l2_sum, pick_rows
from recalign.models.registry import register_backbone, resolve_params
from recalign.tables import make_id_tables
from recalign.tables.collection import IdTables
from recalign.tables.optim import TableOptimizerSpec


class DCCFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(32, ge=1)
    layers: int = Field(2, ge=1)
    intents: int = Field(128, ge=1)
    reg_weight: float = Field(1e-4, ge=0)
    cl_weight: float = Field(1e-3, ge=0)
    temperature: float = Field(0.1, gt=0)


#: HKUDS/RLMRec dccf.yml; REFERENCE.md "Other backbones" (DCCF base row)
PRESETS: dict[str, dict[str, object]] = {
    "rlmrec-amazon-book": {"dim": 32, "layers": 2, "intents": 128, "reg_weight": 1e-4,
                           "cl_weight": 1e-3, "temperature": 0.1},
    "rlmrec-yelp": {"dim": 32, "layers": 2, "intents": 128, "reg_weight": 1e-4,
                    "cl_weight": 1e-3, "temperature": 0.1},
    "rlmrec-steam": {"dim": 32, "layers": 3, "intents": 128, "reg_weight": 1e-3,
                     "cl_weight": 1e-3, "temperature": 0.1},
}


def adaptive_values(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                    n: int) -> torch.Tensor:
    """Edge weights ``D_α^-1 α`` with ``α = (cos(x_h, x_t) + 1)/2`` (rows with no mass: 0)."""
    xn = F.normalize(x, dim=-1)
    alpha = ((xn.index_select(0, rows) * xn.index_select(0, cols)).sum(-1) + 1) / 2
    deg = x.new_zeros(n).index_add_(0, rows, alpha)
    inv = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-30), torch.zeros_like(deg))
    return inv.index_select(0, rows) * alpha


@register_backbone("dccf")
class DCCF(Backbone):
    Params: ClassVar[type[BaseModel]] = DCCFParams
    PRESETS: ClassVar[dict[str, dict[str, object]]] = PRESETS

    def __init__(self, graph: NormalizedGraph, params: DCCFParams | None = None, *,
                 optimizer: TableOptimizerSpec | None = None,
                 tables: IdTables | None = None, table_backend: str = "torchrec",
                 device: torch.device | str = "cpu") -> None:
        super().__init__(graph.n_users, graph.n_items)
        self.params = params or DCCFParams()
        self.graph = graph
        d, k = self.params.dim, self.params.intents
        self.tables = tables if tables is not None else make_id_tables(
            graph.n_users, graph.n_items, d, optimizer=optimizer, device=device,
            backend=table_backend)
        self.user_intent = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, k)))
        self.item_intent = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, k)))
        self.rows = torch.repeat_interleave(torch.arange(graph.n_nodes), torch.diff(graph.crow))
        self.cols = graph.col
        self.edges = EdgeCSR.build(self.rows, self.cols, graph.n_nodes)  # same (CSR) order
        self.out_dim = d

    @classmethod
    def build(cls, train: sp.spmatrix, params: DCCFParams | dict | None = None, *,
              preset: str | None = None,
              optimizer: TableOptimizerSpec | None = None, table_backend: str = "torchrec",
              device: torch.device | str = "cpu") -> "DCCF":
        p = resolve_params("dccf", DCCFParams, PRESETS, params, preset)
        return cls(normalized_adjacency(train), p, optimizer=optimizer,
                   table_backend=table_backend, device=device)

    def _intent(self, e: torch.Tensor) -> torch.Tensor:
        u, i = e[: self.n_users], e[self.n_users:]
        ru = torch.softmax(u @ self.user_intent, dim=1) @ self.user_intent.T
        ri = torch.softmax(i @ self.item_intent, dim=1) @ self.item_intent.T
        return torch.cat([ru, ri], 0)

    def _encode(self, layer0_hook: Layer0Hook | None):
        u0, i0 = self.tables.all_rows()
        e = torch.cat([u0, i0], 0)
        if layer0_hook is not None:
            e = layer0_hook(e)
        n = self.graph.n_nodes
        t_values = self.graph.transpose_values() if torch.is_grad_enabled() else None
        acc = e
        views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for _ in range(self.params.layers):
            z = spmm(self.graph, e, None, t_values)
            r = self._intent(e)
            g = valued_spmm(self.edges, adaptive_values(z, self.rows, self.cols, n), e)
            it = valued_spmm(self.edges, adaptive_values(r, self.rows, self.cols, n), e)
            views.append((z, r, g, it))
            e = z + r + g + it + e
            acc = acc + e
        return u0, i0, acc[: self.n_users], acc[self.n_users:], views

    def forward(self, layer0_hook: Layer0Hook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, u, i, _ = self._encode(layer0_hook)
        return u, i

    def cl_loss(self, views, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Σ_l Σ_{X∈{R,G,I}} InfoNCE(Z, X) over unique users and unique items, / #unique users."""
        uu, ii = torch.unique(users), torch.unique(items) + self.n_users
        tau = self.params.temperature
        total = torch.zeros(())
        for z, *others in views:
            zu, zi = z.index_select(0, uu), z.index_select(0, ii)
            for x in others:
                xu, xi = x.index_select(0, uu), x.index_select(0, ii)
                total = total + info_nce(zu, xu, xu, tau) + info_nce(zi, xi, xi, tau)
        return total / uu.numel()

    def rec_forward(self, batch: BPRBatch, layer0_hook: Layer0Hook | None = None) -> RecOutput:
        u0, i0, users_all, items_all, views = self._encode(layer0_hook)
        u, p, n = pick_rows(users_all, items_all, batch.users, batch.pos, batch.neg)
        bpr = bpr_loss(u, p, n)
        reg = self.params.reg_weight * l2_sum([u0, i0, self.user_intent, self.item_intent])
        cl = self.params.cl_weight * self.cl_loss(views, batch.users, batch.pos)
        losses = {"loss": bpr + reg + cl, "bpr": bpr.detach(), "reg": reg.detach(),
                  "cl": cl.detach()}
        return RecOutput(losses=losses, users=u, pos=p, neg=n, all_users=users_all,
                         all_items=items_all, batch=batch, layer0_users=u0, layer0_items=i0)
