"""BPR triples: every training pair once per epoch with one uniform negative, vectorised.

A negative for pair (u, i) is drawn uniformly from the items ``u`` has *not* interacted with in
training (the reference code rejects a draw that is a training positive and redraws). Here all
negatives of an epoch are drawn at once; membership is tested against the sorted array of
training keys ``u * n_items + i`` with one ``searchsorted``; only the rejected draws are redrawn,
until none remain. The result has exactly the reference distribution (uniform over the
complement), with no Python loop over pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class BPRBatch:
    """One mini-batch of (user, positive item, negative item) ids, int64 tensors of equal length."""

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.numel())


class BPRSampler:
    """Samples the negatives of an epoch and yields shuffled batches of training triples."""

    def __init__(self, train: sp.spmatrix) -> None:
        m = sp.csr_matrix(train, copy=True)
        m.eliminate_zeros()
        m.sum_duplicates()
        m.sort_indices()
        self.n_users, self.n_items = m.shape
        counts = np.diff(m.indptr)
        self.users = np.repeat(np.arange(self.n_users, dtype=np.int64), counts)
        self.items = m.indices.astype(np.int64)
        self._keys = self.users * self.n_items + self.items  # sorted: CSR order
        full = np.flatnonzero(counts >= self.n_items)
        if full.size:
            raise ValueError(f"users {full[:5].tolist()} interacted with every item: no "
                             "negative item exists for them")

    def __len__(self) -> int:
        return int(self.users.size)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean array: is (users[j], items[j]) a training pair."""
        keys = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if self._keys.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.searchsorted(self._keys, keys)
        pos = np.minimum(pos, self._keys.size - 1)
        return self._keys[pos] == keys

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniform non-positive item per entry of ``users``."""
        users = np.asarray(users, dtype=np.int64)
        neg = rng.integers(0, self.n_items, size=users.size, dtype=np.int64)
        todo = np.flatnonzero(self.is_positive(users, neg))
        while todo.size:
            neg[todo] = rng.integers(0, self.n_items, size=todo.size, dtype=np.int64)
            todo = todo[self.is_positive(users[todo], neg[todo])]
        return neg

    def epoch(self, rng: np.random.Generator, batch_size: int,
              shuffle: bool = True) -> Iterator[BPRBatch]:
        """Negatives for every training pair, then batches of ``batch_size`` (last one partial)."""
        neg = self.sample_negatives(self.users, rng)
        order = rng.permutation(self.users.size) if shuffle else np.arange(self.users.size)
        u = torch.from_numpy(self.users[order])
        p = torch.from_numpy(self.items[order])
        n = torch.from_numpy(neg[order])
        for s in range(0, u.numel(), batch_size):
            yield BPRBatch(u[s:s + batch_size], p[s:s + batch_size], n[s:s + batch_size])
