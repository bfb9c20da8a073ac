"""Stable maps from original entity keys (strings) to dense int64 indexes.

Stability is the point: a grown data set re-ingested later keeps every old index and appends
new keys at the end, so embedding-table rows, checkpoints and exported indexes stay valid
across nightly runs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recalign.data.schema import ID_MAP
from recalign.errors import DataError


class IdMap:
    """Index ``i`` belongs to ``keys[i]``; lookups are hash joins in Arrow (no Python loops)."""

    def __init__(self, keys: pa.Array | pa.ChunkedArray | list[str]) -> None:
        if isinstance(keys, list):
            keys = pa.array(keys, pa.string())
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        keys = keys.cast(pa.string())
        if keys.null_count:
            raise DataError("id map holds an empty key")
        if len(pc.unique(keys)) != len(keys):
            raise DataError("id map holds duplicate keys")
        self.keys: pa.Array = keys

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Indexes of ``keys``; -1 where a key is unknown."""
        idx = pc.index_in(keys, value_set=self.keys)
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    def extended(self, keys: pa.Array | pa.ChunkedArray) -> tuple["IdMap", int]:
        """A map with the unseen ``keys`` appended in first-seen order, and how many were new."""
        uniq = pc.unique(keys.cast(pa.string()))
        if isinstance(uniq, pa.ChunkedArray):
            uniq = uniq.combine_chunks()
        new = uniq.filter(pc.invert(pc.is_in(uniq, value_set=self.keys)))
        if len(new) == 0:
            return self, 0
        return IdMap(pa.concat_arrays([self.keys, new])), len(new)

    def key_of(self, index: np.ndarray) -> pa.Array:
        return self.keys.take(pa.array(np.asarray(index, dtype=np.int64)))

    def to_table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [pa.array(np.arange(len(self.keys), dtype=np.int64)), self.keys], schema=ID_MAP)

    @classmethod
    def from_table(cls, table: pa.Table) -> "IdMap":
        ids = table.column("id").to_numpy()
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], np.arange(len(ids))):
            raise DataError("id map table is not a dense 0..n-1 range of ids")
        return cls(table.column("key").take(pa.array(order)))

    @classmethod
    def empty(cls) -> "IdMap":
        return cls(pa.array([], pa.string()))
