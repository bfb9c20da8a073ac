"""What a training run reads: the splits as binary matrices, and seeding.

:class:`CFData` (users × items CSR matrices of train/valid/test) is the pairwise task's data
and the history masks of every task's evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class CFData:
    """Binary users × items CSR matrices of the three splits."""

    train: sp.csr_matrix
    valid: sp.csr_matrix | None
    test: sp.csr_matrix | None

    def __post_init__(self) -> None:
        self.train = _binary_csr(self.train, "train")
        shape = self.train.shape
        for name in ("valid", "test"):
            m = getattr(self, name)
            if m is not None:
                m = _binary_csr(m, name)
                if m.shape != shape:
                    raise ValueError(f"{name} matrix has shape {m.shape}, train has {shape}")
                setattr(self, name, m)

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def eval_matrices(self, split: str, mask_valid_at_test: bool
                      ) -> tuple[sp.csr_matrix, sp.csr_matrix] | None:
        """(held-out targets, items masked) of ``split``; None for an empty test split (an
        empty validation split is an error: nothing to select a model on)."""
        from recalign.errors import ConfigError

        heldout = self.valid if split == "valid" else self.test
        if heldout is None or heldout.nnz == 0:
            if split == "valid":
                raise ConfigError("the validation split is empty")
            return None
        exclude = self.train
        if split == "test" and mask_valid_at_test:
            exclude = (self.train + self.valid).tocsr()
        return heldout, exclude

    @classmethod
    def from_dataset(cls, ds: Any) -> "CFData":
        """From a :class:`recalign.data.dataset.Dataset` (its train/valid/test splits)."""
        return cls(ds.matrix("train"), ds.matrix("valid"), ds.matrix("test"))


def _binary_csr(m: Any, name: str) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise TypeError(f"{name}: expected a scipy sparse matrix, got {type(m).__name__}")
    m = sp.csr_matrix(m, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch (CPU and CUDA), numpy and random; return the numpy Generator for sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device
    return np.random.default_rng(seed)
