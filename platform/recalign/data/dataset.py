"""The canonical in-memory dataset every job consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recalign.data.idmap import IdMap
from recalign.data.schema import INTERACTIONS, ITEMS, SPLIT_NAMES, TEST, TRAIN, USERS, VALID


@dataclass
class Dataset:
    """Integer-indexed users and items with interactions, optional side tables and a split.

    ``interactions`` follows :data:`recalign.data.schema.INTERACTIONS` (``split`` is 0/1/2 for
    train/valid/test); ``items``/``users`` follow ``ITEMS``/``USERS`` or are ``None``.
    ``report`` counts every repair made while loading (duplicates dropped, rows filtered, ...).
    """

    name: str
    user_map: IdMap
    item_map: IdMap
    interactions: pa.Table
    items: pa.Table | None = None
    users: pa.Table | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.interactions.schema.equals(INTERACTIONS), self.interactions.schema
        if self.items is not None:
            assert self.items.schema.equals(ITEMS), self.items.schema
        if self.users is not None:
            assert self.users.schema.equals(USERS), self.users.schema

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    def split_table(self, split: str | int) -> pa.Table:
        code = SPLIT_NAMES[split] if isinstance(split, str) else split
        return self.interactions.filter(pc.equal(self.interactions["split"], code))

    def pairs(self, split: str | int) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) int64 arrays of one split."""
        t = self.split_table(split)
        return t["user"].to_numpy(), t["item"].to_numpy()

    def matrix(self, split: str | int) -> sp.csr_matrix:
        """Binary user × item CSR matrix of one split."""
        u, i = self.pairs(split)
        m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)),
                          shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def counts(self) -> dict[str, int]:
        split = self.interactions["split"].to_numpy()
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.interactions.num_rows,
            "train": int((split == TRAIN).sum()),
            "valid": int((split == VALID).sum()),
            "test": int((split == TEST).sum()),
        }
