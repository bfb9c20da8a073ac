"""Table specs for the ``user`` and ``item`` ID embedding tables (TorchRec ``EmbeddingBagConfig``).

Each table has one feature of the same name and SUM pooling; every lookup bag holds one id, so
a pooled output row *is* the embedding row. Initialisation is expressed through
``weight_init_min``/``weight_init_max`` so that every TorchRec module that builds the table —
``EmbeddingBagCollection``, ``FusedEmbeddingBagCollection`` and the sharded modules created by
``DistributedModelParallel`` — applies the same uniform initialisation.

``xavier_uniform`` reproduces the reference code (``nn.init.xavier_uniform_`` on an
``(n_rows, dim)`` tensor, i.e. fan_in = dim, fan_out = n_rows): U(-b, b) with
``b = sqrt(6 / (n_rows + dim))``.
"""

from __future__ import annotations

import math
from typing import Literal

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

USER = "user"
ITEM = "item"
TABLE_NAMES = (USER, ITEM)

InitName = Literal["xavier_uniform", "torchrec_default"]


def init_bound(n_rows: int, dim: int, init: InitName = "xavier_uniform") -> float:
    if init == "xavier_uniform":
        return math.sqrt(6.0 / (n_rows + dim))
    if init == "torchrec_default":
        return math.sqrt(1.0 / n_rows)
    raise ValueError(f"unknown table init {init!r}; known: xavier_uniform, torchrec_default")


def table_config(name: str, n_rows: int, dim: int,
                 init: InitName = "xavier_uniform") -> EmbeddingBagConfig:
    if n_rows < 1 or dim < 1:
        raise ValueError(f"table {name!r}: rows and dim must be >= 1, got {n_rows} x {dim}")
    b = init_bound(n_rows, dim, init)
    return EmbeddingBagConfig(name=name, num_embeddings=int(n_rows), embedding_dim=int(dim),
                              feature_names=[name], pooling=PoolingType.SUM,
                              weight_init_min=-b, weight_init_max=b)


def id_table_configs(n_users: int, n_items: int, dim: int,
                     init: InitName = "xavier_uniform") -> list[EmbeddingBagConfig]:
    """Configs of the ``user`` and ``item`` tables, in that order."""
    return [table_config(USER, n_users, dim, init), table_config(ITEM, n_items, dim, init)]
