"""ID tables: TorchRec tables (specs, fused fbgemm optimizers, sharding) or plain torch ones.

Two backends behind one interface, chosen with :func:`make_id_tables`:

* ``torchrec`` (default): :class:`IdTables`, one TorchRec embedding-bag collection (dense or
  fbgemm-fused kernel), shardable by ``DistributedModelParallel``;
* ``torch``: :class:`TorchIdTables`, two ``nn.Embedding`` (one process, any device), for
  machines without fbgemm.

Importing this package does not import TorchRec or fbgemm: only building a TorchRec table (or
its configs, optimizers or sharding) does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from recalign.errors import ConfigError
from recalign.tables.collection import IdTables
from recalign.tables.optim import (ModelOptimizer, TableOptimizerSpec, fused_supported,
                                   resolve_kernel, sharder_fused_params)
from recalign.tables.specs import (ITEM, USER, InitName, TableSpec, id_table_configs,
                                   id_table_specs, init_bound, table_config)
from recalign.tables.torch_tables import TorchIdTables

if TYPE_CHECKING:
    from typing import Union

    AnyIdTables = Union[IdTables, TorchIdTables]

#: accepted ``backend`` names of :func:`make_id_tables`
TABLE_BACKENDS = ("torchrec", "torch")


class TableBackendError(ConfigError, ValueError):
    """An unknown table backend name (a config error that is also a ``ValueError``)."""


def make_id_tables(n_users: int, n_items: int, dim: int, *,
                   optimizer: TableOptimizerSpec | None = None,
                   init: InitName = "xavier_uniform",
                   device: torch.device | str = "cpu",
                   backend: str = "torchrec") -> "AnyIdTables":
    """User and item ID tables from the named backend (see :data:`TABLE_BACKENDS`).

    Both backends initialise bitwise-identical rows from the same torch RNG state."""
    if backend == "torchrec":
        return IdTables(n_users, n_items, dim, optimizer=optimizer, init=init, device=device)
    if backend == "torch":
        return TorchIdTables(n_users, n_items, dim, optimizer=optimizer, init=init,
                             device=device)
    raise TableBackendError(f"unknown table backend {backend!r}; accepted: "
                            f"{', '.join(repr(b) for b in TABLE_BACKENDS)}")


__all__ = ["IdTables", "ModelOptimizer", "TableOptimizerSpec", "fused_supported",
           "resolve_kernel", "sharder_fused_params", "ITEM", "USER", "id_table_configs",
           "init_bound", "table_config", "TABLE_BACKENDS", "TableBackendError", "TableSpec",
           "TorchIdTables", "id_table_specs", "make_id_tables"]
