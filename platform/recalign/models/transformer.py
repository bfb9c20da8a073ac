"""The self-attention encoder every transformer-based sequential model shares (SASRec, and the
bidirectional BERT4Rec / CL4SRec / DuoRec / FDSA streams of later models).

RecBole's layout, which the published numbers used: post-LayerNorm blocks (attention then a
GELU feed-forward, each with residual, dropout and LayerNorm), on ``item + position``
embeddings that are LayerNorm'd and dropped out first; weights initialised N(0, 0.02).
Built on ``nn.TransformerEncoderLayer`` (the fused kernels) rather than by hand.

Masks. Sequences are right-aligned (left-padded with 0). A query may attend to a key when the
key is not padding (and, if ``causal``, not in the future) — and always to itself, so no row
is fully masked (that would give NaN for padding queries, whose outputs nobody reads).
"""

from __future__ import annotations

import torch
from torch import nn


def attention_mask(inputs: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """Boolean [B*heads, L, L], True where attention is *not* allowed (torch's convention)."""
    b, n = inputs.shape
    pad_key = (inputs == 0).unsqueeze(1).expand(b, n, n)
    blocked = pad_key
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=inputs.device).triu(1)
        blocked = blocked | future
    eye = torch.eye(n, dtype=torch.bool, device=inputs.device)
    blocked = blocked & ~eye
    return blocked.repeat_interleave(heads, dim=0)


class SequenceEncoder(nn.Module):
    """``encode(inputs [B, L] model ids, item_emb [B, L, d]) -> hidden [B, L, d]``."""

    def __init__(self, dim: int, layers: int, heads: int, inner: int, dropout: float,
                 attn_dropout: float, max_len: int, causal: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.causal = heads, causal
        self.position = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, inner, dropout=dropout,
                                           activation="gelu", batch_first=True,
                                           norm_first=False, layer_norm_eps=1e-12)
        # torch applies one dropout rate to attention weights and hidden states; RecBole's two
        # rates are equal (0.5 / 0.5) in every published setting used here
        layer.self_attn.dropout = attn_dropout
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, inputs: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        # a batch may be trimmed to its longest history (leading columns all padding): the
        # positions stay counted from the end, so the most recent item is always max_len - 1
        n = inputs.shape[1]
        max_len = self.position.num_embeddings
        if n > max_len:
            raise ValueError(f"sequence of {n} positions, the model allows {max_len} (max_len)")
        pos = torch.arange(max_len - n, max_len, device=inputs.device)
        h = self.dropout(self.norm(item_emb + self.position(pos)))
        mask = attention_mask(inputs, self.heads, self.causal)
        return self.layers(h, mask=mask)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """RecBole's initialisation: N(0, std) for linear and embedding weights, zero biases,
    LayerNorm at identity."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.normal_(m.in_proj_weight, 0.0, std)
            nn.init.zeros_(m.in_proj_bias)
