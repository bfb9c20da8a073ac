"""FAISS inner-product indexes over item vectors: build, tune, measure recall, (de)serialise.

Three kinds: ``flat`` (exact ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``) and ``ivf``
(``IndexIVFFlat``). FAISS ids are the items' row ids from the embedding snapshot (an
``IndexIDMap`` carries them for flat/HNSW; IVF stores ids natively), so a search result never
depends on the order in which rows were read. Indexes travel as ``faiss.serialize_index``
bytes: no pickle is involved in writing or reading them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from recalign.config import ExportConfig
from recalign.errors import RecalignError

KINDS = ("flat", "hnsw", "ivf")


class RecallTooLow(RecalignError):
    """The ANN index misses too many of the exact top-k neighbours."""


@dataclass
class BuiltIndex:
    index: faiss.Index
    kind: str
    params: dict[str, Any]
    build_seconds: float
    n: int
    d: int
    extra: dict[str, Any] = field(default_factory=dict)


def choose_kind(cfg: ExportConfig, n_items: int) -> str:
    """The configured kind, or for ``auto`` exact up to ``flat_max_items``, IVF from
    ``ivf_min_items``, HNSW between."""
    if cfg.kind != "auto":
        return cfg.kind
    if n_items <= cfg.flat_max_items:
        return "flat"
    return "ivf" if n_items >= cfg.ivf_min_items else "hnsw"


def index_params(cfg: ExportConfig, kind: str, n_items: int) -> dict[str, Any]:
    """The parameters that matter for ``kind`` (recorded in the manifest, re-applied on load)."""
    if kind == "hnsw":
        return {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction,
                "efSearch": cfg.hnsw_ef_search}
    if kind == "ivf":
        nlist = cfg.ivf_nlist or max(1, int(4 * math.sqrt(n_items)))
        nlist = max(1, min(nlist, n_items))
        return {"nlist": nlist, "nprobe": min(cfg.ivf_nprobe, nlist),
                "train_points": min(n_items, cfg.ivf_train_points)}
    return {}


def build_index(vectors: np.ndarray, ids: np.ndarray, kind: str, params: dict[str, Any],
                seed: int = 0) -> BuiltIndex:
    """An inner-product index over ``vectors`` [n, d] float32 whose search returns ``ids``."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r} (expected one of {KINDS})")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, d = x.shape
    t0 = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        index.add_with_ids(x, ids)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(params["efConstruction"])
        inner.hnsw.efSearch = int(params["efSearch"])
        index = faiss.IndexIDMap(inner)
        index.add_with_ids(x, ids)
    else:
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = x if params["train_points"] >= n else \
            x[np.sort(rng.choice(n, int(params["train_points"]), replace=False))]
        index.train(sample)
        index.nprobe = int(params["nprobe"])
        index.add_with_ids(x, ids)
    return BuiltIndex(index, kind, dict(params), time.perf_counter() - t0, n, d)


def apply_search_params(index: faiss.Index, kind: str, params: dict[str, Any]) -> None:
    """Set the search-time knobs from the manifest (not relying on what serialisation kept)."""
    if kind == "hnsw":
        inner = faiss.downcast_index(index.index)
        inner.hnsw.efSearch = int(params["efSearch"])
    elif kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each [q, k]; ids are -1 where fewer than k results exist."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    return index.search(q, k)


def exact_top_k(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray,
                k: int) -> np.ndarray:
    """Ground-truth ids [q, k] by brute-force inner product (FAISS's blocked BLAS search)."""
    _, pos = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                       np.ascontiguousarray(vectors, dtype=np.float32), k,
                       metric=faiss.METRIC_INNER_PRODUCT)
    return np.where(pos >= 0, ids[np.clip(pos, 0, None)], -1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k (rows of ids; -1 never counts)."""
    k = truth.shape[1]
    hits = 0
    for f, t in zip(found, truth):
        hits += len(np.intersect1d(f[f >= 0], t[t >= 0], assume_unique=True))
    return hits / (k * len(truth)) if len(truth) else 1.0


def measure_recall(built: BuiltIndex, vectors: np.ndarray, ids: np.ndarray,
                   queries: np.ndarray, k: int) -> float:
    """ANN recall@k of ``built`` against exact search, on ``queries``."""
    k = min(k, built.n)
    truth = exact_top_k(vectors, ids, queries, k)
    _, found = search(built.index, queries, k)
    return recall_at_k(found, truth)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted seeded sample of at most ``size`` row positions out of ``n``."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def set_threads(threads: int | None) -> None:
    if threads:
        faiss.omp_set_num_threads(int(threads))
