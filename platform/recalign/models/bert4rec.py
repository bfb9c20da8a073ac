"""BERT4Rec (Sun et al., 2019) as RecBole trains it: a bidirectional transformer over the
history, trained to recover randomly masked items (each position masked with probability
``mask_ratio``, RecBole 0.2; a window with none masked gets its last item masked), predicted
with a mask token appended after the history. Output: a dense-GELU-LayerNorm transform, then
the item table tied as output layer, cross-entropy over all items (REFERENCE.md).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from recalign.models.registry import register_backbone
from recalign.models.sequential import (LossFn, PositionalModel, SequentialParams, ViewContext,
                                        pad_rows)
from recalign.models.transformer import SequenceEncoder, init_weights


class BERT4RecParams(SequentialParams):
    samples: Literal["windows"] = "windows"
    # RecBole's BERT4Rec defaults (0.2 / 0.2): the masked-item objective gets a training
    # signal from ~20% of the positions, and 0.5 dropout slows it several-fold
    dropout: float = Field(0.2, ge=0, lt=1)
    attn_dropout: float = Field(0.2, ge=0, lt=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    inner: int = Field(256, ge=1)
    mask_ratio: float = Field(0.2, gt=0, le=1)


@register_backbone("bert4rec")
class BERT4Rec(PositionalModel):
    Params = BERT4RecParams
    extra_tokens = 1  # the mask token, row n_items + 1

    def __init__(self, n_items: int, params: BERT4RecParams, data: object = None) -> None:
        super().__init__(n_items, params, data)
        p = params
        self.encoder = SequenceEncoder(p.dim, p.layers, p.heads, p.inner, p.dropout,
                                       p.attn_dropout, p.max_len, causal=False)
        self.head = nn.Sequential(nn.Linear(p.dim, p.dim), nn.GELU(),
                                  nn.LayerNorm(p.dim, eps=1e-12))
        init_weights(self, p.init_std)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs, self.embed(inputs)))

    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        keep = inputs[:, -(self.params.max_len - 1):]
        mask = torch.full_like(keep[:, :1], self.mask_id)
        return self.hidden(torch.cat([keep, mask], dim=1))[:, -1]

    def make_views(self, seqs: list[np.ndarray], rngs: list[np.random.Generator],
                   ctx: ViewContext) -> dict[str, torch.Tensor]:
        masked, labels = [], []
        for s, rng in zip(seqs, rngs):
            s = s[-self.params.max_len:]
            hit = rng.random(s.size) < self.params.mask_ratio
            if not hit.any():
                hit[-1] = True
            masked.append(np.where(hit, self.mask_id, s))
            labels.append(np.where(hit, s, 0))
        return {"masked": pad_rows(masked), "labels": pad_rows(labels)}

    def loss_terms(self, batch: Any) -> int:
        return int((batch.views["labels"] > 0).sum())

    def rec_loss(self, batch: Any, loss_fn: LossFn) -> torch.Tensor:
        labels = batch.views["labels"]
        h = self.hidden(batch.views["masked"])
        keep = labels > 0
        return loss_fn(h[keep], labels[keep])
