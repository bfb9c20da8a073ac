"""``IdTables``: the user and item ID embeddings of a model, held in TorchRec modules.

One ``EmbeddingBagCollection`` (dense kernel) or ``FusedEmbeddingBagCollection`` (fbgemm
kernel with the optimizer fused into backward) holds both tables, as the child ``ebc``.
Lookups always go through a ``KeyedJaggedTensor`` and the output ``KeyedTensor`` is read by key
(``kt["user"]``), never by position, so the same code runs after ``DistributedModelParallel``
replaces ``ebc`` by its sharded counterpart (table-wise or row-wise plan; build the unsharded
module with ``kernel="dense"`` and let the plan/sharder choose ``fused``, see
:func:`recalign.tables.optim.sharder_fused_params`).

Users and items differ in count but a KJT has one batch size for all keys; a lookup of
``n_u`` users and ``n_i`` items therefore uses batch ``max(n_u, n_i)`` with empty bags (length
0, pooled to zeros) padding the shorter key, and slices the padding off.

``bags`` adds further tables read in bags of several ids (:meth:`IdTables.lookup_bags`, sums
per bag; e.g. FDSA's item attributes, whose mean the model takes): they are sharded, filled and
checkpointed with the ID tables, so an attribute vocabulary grows with the catalogue too.

:meth:`IdTables.all_rows` returns every row of both tables (full-graph propagation needs them
each step). For an unsharded dense collection it returns the weight parameters themselves —
no gather, no scatter-add in backward (measured 0.6 ms vs ~4 ms per step on Amazon-book);
otherwise it looks up ids ``0..n-1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from recalign.tables.optim import TableOptimizerSpec, resolve_kernel, torchrec_fused_args
from recalign.tables.specs import ITEM, USER, InitName, id_table_configs, table_config


def _quiet_import() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchrec  # noqa: F401


class IdTables(nn.Module):
    """User and item ID tables (dim ``dim``), and any ``bags`` tables ``{name: rows}``, in one
    TorchRec embedding-bag collection."""

    def __init__(self, n_users: int, n_items: int, dim: int, *,
                 optimizer: TableOptimizerSpec | None = None,
                 init: InitName = "xavier_uniform",
                 device: torch.device | str = "cpu",
                 bags: Mapping[str, int] | None = None) -> None:
        super().__init__()
        _quiet_import()
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

        self.n_users, self.n_items, self.dim = int(n_users), int(n_items), int(dim)
        self.optimizer_spec = optimizer or TableOptimizerSpec()
        device = torch.device(device)
        self.kernel = resolve_kernel(self.optimizer_spec, device)
        configs = id_table_configs(self.n_users, self.n_items, self.dim, init)
        bags = dict(bags or {})
        if {USER, ITEM} & set(bags):
            raise ValueError(f"bags tables may not be named {USER!r} or {ITEM!r}")
        configs += [table_config(name, rows, self.dim, init) for name, rows in bags.items()]
        self.configs = configs
        self.keys = [c.name for c in configs]
        if self.kernel == "fused":
            opt_cls, kwargs = torchrec_fused_args(self.optimizer_spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.ebc = FusedEmbeddingBagCollection(configs, optimizer_type=opt_cls,
                                                       optimizer_kwargs=kwargs, device=device)
        else:
            self.ebc = EmbeddingBagCollection(configs, device=device)
        self._full_kjt: Any = None

    # ------------------------------------------------------------------ introspection
    @property
    def fused(self) -> bool:
        return self.kernel == "fused"

    def fused_parameter_ids(self) -> set[int]:
        """ids of parameters updated inside backward by the fused kernel (not by a torch optimizer)."""
        return {id(p) for p in self.ebc.parameters()} if self.fused else set()

    def fused_optimizer(self) -> Any:
        return self.ebc.fused_optimizer() if self.fused else None

    def _is_local_dense(self) -> bool:
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        return type(self.ebc) is EmbeddingBagCollection

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current (user, item) weight tensors, detached (unsharded modules only)."""
        w = self.named_weights()
        return w[USER], w[ITEM]

    def named_weights(self) -> dict[str, torch.Tensor]:
        """Every table's weight (``bags`` tables too), detached, by table name (unsharded
        modules only)."""
        sd = self.ebc.state_dict()
        return {k: sd[f"embedding_bags.{k}.weight"].detach() for k in self.keys}

    # ------------------------------------------------------------------ lookups
    def _kjt(self, bags: dict[str, tuple[torch.Tensor, torch.Tensor]],
             batch_size: int | None = None) -> Any:
        """A KJT over every key of the collection: ``bags[key] = (ids, lengths)``; keys not
        given, and the padding up to the common batch, are empty bags."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        b = max([1, batch_size or 0] + [n.numel() for _, n in bags.values()])
        device = next(iter(bags.values()))[0].device if bags else None
        lengths, values = [], []
        for key in self.keys:
            ids, n = bags.get(key, (None, None))
            if n is not None:
                lengths.append(n.long())
                values.append(ids.reshape(-1).long())
            lengths.append(torch.zeros(b - (0 if n is None else n.numel()), dtype=torch.int64,
                                       device=device))
        return KeyedJaggedTensor(keys=self.keys, lengths=torch.cat(lengths),
                                 values=torch.cat(values) if values else
                                 torch.zeros(0, dtype=torch.int64, device=device))

    @staticmethod
    def _ones(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids, torch.ones(ids.numel(), dtype=torch.int64, device=ids.device)

    def lookup(self, user_ids: torch.Tensor, item_ids: torch.Tensor,
               batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``user_ids`` of the user table and ``item_ids`` of the item table.

        ``batch_size`` pads the lookup to a KJT batch of at least that size: a sharded lookup
        needs the same batch size on every rank, so distributed callers agree on one first."""
        kt = self.ebc(self._kjt({USER: self._ones(user_ids), ITEM: self._ones(item_ids)},
                                batch_size))
        return kt[USER][: user_ids.numel()], kt[ITEM][: item_ids.numel()]

    def lookup_bags(self, table: str, ids: torch.Tensor, lengths: torch.Tensor,
                    batch_size: int | None = None) -> torch.Tensor:
        """Sum of the rows of each bag of table ``table``: bag k holds the next ``lengths[k]``
        of ``ids`` (an empty bag sums to zeros); ``batch_size`` as in :meth:`lookup`."""
        kt = self.ebc(self._kjt({table: (ids, lengths)}, batch_size))
        return kt[table][: lengths.numel()]

    def all_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All user rows and all item rows, differentiable (gradients reach the tables)."""
        if self._is_local_dense():
            return (self.ebc.embedding_bags[USER].weight, self.ebc.embedding_bags[ITEM].weight)
        if self._full_kjt is None:
            self._full_kjt = self._kjt({USER: self._ones(torch.arange(self.n_users)),
                                        ITEM: self._ones(torch.arange(self.n_items))})
        kt = self.ebc(self._full_kjt)
        return kt[USER][: self.n_users], kt[ITEM][: self.n_items]

    def all_rows_of(self, table: str) -> torch.Tensor:
        """Every row of table ``table`` (a ``bags`` table too), differentiable."""
        if self._is_local_dense():
            return self.ebc.embedding_bags[table].weight
        rows = next(int(c.num_embeddings) for c in self.configs if c.name == table)
        return self.lookup_bags(table, *self._ones(torch.arange(rows)))
