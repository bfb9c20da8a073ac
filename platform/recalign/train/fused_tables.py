"""ID/token tables trained by an fbgemm fused optimizer, placed for a task's ranks.

N ranks: the collection is built on the meta device and sharded row-wise by TorchRec's
``DistributedModelParallel``; each rank fills only the rows it owns. One process: the same
collection unsharded, with the same fused optimizer. Either way every row starts from
``rows_of`` — values that depend on the seed and the row only
(:mod:`recalign.tables.seeded_init`) — so 1 and N ranks start alike and take the same steps.
Used by the tasks whose tables are an option of the model (``next-item``'s
``item_table: sharded``, ``lm``'s ``tables: sharded``); the pairwise task places its tables
itself (sharding plans, warm starts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from recalign.tables.optim import TableOptimizerSpec
from recalign.tables.seeded_init import RowsFn, fill_rows
from recalign.train.dist import Dist

#: ``make(device, optimizer spec)`` -> an unfilled ``IdTables``
MakeTables = Callable[[Any, TableOptimizerSpec], Any]
#: ``attach(tables, lookup_size)``: the model reads its rows from ``tables``
Attach = Callable[[Any, Callable[[int], int]], None]


def place_fused_tables(make: MakeTables, spec: TableOptimizerSpec, d: Dist,
                       rows_for: Callable[[Any], RowsFn], attach: Attach, *,
                       root: nn.Module | None = None, path: str = "ebc") -> tuple[Any, Any]:
    """Build, place and fill the tables, attach them to the model; (DMP or None, the fused
    optimizer). ``root``/``path``: the module DMP wraps and where its collection sits in it
    (default: the tables themselves); ``rows_for(tables)``: the initial rows."""
    if d.distributed:
        from recalign.tables.sharding import local_rows, shard_model

        tables = make("meta", spec.model_copy(update={"kernel": "dense"}))
        rows_of = rows_for(tables)
        attach(tables, d.max_int)
        dmp = shard_model(root if root is not None else tables, path, "row-wise", spec,
                          pg=d.pg, device=d.device, local_size=d.local_world)
        fill_rows(local_rows(dmp), rows_of)
        return dmp, dmp.fused_optimizer
    tables = make(d.device, spec.model_copy(update={"kernel": "fused"}))
    with torch.no_grad():
        fill_rows([(t, 0, 0, w) for t, w in tables.named_weights().items()], rows_for(tables))
    attach(tables, lambda n: n)
    return None, tables.fused_optimizer()


__all__ = ["place_fused_tables"]
