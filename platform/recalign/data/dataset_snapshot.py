"""Reading a dataset snapshot back into a :class:`Dataset`.

Kept apart from :mod:`recalign.data.snapshot_io` (which writes dataset snapshots and so
imports the ingest pipeline) because ingest needs to read snapshots too (``data.source:
snapshot``): ingest and snapshot_io both import this module, and neither imports the other's
importer. :mod:`recalign.data.snapshot_io` re-exports everything here.
"""

from __future__ import annotations

from recalign.data.dataset import Dataset
from recalign.data.idmap import IdMap
from recalign.data.schema import INTERACTIONS
from recalign.errors import SnapshotError
from recalign.storage.snapshot import Snapshot, SnapshotStore

ARTIFACT = "dataset"


def read_dataset(snap: Snapshot) -> Dataset:
    """A dataset snapshot -> :class:`Dataset` (the same object an in-process load gives)."""
    if snap.manifest.get("artifact") != ARTIFACT:
        raise SnapshotError(f"{snap.uri}: not a dataset snapshot (artifact "
                            f"{snap.manifest.get('artifact')!r})")
    inter = snap.read_table("interactions") if snap.tables.get("interactions") \
        else INTERACTIONS.empty_table()
    inter = inter.cast(INTERACTIONS)
    tables = snap.tables
    return Dataset(
        snap.manifest["dataset"],
        IdMap.from_table(snap.read_table("user_map")),
        IdMap.from_table(snap.read_table("item_map")),
        inter,
        snap.read_table("items") if "items" in tables else None,
        snap.read_table("users") if "users" in tables else None,
        dict(snap.manifest.get("report", {})),
    )


def read_dataset_uri(uri: str) -> Dataset:
    """``<root>/<dataset>/dataset`` (LATEST) or ``.../dataset/v=...`` -> Dataset."""
    parts = uri.rstrip("/").split("/")
    version = None
    if parts[-1].startswith("v="):
        version = parts.pop()
    if len(parts) < 3 or parts[-1] != ARTIFACT:
        raise SnapshotError(f"{uri}: expected <root>/<dataset>/{ARTIFACT}[/v=...]")
    store = SnapshotStore("/".join(parts[:-2]))
    return read_dataset(store.open(parts[-2], ARTIFACT, version))
