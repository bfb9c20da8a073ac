"""Index snapshots: embedding snapshot -> FAISS index snapshot, and top-k queries against it.

An index snapshot (artifact ``index`` by default) holds ``index.faiss`` (serialised FAISS
bytes), an ``items`` table (``id``, ``key`` and ``title`` when the dataset has titles) and a
manifest naming the embeddings version it was built from, the index kind and parameters and the
measured ANN recall. Users and items are always found by key, never by position.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recalign.config import ExportConfig
from recalign.data.snapshot_io import ARTIFACT as DATASET
from recalign.errors import ConfigError, DataError, SnapshotError
from recalign.index.faiss_index import (AnnIndex, RecallTooLow, build_index, choose_kind,
                                        index_params, measure_recall, sample_rows, set_threads)
from recalign.storage.snapshot import Snapshot, SnapshotStore

INDEX_FILE = "index.faiss"
# settings that change only how the index is queried or built fast, not what it holds
_NOT_HASHED = ("threads", "exclude_train")


def export_config_hash(cfg: ExportConfig) -> str:
    data = cfg.model_dump(mode="json", exclude=set(_NOT_HASHED))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def embedding_arrays(table: pa.Table) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """(ids int64 [n], keys, vectors float32 [n, d]) from an ``id/key/vector`` table, by id."""
    table = table.sort_by("id")
    col = table["vector"].combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise DataError(f"vector column is {col.type}, expected fixed_size_list<float32>[d]")
    d = col.type.list_size
    # flatten() honours slice offsets, unlike .values
    vectors = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    ids = table["id"].to_numpy().astype(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise DataError("embedding table holds duplicate ids")
    return ids, table["key"].combine_chunks(), vectors.reshape(-1, d)


def _dataset_snapshot(store: SnapshotStore, dataset: str,
                      version: str | None = None) -> Snapshot | None:
    if version is not None:
        try:
            return store.open(dataset, DATASET, version)
        except SnapshotError:
            pass  # gone (gc) or never in this root: fall back to LATEST
    return store.try_open(dataset, DATASET)


def _titles(dsnap: Snapshot | None, keys: pa.Array) -> pa.Array | None:
    """Titles of the items with ``keys`` (joined by key), or None when there are none."""
    if dsnap is None or "items" not in dsnap.tables:
        return None
    items = dsnap.read_table("items", columns=["item", "title"])
    if items.num_rows == 0 or items["title"].null_count == items.num_rows:
        return None
    imap = dsnap.read_table("item_map")
    item_keys = imap["key"].take(pc.index_in(items["item"], value_set=imap["id"]))
    pos = pc.index_in(keys, value_set=item_keys.combine_chunks())
    return items["title"].combine_chunks().take(pos)


def _query_vectors(emb: Snapshot, cfg: ExportConfig) -> tuple[np.ndarray, str]:
    """A seeded sample of user vectors; item vectors when the snapshot has no users."""
    table = "users" if "users" in emb.tables and emb.rows("users") > 0 else "items"
    _, _, vectors = embedding_arrays(emb.read_table(table))
    return vectors[sample_rows(len(vectors), cfg.sample_users, cfg.seed)], table


def export_index(cfg: ExportConfig, store: SnapshotStore, dataset: str, *,
                 keep_versions: int | None = None, log: Any = None) -> dict[str, Any]:
    """Build, check and write a new index snapshot unless inputs and config are unchanged."""
    t0 = time.perf_counter()
    say = log or (lambda msg: None)
    if store.latest_version(dataset, cfg.source_artifact) is None:
        raise ConfigError(f"no {cfg.source_artifact!r} snapshot for {dataset!r} under "
                          f"{store.root}: run `recalign train` first")
    emb = store.open(dataset, cfg.source_artifact)
    chash = export_config_hash(cfg)
    prev = store.try_open(dataset, cfg.artifact)
    if prev is not None and prev.manifest.get("config_hash") == chash and \
            prev.manifest.get("inputs", {}).get("embeddings") == emb.version:
        info = prev.manifest["index"]
        return {"job": "export", "dataset": dataset, "skipped": True,
                "reason": f"embeddings {emb.version} and export config unchanged since "
                          f"{prev.version}", "snapshot": prev.uri, "version": prev.version,
                "kind": info["kind"], "recall": info["recall"],
                "build_seconds": info["build_seconds"],
                "seconds": round(time.perf_counter() - t0, 3)}
    set_threads(cfg.threads)
    ids, keys, vectors = embedding_arrays(emb.read_table("items"))
    if len(ids) == 0:
        raise DataError(f"{emb.uri}: the items table is empty; nothing to index")
    kind = choose_kind(cfg, len(ids))
    params = index_params(cfg, kind, len(ids))
    say(f"export: {dataset}: {len(ids)} items, d={vectors.shape[1]}, {kind} {params}")
    built = build_index(vectors, ids, kind, params, seed=cfg.seed)
    k = min(cfg.recall_k, len(ids))
    if kind == "flat":  # exact search: recall is 1 by construction
        recall, n_queries, query_table = 1.0, 0, None
    else:
        queries, query_table = _query_vectors(emb, cfg)
        recall = measure_recall(built, vectors, ids, queries, k)
        n_queries = len(queries)
    say(f"export: built in {built.build_seconds:.2f}s, recall@{k} {recall:.4f}")
    if recall < cfg.min_recall:
        # checked before anything is written: a failed export leaves no version folder
        raise RecallTooLow(
            f"{kind} index over {emb.uri}: recall@{k} {recall:.4f} on {n_queries} query "
            f"vectors from {query_table} is below export.min_recall {cfg.min_recall} "
            f"(params {params}); raise efSearch/nprobe, or use kind: flat")
    data = built.to_bytes()
    dversion = emb.manifest.get("inputs", {}).get("dataset_version")
    dsnap = _dataset_snapshot(store, dataset, dversion)
    cols = {"id": pa.array(ids, pa.int64()), "key": keys}
    titles = _titles(dsnap, keys)
    if titles is not None:
        cols["title"] = titles
    writer = store.begin(dataset, cfg.artifact)
    writer.write_bytes(INDEX_FILE, data)
    writer.write_table("items", pa.table(cols))
    info = {**built.meta(), "metric": "inner_product", "n": built.n,
            "d": built.d, "recall_k": k, "recall": round(recall, 6), "recall_queries": n_queries,
            "recall_query_table": query_table, "min_recall": cfg.min_recall,
            "build_seconds": round(built.build_seconds, 3), "file": INDEX_FILE,
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    inputs = {"embeddings": emb.version, "embeddings_uri": emb.uri}
    if dsnap is not None:
        inputs["dataset_version"] = dsnap.version
    snap = writer.commit(inputs=inputs, config_hash=chash,
                         extra={"index": info, "export_config": cfg.model_dump(mode="json")})
    removed = store.gc(dataset, cfg.artifact, keep_versions) if keep_versions else []
    return {"job": "export", "dataset": dataset, "skipped": False, "snapshot": snap.uri,
            "version": snap.version, "embeddings": emb.version, "kind": kind, "params": params,
            "recall": info["recall"], "recall_k": k, "n": built.n, "d": built.d,
            "index_bytes": len(data), "build_seconds": info["build_seconds"],
            "gc_removed": removed, "seconds": round(time.perf_counter() - t0, 3)}


@dataclass
class LoadedIndex:
    snapshot: Snapshot
    index: AnnIndex
    items: pa.Table  # id, key[, title]

    @property
    def info(self) -> dict[str, Any]:
        return self.snapshot.manifest["index"]


def load_index(store: SnapshotStore, dataset: str, artifact: str = "index") -> LoadedIndex:
    """The LATEST index snapshot, its bytes checked against the manifest's digest."""
    from recalign.storage.uri import fsspec_filesystem, join

    if store.latest_version(dataset, artifact) is None:
        raise ConfigError(f"no {artifact!r} snapshot for {dataset!r} under {store.root}: "
                          f"run `recalign export` first")
    snap = store.open(dataset, artifact)
    info = snap.manifest["index"]
    fs, path = fsspec_filesystem(join(snap.uri, info["file"]))
    with fs.open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise SnapshotError(f"{snap.uri}/{info['file']}: content does not match the manifest")
    return LoadedIndex(snap, AnnIndex.from_bytes(data, info), snap.read_table("items"))


def user_vector(store: SnapshotStore, dataset: str, loaded: LoadedIndex,
                user_key: str) -> np.ndarray:
    """The vector of ``user_key`` from the embeddings version the index was built from."""
    inputs = loaded.snapshot.manifest["inputs"]
    source = loaded.snapshot.manifest.get("export_config", {}).get("source_artifact",
                                                                   "embeddings")
    emb = store.open(dataset, source, inputs["embeddings"])
    for batch in emb.iter_batches("users", columns=["key", "vector"]):
        hit = batch.filter(pc.equal(batch["key"], pa.scalar(user_key, pa.string())))
        if hit.num_rows:
            vec = hit.slice(0, 1)["vector"].flatten()
            return vec.to_numpy(zero_copy_only=False).astype(np.float32)
    raise DataError(f"unknown user key {user_key!r}: not in the users table of {emb.uri}")


def training_item_ids(store: SnapshotStore, dataset: str, loaded: LoadedIndex,
                      user_key: str) -> np.ndarray:
    """Index ids of the user's training items (matched by key); empty without a dataset."""
    dsnap = _dataset_snapshot(store, dataset,
                              loaded.snapshot.manifest["inputs"].get("dataset_version"))
    if dsnap is None:
        return np.empty(0, np.int64)
    umap = dsnap.read_table("user_map")
    hit = umap.filter(pc.equal(umap["key"], pa.scalar(user_key, pa.string())))
    if hit.num_rows == 0:
        return np.empty(0, np.int64)
    uid = hit["id"][0]
    items = []
    for batch in dsnap.iter_batches("interactions", columns=["user", "item", "split"]):
        mask = pc.and_(pc.equal(batch["user"], uid), pc.equal(batch["split"], 0))
        items.append(batch.filter(mask)["item"])
    if not items:
        return np.empty(0, np.int64)
    imap = dsnap.read_table("item_map")
    dataset_items = pa.concat_arrays(items)
    item_keys = imap["key"].take(pc.index_in(dataset_items, value_set=imap["id"]))
    pos = pc.index_in(item_keys, value_set=loaded.items["key"].combine_chunks())
    pos = pos.drop_null().to_numpy().astype(np.int64)
    return loaded.items["id"].to_numpy()[pos]


def top_items(loaded: LoadedIndex, vector: np.ndarray, k: int,
              exclude: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The ``k`` best items for ``vector``: rank, id, key, title (when known), score."""
    exclude = np.asarray(exclude if exclude is not None else [], dtype=np.int64)
    want = min(k + len(exclude), loaded.info["n"])
    scores, ids = loaded.index.search(vector, want)
    keep = (ids[0] >= 0) & ~np.isin(ids[0], exclude)
    scores, ids = scores[0][keep][:k], ids[0][keep][:k]
    pos = pc.index_in(pa.array(ids, pa.int64()), value_set=loaded.items["id"].combine_chunks())
    rows = loaded.items.take(pos)
    has_title = "title" in rows.column_names
    out = []
    for rank, (i, s) in enumerate(zip(ids, scores), start=1):
        row = {"rank": rank, "id": int(i), "key": rows["key"][rank - 1].as_py(),
               "score": round(float(s), 6)}
        if has_title:
            row["title"] = rows["title"][rank - 1].as_py()
        out.append(row)
    return out
