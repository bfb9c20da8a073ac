"""AutoCF (Xia et al., WWW 2023): automated self-supervised masked graph autoencoding.

As RLMRec's reference (HKUDS/RLMRec ``general_cf/autocf.py``, ``AutoCFTrainer``,
``autocf.yml``), restated:

* **Learned seed selection** (every ``fix_steps`` training steps): score each node by the
  agreement of its layer-0 embedding with the mean of its 1- and 2-hop neighbourhood
  (``σ(cos)``), add Gumbel noise to the log-scores, take the top ``seed_num`` as seeds
  (:func:`recalign.models.augment.autocf_seed_scores`); on those steps the infomax loss
  ``-mean(noisy log-scores)`` over all nodes is added (it trains the embeddings to make
  local–global agreement high).
* **Masking** (:func:`recalign.models.augment.mask_subgraphs`): remove every edge within
  ``mask_depth`` (2) hops of the seeds; the **encoder** propagates on the remaining edges,
  renormalised ``D^-1/2 A D^-1/2``, ``gcn_layers`` linear LightGCN layers. The **decoder** is
  ``gt_layers`` (1) graph-transformer layer(s) on a graph of random edges among the masked
  nodes (+ ``keep_rate``·N random nodes) + self-loops + the kept edges. The masked edges are
  reconstructed through the loss below: the batch's positive pairs include them.
* **Graph-transformer layer**: for each edge (r, c), per head (``heads`` = 4),
  ``a = clamp(<q_r, k_c>, ±10)``, ``exp``-normalised over the row's edges (+1e-8), output row
  ``r`` = ``Σ_c a · v_c``; q/k/v = linear maps d→d without bias (xavier). No residual.
* final representation: sum of the encoder's layers 0..L and the decoder's output(s).
* **loss** (not BPR): ``-mean_b <u_b, p_b>`` + ``mean_b log Σ_{all items} exp<u_b, i>``
  + ``ssl_reg · (mean_{unique users} log Σ_{all users} exp<u, u'> + mean_{unique pos items}
  log Σ_{all items} exp<i, i'>)`` + ``reg_weight · Σ||W||²`` over all parameters (tables and
  the transformer's q/k/v) [+ infomax on seed steps]. Negative items are not used.
* **evaluation**: encoder and decoder both on the full graph (``forward(adj, adj)``).

Speed (same objective as the reference): the log-sum-exp terms run through
:func:`recalign.models.contrastive.weighted_row_lse` (blockwise, gradient fused), the
user-to-all-items term once per *distinct* batch user weighted by its multiplicity (the
reference's mean over the batch's rows, exactly); the graph-transformer layer projects the n
nodes before gathering per edge and has a hand-written backward in which every aggregation over
the ~690k decoder edges is a CSR product (:class:`recalign.models.augment.EdgeCSR`) — tests
compare both with the straightforward formulas, values and gradients.

Choices: the reference resamples at batch index ``i % fix_steps == 0`` *within* each epoch;
the backbone does not see epoch boundaries, so it counts training steps globally (on
Amazon-book's 30 batches per epoch the two schedules coincide). The masked graphs are not part
of the state dict. Seeds are scored on the raw layer-0 rows (before an alignment's layer-0
hook), the encoder runs on the hooked rows. Full-graph propagation only: seeds are chosen among
all nodes and the decoder's random edges join masked nodes anywhere in the graph, which a
batch's sampled neighbourhood does not hold. Shardable ID tables; under data-parallel training
the distinct-row means are taken over each worker's share of the batch (tests bound the
difference).
"""

from __future__ import annotations

from typing import ClassVar

import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recalign.data.graph import (NormalizedGraph, bipartite_adjacency, normalized_adjacency,
                                 propagate)
from recalign.data.sampler import BPRBatch
from recalign.models.augment import (EdgeCSR, MaskedGraphs, autocf_seed_scores,
                                     binary_graph, mask_subgraphs)
from recalign.models.base import Backbone, Layer0Hook, RecOutput
from recalign.models.contrastive import (l2_sum, log_sum_exp_contrast, pick_rows,
                                         unique_counts)
from recalign.models.registry import register_backbone, resolve_params
from recalign.tables import make_id_tables
from recalign.tables.collection import IdTables
from recalign.tables.optim import TableOptimizerSpec


class AutoCFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(32, ge=1)
    gcn_layers: int = Field(2, ge=0)
    gt_layers: int = Field(1, ge=0)
    heads: int = Field(4, ge=1)
    reg_weight: float = Field(1e-6, ge=0)
    ssl_reg: float = Field(1.0, ge=0)
    keep_rate: float = Field(0.2, ge=0, le=1, description="fraction of nodes added at random "
                             "to the decoder's masked set")
    seed_num: int = Field(100, ge=1)
    mask_depth: int = Field(2, ge=1)
    fix_steps: int = Field(10, ge=1, description="steps between seed/mask resampling")


#: HKUDS/RLMRec autocf.yml; REFERENCE.md "Other backbones" (AutoCF base row)
_COMMON = {"dim": 32, "gt_layers": 1, "heads": 4, "keep_rate": 0.2, "seed_num": 100,
           "mask_depth": 2, "fix_steps": 10}
PRESETS: dict[str, dict[str, object]] = {
    "rlmrec-amazon-book": {**_COMMON, "gcn_layers": 2, "reg_weight": 1e-6, "ssl_reg": 5.0},
    "rlmrec-yelp": {**_COMMON, "gcn_layers": 3, "reg_weight": 1e-7, "ssl_reg": 2.0},
    "rlmrec-steam": {**_COMMON, "gcn_layers": 2, "reg_weight": 1e-6, "ssl_reg": 0.5},
}


class _EdgeAttention(torch.autograd.Function):
    """Per-head edge attention ``out_r = Σ_{(r,c)} a_rc v_c`` with
    ``a_rc = exp(clamp(<q_r, k_c>, ±10)) / (Σ_{c'} exp(clamp(<q_r, k_c'>, ±10)) + 1e-8)``.

    Hand-written backward: the |E| × d tensors are touched only by the two per-edge dot
    products (forward ``<q_r, k_c>``, backward ``<g_r, v_c>``); every aggregation over edges
    (the output, ∂V, ∂Q, ∂K) is a CSR × dense product on the n nodes. Autograd's version of the
    reference formula keeps ~15 |E| × d intermediates (and zero-filled scatter targets) and was
    the slowest part of an AutoCF step. Tests compare it with the straightforward formula.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # type: ignore[override]
                g: EdgeCSR, heads: int):
        n, d = q.shape
        dh = d // heads
        e = g.rows.numel()
        s = (q.index_select(0, g.rows) * k.index_select(0, g.cols)).view(e, heads, dh).sum(-1)
        inside = (s >= -10.0) & (s <= 10.0)  # where clamp passes gradients
        a_raw = s.clamp_(-10.0, 10.0).exp_()
        denom = q.new_zeros((n, heads)).index_add_(0, g.rows, a_raw).add_(1e-8)
        a = a_raw / denom.index_select(0, g.rows)
        out = torch.cat([g.mm(a[:, h], v[:, h * dh:(h + 1) * dh]) for h in range(heads)], 1)
        ctx.g, ctx.heads = g, heads
        ctx.save_for_backward(q, k, v, a, denom, inside)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, k, v, a, denom, inside = ctx.saved_tensors
        g, heads = ctx.g, ctx.heads
        n, d = q.shape
        dh = d // heads
        e = g.rows.numel()
        grad = grad.contiguous()
        sl = [slice(h * dh, (h + 1) * dh) for h in range(heads)]
        dv = torch.cat([g.t_mm(a[:, h], grad[:, sl[h]].contiguous()) for h in range(heads)], 1)
        da = (grad.index_select(0, g.rows) * v.index_select(0, g.cols)).view(e, heads, dh).sum(-1)
        # a = a_raw / D_r:  ∂/∂a_raw_e = (da_e - Σ_{e' in row r} da_e' a_e') / D_r;  ∂a_raw/∂s = a_raw
        row_dot = q.new_zeros((n, heads)).index_add_(0, g.rows, da * a)
        ds = (da - row_dot.index_select(0, g.rows)) * a * inside  # a_raw / D_r = a
        dq = torch.cat([g.mm(ds[:, h], k[:, sl[h]].contiguous()) for h in range(heads)], 1)
        dk = torch.cat([g.t_mm(ds[:, h], q[:, sl[h]].contiguous()) for h in range(heads)], 1)
        return dq, dk, dv, None, None


class GraphTransformerLayer(nn.Module):
    """Multi-head attention over each node's edges (rows attend to their columns)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, dim)))
        self.k = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, dim)))
        self.v = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, dim)))

    def forward(self, rows: torch.Tensor, cols: torch.Tensor, x: torch.Tensor,
                edges: EdgeCSR | None = None) -> torch.Tensor:
        """``edges``: the same edge list as CSR (built here when not given)."""
        if edges is None:
            edges = EdgeCSR.build(rows, cols, x.shape[0])
        # the reference projects gathered rows (x[rows] @ Wq); projecting the n nodes first
        # gives the same q_r, k_c, v_c with n instead of |E| row products
        return _EdgeAttention.apply((x @ self.q).contiguous(), (x @ self.k).contiguous(),
                                    (x @ self.v).contiguous(), edges, self.heads)


@register_backbone("autocf")
class AutoCF(Backbone):
    Params: ClassVar[type[BaseModel]] = AutoCFParams
    PRESETS: ClassVar[dict[str, dict[str, object]]] = PRESETS

    def __init__(self, graph: NormalizedGraph, ones: NormalizedGraph,
                 params: AutoCFParams | None = None, *,
                 optimizer: TableOptimizerSpec | None = None,
                 tables: IdTables | None = None, table_backend: str = "torchrec",
                 device: torch.device | str = "cpu") -> None:
        super().__init__(graph.n_users, graph.n_items)
        self.params = params or AutoCFParams()
        self.graph = graph
        self.ones = ones
        self.tables = tables if tables is not None else make_id_tables(
            graph.n_users, graph.n_items, self.params.dim, optimizer=optimizer, device=device,
            backend=table_backend)
        self.gt = nn.ModuleList(GraphTransformerLayer(self.params.dim, self.params.heads)
                                for _ in range(self.params.gt_layers))
        self.full_rows = torch.repeat_interleave(torch.arange(graph.n_nodes),
                                                 torch.diff(graph.crow))
        self.full_cols = graph.col
        self._full_edges: EdgeCSR | None = None
        self.steps = 0
        self.masks: MaskedGraphs | None = None
        self.out_dim = self.params.dim

    @classmethod
    def build(cls, train: sp.spmatrix, params: AutoCFParams | dict | None = None, *,
              preset: str | None = None,
              optimizer: TableOptimizerSpec | None = None, table_backend: str = "torchrec",
              device: torch.device | str = "cpu") -> "AutoCF":
        p = resolve_params("autocf", AutoCFParams, PRESETS, params, preset)
        n_users, n_items = train.shape
        ones = binary_graph(bipartite_adjacency(train), n_users, n_items)
        return cls(normalized_adjacency(train), ones, p, optimizer=optimizer,
                   table_backend=table_backend, device=device)

    def resample(self, ego: torch.Tensor) -> torch.Tensor:
        """New seeds and masked graphs from layer-0 rows ``ego``; returns the infomax loss."""
        scores, seeds = autocf_seed_scores(self.ones, ego, self.params.seed_num)
        self.masks = mask_subgraphs(self.ones, seeds, self.params.mask_depth,
                                    self.params.keep_rate)
        return -scores.mean()

    def _encode(self, ego: torch.Tensor) -> torch.Tensor:
        if self.training and self.masks is not None:
            enc, rows, cols = self.masks.encoder, self.masks.decoder_rows, self.masks.decoder_cols
            edges = self.masks.decoder
        else:
            enc, rows, cols = self.graph, self.full_rows, self.full_cols
            if self._full_edges is None:
                self._full_edges = EdgeCSR.build(rows, cols, self.graph.n_nodes)
            edges = self._full_edges
        layers = propagate(enc, ego, self.params.gcn_layers)
        h = layers[-1]
        for gt in self.gt:
            h = gt(rows, cols, h, edges)
            layers.append(h)
        return torch.stack(layers).sum(0)

    def _layer0(self, layer0_hook: Layer0Hook | None):
        u0, i0 = self.tables.all_rows()
        raw = torch.cat([u0, i0], 0)
        return u0, i0, raw, (layer0_hook(raw) if layer0_hook is not None else raw)

    def forward(self, layer0_hook: Layer0Hook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, raw, ego = self._layer0(layer0_hook)
        if self.training and self.masks is None:
            with torch.no_grad():
                self.resample(raw)
        final = self._encode(ego)
        return final[: self.n_users], final[self.n_users:]

    def rec_forward(self, batch: BPRBatch, layer0_hook: Layer0Hook | None = None) -> RecOutput:
        u0, i0, raw, ego = self._layer0(layer0_hook)
        infomax = None
        if self.training:
            if self.steps % self.params.fix_steps == 0 or self.masks is None:
                infomax = self.resample(raw)
            self.steps += 1
        final = self._encode(ego)
        users_all, items_all = final[: self.n_users], final[self.n_users:]
        u, p, n = pick_rows(users_all, items_all, batch.users, batch.pos, batch.neg)
        rec = -(u * p).sum(-1).mean()
        # distinct users once, weighted by their multiplicity for the (non-deduplicated)
        # user-item term: the same mean over the batch's rows, ~17% fewer rows
        uu, uc = unique_counts(batch.users)
        pp = torch.unique(batch.pos)
        ue = users_all.index_select(0, uu)
        ssl = (log_sum_exp_contrast(ue, users_all)
               + log_sum_exp_contrast(items_all.index_select(0, pp), items_all))
        cl = self.params.ssl_reg * ssl + log_sum_exp_contrast(ue, items_all, uc)
        reg = self.params.reg_weight * l2_sum([u0, i0, *(w for gt in self.gt
                                                          for w in (gt.q, gt.k, gt.v))])
        loss = rec + reg + cl
        losses = {"rec": rec.detach(), "reg": reg.detach(), "cl": cl.detach()}
        if infomax is not None:
            loss = loss + infomax
            losses["infomax"] = infomax.detach()
        losses["loss"] = loss
        return RecOutput(losses=losses, users=u, pos=p, neg=n, all_users=users_all,
                         all_items=items_all, batch=batch, layer0_users=u0, layer0_items=i0)
