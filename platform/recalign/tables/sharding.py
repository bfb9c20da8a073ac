"""Shard :class:`IdTables` across a process group with TorchRec's ``DistributedModelParallel``.

Plans:
* ``table-wise``: each table lives whole on one rank (user table on rank 0, item table on
  rank 1 % world, ...), fbgemm fused kernel.
* ``row-wise``: every table split into contiguous row blocks, one per rank. On CPU TorchRec's
  planner does not offer row-wise (the sharder advertises it only for CUDA), so the plan is
  built by hand with ``construct_module_sharding_plan(..., device_type="cpu")`` and the fused
  kernel requested explicitly (a hand-built plan defaults to the dense kernel).
* ``planner``: whatever TorchRec's planner proposes for the world (table-/column-wise or data
  parallel on CPU).

DMP re-initialises sharded tables, so :func:`load_rows` copies known weights into the local
shards (for tests against an unsharded reference and for warm starts), and
:func:`local_rows` yields each local shard with its global row offset (for export without
gathering a table onto one process).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from recalign.tables.optim import TableOptimizerSpec, sharder_fused_params

PlanKind = Literal["table-wise", "row-wise", "planner"]


def _sharder(spec: TableOptimizerSpec) -> Any:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    return EmbeddingBagCollectionSharder(fused_params=sharder_fused_params(spec))


def build_plan(ebc: nn.Module, kind: PlanKind, world_size: int, device_type: str,
               sharder: Any, module_path: str, pg: Any = None,
               local_size: int | None = None) -> Any:
    """A ShardingPlan for the embedding collection found at ``module_path`` in the model."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.sharding_plan import (construct_module_sharding_plan, row_wise,
                                                    table_wise)
    from torchrec.distributed.types import ShardingPlan

    if kind == "planner":
        planner = EmbeddingShardingPlanner(topology=Topology(
            world_size=world_size, compute_device=device_type,
            local_world_size=local_size or world_size))
        holder = nn.Module()
        holder.add_module(module_path, ebc)
        if pg is not None:
            return planner.collective_plan(holder, [sharder], pg)
        return planner.plan(holder, [sharder])
    names = [c.name for c in ebc.embedding_bag_configs()]
    if kind == "row-wise":
        per_table = {t: row_wise(compute_kernel="fused") for t in names}
    elif kind == "table-wise":
        per_table = {t: table_wise(rank=i % world_size, compute_kernel="fused")
                     for i, t in enumerate(names)}
    else:
        raise ValueError(f"unknown sharding plan {kind!r}; known: table-wise, row-wise, planner")
    module_plan = construct_module_sharding_plan(ebc, per_table, sharder=sharder,
                                                 local_size=local_size or world_size,
                                                 world_size=world_size,
                                                 device_type=device_type)
    return ShardingPlan({module_path: module_plan})


def shard_model(model: nn.Module, tables_path: str, kind: PlanKind,
                optimizer: TableOptimizerSpec, *, pg: Any = None,
                device: torch.device | str = "cpu", local_size: int | None = None) -> Any:
    """Wrap ``model`` in DMP: the collection at ``tables_path`` (e.g. ``"tables.ebc"``) is
    sharded by ``kind`` with fused fbgemm optimizers; dense parameters go under DDP."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    pg = pg or dist.group.WORLD
    device = torch.device(device)
    sharder = _sharder(optimizer)
    ebc = model.get_submodule(tables_path)
    # local_size: ranks per node (Ray Train's local world size); defaults to one node
    plan = build_plan(ebc, kind, dist.get_world_size(pg), device.type, sharder, tables_path, pg,
                      local_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DistributedModelParallel(model, env=ShardingEnv.from_process_group(pg), plan=plan,
                                        sharders=[sharder], device=device)


def _table_of(key: str) -> str | None:
    """``...embedding_bags.<table>.weight`` -> ``<table>`` (any other state key: None)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-3] == "embedding_bags":
        return parts[-2]
    return None


def local_rows(dmp: nn.Module) -> Iterator[tuple[str, int, int, torch.Tensor]]:
    """(table, global row offset, column offset, local shard) for every shard on this rank."""
    for key, value in dmp.state_dict().items():
        table = _table_of(key)
        if table is None or not hasattr(value, "local_shards"):
            continue
        for shard in value.local_shards():
            rows, cols = shard.metadata.shard_offsets
            yield table, int(rows), int(cols), shard.tensor


@torch.no_grad()
def load_rows(dmp: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy full tables (``{"user": [n_users, d], "item": ...}``, rows beyond a tensor's
    length are left as initialised: warm start with appended new ids) into the local shards."""
    for table, r0, c0, shard in local_rows(dmp):
        if table not in full:
            continue
        src = full[table]
        n, d = shard.shape
        avail = max(0, min(n, src.shape[0] - r0))
        if avail:
            shard[:avail].copy_(src[r0:r0 + avail, c0:c0 + d].to(shard.dtype))
