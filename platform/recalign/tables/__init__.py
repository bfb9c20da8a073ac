"""TorchRec table specs, ID tables, table optimizers (fused where fbgemm supports them)."""

from recalign.tables.collection import IdTables
from recalign.tables.optim import (ModelOptimizer, TableOptimizerSpec, fused_supported,
                                   resolve_kernel, sharder_fused_params)
from recalign.tables.specs import ITEM, USER, id_table_configs, init_bound, table_config

__all__ = ["IdTables", "ModelOptimizer", "TableOptimizerSpec", "fused_supported",
           "resolve_kernel", "sharder_fused_params", "ITEM", "USER", "id_table_configs",
           "init_bound", "table_config"]
