"""FAISS inner-product indexes over item vectors: build, tune, measure recall, (de)serialise.

Three kinds: ``flat`` (exact ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``) and ``ivf``
(``IndexIVFFlat``). FAISS ids are the items' row ids from the embedding snapshot (an
``IndexIDMap`` carries them for flat/HNSW; IVF stores ids natively), so a search result never
depends on the order in which rows were read. Indexes travel as ``faiss.serialize_index``
bytes: no pickle is involved in writing or reading them.

HNSW does not search inner products directly: a graph built on a similarity that is not a
metric finds poor neighbours when item norms vary (recall@100 0.78 on the clustered benchmark
vectors). It is built on the standard reduction of maximum inner product to nearest neighbour
instead: every item gets one extra coordinate ``sqrt(M - |x|^2)`` (``M`` the largest squared
norm) and queries a zero there, so ``|q - x'|^2 = |q|^2 + M - 2 q.x`` and the L2 order is the
inner-product order (recall@100 0.998 with the same parameters). :class:`AnnIndex` hides this:
its ``search`` takes plain queries and returns inner-product scores for every kind.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from recalign.config import ExportConfig
from recalign.errors import RecalignError

KINDS = ("flat", "hnsw", "ivf")


class RecallTooLow(RecalignError):
    """The ANN index misses too many of the exact top-k neighbours."""


@dataclass
class AnnIndex:
    """A FAISS index plus what searching it needs (kind, parameters, the MIPS->L2 constant)."""

    index: faiss.Index
    kind: str
    params: dict[str, Any]
    mips_norm_sq: float | None = None  # HNSW: the constant M of the reduction (module doc)
    build_seconds: float = 0.0

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d) - (1 if self.mips_norm_sq is not None else 0)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(inner-product scores, ids), each [q, k]; ids are -1 where fewer than k exist."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if self.mips_norm_sq is None:
            return self.index.search(q, k)
        qa = np.hstack([q, np.zeros((len(q), 1), np.float32)])
        dist, ids = self.index.search(qa, k)
        scores = 0.5 * ((q.astype(np.float64) ** 2).sum(1)[:, None] + self.mips_norm_sq - dist)
        return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids

    def meta(self) -> dict[str, Any]:
        """What :meth:`from_bytes` needs besides the bytes (goes into the manifest)."""
        return {"kind": self.kind, "params": self.params, "mips_norm_sq": self.mips_norm_sq}

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, meta: dict[str, Any]) -> "AnnIndex":
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        ann = cls(index, meta["kind"], dict(meta["params"]), meta.get("mips_norm_sq"))
        ann.apply_search_params()
        return ann

    def apply_search_params(self) -> None:
        """Set the search-time knobs from ``params`` (not relying on what serialisation kept)."""
        if self.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = int(self.params["efSearch"])
        elif self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])


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
                seed: int = 0) -> AnnIndex:
    """An inner-product index over ``vectors`` [n, d] float32 whose search returns ``ids``."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r} (expected one of {KINDS})")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, d = x.shape
    t0 = time.perf_counter()
    norm_sq = None
    if kind == "flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        index.add_with_ids(x, ids)
    elif kind == "hnsw":
        sq = (x.astype(np.float64) ** 2).sum(1)
        norm_sq = float(sq.max())
        extra = np.sqrt(np.maximum(norm_sq - sq, 0.0)).astype(np.float32)[:, None]
        inner = faiss.IndexHNSWFlat(d + 1, int(params["M"]), faiss.METRIC_L2)
        inner.hnsw.efConstruction = int(params["efConstruction"])
        index = faiss.IndexIDMap(inner)
        index.add_with_ids(np.hstack([x, extra]), ids)
    else:
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        train = x if params["train_points"] >= n else x[sample_rows(n, params["train_points"], seed)]
        index.train(train)
        index.add_with_ids(x, ids)
    ann = AnnIndex(index, kind, dict(params), norm_sq, time.perf_counter() - t0)
    ann.apply_search_params()
    return ann


def exact_kth_scores(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Each query's k-th best exact inner product [q] (FAISS's blocked BLAS brute force)."""
    scores, _ = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                          np.ascontiguousarray(vectors, dtype=np.float32), k,
                          metric=faiss.METRIC_INNER_PRODUCT)
    return scores[:, k - 1]


def recall_by_score(found: np.ndarray, vectors: np.ndarray, ids: np.ndarray,
                    queries: np.ndarray, kth: np.ndarray, chunk: int = 256) -> float:
    """Share of the k returned ids (rows of ``found``) whose true score reaches the exact k-th.

    Counting by score rather than by id keeps ties honest: real embedding snapshots hold
    duplicate vectors (identical profile texts), and which of several equal items fills the
    last exact slots is arbitrary; an id-set comparison would charge that to the ANN index.
    """
    k = found.shape[1]
    order = np.argsort(ids)
    hits = 0
    for s in range(0, len(found), chunk):
        f, q = found[s:s + chunk], queries[s:s + chunk].astype(np.float64)
        pos = order[np.searchsorted(ids, np.clip(f, ids.min(), None), sorter=order)]
        true = np.einsum("qkd,qd->qk", vectors[pos].astype(np.float64), q)
        bar = kth[s:s + chunk, None] - 1e-5 * np.maximum(1.0, np.abs(kth[s:s + chunk, None]))
        hits += int(((f >= 0) & (true >= bar)).sum())
    return hits / (k * len(found)) if len(found) else 1.0


def measure_recall(built: AnnIndex, vectors: np.ndarray, ids: np.ndarray,
                   queries: np.ndarray, k: int) -> float:
    """ANN recall@k of ``built`` against exact search on ``queries`` (ties counted as hits)."""
    k = min(k, built.n)
    _, found = built.search(queries, k)
    return recall_by_score(found, vectors, ids, queries, exact_kth_scores(vectors, queries, k))


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted seeded sample of at most ``size`` row positions out of ``n``."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def set_threads(threads: int | None) -> None:
    if threads:
        faiss.omp_set_num_threads(int(threads))
