"""``TorchIdTables``: the user and item ID tables as plain ``nn.Embedding`` modules.

The table backend for machines without fbgemm (a macOS laptop, a bare CUDA image): one
process, any device, no TorchRec import. It offers the interface of
:class:`recalign.tables.collection.IdTables` that does not depend on TorchRec — ``lookup``,
``all_rows``, ``weights``, ``kernel`` (always ``"dense"``), ``fused`` (False),
``fused_parameter_ids()`` (empty), ``fused_optimizer()`` (None), ``n_users``/``n_items``/``dim``,
``configs`` (torch-free :class:`recalign.tables.specs.TableSpec`), ``optimizer_spec`` — but no
``ebc``: it cannot be sharded by ``DistributedModelParallel``. A torch optimizer
(:func:`recalign.tables.optim.dense_optimizer`) updates its rows from ordinary gradients.

Initialisation reproduces the TorchRec dense collection's RNG use call for call: TorchRec's
``EmbeddingBagCollection`` first constructs one ``nn.EmbeddingBag`` per table (each draws a
default ``normal_`` init), then re-initialises every table in order with its config's uniform
``init_fn``. Here the two ``nn.Embedding`` modules are constructed the same way (same shape,
dtype and device, so the same ``normal_`` draws) and then re-initialised by
:meth:`TableSpec.init_` in the same order. Under one ``torch.manual_seed`` both backends
therefore hold bitwise-identical rows *and* leave the generator in the same state, so whatever
draws randomness next (edge dropout, an alignment's MLP) sees the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recalign.errors import ConfigError
from recalign.tables.optim import TableOptimizerSpec
from recalign.tables.specs import ITEM, USER, InitName, id_table_specs


class TorchIdTables(nn.Module):
    """User and item ID tables (dim ``dim``) as two ``nn.Embedding`` on ``device``."""

    kernel = "dense"

    def __init__(self, n_users: int, n_items: int, dim: int, *,
                 optimizer: TableOptimizerSpec | None = None,
                 init: InitName = "xavier_uniform",
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.n_users, self.n_items, self.dim = int(n_users), int(n_items), int(dim)
        self.optimizer_spec = optimizer or TableOptimizerSpec()
        if self.optimizer_spec.kernel == "fused":
            raise ConfigError(
                "the torch table backend has no fused (fbgemm) optimizer kernel; use kernel: "
                "dense or auto (a torch optimizer updates the rows), or the torchrec backend")
        device = torch.device(device)
        self.configs = id_table_specs(self.n_users, self.n_items, self.dim, init)
        # construct every table first, then initialise them in order (as TorchRec does)
        self.embeddings = nn.ModuleDict({
            c.name: nn.Embedding(c.num_embeddings, c.embedding_dim, device=device,
                                 dtype=torch.float32)
            for c in self.configs})
        with torch.no_grad():
            for c in self.configs:
                c.init_(self.embeddings[c.name].weight)

    # ------------------------------------------------------------------ introspection
    @property
    def fused(self) -> bool:
        return False

    @property
    def device(self) -> torch.device:
        return self.embeddings[USER].weight.device

    def fused_parameter_ids(self) -> set[int]:
        """Always empty: every row is updated by a torch optimizer."""
        return set()

    def fused_optimizer(self) -> Any:
        return None

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current (user, item) weight tensors, detached (they share storage with the tables)."""
        return (self.embeddings[USER].weight.detach(), self.embeddings[ITEM].weight.detach())

    def named_weights(self) -> dict[str, torch.Tensor]:
        """Every table's weight, detached, by table name."""
        return {name: e.weight.detach() for name, e in self.embeddings.items()}

    # ------------------------------------------------------------------ lookups
    def lookup(self, user_ids: torch.Tensor, item_ids: torch.Tensor,
               batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``user_ids`` of the user table and ``item_ids`` of the item table.

        ``batch_size`` is accepted for interface parity with :class:`IdTables` (a sharded
        lookup pads to a common batch) and has no effect in one process."""
        dev = self.device
        u = self.embeddings[USER](user_ids.reshape(-1).long().to(dev))
        i = self.embeddings[ITEM](item_ids.reshape(-1).long().to(dev))
        return u, i

    def all_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All user rows and all item rows: the weight parameters themselves (differentiable)."""
        return self.embeddings[USER].weight, self.embeddings[ITEM].weight

    def extra_repr(self) -> str:
        return f"users={self.n_users}, items={self.n_items}, dim={self.dim}, kernel=dense"
