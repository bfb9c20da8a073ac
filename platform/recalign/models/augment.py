"""Graph and embedding augmentations shared by the self-supervised backbones.

* Edge dropout views (SGL) are :meth:`recalign.data.graph.NormalizedGraph.edge_dropout`: each
  stored entry kept with probability ``keep_rate``, not rescaled (reference ``SpAdjEdgeDrop``).
* :func:`uniform_noise` — SimGCL's perturbation ``Δ = ε · normalize(U[0,1)) ⊙ sign(E)``: each
  row of the noise has L2 norm exactly ``ε`` and lies in the same orthant as the embedding row
  (reference ``_perturb_embedding``; the paper's ``Δ = ε·X̄ ⊙ sign(E)``, ``X̄ = X/||X||``).
* :func:`autocf_seed_scores` and :func:`mask_subgraphs` — AutoCF's learned seed selection
  (local–global infomax scores of each node against its 2-hop subgraph, Gumbel noise, top-k) and
  its masked encoder graph / random decoder graph (reference ``LocalGraph`` and
  ``RandomMaskSubgraphs``), written vectorised over edge lists instead of a Python loop per seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recalign.data.graph import NormalizedGraph, normalize_symmetric, spmm


def uniform_noise(x: torch.Tensor, eps: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise of row norm ``eps`` with the sign pattern of ``x`` (SimGCL); added by the caller."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return F.normalize(u, p=2, dim=-1) * torch.sign(x) * eps


def binary_graph(a: sp.csr_matrix, n_users: int, n_items: int) -> NormalizedGraph:
    """A (users+items)² 0/1 adjacency as a :class:`NormalizedGraph` (values all 1)."""
    a = sp.csr_matrix(a, dtype=np.float32, copy=True)
    a.data[:] = 1.0
    return NormalizedGraph.from_scipy(a, n_users, n_items)


def autocf_seed_scores(ones: NormalizedGraph, ego: torch.Tensor, seed_num: int,
                       generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy log-scores of every node, indices of the ``seed_num`` highest).

    ``ones`` is the 0/1 adjacency without self-loops. A node's subgraph embedding is the mean
    of its 1-hop and 2-hop neighbourhood embeddings, built as the reference does with
    ``A·e - e`` corrections (so the counts are the reference's, including its self-terms);
    its score is ``σ(cos(subgraph, e))``. Gumbel noise ``-log(-log U)`` on ``log score`` makes
    top-k a sample without replacement proportional to the scores. The returned scores carry
    gradients to ``ego`` (``-mean`` of them is AutoCF's infomax loss); the noise does not.
    """
    order = torch.diff(ones.crow).to(ego.dtype).unsqueeze(-1)
    fst = spmm(ones, ego) - ego
    scd = (spmm(ones, fst) - fst) - order * ego
    fst_num = order
    scd_num = (spmm(ones, order) - order) - order
    sub = (fst + scd) / (fst_num + scd_num + 1e-8)
    scores = torch.sigmoid((F.normalize(sub, p=2, dim=-1) * F.normalize(ego, p=2, dim=-1)).sum(-1))
    u = torch.rand(scores.shape, generator=generator, dtype=scores.dtype).clamp_(1e-12, 1 - 1e-7)
    noisy = torch.log(scores) - torch.log(-torch.log(u))
    seeds = torch.topk(noisy.detach(), min(seed_num, noisy.numel())).indices
    return noisy, seeds


@dataclass
class EdgeCSR:
    """An edge list (``rows`` sorted) as CSR, with its transpose: products of per-edge values
    with dense node features run as sparse matrix products instead of gathers and scatters of
    ``|E| × d`` message tensors (AutoCF's graph-transformer attention)."""

    rows: torch.Tensor
    cols: torch.Tensor
    crow: torch.Tensor
    t_crow: torch.Tensor
    t_col: torch.Tensor
    t_perm: torch.Tensor
    n: int

    @classmethod
    def build(cls, rows: torch.Tensor, cols: torch.Tensor, n: int) -> "EdgeCSR":
        rows, cols = rows.long(), cols.long()
        if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
            order = torch.argsort(rows * n + cols)
            rows, cols = rows[order], cols[order]
        crow = torch.zeros(n + 1, dtype=torch.long)
        crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
        t_perm = torch.argsort(cols * n + rows)
        t_crow = torch.zeros(n + 1, dtype=torch.long)
        t_crow[1:] = torch.bincount(cols, minlength=n).cumsum(0)
        return cls(rows, cols, crow, t_crow, rows[t_perm], t_perm, n)

    def mm(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y[r] = Σ_{e: rows[e]=r} values[e] · x[cols[e]]`` (values in this edge order)."""
        return torch.sparse.mm(_csr(self.crow, self.cols, values, self.n), x)

    def t_mm(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y[c] = Σ_{e: cols[e]=c} values[e] · x[rows[e]]`` (the transpose's product)."""
        return torch.sparse.mm(_csr(self.t_crow, self.t_col, values.index_select(0, self.t_perm),
                                    self.n), x)


class _ValuedSpMM(torch.autograd.Function):
    """``y = A(values) x`` on an :class:`EdgeCSR`, differentiable in ``values`` and ``x``."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, x: torch.Tensor, g: "EdgeCSR"):  # type: ignore[override]
        ctx.g = g
        ctx.save_for_backward(values, x)
        return g.mm(values, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        values, x = ctx.saved_tensors
        g = ctx.g
        grad = grad.contiguous()
        gv = gx = None
        if ctx.needs_input_grad[0]:  # ∂/∂v_e = <grad_r, x_c>
            gv = (grad.index_select(0, g.rows) * x.index_select(0, g.cols)).sum(-1)
        if ctx.needs_input_grad[1]:
            gx = g.t_mm(values, grad)
        return gv, gx, None


def valued_spmm(edges: "EdgeCSR", values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y[r] = Σ_e values[e] · x[cols[e]]`` as a CSR product, gradients to values and x (the
    same as :func:`recalign.data.graph.edge_spmm`, without its |E| × d message tensor)."""
    return _ValuedSpMM.apply(values, x, edges)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values.contiguous(), (n, n),
                                       check_invariants=False)


@dataclass
class MaskedGraphs:
    """AutoCF's per-period graphs: the encoder graph (masked edges removed, renormalised) and
    the decoder's edge list (random edges among masked nodes + self-loops + kept edges)."""

    encoder: NormalizedGraph
    decoder_rows: torch.Tensor
    decoder_cols: torch.Tensor
    masked_edges: int
    masked_nodes: torch.Tensor
    decoder: EdgeCSR | None = None


def mask_subgraphs(ones: NormalizedGraph, seeds: torch.Tensor, depth: int, keep_rate: float,
                   generator: torch.Generator | None = None) -> MaskedGraphs:
    """Remove the edges within ``depth`` hops of ``seeds``; build the decoder graph.

    As the reference: hop 0 removes every edge touching a seed; the endpoints of those edges
    are the next frontier, whose remaining edges hop 1 removes, and so on for ``depth`` hops.
    The masked node set is the seeds, the frontiers (all but the last hop's) and
    ``int(n·keep_rate)`` nodes drawn uniformly with replacement. The decoder holds as many
    random (masked node, masked node) pairs as the adjacency has entries, both directions,
    plus every self-loop and every kept edge, duplicates removed, all weights 1.
    """
    n = ones.n_nodes
    rows = torch.repeat_interleave(torch.arange(n), torch.diff(ones.crow))
    cols = ones.col
    alive = torch.ones(rows.numel(), dtype=torch.bool)
    masked = [seeds.long()]
    frontier = seeds.long()
    for hop in range(depth):
        flag = torch.zeros(n, dtype=torch.bool)
        flag[frontier] = True
        hit = alive & (flag[rows] | flag[cols])
        if hop != depth - 1:
            frontier = torch.unique(torch.cat([rows[hit], cols[hit]]))
            if frontier.numel():
                masked.append(frontier)
        alive &= ~hit
    n_samp = int(n * keep_rate)
    masked.append(torch.randint(n, (n_samp,), generator=generator))
    mask_nodes = torch.unique(torch.cat(masked))
    kr, kc = rows[alive], cols[alive]
    # encoder: kept edges, D^-1/2 A D^-1/2 over the kept edges' degrees
    enc = sp.csr_matrix((np.ones(kr.numel(), np.float32), (kr.numpy(), kc.numpy())), shape=(n, n))
    encoder = NormalizedGraph.from_scipy(normalize_symmetric(enc), ones.n_users, ones.n_items)
    m = mask_nodes.numel()
    e = rows.numel()
    tr = mask_nodes[torch.randint(m, (e,), generator=generator)]
    tc = mask_nodes[torch.randint(m, (e,), generator=generator)]
    ar = torch.arange(n)
    new_r = torch.cat([tr, tc, ar, kr])
    new_c = torch.cat([tc, tr, ar, kc])
    h = torch.unique(new_r * n + new_c)
    dr, dc = h // n, h % n  # sorted by row (then column): CSR order
    return MaskedGraphs(encoder=encoder, decoder_rows=dr, decoder_cols=dc,
                        decoder=EdgeCSR.build(dr, dc, n),
                        masked_edges=int(e - kr.numel()), masked_nodes=mask_nodes)


__all__ = ["EdgeCSR", "MaskedGraphs", "valued_spmm", "autocf_seed_scores", "binary_graph", "mask_subgraphs",
           "uniform_noise"]
