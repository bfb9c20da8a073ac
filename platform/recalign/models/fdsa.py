"""FDSA (Zhang et al., 2019) as RecBole trains it: two causal self-attention streams over the
history — item IDs, and item features (each item's attribute ids, mean-pooled; Beauty:
categories and brand from ``Beauty_item2attributes.json``) — whose states are concatenated,
projected back to the hidden size, LayerNorm'd and dropped out; the item table tied as output
layer, cross-entropy over all items. Attributes come from ``data.item_attributes`` or the
items table (:mod:`recalign.data.item_attributes`); items without any give a zero feature.
With ``item_table: sharded`` the attribute table is a third table of the TorchRec collection
(``attribute``, read in bags whose sums are divided by the bag sizes), sharded and updated by
the fused optimizer with the item rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from recalign.models.registry import register_backbone
from recalign.models.sasrec import SASRecParams
from recalign.models.sequential import PositionalModel
from recalign.models.transformer import SequenceEncoder, init_weights

ATTRIBUTE = "attribute"


@register_backbone("fdsa")
class FDSA(PositionalModel):
    Params = SASRecParams
    needs_attributes = True

    def __init__(self, n_items: int, params: SASRecParams, data: object = None) -> None:
        super().__init__(n_items, params, data)
        p = params
        attrs = data.attributes  # type: ignore[union-attr]
        # model ids index the CSR: row 0 (padding) has no attributes
        self.register_buffer("attr_indptr", torch.from_numpy(
            np.concatenate([[0], attrs.indptr]).astype(np.int64)), persistent=False)
        self.register_buffer("attr_ids", torch.from_numpy(attrs.ids).long(), persistent=False)
        self.attributes: nn.EmbeddingBag | None = nn.EmbeddingBag(
            max(1, attrs.n_attributes), p.dim, mode="mean")
        self._frozen_attributes: torch.Tensor | None = None
        self.item_stream = SequenceEncoder(p.dim, p.layers, p.heads, p.inner, p.dropout,
                                           p.attn_dropout, p.max_len, causal=True)
        self.feature_stream = SequenceEncoder(p.dim, p.layers, p.heads, p.inner, p.dropout,
                                              p.attn_dropout, p.max_len, causal=True)
        self.concat = nn.Linear(2 * p.dim, p.dim)
        self.norm = nn.LayerNorm(p.dim, eps=1e-12)
        self.dropout = nn.Dropout(p.dropout)
        init_weights(self, p.init_std)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def bag_tables(self) -> dict[str, int]:
        return {ATTRIBUTE: self.attributes.num_embeddings}

    def use_tables(self, tables: nn.Module, lookup_size: Callable[[int], int]) -> None:
        super().use_tables(tables, lookup_size)
        self.attributes = None

    def freeze_rows(self, on: bool) -> None:
        super().freeze_rows(on)
        self._frozen_attributes = None
        if on and self.tables is not None:
            self._frozen_attributes = self.tables.all_rows_of(ATTRIBUTE).detach()

    def item_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean attribute embedding of each input item, ``[B, L, d]`` (zero: none)."""
        uniq, inv = torch.unique(inputs, return_inverse=True)
        start = self.attr_indptr[uniq]
        lengths = self.attr_indptr[uniq + 1] - start
        bag_offsets = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(int(lengths.sum()), device=inputs.device) - \
            torch.repeat_interleave(bag_offsets, lengths)
        flat = self.attr_ids[torch.repeat_interleave(start, lengths) + within]
        if self.attributes is not None:
            return self.attributes(flat, bag_offsets)[inv]
        if self._frozen_attributes is not None:  # evaluation: no lockstep with other ranks
            sums = nn.functional.embedding_bag(flat, self._frozen_attributes, bag_offsets,
                                               mode="sum")
        else:
            sums = self.tables.lookup_bags(  # type: ignore[union-attr]
                ATTRIBUTE, flat, lengths, self._lookup_size(lengths.numel()))
        return (sums / lengths.clamp(min=1).unsqueeze(1).to(sums.dtype))[inv]

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        h_item = self.item_stream(inputs, self.embed(inputs))
        h_feat = self.feature_stream(inputs, self.item_features(inputs))
        return self.dropout(self.norm(self.concat(torch.cat([h_item, h_feat], -1))))
