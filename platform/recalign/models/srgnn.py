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
from typing import Any, Callable, Literal

import torch
from pydantic import Field
from torch import nn

from recalign.models.registry import register_backbone
from recalign.models.sequential import SequentialModel, SequentialParams


class SRGNNParams(SequentialParams):
    samples: Literal["prefixes"] = "prefixes"
    dropout: float = Field(0.0, ge=0, lt=1, description="unused by SR-GNN (kept at 0)")
    steps: int = Field(1, ge=1, description="gated-GNN propagation steps")


def normalized_adjacency(adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a_in, a_out)`` of 0/1 adjacencies ``adj[b, u, v]`` (edge u -> v): ``a_in[v, u] =
    A[u, v] / indeg(v)``, ``a_out[u, v] = A[u, v] / outdeg(u)`` (degree 0 divides by 1)."""
    indeg = adj.sum(1).clamp(min=1)   # [B, N]: column sums
    outdeg = adj.sum(2).clamp(min=1)  # row sums
    return adj.transpose(1, 2) / indeg.unsqueeze(2), adj / outdeg.unsqueeze(2)


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
    return (nodes, alias, *normalized_adjacency(adj))


class GatedGraph(nn.Module):
    """SR-GNN's encoder over any batch of graphs: the gated GNN (``steps`` propagation steps)
    on node embeddings ``[B, N, d]`` with normalised adjacencies ``[B, N, N]``, and the soft-
    attention readout on a chosen node (SR-GNN: the most recent item). Shared by
    :class:`SRGNN` (session graphs) and the LLMRG fusion model (reasoning graphs)."""

    def __init__(self, d: int, steps: int = 1) -> None:
        super().__init__()
        self.steps = steps
        self.bias_in = nn.Parameter(torch.empty(d))
        self.bias_out = nn.Parameter(torch.empty(d))
        self.edge_in = nn.Linear(d, d)
        self.edge_out = nn.Linear(d, d)
        self.cell = nn.GRUCell(2 * d, d)
        self.w1 = nn.Linear(d, d)
        self.w2 = nn.Linear(d, d)
        self.q = nn.Linear(d, 1, bias=False)
        self.w3 = nn.Linear(2 * d, d)

    def init_uniform(self, first: list[nn.Parameter] | None = None) -> None:
        """The authors' initialisation: every weight U(-1/sqrt(d), 1/sqrt(d)); ``first`` (e.g.
        an item table) drawn right after the two biases, the order of the original module."""
        stdv = 1.0 / math.sqrt(self.bias_in.numel())
        rest = [w for n, w in self.named_parameters() if n not in ("bias_in", "bias_out")]
        for w in [self.bias_in, self.bias_out, *(first or []), *rest]:
            nn.init.uniform_(w, -stdv, stdv)

    def gnn(self, h: torch.Tensor, a_in: torch.Tensor, a_out: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            msg = torch.cat([a_in @ self.edge_in(h) + self.bias_in,
                             a_out @ self.edge_out(h) + self.bias_out], -1)
            h = self.cell(msg.flatten(0, 1), h.flatten(0, 1)).view_as(h)
        return h

    def readout(self, h: torch.Tensor, mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """``W3 [s_g; last]`` with ``s_g = Σ_i α_i h_i`` over the unmasked rows of ``h``
        ``[B, M, d]``, ``α_i = qᵀσ(W1 last + W2 h_i)``."""
        alpha = self.q(torch.sigmoid(self.w1(last).unsqueeze(1) + self.w2(h)))
        s_g = (alpha * h * mask.unsqueeze(-1)).sum(1)
        return self.w3(torch.cat([s_g, last], -1))

    def sessions(self, inputs: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]
                 ) -> torch.Tensor:
        """SR-GNN's state of right-aligned histories ``[B, L]``: the session graph encoded,
        read out over the positions (repeats count) on the most recent item."""
        nodes, alias, a_in, a_out = session_graphs(inputs)
        h = self.gnn(embed(nodes), a_in, a_out)
        seq = h.gather(1, alias.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # [B, L, d]
        return self.readout(seq, inputs > 0, seq[:, -1])  # right-aligned: the last item


@register_backbone("srgnn")
class SRGNN(SequentialModel):
    Params = SRGNNParams

    def __init__(self, n_items: int, params: SRGNNParams, data: object = None) -> None:
        super().__init__(n_items, params, data)
        self.graph = GatedGraph(params.dim, params.steps)
        self.graph.init_uniform([self.items.weight])
        with torch.no_grad():
            self.items.weight[0].zero_()
        self._register_load_state_dict_pre_hook(_flat_keys_to_graph)

    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.graph.sessions(inputs, self.embed)


def _flat_keys_to_graph(state: dict[str, Any], prefix: str, *_: Any) -> None:
    """Weights saved before the encoder moved into ``graph`` (``edge_in.weight``, ...) load
    under their new names (``graph.edge_in.weight``)."""
    for key in [k for k in state if k.startswith(prefix)]:
        name = key[len(prefix):]
        if name.split(".")[0] in _GRAPH_PARTS:
            state[f"{prefix}graph.{name}"] = state.pop(key)


_GRAPH_PARTS = {"bias_in", "bias_out", "edge_in", "edge_out", "cell", "w1", "w2", "q", "w3"}
