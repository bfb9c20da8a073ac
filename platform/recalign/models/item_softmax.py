"""Next-item losses over the item table: full softmax, or sampled softmax for huge catalogues.

``full``: cross-entropy of each hidden state against every item (the item table is the output
layer, tied), as RecBole trains SASRec with ``loss_type: CE``.

``sampled``: one set of ``negatives`` items per batch, shared by all rows, drawn uniformly or
by popularity (``count^alpha``); logits are corrected by ``- log q(item)`` (logQ correction,
Bengio & Senécal; Yi et al. 2019), which makes the sampled loss's gradient an unbiased
estimate of the full softmax's as the sample grows; a sampled negative equal to the row's
target is masked. Written by hand: no maintained library offers it for plain torch tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


class NegativeSampler:
    """Shared negatives per batch from a fixed distribution over items (model ids 1..n)."""

    def __init__(self, n_items: int, kind: str, counts: np.ndarray | None = None,
                 alpha: float = 0.75) -> None:
        if kind == "uniform":
            q = np.full(n_items, 1.0 / n_items)
        elif kind == "popularity":
            if counts is None:
                raise ValueError("popularity negatives need item counts")
            w = np.power(np.asarray(counts, dtype=np.float64) + 1.0, alpha)
            q = w / w.sum()
        else:
            raise ValueError(f"negative sampler {kind!r}: expected uniform or popularity")
        self.q = torch.from_numpy(q.astype(np.float64))
        self.log_q = torch.log(self.q).float()

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``k`` model ids (dataset id + 1), with replacement."""
        return torch.multinomial(self.q, k, replacement=True, generator=generator) + 1


def full_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, items: torch.Tensor,
                      bf16: bool = False) -> torch.Tensor:
    """Mean CE of ``hidden`` [N, d] against ``targets`` [N] (model ids) over ``items`` [n, d]
    (rows for model ids 1..n); ``bf16``: the [N, n] product in bf16, the softmax in fp32."""
    if bf16:
        logits = (hidden.to(torch.bfloat16) @ items.to(torch.bfloat16).T).float()
    else:
        logits = hidden @ items.T
    return F.cross_entropy(logits, targets - 1)


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, target_rows: torch.Tensor,
                         negatives: torch.Tensor, negative_rows: torch.Tensor,
                         log_q: torch.Tensor) -> torch.Tensor:
    """Mean sampled-softmax CE with logQ correction; ``target_rows`` [N, d] the output rows of
    ``targets`` [N], ``negative_rows`` [k, d] those of ``negatives`` [k] (model ids shared by
    rows: looked up once, so a sharded table serves only these rows); ``log_q`` [n]
    log-probabilities of sampling each item (index = model id - 1)."""
    log_q = log_q.to(hidden.device)
    pos = (hidden * target_rows).sum(-1) - log_q[targets - 1]
    neg = hidden @ negative_rows.T - log_q[negatives - 1]
    neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), -math.inf)
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))
