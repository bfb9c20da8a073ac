"""Full-ranking evaluation over all items, in user chunks, for three published protocols.

For each evaluated user every item is scored, the user's items in ``exclude`` (the *training*
items; REFERENCE.md: validation items are not masked at test time) are set to ``-inf``, and the
top ``max(k)`` items are compared with the user's held-out items. Users are processed in chunks
so that at most ``chunk_size × n_items`` scores exist at once, whatever the catalogue size.

Protocols (REFERENCE.md, "Evaluation protocols"):

=========  ===============================  =================================================
name       metrics                          definitions (``T`` = the user's held-out items)
=========  ===============================  =================================================
rlmrec     recall@5/10/20, ndcg@5/10/20     recall = hits / |T|; NDCG ideal over min(k, |T|)
cllm4rec   recall@20, recall@40, ndcg@100   recall = hits / min(k, |T|); NDCG over min(k, |T|)
loo        hr@5/10/20, ndcg@5/10/20            exactly one target: hr = hit, NDCG = 1/log2(rank+1)
=========  ===============================  =================================================

DCG = Σ over hits at 1-based rank r of 1/log2(r+1); ideal DCG = Σ_{r=1..min(k,|T|)} 1/log2(r+1).
Each metric is averaged over the users with at least one held-out item; users without are
*excluded* and counted (``users_excluded``).

**Ties.** Ranking order is (score descending, item id ascending): among equal scores the lower
item id ranks first, both for which items enter the top k and for their order inside it. This
makes results independent of chunking, thread count and ``torch.topk``'s unspecified order
for ties. An item scored ``-inf`` (masked) is never a hit, even when a user has fewer than k
unmasked items and ``-inf`` entries fill the top k. NaN scores are not supported.

**Distributed use.** :func:`ranking_sums` returns additive per-metric *sums* and counts
(:class:`RankingSums`); workers that each evaluate a disjoint subset of users combine them with
``+`` (or all-reduce :meth:`RankingSums.to_tensor`), and :func:`finalize` turns the total into
means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""``score(user_ids: LongTensor[c]) -> FloatTensor[c, n_items]``; the result is masked in place,
so the callable must return a tensor it does not keep (e.g. the result of a matmul)."""

DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 24  # 16M float32 scores = 64 MiB per chunk


@dataclass(frozen=True)
class Protocol:
    name: str
    recall_ks: tuple[int, ...]
    ndcg_ks: tuple[int, ...]
    recall_name: str = "recall"
    #: "all": hits / |T| (RLMRec code); "min_k": hits / min(k, |T|) (CLLM4Rec, LOO)
    recall_denominator: str = "all"
    single_target: bool = False
    #: the metric used for model selection on validation data
    select: str = "recall@20"

    @property
    def max_k(self) -> int:
        return max(self.recall_ks + self.ndcg_ks)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(f"{self.recall_name}@{k}" for k in self.recall_ks) + tuple(
            f"ndcg@{k}" for k in self.ndcg_ks)


PROTOCOLS: dict[str, Protocol] = {
    "rlmrec": Protocol("rlmrec", (5, 10, 20), (5, 10, 20), "recall", "all", False, "recall@20"),
    "cllm4rec": Protocol("cllm4rec", (20, 40), (100,), "recall", "min_k", False, "recall@20"),
    # leave-one-out (sequential recommenders): model selection on NDCG@10 as RecBole/DuoRec
    "loo": Protocol("loo", (5, 10, 20), (5, 10, 20), "hr", "min_k", True, "ndcg@10"),
}


#: selection metrics that are sums of a protocol's metrics (the CLLM4Rec authors select on
#: R@20 + R@40 + N@100); :func:`with_sums` adds them to a metrics dict
SUMS: dict[str, tuple[str, ...]] = {"cllm4rec_sum": ("recall@20", "recall@40", "ndcg@100")}


def with_sums(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus every :data:`SUMS` entry whose parts it has."""
    out = dict(metrics)
    for name, parts in SUMS.items():
        if all(k in metrics for k in parts):
            out[name] = sum(metrics[k] for k in parts)
    return out


def get_protocol(protocol: str | Protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; known: "
                         f"{', '.join(sorted(PROTOCOLS))}") from None


@dataclass
class RankingSums:
    """Additive evaluation state: per-metric sums over evaluated users, and user counts."""

    protocol: str
    sums: dict[str, float] = field(default_factory=dict)
    evaluated: int = 0
    excluded: int = 0

    @classmethod
    def zero(cls, protocol: str | Protocol) -> "RankingSums":
        p = get_protocol(protocol)
        return cls(p.name, {m: 0.0 for m in p.metric_names}, 0, 0)

    def __add__(self, other: "RankingSums") -> "RankingSums":
        if other.protocol != self.protocol:
            raise ValueError(f"cannot add {other.protocol!r} sums to {self.protocol!r} sums")
        return RankingSums(self.protocol,
                           {k: self.sums[k] + other.sums[k] for k in self.sums},
                           self.evaluated + other.evaluated, self.excluded + other.excluded)

    def to_tensor(self) -> torch.Tensor:
        """float64 vector ``[sums in protocol order..., evaluated, excluded]`` (for all-reduce)."""
        names = get_protocol(self.protocol).metric_names
        return torch.tensor([self.sums[m] for m in names] + [self.evaluated, self.excluded],
                            dtype=torch.float64)

    @classmethod
    def from_tensor(cls, protocol: str | Protocol, t: torch.Tensor) -> "RankingSums":
        p = get_protocol(protocol)
        vals = t.detach().to(torch.float64).cpu().tolist()
        n = len(p.metric_names)
        if len(vals) != n + 2:
            raise ValueError(f"expected {n + 2} values for protocol {p.name!r}, got {len(vals)}")
        return cls(p.name, dict(zip(p.metric_names, vals[:n])), int(round(vals[n])),
                   int(round(vals[n + 1])))


def finalize(sums: RankingSums | Iterable[RankingSums]) -> dict[str, float]:
    """Means over evaluated users (0.0 when none), plus ``users_evaluated``/``users_excluded``."""
    if not isinstance(sums, RankingSums):
        parts = list(sums)
        if not parts:
            raise ValueError("finalize needs at least one RankingSums")
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        sums = total
    n = sums.evaluated
    out: dict[str, float] = {m: (v / n if n else 0.0) for m, v in sums.sums.items()}
    out["users_evaluated"] = sums.evaluated
    out["users_excluded"] = sums.excluded
    return out


def _rows_cols(m: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), counts)
    return torch.from_numpy(rows), torch.from_numpy(m.indices.astype(np.int64, copy=False))


def _topk_lower_id_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k per row ordered by (score desc, item id asc); see the module docstring."""
    n = scores.shape[1]
    # One extra candidate: a tie straddles the top-k boundary exactly when the (k+1)-th best
    # score equals the k-th; only then can topk's choice among tied items differ from
    # "lower id first", and only those rows are re-ranked with a stable full sort.
    kk = min(k + 1, n)
    vals, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    if kk > k:
        straddle = (vals[:, k] == vals[:, k - 1]) & (vals[:, k - 1] > -math.inf)
        vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    else:
        straddle = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    rows = straddle.nonzero().squeeze(1)
    if rows.numel():
        v, i = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = v[:, :k], i[:, :k]
    # order inside the top k: id ascending first, then a stable sort by score
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, descending=True, stable=True)
    idx = idx.gather(1, perm)
    return vals, idx


def _as_csr(m: sp.spmatrix | None, name: str, shape0: int | None = None) -> sp.csr_matrix | None:
    if m is None:
        return None
    if not sp.issparse(m):
        raise TypeError(f"{name}: expected a scipy sparse matrix, got {type(m).__name__}")
    m = m.tocsr()
    if shape0 is not None and m.shape[0] != shape0:
        raise ValueError(f"{name}: {m.shape[0]} rows, expected {shape0} (one per user)")
    return m


def ranking_sums(
    score: ScoreFn,
    heldout: sp.spmatrix,
    exclude: sp.spmatrix | None,
    users: np.ndarray | torch.Tensor | Iterable[int] | None = None,
    protocol: str | Protocol = "rlmrec",
    chunk_size: int | None = None,
) -> RankingSums:
    """Evaluate ``users`` (default: all rows of ``heldout``) and return additive sums.

    ``heldout``: binary users × items matrix of the targets (validation or test);
    ``exclude``: users × items matrix of items masked to ``-inf`` (the training items), or None;
    ``chunk_size``: users scored at once (default: as many as keep a chunk ≤ 16M scores).
    Users without held-out items are skipped and counted in ``excluded``.
    """
    p = get_protocol(protocol)
    heldout = _as_csr(heldout, "heldout")
    n_users, n_items = heldout.shape
    exclude = _as_csr(exclude, "exclude", n_users)
    if exclude is not None and exclude.shape[1] != n_items:
        raise ValueError(f"exclude has {exclude.shape[1]} items, heldout has {n_items}")
    if users is None:
        users_np = np.arange(n_users, dtype=np.int64)
    else:
        if isinstance(users, torch.Tensor):
            users_np = users.detach().cpu().numpy()
        else:
            users_np = np.asarray(list(users) if not isinstance(users, np.ndarray) else users)
        users_np = users_np.astype(np.int64, copy=False).reshape(-1)
        if users_np.size and (users_np.min() < 0 or users_np.max() >= n_users):
            raise ValueError(f"user ids must lie in [0, {n_users})")
    n_target = np.diff(heldout.indptr)[users_np]
    has = n_target > 0
    evaluated = users_np[has]
    out = RankingSums.zero(p)
    out.excluded = int((~has).sum())
    out.evaluated = int(evaluated.size)
    if p.single_target and (n_target[has] > 1).any():
        bad = evaluated[n_target[has] > 1][:5].tolist()
        raise ValueError(f"protocol {p.name!r} expects exactly one held-out item per user; "
                         f"users {bad} have more")
    if not evaluated.size:
        return out

    if chunk_size is None:
        chunk_size = max(1, DEFAULT_MAX_CHUNK_ELEMENTS // max(1, n_items))
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    k = min(p.max_k, n_items)
    disc = 1.0 / torch.log2(torch.arange(2, p.max_k + 2, dtype=torch.float64))
    cum_disc = torch.cumsum(disc, 0)
    sums = {m: 0.0 for m in p.metric_names}

    for start in range(0, evaluated.size, chunk_size):
        u = evaluated[start:start + chunk_size]
        c = u.size
        s = score(torch.from_numpy(u))
        if s.shape != (c, n_items):
            raise ValueError(f"score() returned shape {tuple(s.shape)}, expected {(c, n_items)}")
        if not s.is_floating_point():
            s = s.float()
        if exclude is not None:
            r, cidx = _rows_cols(exclude[u])
            if r.numel():  # scores may live on an accelerator: index them where they are
                s.index_put_((r.to(s.device), cidx.to(s.device)),
                             torch.tensor(-math.inf, dtype=s.dtype, device=s.device))
        vals, idx = _topk_lower_id_ties(s, k)
        vals, idx = vals.cpu(), idx.cpu()
        del s
        target = torch.zeros((c, n_items), dtype=torch.bool)
        r, cidx = _rows_cols(heldout[u])
        target[r, cidx] = True
        hits = (target.gather(1, idx) & (vals > -math.inf)).to(torch.float64)
        del target
        n_t = torch.from_numpy(n_target[has][start:start + chunk_size]).to(torch.float64)
        for kk in p.recall_ks:
            h = hits[:, :kk].sum(1)
            denom = n_t if p.recall_denominator == "all" else torch.clamp(n_t, max=kk)
            sums[f"{p.recall_name}@{kk}"] += float((h / denom).sum())
        for kk in p.ndcg_ks:
            dcg = (hits[:, :kk] * disc[: min(kk, k)]).sum(1)
            ideal = cum_disc[(torch.clamp(n_t, max=kk) - 1).long()]
            sums[f"ndcg@{kk}"] += float((dcg / ideal).sum())
    out.sums = sums
    return out


def evaluate(
    score: ScoreFn,
    heldout: sp.spmatrix,
    exclude: sp.spmatrix | None,
    users: np.ndarray | torch.Tensor | Iterable[int] | None = None,
    protocol: str | Protocol = "rlmrec",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """:func:`ranking_sums` then :func:`finalize` (single process)."""
    return finalize(ranking_sums(score, heldout, exclude, users, protocol, chunk_size))
