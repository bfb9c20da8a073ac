"""The optimizers of one run: a torch optimizer over dense parameters, and the fused optimizer
that fbgemm applies inside backward for table rows (nothing to step; its state is checkpointed).

Dense gradients are averaged over data-parallel ranks after backward (as DDP does); sharded
table rows get their gradients from TorchRec already averaged over the world.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from recalign.tables.optim import TableOptimizerSpec, dense_optimizer
from recalign.train.dist import Dist


class Optimizers:
    def __init__(self, dense: Iterable[torch.nn.Parameter], spec: TableOptimizerSpec,
                 fused: Any = None) -> None:
        self.params = [p for p in dense if p.requires_grad]
        self.dense = dense_optimizer(self.params, spec) if self.params else None
        self.fused = fused
        self._base_lr = [g["lr"] for g in self.dense.param_groups] if self.dense else []

    def decay_lr(self, epoch: int, every: int, factor: float) -> float | None:
        """Set the dense optimizer's lr for ``epoch`` to ``base · factor^(epoch // every)``
        (``every`` 0: the base); the lr of the first group, None without a dense optimizer.
        The fused table optimizer keeps its own lr (the trainer refuses decay with one)."""
        if self.dense is None:
            return None
        scale = factor ** (epoch // every) if every else 1.0
        for g, base in zip(self.dense.param_groups, self._base_lr, strict=True):
            g["lr"] = base * scale
        return float(self.dense.param_groups[0]["lr"])

    def zero_grad(self) -> None:
        if self.dense is not None:
            self.dense.zero_grad(set_to_none=True)

    def average_gradients(self, d: Dist) -> None:
        if not d.distributed:
            return
        for p in self.params:
            if p.grad is not None:
                d.all_reduce(p.grad).div_(d.world)

    def step(self) -> None:
        if self.dense is not None:
            self.dense.step()
