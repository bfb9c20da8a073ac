"""The backbone interface every CF model implements.

A backbone turns ID embeddings (held in :class:`recalign.tables.IdTables`) plus, for graph
models, the training graph into user and item representations, and owns its recommendation
loss. Three calls (as RecBole's ``calculate_loss``/``predict``/``full_sort_predict``):

* ``forward(layer0_hook=None) -> (user_repr, item_repr)`` — final representations of the nodes
  the model needs (all users and all items for full-graph models);
* ``rec_forward(batch, layer0_hook=None) -> RecOutput`` — one training step's losses *and* the
  final representations of the batch rows; ``rec_loss(batch)`` is its ``losses`` dict;
* ``score_users(user_ids) -> FloatTensor[len, n_items]`` — scores for evaluation; computed from
  representations cached once per evaluation in eval mode (``scorer()`` gives the callable that
  :func:`recalign.eval.metrics.evaluate` takes).

Hooks for alignment objectives (RLMRec-Con/Gen, DaRec), which own their parameters and add
losses without a copy of the backbone:

* :class:`RecOutput` carries the final representations of the batch's users, positive and
  negative items (``users``/``pos``/``neg``) and of all nodes (``all_users``/``all_items``),
  the layer-0 rows (``layer0_users``/``layer0_items``) and the ids, so an alignment loss can be
  computed from them;
* ``layer0_hook`` maps the layer-0 matrix ``[all users; all items]`` (n_nodes × d) before
  propagation — RLMRec-Gen replaces masked nodes by its mask token there, and the BPR loss of
  the same step then uses that masked forward, as in the reference.

``losses["loss"]`` is the total the backbone wants minimised; other keys are its components
(detached values are fine for logging). An alignment adds its own terms on top.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from recalign.data.sampler import BPRBatch

if TYPE_CHECKING:
    import scipy.sparse as sp

    from recalign.data.subgraph import Subgraph
    from recalign.tables.collection import IdTables

Layer0Hook = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RecOutput:
    losses: dict[str, torch.Tensor]
    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    all_users: torch.Tensor
    all_items: torch.Tensor
    batch: BPRBatch
    layer0_users: torch.Tensor | None = None
    layer0_items: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def layer0_rows(tables: "IdTables", sub: "Subgraph | None"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-0 (users, items): every row (full mode) or the subgraph's rows (sampled mode)."""
    if sub is None:
        return tables.all_rows()
    return tables.lookup(sub.user_ids, sub.item_ids, sub.lookup_batch)


def batch_rows(batch: BPRBatch, sub: "Subgraph | None"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(users, pos, neg, extras): the batch's row indices into the representations a forward
    produced — global ids in full mode, positions among the subgraph's users / items in sampled
    mode, where ``extras`` carries the subgraph's global ids for alignments."""
    if sub is None:
        return batch.users, batch.pos, batch.neg, {}
    nu = int(sub.graph.n_users)
    return (sub.local(batch.users), sub.local(batch.pos + sub.n_users) - nu,
            sub.local(batch.neg + sub.n_users) - nu,
            {"user_ids": sub.user_ids, "item_ids": sub.item_ids})


class Backbone(nn.Module, abc.ABC):
    """Base class of CF backbones; subclasses register with :func:`recalign.models.registry.register_backbone`.

    Sampled propagation (``train.propagation.mode: sampled``) is offered by backbones whose
    ``build`` takes ``full_graph``; their ``rec_forward`` then receives a
    :class:`recalign.data.subgraph.SampledBatch`. Exact inference in that mode runs the linear
    propagation layer by layer over the adjacency (``self_loops``) and combines the layers
    with :meth:`combine_layers`.
    """

    name: ClassVar[str] = ""
    #: the propagation adjacency has self-loops (GCCF); sampled mode samples from the same one
    self_loops: ClassVar[bool] = False
    #: built from the semantic vectors (``build(..., semantic=...)``) instead of ID tables; such
    #: a model has no CF representation, so no alignment applies to it
    needs_semantic: ClassVar[bool] = False

    def combine_layers(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Final representation from layer outputs ``[E0, …, EL]`` (sum; GCCF concatenates)."""
        return torch.stack(layers).sum(0)

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self._eval_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def _init_graph_backbone(self, graph: Any, params: Any, *, tables: Any = None,
                             optimizer: Any = None, n_users: int | None = None,
                             n_items: int | None = None, table_backend: str = "torchrec",
                             device: Any = "cpu") -> None:
        """The ``__init__`` shared by the graph backbones with a sampled mode.

        ``graph`` None is sampled mode (every forward gets its subgraph), sized by ``n_users`` /
        ``n_items``. Builds the ID tables unless given (``table_backend``: ``torchrec`` or
        ``torch``, on ``device``; :func:`recalign.tables.make_id_tables`) and checks given ones
        against the sizes."""
        from recalign.tables import make_id_tables  # tables import nothing from models

        if graph is None and (n_users is None or n_items is None):
            raise ValueError("sampled mode (graph None) needs n_users and n_items")
        nu = graph.n_users if graph is not None else int(n_users)  # type: ignore[arg-type]
        ni = graph.n_items if graph is not None else int(n_items)  # type: ignore[arg-type]
        Backbone.__init__(self, nu, ni)
        self.params = params
        self.graph = graph
        self.tables = tables if tables is not None else make_id_tables(
            nu, ni, params.dim, optimizer=optimizer, device=device, backend=table_backend)
        if (self.tables.n_users, self.tables.n_items, self.tables.dim) != (nu, ni, params.dim):
            raise ValueError(f"tables ({self.tables.n_users} users, {self.tables.n_items} items, "
                             f"dim {self.tables.dim}) do not match the graph's {nu} users, "
                             f"{ni} items or the model dim {params.dim}")

    # -- to implement ---------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def build(cls, train: "sp.spmatrix", params: Any = None, *, preset: str | None = None,
              optimizer: Any = None) -> "Backbone":
        """Construct from the users × items training matrix, params (model or dict), a preset."""

    @abc.abstractmethod
    def forward(self, layer0_hook: Layer0Hook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user_repr, item_repr); uses training-time randomness iff ``self.training``."""

    @abc.abstractmethod
    def rec_forward(self, batch: BPRBatch, layer0_hook: Layer0Hook | None = None) -> RecOutput:
        """Forward for one training batch: losses and the representations used."""

    # -- provided ---------------------------------------------------------------------
    def rec_loss(self, batch: BPRBatch) -> dict[str, torch.Tensor]:
        return self.rec_forward(batch).losses

    def train(self, mode: bool = True) -> "Backbone":
        self._eval_cache = None  # representations change with training
        return super().train(mode)

    def invalidate_cache(self) -> None:
        self._eval_cache = None

    @torch.no_grad()
    def eval_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_repr, item_repr) without training randomness, cached until ``train()``."""
        if self._eval_cache is None:
            was = self.training
            nn.Module.train(self, False)
            try:
                u, i = self.forward()
            finally:
                nn.Module.train(self, was)
            self._eval_cache = (u.detach().contiguous(), i.detach().contiguous())
        return self._eval_cache

    @torch.no_grad()
    def score_users(self, user_ids: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user in ``user_ids`` (inner products), [len, n_items]."""
        u, i = self.eval_representations()
        return u[user_ids.long()] @ i.T

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A scoring callable for :mod:`recalign.eval.metrics` over fresh eval representations."""
        self.invalidate_cache()
        self.eval_representations()
        return self.score_users
