"""Semantic vectors for users and items: texts -> embedding engine -> embedding snapshot.

Texts come from a profiles snapshot (the ``summarization`` of ``ok`` rows; REFERENCE.md: only
the summarization is embedded) or from raw entity text: an item's title, description and
attributes; a user's titles of a seeded sample of *training* items (never valid/test).

The snapshot (artifact ``semantic`` or ``semantic-raw``) holds ``items`` and ``users`` tables in
the interchange format of :func:`recalign.data.schema.embedding_schema` (``id``, ``key``,
``vector``), and ``items_fingerprints`` / ``users_fingerprints`` (``id``, ``fingerprint``): the
hash of the text, model and normalisation. A rerun embeds only rows whose fingerprint changed;
when nothing changed no new version is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from recalign.data.dataset import Dataset
from recalign.data.schema import embedding_schema
from recalign.llm.engine import EmbeddingEngine
from recalign.llm.profiles import seeded_sample, training_interactions
from recalign.llm.prompts import sanitize
from recalign.storage.snapshot import Snapshot, SnapshotStore

SIDES = ("items", "users")
FP_SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False),
                       pa.field("fingerprint", pa.string(), nullable=False)])


class EmbedRunner(Protocol):
    def run(self, texts: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...
    def close(self) -> None: ...


class LocalEmbedRunner:
    def __init__(self, factory: Callable[[], EmbeddingEngine], batch_size: int) -> None:
        self.factory, self.batch_size = factory, batch_size
        self.engine: EmbeddingEngine | None = None

    def run(self, texts: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not texts:
            return
        if self.engine is None:
            self.engine = self.factory()
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            yield np.arange(start, start + len(chunk)), self.engine.embed(chunk)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars]


def profile_texts(snap: Snapshot, max_chars: int) -> dict[str, tuple[list[int], list[str], list[str]]]:
    """side -> (ids, keys, texts) of the ok profiles."""
    out = {}
    for side in SIDES:
        if side not in snap.tables or not snap.tables[side]["parts"]:
            out[side] = ([], [], [])
            continue
        t = snap.read_table(side, columns=["id", "key", "summarization", "status"]).to_pylist()
        rows = sorted((r for r in t if r["status"] == "ok" and r["summarization"]),
                      key=lambda r: r["id"])
        out[side] = ([r["id"] for r in rows], [r["key"] for r in rows],
                     [_cut(sanitize(r["summarization"]), max_chars) for r in rows])
    return out


def _attr_text(raw: str | None) -> str:
    if not raw:
        return ""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return sanitize(raw)
    if not isinstance(obj, dict):
        return sanitize(json.dumps(obj, ensure_ascii=False))
    parts = []
    for k, v in obj.items():
        if v in (None, "", [], {}):
            continue
        val = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
        parts.append(f"{k}: {val}")
    return sanitize("; ".join(parts))


def raw_texts(ds: Dataset, *, seed: int, user_items: int, max_chars: int
              ) -> dict[str, tuple[list[int], list[str], list[str]]]:
    """Items: title. description. attributes; users: titles of sampled training items."""
    item_keys = ds.item_map.key_of(np.arange(ds.n_items)).to_pylist()
    user_keys = ds.user_map.key_of(np.arange(ds.n_users)).to_pylist()
    meta: dict[int, tuple[Any, Any, Any]] = {}
    if ds.items is not None:
        for i, t, d, a in zip(ds.items["item"].to_pylist(), ds.items["title"].to_pylist(),
                              ds.items["description"].to_pylist(),
                              ds.items["attributes"].to_pylist()):
            meta[i] = (t, d, a)
    titles = {}
    i_ids, i_keys, i_texts = [], [], []
    for i in range(ds.n_items):
        t, d, a = meta.get(i, (None, None, None))
        title = sanitize(t) or sanitize(item_keys[i])
        titles[i] = title
        text = ". ".join(x for x in (title, sanitize(d), _attr_text(a)) if x)
        i_ids.append(i)
        i_keys.append(item_keys[i])
        i_texts.append(_cut(text, max_chars))
    train = training_interactions(ds)
    us, it = train["user"].to_numpy(), train["item"].to_numpy()
    sel = seeded_sample(us, it, seed, user_items)
    hist: dict[int, list[int]] = {}
    for r in sel[np.lexsort((it[sel], us[sel]))].tolist():
        hist.setdefault(int(us[r]), []).append(int(it[r]))
    u_ids, u_keys, u_texts = [], [], []
    for u in sorted(hist):
        u_ids.append(u)
        u_keys.append(user_keys[u])
        u_texts.append(_cut("; ".join(titles[i] for i in hist[u]), max_chars))
    return {"items": (i_ids, i_keys, i_texts), "users": (u_ids, u_keys, u_texts)}


def text_fingerprint(text: str, model: str, normalize: bool) -> str:
    return hashlib.sha256(json.dumps([text, model, normalize]).encode()).hexdigest()[:32]


def _previous(snap: Snapshot | None, side: str) -> dict[int, tuple[str, np.ndarray]]:
    if snap is None or side not in snap.tables or f"{side}_fingerprints" not in snap.tables:
        return {}
    vec = snap.read_table(side)
    fps = dict(zip(*[snap.read_table(f"{side}_fingerprints")[c].to_pylist()
                     for c in ("id", "fingerprint")]))
    ids = vec["id"].to_pylist()
    if not ids:
        return {}
    m = np.asarray(vec["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                   dtype=np.float32).reshape(len(ids), -1)
    return {i: (fps[i], m[k]) for k, i in enumerate(ids) if i in fps}


def vectors_table(ids: list[int], keys: list[str], m: np.ndarray) -> pa.Table:
    dim = m.shape[1]
    flat = pa.array(np.ascontiguousarray(m, dtype=np.float32).reshape(-1), pa.float32())
    return pa.Table.from_arrays([pa.array(ids, pa.int64()), pa.array(keys, pa.string()),
                                 pa.FixedSizeListArray.from_arrays(flat, dim)],
                                schema=embedding_schema(dim))


def build_embeddings(texts: dict[str, tuple[list[int], list[str], list[str]]], store: SnapshotStore,
                     dataset: str, artifact: str, make_runner: Callable[[], EmbedRunner], *,
                     model: str, normalize: bool, inputs: dict[str, str],
                     extra: dict[str, Any] | None = None, progress: Any = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    prev_snap = store.try_open(dataset, artifact)
    runner: EmbedRunner | None = None
    out: dict[str, tuple[list[int], list[str], np.ndarray, list[str]]] = {}
    embedded = reused = 0
    changed = prev_snap is None
    embed_s = 0.0
    if progress is not None:
        progress.reset(total=sum(len(v[0]) for v in texts.values()))
    try:
        for side in SIDES:
            ids, keys, txts = texts[side]
            prev = _previous(prev_snap, side)
            fps = [text_fingerprint(t, model, normalize) for t in txts]
            vecs: list[np.ndarray | None] = [None] * len(ids)
            todo = []
            for k, (i, fp) in enumerate(zip(ids, fps)):
                p = prev.get(i)
                if p is not None and p[0] == fp:
                    vecs[k] = p[1]
                else:
                    todo.append(k)
            reused += len(ids) - len(todo)
            if todo or len(prev) != len(ids):
                changed = True
            if progress is not None:
                progress.update(len(ids) - len(todo))
            if todo:
                if runner is None:
                    runner = make_runner()
                t1 = time.perf_counter()
                for rows, m in runner.run([txts[k] for k in todo]):
                    for r, v in zip(rows.tolist(), m):
                        vecs[todo[r]] = v
                    if progress is not None:
                        progress.update(len(rows))
                embed_s += time.perf_counter() - t1
                embedded += len(todo)
            dims = {v.shape[0] for v in vecs if v is not None}
            if len(dims) > 1:
                raise RuntimeError(f"{side}: vectors of different sizes {sorted(dims)}")
            dim = dims.pop() if dims else 0
            m = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, dim), np.float32)
            out[side] = (ids, keys, m, fps)
    finally:
        if runner is not None:
            runner.close()
    dim = next((o[2].shape[1] for o in out.values() if o[2].size), 0)
    summary = {"job": "embed", "dataset": dataset, "artifact": artifact, "model": model,
               "dim": dim, "embedded": embedded, "reused": reused,
               "counts": {s: len(out[s][0]) for s in SIDES},
               "embed_s": round(embed_s, 3),
               "texts_per_s": round(embedded / embed_s, 1) if embed_s > 0 else None,
               "seconds": round(time.perf_counter() - t0, 3)}
    if not changed and prev_snap is not None:
        return {**summary, "skipped": True, "snapshot": prev_snap.uri, "version": prev_snap.version}
    writer = store.begin(dataset, artifact)
    for side in SIDES:
        ids, keys, m, fps = out[side]
        if m.shape[1] == 0 and dim:
            m = np.zeros((0, dim), np.float32)
        writer.write_table(side, vectors_table(ids, keys, m if m.size or dim == 0 else m))
        writer.write_table(f"{side}_fingerprints", pa.Table.from_arrays(
            [pa.array(ids, pa.int64()), pa.array(fps, pa.string())], schema=FP_SCHEMA))
    snap = writer.commit(inputs=inputs, extra={"dim": dim, "model": model, "normalize": normalize,
                                               "counts": summary["counts"],
                                               "accounting": {k: summary[k] for k in (
                                                   "embedded", "reused", "embed_s", "texts_per_s")},
                                               **(extra or {})})
    return {**summary, "skipped": False, "snapshot": snap.uri, "version": snap.version}
