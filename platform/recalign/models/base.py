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


class Backbone(nn.Module, abc.ABC):
    """Base class of CF backbones; subclasses register with :func:`recalign.models.registry.register_backbone`."""

    name: ClassVar[str] = ""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self._eval_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- to implement ---------------------------------------------------------------
    @classmethod
    def build(cls, train: "sp.spmatrix", params: Any = None, *, preset: str | None = None,
              optimizer: Any = None) -> "Backbone":
        """Construct from the users × items training matrix, params (model or dict), a preset."""
        raise NotImplementedError

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
