"""Table specs for the ``user`` and ``item`` ID embedding tables (TorchRec ``EmbeddingBagConfig``).

Each table has one feature of the same name and SUM pooling; every lookup bag holds one id, so
a pooled output row *is* the embedding row. Initialisation is expressed through
``weight_init_min``/``weight_init_max`` so that every TorchRec module that builds the table —
``EmbeddingBagCollection``, ``FusedEmbeddingBagCollection`` and the sharded modules created by
``DistributedModelParallel`` — applies the same uniform initialisation.

The plain-torch backend (:class:`recalign.tables.torch_tables.TorchIdTables`) builds its
tables from the same torch-free :class:`TableSpec` and applies the same initialisation
(:meth:`TableSpec.init_`), so both backends start from bitwise-identical rows for one seed.
TorchRec is imported only when a TorchRec config is asked for (:func:`table_config`).

``xavier_uniform`` reproduces the reference code (``nn.init.xavier_uniform_`` on an
``(n_rows, dim)`` tensor, i.e. fan_in = dim, fan_out = n_rows): U(-b, b) with
``b = sqrt(6 / (n_rows + dim))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

USER = "user"
ITEM = "item"

InitName = Literal["xavier_uniform", "torchrec_default"]


def init_bound(n_rows: int, dim: int, init: InitName = "xavier_uniform") -> float:
    if init == "xavier_uniform":
        return math.sqrt(6.0 / (n_rows + dim))
    if init == "torchrec_default":
        return math.sqrt(1.0 / n_rows)
    raise ValueError(f"unknown table init {init!r}; known: xavier_uniform, torchrec_default")


@dataclass(frozen=True)
class TableSpec:
    """One ID table, without TorchRec: rows, dim and the uniform init range.

    Field names follow TorchRec's ``EmbeddingBagConfig`` (one feature of the table's name)."""

    name: str
    num_embeddings: int
    embedding_dim: int
    weight_init_min: float
    weight_init_max: float

    @property
    def feature_names(self) -> list[str]:
        return [self.name]

    def init_(self, weight: "torch.Tensor") -> "torch.Tensor":
        """Initialise ``weight`` in place as TorchRec's ``EmbeddingBagConfig.init_fn`` does
        (``torch.nn.init.uniform_`` over [min, max]); a no-op on the meta device."""
        import torch

        if weight.device.type == "meta":
            return weight
        return torch.nn.init.uniform_(weight, a=self.weight_init_min, b=self.weight_init_max)


def table_spec(name: str, n_rows: int, dim: int, init: InitName = "xavier_uniform") -> TableSpec:
    if n_rows < 1 or dim < 1:
        raise ValueError(f"table {name!r}: rows and dim must be >= 1, got {n_rows} x {dim}")
    b = init_bound(n_rows, dim, init)
    return TableSpec(name=name, num_embeddings=int(n_rows), embedding_dim=int(dim),
                     weight_init_min=-b, weight_init_max=b)


def id_table_specs(n_users: int, n_items: int, dim: int,
                   init: InitName = "xavier_uniform") -> list[TableSpec]:
    """Specs of the ``user`` and ``item`` tables, in that order (no TorchRec needed)."""
    return [table_spec(USER, n_users, dim, init), table_spec(ITEM, n_items, dim, init)]


def table_config(name: str, n_rows: int, dim: int,
                 init: InitName = "xavier_uniform") -> "EmbeddingBagConfig":
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

    s = table_spec(name, n_rows, dim, init)
    return EmbeddingBagConfig(name=s.name, num_embeddings=s.num_embeddings,
                              embedding_dim=s.embedding_dim, feature_names=s.feature_names,
                              pooling=PoolingType.SUM, weight_init_min=s.weight_init_min,
                              weight_init_max=s.weight_init_max)


def id_table_configs(n_users: int, n_items: int, dim: int,
                     init: InitName = "xavier_uniform") -> "list[EmbeddingBagConfig]":
    """Configs of the ``user`` and ``item`` tables, in that order."""
    return [table_config(USER, n_users, dim, init), table_config(ITEM, n_items, dim, init)]
