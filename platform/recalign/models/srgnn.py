"""SR-GNN (Wu et al., 2019; CRIPAC-DIG/SR-GNN), as REFERENCE.md describes it.

Each history becomes a session graph: nodes are its distinct items, an edge u -> v for every
consecutive pair (weight 1, repeats not counted). Messages average over predecessors
(``A_in = Aᵀ / in-degree``) and successors (``A_out = A / out-degree``) after their own linear
maps, and a GRU cell updates the nodes (``steps`` times; the authors' default 1) — the gated
GNN of the paper, whose gate equations are exactly ``nn.GRUCell``'s. Readout: soft attention of
every position on the last item, ``α_i = qᵀσ(W1 h_last + W2 h_i)``, ``s_g = Σ α_i h_i``, and
the hybrid ``s = W3 [s_g; h_last]``, scored against the item table (cross-entropy over all
items). Trained on every prefix of the training sequences (one state per sequence).

The graphs are built on the batch's device with tensor operations (sort, searchsorted,
scatter), not per session in Python, so a batch costs a few kernels wherever it runs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from recalign.models.registry import register_backbone
from recalign.models.sequential import SequentialModel, SequentialParams


class SRGNNParams(SequentialParams):
    samples: Literal["prefixes"] = "prefixes"
    dropout: float = Field(0.0, ge=0, lt=1, description="unused by SR-GNN (kept at 0)")
    steps: int = Field(1, ge=1, description="gated-GNN propagation steps")


def session_graphs(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """``(nodes [B, N], alias [B, L], a_in [B, N, N], a_out [B, N, N])`` of right-aligned
    histories ``[B, L]`` (0 padding): ``nodes`` the distinct items in ascending id order (0 in
    unused slots), ``alias[b, t]`` the node of position t, ``a_in[v, u] = A[u, v] / indeg(v)``,
    ``a_out[u, v] = A[u, v] / outdeg(u)``."""
    b, n = inputs.shape
    srt, _ = inputs.sort(dim=1)
    new = srt != 0
    new[:, 1:] &= srt[:, 1:] != srt[:, :-1]
    slot = new.long().cumsum(1) - 1
    width = max(1, int(new.sum(1).max()))
    big = torch.iinfo(inputs.dtype).max  # unused slots sort after every item
    nodes = torch.full((b, width), big, dtype=inputs.dtype, device=inputs.device)
    rows = torch.arange(b, device=inputs.device).unsqueeze(1).expand(b, n)
    nodes[rows[new], slot[new]] = srt[new]
    alias = torch.searchsorted(nodes, inputs).clamp(max=width - 1)
    nodes = nodes.masked_fill(nodes == big, 0)
    pair = (inputs[:, :-1] > 0) & (inputs[:, 1:] > 0)
    adj = torch.zeros(b, width, width, device=inputs.device)
    adj[rows[:, 1:][pair], alias[:, :-1][pair], alias[:, 1:][pair]] = 1.0
    indeg = adj.sum(1).clamp(min=1)   # [B, N]: column sums
    outdeg = adj.sum(2).clamp(min=1)  # row sums
    return nodes, alias, adj.transpose(1, 2) / indeg.unsqueeze(2), adj / outdeg.unsqueeze(2)


@register_backbone("srgnn")
class SRGNN(SequentialModel):
    Params = SRGNNParams

    def __init__(self, n_items: int, params: SRGNNParams, data: object = None) -> None:
        super().__init__(n_items, params, data)
        d = params.dim
        self.edge_in = nn.Linear(d, d)
        self.edge_out = nn.Linear(d, d)
        self.bias_in = nn.Parameter(torch.empty(d))
        self.bias_out = nn.Parameter(torch.empty(d))
        self.cell = nn.GRUCell(2 * d, d)
        self.w1 = nn.Linear(d, d)
        self.w2 = nn.Linear(d, d)
        self.q = nn.Linear(d, 1, bias=False)
        self.w3 = nn.Linear(2 * d, d)
        stdv = 1.0 / math.sqrt(d)  # the authors' initialisation: every weight U(-stdv, stdv)
        for w in self.parameters():
            nn.init.uniform_(w, -stdv, stdv)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def gnn(self, h: torch.Tensor, a_in: torch.Tensor, a_out: torch.Tensor) -> torch.Tensor:
        for _ in range(self.params.steps):
            msg = torch.cat([a_in @ self.edge_in(h) + self.bias_in,
                             a_out @ self.edge_out(h) + self.bias_out], -1)
            h = self.cell(msg.flatten(0, 1), h.flatten(0, 1)).view_as(h)
        return h

    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        nodes, alias, a_in, a_out = session_graphs(inputs)
        h = self.gnn(self.embed(nodes), a_in, a_out)
        seq = h.gather(1, alias.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # [B, L, d]
        last = seq[:, -1]  # right-aligned: the most recent item
        alpha = self.q(torch.sigmoid(self.w1(last).unsqueeze(1) + self.w2(seq)))
        s_g = (alpha * seq * (inputs > 0).unsqueeze(-1)).sum(1)
        return self.w3(torch.cat([s_g, last], -1))
