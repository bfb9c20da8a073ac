"""Dataset snapshots: write the canonical dataset (streamed) and read it back.

Tables of a dataset snapshot: ``interactions`` (parts), ``items``, ``users`` (when the source
has them), ``user_map`` and ``item_map`` (original key <-> dense id, stable across re-ingests).
Reading lives in :mod:`recalign.data.dataset_snapshot` (ingest reads snapshots too, and this
module imports ingest); it is re-exported here.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow.compute as pc

from recalign.config import Config, config_hash
from recalign.data.dataset import Dataset
from recalign.data.dataset_snapshot import ARTIFACT, read_dataset, read_dataset_uri
from recalign.data.idmap import IdMap
from recalign.data.ingest import IngestState, finish, input_fingerprint, iter_prepared, load_raw
from recalign.data.schema import TEST, TRAIN, VALID
from recalign.errors import SnapshotError
from recalign.storage.snapshot import SnapshotStore

__all__ = ["ARTIFACT", "ingest_to_snapshot", "read_dataset", "read_dataset_uri",
           "user_ids_without_train"]


def ingest_to_snapshot(cfg: Config, store: SnapshotStore, *, force: bool = False,
                       progress: Any = None) -> dict[str, Any]:
    """Ingest ``cfg.data`` into a new dataset snapshot unless input and config are unchanged.

    Returns the summary (what was written where, counts, repairs)."""
    t0 = time.perf_counter()
    dcfg = cfg.data
    name = dcfg.dataset_name()
    fingerprint = input_fingerprint(dcfg)
    previous = store.try_open(name, ARTIFACT)
    if previous is not None and previous.manifest.get("fingerprint") == fingerprint and not force:
        return {"job": "ingest", "skipped": True,
                "reason": f"input and config unchanged since {previous.version}",
                "snapshot": previous.uri, "dataset": name, "counts": previous.manifest["counts"]}
    user_map = item_map = IdMap.empty()
    if previous is not None:  # keep every old index; new keys are appended
        user_map = IdMap.from_table(previous.read_table("user_map"))
        item_map = IdMap.from_table(previous.read_table("item_map"))
    raw = load_raw(dcfg)
    state = IngestState(user_map, item_map)
    writer = store.begin(name, ARTIFACT)
    counts = {"interactions": 0, "train": 0, "valid": 0, "test": 0}
    for part in iter_prepared(dcfg, raw, state):
        if part.num_rows:
            writer.write_table("interactions", part)
        split = part.column("split").to_numpy()
        counts["interactions"] += part.num_rows
        for code, key in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test")):
            counts[key] += int((split == code).sum())
        if progress is not None:
            progress.update(part.num_rows)
    items, users = finish(dcfg, raw, state, counts["interactions"])
    if items is not None:
        writer.write_table("items", items)
    if users is not None:
        writer.write_table("users", users)
    writer.write_table("user_map", state.user_map.to_table())
    writer.write_table("item_map", state.item_map.to_table())
    counts = {"users": len(state.user_map), "items": len(state.item_map), **counts}
    if counts["train"] == 0:
        raise SnapshotError(f"{dcfg.path}: the split left no training interactions")
    snap = writer.commit(
        inputs={"source": dcfg.source, "path": str(dcfg.path) if dcfg.path else None,
                **({"previous": previous.version} if previous else {})},
        config_hash=config_hash(cfg, sections=("data",)), fingerprint=fingerprint,
        extra={"counts": counts, "report": state.report,
               "data_config": dcfg.model_dump(mode="json")})
    return {"job": "ingest", "skipped": False, "snapshot": snap.uri, "dataset": name,
            "version": snap.version, "counts": counts, "repairs": state.report,
            "seconds": round(time.perf_counter() - t0, 3)}


def user_ids_without_train(ds: Dataset) -> np.ndarray:
    """Users that appear only in valid/test (a training job must refuse or handle them)."""
    train_users = np.unique(ds.pairs("train")[0])
    all_users = np.unique(pc.unique(ds.interactions["user"]).to_numpy())
    return np.setdiff1d(all_users, train_users)
