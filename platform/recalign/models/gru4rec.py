"""GRU4Rec (Hidasi et al., 2016) as RecBole trains it for the published full-ranking tables:
item embeddings with dropout, a GRU over the history, a dense layer back to the embedding size,
the item table tied as output layer, cross-entropy over all items (RecBole defaults: embedding
64, hidden 128, 1 layer, dropout 0.3). A GRU is causal, so one window teaches every position.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from recalign.models.registry import register_backbone
from recalign.models.sequential import PositionalModel, SequentialParams


class GRU4RecParams(SequentialParams):
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout on the item embeddings")
    hidden_size: int = Field(128, ge=1)
    layers: int = Field(1, ge=1)


@register_backbone("gru4rec")
class GRU4Rec(PositionalModel):
    Params = GRU4RecParams

    def __init__(self, n_items: int, params: GRU4RecParams, data: object = None) -> None:
        super().__init__(n_items, params, data)
        p = params
        self.emb_dropout = nn.Dropout(p.dropout)
        self.gru = nn.GRU(p.dim, p.hidden_size, p.layers, batch_first=True, bias=False)
        self.dense = nn.Linear(p.hidden_size, p.dim)
        # RecBole: xavier-normal embeddings, xavier-uniform GRU weights
        nn.init.xavier_normal_(self.items.weight)
        for w in self.gru.parameters():
            nn.init.xavier_uniform_(w)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        # right-aligned histories start with padding: a bias-free GRU (RecBole's) fed zero
        # vectors from a zero state stays exactly at zero (r = z = 1/2, candidate tanh(0) = 0),
        # so leading padding changes no state and no packing is needed
        out, _ = self.gru(self.emb_dropout(self.embed(inputs)))
        return self.dense(out)
