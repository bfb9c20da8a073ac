"""k-hop fan-out neighbourhood sampling on the normalised bipartite graph, vectorised.

For the ``sampled`` propagation mode: per batch, the seeds (the batch's users and items) are
expanded hop by hop; a node first reached at hop ``h < L`` keeps all its neighbours when its
degree is at most the fan-out ``f_h``, otherwise ``f_h`` neighbours drawn uniformly *with
replacement*, each kept edge weighted ``Â_ij · deg_i / f_h`` (duplicates add up), so that the
sampled product is an unbiased estimate of ``(Â h)_i``. Propagating ``L`` layers over the
union of the sampled edges gives every seed exact-structure representations when no node is
cut (fan-out ≥ max degree) — the test checks this against full propagation — and an unbiased
one-layer estimate otherwise. Nodes first reached at hop ``L`` only contribute their layer-0
rows, which is all a seed's ``L``-layer sum needs from them.

Node ids are global: users ``0..n_users-1``, items ``n_users..``. A :class:`Subgraph` keeps the
sorted global ids of its nodes (users first, since they are smaller) and a
:class:`~recalign.data.graph.NormalizedGraph` over local indices, so the backbone's propagation
code is the same as in full mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from recalign.data.graph import NormalizedGraph, bipartite_adjacency, normalize_symmetric
from recalign.data.sampler import BPRBatch


@dataclass
class Subgraph:
    """Sampled nodes (sorted global ids) and the weighted adjacency among them."""

    nodes: np.ndarray
    graph: NormalizedGraph
    n_users: int  # global number of users (to tell user nodes from item nodes)
    lookup_batch: int | None = None  # common KJT batch size across ranks (set by the runner)

    @property
    def user_ids(self) -> torch.Tensor:
        return torch.from_numpy(self.nodes[: self.graph.n_users])

    @property
    def item_ids(self) -> torch.Tensor:
        return torch.from_numpy(self.nodes[self.graph.n_users:] - self.n_users)

    def local(self, global_ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Local indices of global node ids (which must be in the subgraph)."""
        g = global_ids.numpy() if isinstance(global_ids, torch.Tensor) else global_ids
        idx = np.searchsorted(self.nodes, g)
        return torch.from_numpy(idx.astype(np.int64))


@dataclass
class SampledBatch(BPRBatch):
    """A BPR batch with its sampled neighbourhood (``subgraph``) attached."""

    subgraph: Subgraph | None = field(default=None)


class NeighbourSampler:
    """Holds the normalised adjacency (CSR, scipy) and samples subgraphs around seed nodes."""

    def __init__(self, train: sp.spmatrix, fanouts: list[int], layers: int,
                 self_loops: bool = False) -> None:
        self.n_users, self.n_items = train.shape
        a = normalize_symmetric(bipartite_adjacency(train, self_loops=self_loops))
        self.indptr = a.indptr.astype(np.int64)
        self.indices = a.indices.astype(np.int64)
        self.values = a.data.astype(np.float32)
        self.deg = np.diff(self.indptr)
        self.layers = int(layers)
        self.fanouts = [int(f) for f in fanouts]
        self._pos: np.ndarray | None = None

    def fanout(self, hop: int) -> int:
        return self.fanouts[min(hop, len(self.fanouts) - 1)]

    def _hop(self, frontier: np.ndarray, f: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start = self.indptr[frontier]
        deg = self.deg[frontier]
        take_all = deg <= f
        # every neighbour of the small-degree nodes
        fa, ca, sa = frontier[take_all], deg[take_all], start[take_all]
        tot = int(ca.sum())
        rows_a = np.repeat(fa, ca)
        pos_a = np.arange(tot, dtype=np.int64) - np.repeat(np.cumsum(ca) - ca, ca) + np.repeat(sa, ca)
        w_a = self.values[pos_a]
        # f draws with replacement for the others, reweighted deg/f (unbiased)
        fs, ds, ss = frontier[~take_all], deg[~take_all], start[~take_all]
        rows_s = np.repeat(fs, f)
        offs = (rng.random(rows_s.size) * np.repeat(ds, f)).astype(np.int64)
        pos_s = np.repeat(ss, f) + offs
        w_s = self.values[pos_s] * np.repeat((ds / f).astype(np.float32), f)
        rows = np.concatenate([rows_a, rows_s])
        cols = self.indices[np.concatenate([pos_a, pos_s])]
        return rows, cols, np.concatenate([w_a, w_s]).astype(np.float32)

    def sample(self, seeds: np.ndarray, rng: np.random.Generator,
               layers: int | None = None) -> Subgraph:
        """The ``layers``-hop sampled neighbourhood of global node ids ``seeds``."""
        L = self.layers if layers is None else int(layers)
        n_nodes = self.indptr.size - 1
        if self._pos is None:  # dense scratch arrays: O(edges) marking instead of sorting
            self._pos = np.full(n_nodes, -1, dtype=np.int64)
        pos = self._pos
        frontier = np.unique(np.asarray(seeds, dtype=np.int64))
        visited = [frontier]
        pos[frontier] = 0
        rows, cols, vals = [], [], []
        try:
            for hop in range(L):
                if frontier.size == 0:
                    break
                r, c, w = self._hop(frontier, self.fanout(hop), rng)
                rows.append(r), cols.append(c), vals.append(w)
                cand = c[pos[c] < 0]
                new = np.unique(cand) if cand.size else cand
                pos[new] = 0
                visited.append(new)
                frontier = new
            nodes = np.sort(np.concatenate(visited))
            n = nodes.size
            pos[nodes] = np.arange(n, dtype=np.int64)
            if rows:
                r = pos[np.concatenate(rows)]
                c = pos[np.concatenate(cols)]
                v = np.concatenate(vals)
            else:
                r = c = np.zeros(0, dtype=np.int64)
                v = np.zeros(0, dtype=np.float32)
        finally:
            for part in visited:
                pos[part] = -1
        m = sp.csr_matrix((v, (r, c)), shape=(n, n), dtype=np.float32)
        m.sum_duplicates()
        m.sort_indices()
        nu = int(np.searchsorted(nodes, self.n_users))
        return Subgraph(nodes, NormalizedGraph.from_scipy(m, nu, n - nu), self.n_users)

    def batch(self, batch: BPRBatch, rng: np.random.Generator) -> SampledBatch:
        """Attach the sampled neighbourhood of the batch's users, positives and negatives."""
        seeds = np.concatenate([batch.users.numpy(), self.n_users + batch.pos.numpy(),
                                self.n_users + batch.neg.numpy()])
        return SampledBatch(batch.users, batch.pos, batch.neg, self.sample(seeds, rng))
