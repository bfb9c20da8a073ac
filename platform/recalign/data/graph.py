"""The user–item bipartite graph as a normalised sparse adjacency, and edge dropout.

Nodes are users ``0..n_users-1`` followed by items ``n_users..n_users+n_items-1``. The
adjacency of the training interactions is ``A = [[0, R], [Rᵀ, 0]]`` (binary ``R``), optionally
plus the identity (GCCF's self-loops), normalised symmetrically ``D^-1/2 A D^-1/2`` with ``D``
the row degrees of that matrix (isolated nodes get 0, not inf) — the RLMRec/SSLRec handler's
construction.

:class:`NormalizedGraph` keeps the matrix as a torch sparse CSR tensor plus a permutation
giving its transpose in CSR order, so that :func:`spmm` can run its backward as one more CSR
product instead of letting autograd transpose the matrix on every step. Edge dropout
(:meth:`NormalizedGraph.edge_dropout`) keeps each stored entry independently with probability
``keep_rate`` and does **not** rescale or renormalise the kept values (as the reference code);
dropped entries are set to 0 so the sparsity structure, and the transpose permutation, stay valid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch


def bipartite_adjacency(train: sp.spmatrix, self_loops: bool = False) -> sp.csr_matrix:
    """Binary symmetric (users+items)² CSR adjacency of the interactions in ``train``."""
    r = sp.csr_matrix(train, dtype=np.float32, copy=True)
    r.data[:] = 1.0
    r.eliminate_zeros()
    r.sum_duplicates()
    r.data[:] = 1.0
    n_users, n_items = r.shape
    a = sp.bmat([[sp.csr_matrix((n_users, n_users), dtype=np.float32), r],
                 [r.T.tocsr(), sp.csr_matrix((n_items, n_items), dtype=np.float32)]],
                format="csr")
    if self_loops:
        a = (a + sp.eye(n_users + n_items, dtype=np.float32, format="csr")).tocsr()
    a.sum_duplicates()
    a.data[:] = 1.0
    a.sort_indices()
    return a


def normalize_symmetric(a: sp.csr_matrix) -> sp.csr_matrix:
    """``D^-1/2 A D^-1/2`` with D the row sums of A; zero-degree rows stay zero."""
    deg = np.asarray(a.sum(axis=1), dtype=np.float64).ravel()
    with np.errstate(divide="ignore"):
        d = np.where(deg > 0, deg ** -0.5, 0.0)
    a = a.tocsr(copy=True).astype(np.float64)
    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    a.data *= d[rows] * d[a.indices]
    out = a.astype(np.float32)
    out.sort_indices()
    return out


def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass
class NormalizedGraph:
    """A sparse (n × n) matrix in CSR form with its transpose available in CSR order.

    ``crow``/``col``/``values`` describe the matrix; ``t_crow``/``t_col`` the transpose's
    structure and ``t_perm`` the positions in ``values`` of the transpose's entries, so that
    ``values[t_perm]`` are the transpose's values (valid for any values on this structure).
    """

    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    t_crow: torch.Tensor
    t_col: torch.Tensor
    t_perm: torch.Tensor
    n_users: int
    n_items: int

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @classmethod
    def from_scipy(cls, m: sp.csr_matrix, n_users: int, n_items: int) -> "NormalizedGraph":
        m = m.tocsr()
        m.sort_indices()
        n = m.shape[0]
        if m.shape != (n_users + n_items, n_users + n_items):
            raise ValueError(f"matrix shape {m.shape} does not match {n_users}+{n_items} nodes")
        pos = sp.csr_matrix((np.arange(1, m.nnz + 1, dtype=np.float64), m.indices, m.indptr),
                            shape=m.shape)
        t = pos.T.tocsr()
        t.sort_indices()
        t_perm = t.data.astype(np.int64) - 1
        return cls(
            crow=torch.from_numpy(m.indptr.astype(np.int64)),
            col=torch.from_numpy(m.indices.astype(np.int64)),
            values=torch.from_numpy(m.data.astype(np.float32)),
            t_crow=torch.from_numpy(t.indptr.astype(np.int64)),
            t_col=torch.from_numpy(t.indices.astype(np.int64)),
            t_perm=torch.from_numpy(t_perm),
            n_users=n_users, n_items=n_items)

    def to_scipy(self, values: torch.Tensor | None = None) -> sp.csr_matrix:
        v = self.values if values is None else values
        return sp.csr_matrix((v.detach().cpu().numpy(), self.col.numpy(), self.crow.numpy()),
                             shape=(self.n_nodes, self.n_nodes))

    def matrix(self, values: torch.Tensor | None = None) -> torch.Tensor:
        v = self.values if values is None else values
        return _csr_tensor(self.crow, self.col, v, (self.n_nodes, self.n_nodes))

    def transpose_values(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """The transpose's values (CSR order of the transpose) for ``values`` on this structure."""
        v = self.values if values is None else values
        return v.index_select(0, self.t_perm)

    def transpose_matrix(self, values: torch.Tensor | None = None, *,
                         t_values: torch.Tensor | None = None) -> torch.Tensor:
        tv = self.transpose_values(values) if t_values is None else t_values
        return _csr_tensor(self.t_crow, self.t_col, tv, (self.n_nodes, self.n_nodes))

    def edge_dropout(self, keep_rate: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Values with each entry kept with probability ``keep_rate`` (others 0), not rescaled."""
        if keep_rate >= 1.0:
            return self.values
        keep = torch.rand(self.values.shape, generator=generator) < keep_rate
        return self.values * keep


def normalized_adjacency(train: sp.spmatrix, self_loops: bool = False) -> NormalizedGraph:
    """Normalised bipartite adjacency of a users × items training matrix."""
    n_users, n_items = train.shape
    a = normalize_symmetric(bipartite_adjacency(train, self_loops=self_loops))
    return NormalizedGraph.from_scipy(a, n_users, n_items)


class _SpMM(torch.autograd.Function):
    """``y = A x`` with ``A`` given by a graph and values; backward ``Aᵀ g`` as a CSR product."""

    @staticmethod
    def forward(ctx, graph: NormalizedGraph, values: torch.Tensor,  # type: ignore[override]
                t_values: torch.Tensor, x: torch.Tensor):
        ctx.graph = graph
        ctx.save_for_backward(t_values)
        return torch.sparse.mm(graph.matrix(values), x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (t_values,) = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[3]:
            gx = torch.sparse.mm(ctx.graph.transpose_matrix(t_values=t_values), grad.contiguous())
        return None, None, None, gx


def spmm(graph: NormalizedGraph, x: torch.Tensor, values: torch.Tensor | None = None,
         t_values: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse (graph, optionally with dropped-out ``values``) times dense; differentiable in x.

    Gradients flow to ``x`` only, never to the adjacency values. ``t_values`` (the transpose's
    values, :meth:`NormalizedGraph.transpose_values`) may be passed when several products share
    the same values, to permute them once.
    """
    v = graph.values if values is None else values
    if x.requires_grad and torch.is_grad_enabled():
        tv = graph.transpose_values(v) if t_values is None else t_values
        return _SpMM.apply(graph, v.detach(), tv.detach(), x)
    return torch.sparse.mm(graph.matrix(v), x)


def propagate(graph: NormalizedGraph, ego: torch.Tensor, layers: int,
              values: torch.Tensor | None = None,
              after_layer: Callable[[torch.Tensor], torch.Tensor] | None = None,
              ) -> list[torch.Tensor]:
    """Layer outputs ``[E0, E1, ..., EL]`` of ``E(l+1) = after_layer(Â E(l))``.

    ``values`` replaces the matrix's values for this call (edge dropout); the transpose's values
    are permuted once and shared by every layer's backward. ``after_layer`` transforms each
    propagated layer before it feeds the next one (SimGCL's noise). How the layers are combined
    (sum, concatenation) is the caller's choice.
    """
    v = graph.values if values is None else values
    t_values = (graph.transpose_values(v)
                if ego.requires_grad and torch.is_grad_enabled() else None)
    out = [ego]
    h = ego
    for _ in range(layers):
        h = spmm(graph, h, v, t_values)
        if after_layer is not None:
            h = after_layer(h)
        out.append(h)
    return out


def edge_spmm(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
              n_rows: int) -> torch.Tensor:
    """``y[r] = Σ_e values[e] · x[cols[e]]`` over edges with ``rows[e] = r``.

    Differentiable in ``values`` *and* ``x`` (unlike :func:`spmm`), for adjacency weights that
    are themselves functions of the embeddings (DCCF's adaptive masks). ``values``: [E].
    """
    msg = x.index_select(0, cols) * values.unsqueeze(-1)
    return x.new_zeros((n_rows, msg.shape[-1])).index_add_(0, rows, msg)
