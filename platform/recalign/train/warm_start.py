"""Warm start: initialise ID-table rows from a previous run's exported layer-0 rows.

The nightly retrain starts from yesterday's model: every user/item that existed keeps its
trained layer-0 row (matched by original key, so it works even if ids were re-assigned), new
ids keep their fresh initialisation (appended rows), and entities that disappeared are ignored.
Dense parameters (alignment heads, backbone MLPs) start fresh: they are small and quick to
re-learn, and their shapes may change with the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from recalign.data.idmap import IdMap
from recalign.errors import SnapshotError
from recalign.storage.snapshot import Snapshot, SnapshotStore
from recalign.train.export import ARTIFACT, LAYER0_OF


@dataclass
class WarmStartRows:
    """Rows to copy: ``ids`` (new row index) and ``vectors`` [len(ids), d] per table."""

    ids: dict[str, np.ndarray]
    vectors: dict[str, np.ndarray]
    source: str
    counts: dict[str, dict[str, int]]


def previous_embeddings(root: str, dataset: str, artifact: str = ARTIFACT) -> Snapshot | None:
    """The LATEST embedding snapshot that carries layer-0 rows, or None."""
    snap = SnapshotStore(root).try_open(dataset, artifact)
    if snap is None or any(t not in snap.tables for t in LAYER0_OF.values()):
        return None
    return snap


def read_warm_rows(snap: Snapshot, user_keys: pa.Array, item_keys: pa.Array,
                   dim: int) -> WarmStartRows:
    """Match the snapshot's layer-0 rows to this run's id maps by key."""
    ids: dict[str, np.ndarray] = {}
    vecs: dict[str, np.ndarray] = {}
    counts: dict[str, dict[str, int]] = {}
    for table, keys in (("user", user_keys), ("item", item_keys)):
        t = snap.read_table(LAYER0_OF[table], columns=["key", "vector"])
        width = t.schema.field("vector").type.list_size
        if width != dim:
            raise SnapshotError(f"{snap.uri}: table {LAYER0_OF[table]} has width {width}, the "
                                f"model's embedding dim is {dim}: warm start needs the same "
                                f"dim (set train.warm_start: false to start fresh)")
        new_ids = IdMap(keys).lookup(t.column("key"))
        keep = new_ids >= 0
        flat = t.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        ids[table] = new_ids[keep]
        vecs[table] = flat.reshape(-1, dim)[keep].astype(np.float32, copy=False)
        counts[table] = {"reused": int(keep.sum()), "dropped": int((~keep).sum()),
                         "new": int(len(keys) - keep.sum())}
    return WarmStartRows(ids, vecs, snap.uri, counts)


@torch.no_grad()
def apply_rows(weights: dict[str, torch.Tensor], rows: WarmStartRows) -> None:
    """Copy the matched rows into full (unsharded) tables ``{"user": W_u, "item": W_i}``."""
    for table, w in weights.items():
        idx = torch.from_numpy(rows.ids[table])
        w[idx] = torch.from_numpy(rows.vectors[table]).to(w.dtype)
