"""Multi-VAE (Liang et al., WWW 2018, "Variational Autoencoders for Collaborative Filtering"):
the ID-based baseline of CLLM4Rec (REFERENCE.md), trained by the ``multinomial`` task.

A user is the multi-hot vector ``x`` of their *training* items. The encoder reads the
L2-normalised ``x`` after input dropout (0.5) through ``[n_items -> 600] tanh`` and a linear
layer to ``mu`` and ``logvar`` (200-d each); the decoder maps ``z`` through ``[200 -> 600] tanh
-> [600 -> n_items]`` to logits whose softmax is the multinomial over items. Per user

    loss = -sum_j x_j log softmax(logits)_j + beta * KL(N(mu, exp(logvar)) || N(0, I)),

with ``z = mu + eps * exp(logvar / 2)`` in training and ``z = mu`` at evaluation, and beta
annealed per optimizer step: ``beta = min(anneal_cap, step / total_anneal_steps)`` (0.2 and
200,000 in the authors' code). Initialisation as the authors' code: Xavier-uniform weights,
biases from a normal with std 0.001 truncated at two std.

The first layer is an ``EmbeddingBag`` (sum, per-item weights) over the user's items rather
than a dense ``[B, n_items]`` product: the same affine map, without materialising ``x``. The
noise (dropout keep-multipliers per training item, ``eps``) comes from the task, drawn on the
host, so that a run does not depend on how users are spread over ranks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recalign.models.registry import register_backbone


class MultiVAEParams(BaseModel):
    """The paper's architecture and schedule (authors' code defaults)."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(600, ge=1, description="encoder/decoder hidden layer size")
    latent: int = Field(200, ge=1, description="size of z (mu, logvar)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout on the normalised input")
    anneal_cap: float = Field(0.2, ge=0, description="the largest KL weight beta")
    total_anneal_steps: int = Field(200_000, ge=1, description="optimizer steps for beta to "
                                    "grow linearly from 0 to 1 (capped at anneal_cap)")


def _init_bias(b: torch.Tensor) -> None:
    nn.init.trunc_normal_(b, std=1e-3, a=-2e-3, b=2e-3)


@register_backbone("multivae")
class MultiVAE(nn.Module):
    task: ClassVar[str] = "multinomial"
    name: ClassVar[str] = ""
    needs_semantic: ClassVar[bool] = False
    Params: ClassVar[type[MultiVAEParams]] = MultiVAEParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, n_items: int, params: MultiVAEParams) -> None:
        super().__init__()
        self.n_items, self.params = int(n_items), params
        p = params
        self.enc_in = nn.EmbeddingBag(self.n_items, p.hidden, mode="sum")  # rows = items
        self.enc_in_bias = nn.Parameter(torch.empty(p.hidden))
        self.enc_out = nn.Linear(p.hidden, 2 * p.latent)
        self.dec_hidden = nn.Linear(p.latent, p.hidden)
        self.dec_out = nn.Linear(p.hidden, self.n_items)
        # Xavier's bound is symmetric in fan-in and fan-out, so the [items, hidden] bag gets
        # the same values range as the paper's [hidden, items] matrix
        for w in (self.enc_in.weight, self.enc_out.weight, self.dec_hidden.weight,
                  self.dec_out.weight):
            nn.init.xavier_uniform_(w)
        for b in (self.enc_in_bias, self.enc_out.bias, self.dec_hidden.bias, self.dec_out.bias):
            _init_bias(b)

    @classmethod
    def build(cls, n_items: int, params: Any = None) -> "MultiVAE":
        p = params if isinstance(params, MultiVAEParams) else MultiVAEParams(**(params or {}))
        return cls(n_items, p)

    def beta(self, step: int) -> float:
        """The KL weight at optimizer step ``step`` (0-based: the first step has beta 0)."""
        p = self.params
        return min(p.anneal_cap, step / p.total_anneal_steps)

    def encode(self, items: torch.Tensor, offsets: torch.Tensor,
               weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` [B, latent] of users given as bags: ``items`` (flat item ids),
        ``offsets`` [B] (start of each user's items) and ``weights`` (each item's input value:
        the normalised 1, times the dropout multiplier in training)."""
        h = self.enc_in(items, offsets, per_sample_weights=weights) + self.enc_in_bias
        out = self.enc_out(torch.tanh(h))
        return out[:, :self.params.latent], out[:, self.params.latent:]

    def hidden_of(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's hidden activation [B, hidden]; logits = it @ item_rows().T + bias."""
        return torch.tanh(self.dec_hidden(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec_out(self.hidden_of(z))

    def item_rows(self) -> torch.Tensor:
        """[n_items, hidden]: the output layer's row per item."""
        return self.dec_out.weight

    def item_bias(self) -> torch.Tensor:
        return self.dec_out.bias

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Per user KL(N(mu, exp(logvar)) || N(0, I)) [B]."""
        return 0.5 * (torch.exp(logvar) + mu * mu - 1.0 - logvar).sum(-1)

    @staticmethod
    def multinomial_nll(logits: torch.Tensor, rows: torch.Tensor,
                        items: torch.Tensor) -> torch.Tensor:
        """Per user ``-sum_j x_j log softmax(logits)_j`` [B] for binary ``x`` given as its
        nonzeros (``rows``, ``items``): ``n_u * logsumexp - sum of the items' logits``."""
        lse = torch.logsumexp(logits, dim=-1)
        counts = torch.bincount(rows, minlength=logits.shape[0]).to(logits.dtype)
        picked = torch.zeros_like(lse).index_add_(0, rows, logits[rows, items])
        return counts * lse - picked

    def user_losses(self, items: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor,
                    weights: torch.Tensor,
                    eps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nll, kl)`` per user [B]; ``eps`` [B, latent] the reparameterisation noise
        (None: ``z = mu``)."""
        mu, logvar = self.encode(items, offsets, weights)
        z = mu if eps is None else mu + eps * torch.exp(0.5 * logvar)
        return self.multinomial_nll(self.decode(z), rows, items), self.kl(mu, logvar)

    @torch.no_grad()
    def scores(self, items: torch.Tensor, offsets: torch.Tensor,
               weights: torch.Tensor) -> torch.Tensor:
        """Evaluation logits [B, n_items] from ``z = mu`` (no dropout: plain normalised input)."""
        mu, _ = self.encode(items, offsets, weights)
        return self.decode(mu)


def normalised_weights(offsets: torch.Tensor, n_nonzero: int) -> tuple[torch.Tensor,
                                                                       torch.Tensor]:
    """``(rows, weights)`` of bags given by ``offsets`` over ``n_nonzero`` items: each item's
    user row, and 1/sqrt(n_u) — the L2-normalised binary input (an empty bag stays zero)."""
    lengths = torch.diff(offsets, append=offsets.new_tensor([n_nonzero]))
    rows = torch.repeat_interleave(torch.arange(offsets.numel(), device=offsets.device),
                                   lengths)
    inv = lengths.clamp(min=1).to(torch.float32).rsqrt()
    return rows, inv[rows]


__all__ = ["MultiVAE", "MultiVAEParams", "normalised_weights"]
