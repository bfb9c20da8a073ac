"""SASRec (Kang & McAuley, 2018) as RecBole trains it for the published full-ranking tables:
causal self-attention over the item sequence, the item table tied as output layer,
cross-entropy over all items (REFERENCE.md, "Sequential recommenders": 2 layers, 2 heads,
hidden 64, inner 256, GELU, dropout 0.5/0.5, max length 50). The original's BCE with one
sampled negative is weaker; ``loss: sampled`` gives a sampled softmax for huge catalogues.
"""

from __future__ import annotations

import torch
from pydantic import Field

from recalign.models.registry import register_backbone
from recalign.models.sequential import PositionalModel, SequentialParams
from recalign.models.transformer import SequenceEncoder, init_weights


class SASRecParams(SequentialParams):
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    inner: int = Field(256, ge=1, description="feed-forward size")
    attn_dropout: float = Field(0.5, ge=0, lt=1)


@register_backbone("sasrec")
class SASRec(PositionalModel):
    Params = SASRecParams

    def __init__(self, n_items: int, params: SASRecParams, data: object = None) -> None:
        super().__init__(n_items, params, data)
        p = params
        self.encoder = SequenceEncoder(p.dim, p.layers, p.heads, p.inner, p.dropout,
                                       p.attn_dropout, p.max_len, causal=True)
        init_weights(self, p.init_std)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(inputs, self.embed(inputs))
