"""The process-group view a training run needs, injected from outside (no Ray here).

``Dist(rank=0, world=1)`` is the in-process run; under Ray Train the worker builds one from the
process group Ray Train initialised. All collectives are no-ops at world size 1, so the runner
has one code path for every world size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    pg: Any = None  # None: the default group (when world > 1)
    #: ranks on this node (Ray Train's local world size): hand-built sharding plans need it
    local_world: int | None = None

    @classmethod
    def from_torch(cls, device: torch.device | str = "cpu") -> "Dist":
        """From an initialised default process group (Ray Train's)."""
        if not dist.is_initialized():
            return cls(device=torch.device(device))
        return cls(dist.get_rank(), dist.get_world_size(), torch.device(device))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place; a tensor on another device than the rank's (a CPU tensor under nccl) is
        reduced on the rank's device and copied back, so callers need not care."""
        if self.distributed:
            ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
            if t.device.type != self.device.type and self._backend_needs_device():
                moved = t.to(self.device)
                dist.all_reduce(moved, op=ops[op], group=self.pg)
                t.copy_(moved)
            else:
                dist.all_reduce(t, op=ops[op], group=self.pg)
        return t

    def _backend_needs_device(self) -> bool:
        # a "cpu:gloo,cuda:nccl" group reduces each tensor where it lives
        backend = str(dist.get_backend(self.pg))
        return "gloo" not in backend

    def max_int(self, v: int) -> int:
        t = torch.tensor([int(v)], dtype=torch.int64, device=self.device)
        return int(self.all_reduce(t, "max").item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` on every rank (small metadata only)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.pg)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.pg)
