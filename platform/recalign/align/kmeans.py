"""Mini-batch k-means whose centres stay identical across workers.

DaRec keeps K preference centres per side and updates them every step from the sampled rows.
Each update computes per-centre sums and counts of the local rows; an optional all-reduce
(a ``torch.distributed`` process group, or any ``reduce_fn`` summing a tensor across workers)
turns them into global sums and counts, and every worker applies the same update::

    count_k <- decay * count_k + n_k ;  c_k <- (decay * count_k_old * c_k + sum_k) / count_k

(``decay = 1`` is Sculley's mini-batch k-means with per-centre learning rate 1/count; ``< 1``
lets centres follow representations that move during training.) The first update initialises
the centres from the root worker's rows, sent to all by the same all-reduce (others contribute
zeros), so all workers start and stay identical. No Ray here: the training runner passes the
process group Ray Train set up.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ReduceFn = Callable[[torch.Tensor], torch.Tensor]


def _group_reduce(group: object) -> tuple[ReduceFn, bool]:
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)  # type: ignore[arg-type]
        return t

    return reduce, dist.get_rank(group) == 0  # type: ignore[arg-type]


class MiniBatchKMeans(nn.Module):
    """K centres in ``dim`` dimensions, updated by (optionally all-reduced) mini-batches."""

    def __init__(self, k: int, dim: int, *, decay: float = 1.0, group: object = None,
                 reduce_fn: ReduceFn | None = None, is_root: bool = True, seed: int = 0) -> None:
        super().__init__()
        if not 0 < decay <= 1:
            raise ValueError("decay must be in (0, 1]")
        self.k, self.dim, self.decay = int(k), int(dim), float(decay)
        if group is not None:
            reduce_fn, is_root = _group_reduce(group)
        self.reduce_fn, self.is_root = reduce_fn, is_root
        self.register_buffer("centres", torch.zeros(self.k, self.dim))
        self.register_buffer("counts", torch.zeros(self.k))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self._gen = torch.Generator().manual_seed(int(seed))

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return self.reduce_fn(t) if self.reduce_fn is not None else t

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest centre (squared Euclidean; ties to the lower index)."""
        d = (x.square().sum(1, keepdim=True) - 2 * x @ self.centres.T
             + self.centres.square().sum(1).unsqueeze(0))
        return d.argmin(1)

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        if n >= self.k:
            rows = torch.randperm(n, generator=self._gen)[: self.k]
        else:
            rows = torch.randint(0, max(n, 1), (self.k,), generator=self._gen)
        # distinct tiny jitter keeps duplicated rows from giving identical centres
        init = (x[rows].float() + 1e-4 * torch.randn(self.k, self.dim, generator=self._gen)
                if n else torch.randn(self.k, self.dim, generator=self._gen))
        if not self.is_root:
            init = torch.zeros_like(init)
        self.centres.copy_(self._reduce(init.contiguous()))
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Assign the local rows, all-reduce sums and counts, move centres.

        Returns (assignment of each local row, global count of this update per centre)."""
        x = x.detach().float()
        if not bool(self.initialised):
            self._init(x)
        idx = self.assign(x)
        packed = torch.zeros(self.k, self.dim + 1)
        packed[:, : self.dim].index_add_(0, idx, x)
        packed[:, self.dim].index_add_(0, idx, torch.ones(x.shape[0]))
        packed = self._reduce(packed)
        sums, n = packed[:, : self.dim], packed[:, self.dim]
        old = self.decay * self.counts
        new = old + n
        moved = new > 0
        self.centres[moved] = ((old[moved, None] * self.centres[moved] + sums[moved])
                               / new[moved, None])
        self.counts.copy_(new)
        return idx, n

    def differentiable_centres(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The centres just updated, carrying the gradient of the local rows' contribution.

        Value: ``self.centres``; gradient w.r.t. row i of x: ``1/count_k`` on its centre k
        (the other workers' rows and the history enter as constants)."""
        local = torch.zeros(self.k, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, idx, x)
        denom = self.counts.clamp(min=1e-12).unsqueeze(1).to(x.dtype)
        return self.centres.to(x.dtype) + (local - local.detach()) / denom


def greedy_match(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``perm`` with ``perm[i] = j``: repeatedly take the closest unmatched (a_i, b_j) pair.

    Euclidean distance, ascending; ties broken by the lower flat index (i, then j)."""
    k = a.shape[0]
    if b.shape[0] != k:
        raise ValueError("both sides need the same number of centres")
    d = torch.cdist(a.detach().double(), b.detach().double())
    perm = torch.full((k,), -1, dtype=torch.long)
    inf = torch.tensor(float("inf"), dtype=d.dtype)
    for _ in range(k):
        flat = int(torch.argmin(d))
        i, j = divmod(flat, k)
        perm[i] = j
        d[i, :] = inf
        d[:, j] = inf
    return perm
