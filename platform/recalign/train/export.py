"""Export final representations as an embedding snapshot, each worker writing its own rows.

Every worker writes the rows it owns (its local shards of the ID tables, with their global row
offsets) into parts named ``rank<r>-*`` of one snapshot version that the job began; the parts
lists (metadata only) are gathered and one worker commits the version (manifest, ``_SUCCESS``,
``LATEST``). No table is gathered onto one process. Schema: ``id int64, key string,
vector fixed_size_list<float32>[d]`` (:func:`recalign.data.schema.embedding_schema`), tables
``users`` and ``items``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from recalign.data.schema import embedding_schema
from recalign.storage.snapshot import SnapshotStore, SnapshotWriter

ARTIFACT = "embeddings"
TABLE_OF = {"user": "users", "item": "items"}
#: layer-0 ID-table rows (the trainable embeddings before propagation), written beside the
#: final representations so that the next night's run can warm-start from them
LAYER0_OF = {"user": "users_layer0", "item": "items_layer0"}


@dataclass
class ExportTarget:
    """Where the snapshot goes: the job chose the version, workers attach to it."""

    root: str
    dataset: str
    version: str
    artifact: str = ARTIFACT

    def writer(self, rank: int) -> SnapshotWriter:
        return SnapshotStore(self.root).attach(self.dataset, self.artifact, self.version,
                                               part_prefix=f"rank{rank:04d}")


def embedding_table(ids: np.ndarray, keys: pa.Array, vectors: torch.Tensor) -> pa.Table:
    """``id``/``key``/``vector`` rows; ``vectors`` is [n, d] float32."""
    v = vectors.detach().to(torch.float32).contiguous().cpu().numpy()
    n, d = v.shape
    flat = pa.array(v.reshape(-1), pa.float32())
    vec = pa.FixedSizeListArray.from_arrays(flat, d)
    return pa.Table.from_arrays([pa.array(ids.astype(np.int64), pa.int64()), keys, vec],
                                schema=embedding_schema(d))


def write_rows(writer: SnapshotWriter, table: str, start: int, vectors: torch.Tensor,
               keys: pa.Array, chunk: int = 262_144, *, layer0: bool = False) -> int:
    """Rows ``start .. start+len(vectors)`` of ``table`` ("user"/"item"), in parts of ``chunk``
    (into ``users``/``items``, or ``users_layer0``/``items_layer0`` with ``layer0``)."""
    name = (LAYER0_OF if layer0 else TABLE_OF)[table]
    n = int(vectors.shape[0])
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        ids = np.arange(start + s, start + e, dtype=np.int64)
        writer.write_table(name, embedding_table(ids, keys.slice(start + s, e - s),
                                                             vectors[s:e]))
    return n


def owned_ranges(shards: list[tuple[str, int, int, int]], n_rows: dict[str, int], rank: int,
                 world: int, sharded_tables: set[str]) -> dict[str, list[tuple[int, int]]]:
    """Row ranges ``[(start, end)]`` per table that this rank exports.

    ``shards``: this rank's (table, row offset, column offset, rows); a column offset > 0 is a
    column shard whose rows another shard covers. ``sharded_tables``: tables sharded on any
    rank; the others (a single process, or replicated tables) are split into contiguous
    blocks by rank.
    """
    out: dict[str, list[tuple[int, int]]] = {t: [] for t in n_rows}
    for t, r0, c0, n in shards:
        if c0 == 0:
            out[t].append((r0, r0 + n))
    for t, total in n_rows.items():
        if t not in sharded_tables:
            lo, hi = total * rank // world, total * (rank + 1) // world
            if hi > lo:
                out[t].append((lo, hi))
    return out


def export_user_states(target: ExportTarget, rank: int, world: int, n_users: int,
                       user_rows: Callable[[np.ndarray], torch.Tensor], items: torch.Tensor,
                       item_keys: pa.Array, user_keys: pa.Array, chunk: int = 4096
                       ) -> dict[str, Any]:
    """The export of a model whose user vectors are computed (a history's state) and whose
    item rows are one replicated matrix: this rank's contiguous block of users, ``chunk`` at a
    time through ``user_rows(ids)``, and its block of ``items``; returns its parts list."""
    ranges = owned_ranges([], {"user": n_users, "item": int(items.shape[0])}, rank, world, set())
    writer = target.writer(rank)
    for lo, hi in ranges["user"]:
        for s in range(lo, hi, chunk):
            e = min(hi, s + chunk)
            write_rows(writer, "user", s, user_rows(np.arange(s, e)), user_keys)
    for lo, hi in ranges["item"]:
        write_rows(writer, "item", lo, items[lo:hi], item_keys)
    return writer.parts_written()


def commit_export(target: ExportTarget, parts: list[dict[str, Any]], *, extra: dict[str, Any],
                  inputs: dict[str, str], config_hash: str) -> str:
    """Commit the version from every rank's ``parts_written()``; returns its URI."""
    store = SnapshotStore(target.root)
    w = store.attach(target.dataset, target.artifact, target.version, part_prefix="commit")
    snap = w.commit(inputs=inputs, config_hash=config_hash, extra=extra, extra_parts=parts)
    return snap.uri
