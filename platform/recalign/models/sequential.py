"""The interface of sequential recommenders (the ``next-item`` task's models).

A sequential model holds an item table (model ids: dataset item id + 1, row 0 padding, then
any extra tokens such as a mask token) and turns a right-aligned history ``[B, L]`` into the
state that predicts the next item; the task scores states against the item table (tied output
layer). The calls, as for CF backbones:

* ``user_repr(inputs) -> [B, d]`` — the state that predicts the item after the history;
* ``item_weights() -> [n_items, d]`` — the output embedding of every item (rows 1..n);
* ``hidden(inputs) -> [B, L, d]`` — :class:`PositionalModel` only: a state per position
  (position t has seen items <= t), so that one training window teaches every position.

Training samples (``params.samples``): ``windows`` — each user's training sequence cut into
windows of ``max_len + 1`` items, every position predicting its next item (causal models);
``prefixes`` — every prefix of a training sequence with its next item as one sample (RecBole's
augmentation), for objectives defined per sequence (contrastive views, session graphs).

``losses(batch, loss_fn)`` returns the recommendation loss through the task's ``loss_fn`` (full
or sampled softmax), so no model owns a loss variant; a model with more objectives (contrastive
views) adds weighted terms, and the task sums them into ``loss``. Randomness a model needs beyond dropout (masks, augmented
views, a same-target sequence) is drawn in :meth:`make_views` on the host with a generator per
sample, so a run is the same on 1 or N ranks and resumes exactly.

Per-user side inputs that are no random draw (LLMRG's reasoning graphs) come from
:meth:`sample_inputs` — built on the host from (users, ends, histories) for training batches
and for evaluation/export alike — and reach :meth:`state`, which the task calls in place of
``user_repr`` when the model has such inputs (:meth:`wants_sample_inputs`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recalign.errors import ConfigError
from recalign.tables.optim import fused_table_optimizer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(states [N, d], targets [N] model ids) -> scalar``, the task's softmax (a mean)."""


class SequentialParams(BaseModel):
    """Settings every sequential model shares (RecBole/DuoRec defaults, REFERENCE.md)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(64, ge=1, description="hidden size")
    max_len: int = Field(50, ge=2, description="histories keep their last max_len items")
    dropout: float = Field(0.5, ge=0, lt=1, description="hidden dropout")
    samples: Literal["windows", "prefixes"] = Field(
        "windows", description="training samples: windows (every position predicts its next "
        "item) or prefixes (one sample per training target, RecBole's augmentation)")
    length_buckets: int = Field(
        0, ge=0, description="0: batches drawn uniformly at random (the published setting); "
        "k > 0: each run of k batches is drawn at random, then sorted by sample length into "
        "batches, whose order is shuffled — far less padding on short-sequence data (a batch "
        "is as wide as its longest history), at the price of batch mates of similar length")
    loss: str = Field("full", pattern="^(full|sampled)$", description="full softmax over all "
                      "items, or sampled softmax with logQ correction (huge catalogues)")
    negatives: int = Field(1024, ge=1, description="sampled: shared negatives per batch")
    negative_sampler: str = Field("uniform", pattern="^(uniform|popularity)$")
    init_std: float = Field(0.02, gt=0)
    item_table: Literal["replicated", "sharded"] = Field(
        "replicated", description="replicated: an nn.Embedding on every rank (data parallel, "
        "trained by train.optimizer); sharded: TorchRec tables row-wise sharded over the ranks "
        "with an fbgemm fused optimizer (table_optimizer), for catalogues too large to "
        "replicate (use loss: sampled there: full softmax gathers every row each step)")
    table_optimizer: dict[str, Any] = fused_table_optimizer("item_table: sharded")
    bf16: bool | Literal["auto"] = Field(False, description="score items in bf16 (fp32 "
                                         "accumulation, loss in fp32): ~2x faster output layer "
                                         "where bf16 is native (auto: CUDA, AVX512-BF16/AMX CPUs)")


@dataclass
class ViewContext:
    """What :meth:`SequentialModel.make_views` may read about the batch's samples."""

    data: Any                 # SequenceData
    max_len: int
    samples: np.ndarray       # index of each row's sample in the epoch's sample list
    same_target: Any = None   # SameTarget over the sample list (models with needs_same_target)


class SequentialModel(nn.Module, abc.ABC):
    task: ClassVar[str] = "next-item"
    name: ClassVar[str] = ""
    needs_semantic: ClassVar[bool] = False
    #: FDSA-like models read ``data.attributes`` (per-item attribute ids)
    needs_attributes: ClassVar[bool] = False
    #: DuoRec-like models draw another training sample with the same target
    needs_same_target: ClassVar[bool] = False
    #: rows of the item table after the items (BERT4Rec's / CL4SRec's mask token)
    extra_tokens: ClassVar[int] = 0
    Params: ClassVar[type[SequentialParams]] = SequentialParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, n_items: int, params: SequentialParams, data: Any = None,
                 items: nn.Embedding | None = None) -> None:
        super().__init__()
        self.n_items = int(n_items)
        self.params = params
        # padding_idx: row 0 stays zero and gets no gradient; ``items``: a table shared with an
        # inner model (LLMRG's base), created by it
        self.items: nn.Embedding | None = items if items is not None else nn.Embedding(
            self.n_items + 1 + self.extra_tokens, params.dim, padding_idx=0)
        # item_table: sharded — TorchRec tables (``recalign.tables.IdTables``; their ``item``
        # table holds the same rows) set by the task in place of ``items``
        self.tables: nn.Module | None = None
        self._lookup_size: Callable[[int], int] = lambda n: n
        self._frozen_rows: torch.Tensor | None = None
        # an outer model whose rows this one reads (LLMRG's base); in a tuple so that it is not
        # registered as a submodule (the outer model would otherwise contain itself)
        self._rows_of: tuple["SequentialModel", ...] = ()

    @classmethod
    def build(cls, n_items: int, params: Any = None, data: Any = None) -> "SequentialModel":
        p = params if isinstance(params, cls.Params) else cls.Params(**(params or {}))
        attrs = getattr(data, "attributes", None)
        if cls.needs_attributes and (attrs is None or attrs.n_attributes == 0):
            raise ConfigError(f"model.backbone {cls.name}: an attribute-aware model needs item "
                              "attributes, and no item has any (data.item_attributes: PATH to "
                              "a JSON object item key -> attribute ids, or a source whose items "
                              "table has attributes)")
        return cls(n_items, p, data)

    @classmethod
    def reads_attributes(cls, params: Any) -> bool:
        """Whether the task must load item attributes for a model with ``params``."""
        return cls.needs_attributes

    @classmethod
    def graph_request(cls, params: Any) -> dict[str, Any] | None:
        """What the task must load from the ``graphs`` snapshot for a model with ``params``
        (keyword arguments of :func:`recalign.data.reasoning_graphs.load_graphs` plus
        ``version``), or None: no graphs."""
        return None

    @property
    def mask_id(self) -> int:
        """The first extra token (models with ``extra_tokens >= 1``)."""
        return self.n_items + 1

    @property
    def table_rows(self) -> int:
        """Rows of the item table: padding, the items, the extra tokens."""
        return self.n_items + 1 + self.extra_tokens

    def bag_tables(self) -> dict[str, int]:
        """Further tables ``{name: rows}`` the task puts beside the item table when it is
        sharded (read in bags: :meth:`recalign.tables.IdTables.lookup_bags`)."""
        return {}

    def use_tables(self, tables: nn.Module, lookup_size: Callable[[int], int]) -> None:
        """Read item rows from TorchRec ``tables`` (sharded or not) instead of ``items``;
        ``lookup_size(n)`` agrees on one lookup size over the ranks (a sharded lookup needs the
        same batch everywhere)."""
        self.items = None
        self.tables = tables
        self._lookup_size = lookup_size

    def read_rows_of(self, owner: "SequentialModel") -> None:
        """Read every item row through ``owner`` (an outer model holding the table, sharded or
        not), so that one table serves both and a sharded lookup is made once per call."""
        self.items = None
        self._rows_of = (owner,)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of model ids ``[...]`` -> ``[..., d]`` (padding id 0 -> zeros)."""
        if self._rows_of:
            return self._rows_of[0].embed(ids)
        if self.items is not None:
            return self.items(ids)
        flat = ids.reshape(-1)
        if self._frozen_rows is not None:  # evaluation: a gathered copy, no communication
            rows = self._frozen_rows[flat]
        else:
            n = self._lookup_size(flat.numel())
            _, rows = self.tables.lookup(flat[:0], flat, batch_size=n)  # type: ignore[union-attr]
        rows = rows * (flat != 0).unsqueeze(1).to(rows.dtype)
        return rows.view(*ids.shape, rows.shape[-1])

    def all_item_rows(self) -> torch.Tensor:
        """Every row of the item table, ``[table_rows, d]`` (a collective when sharded)."""
        if self._rows_of:
            return self._rows_of[0].all_item_rows()
        if self.items is not None:
            return self.items.weight
        if self._frozen_rows is not None:
            return self._frozen_rows
        return self.tables.all_rows()[1][:self.table_rows]  # type: ignore[union-attr]

    def freeze_rows(self, on: bool) -> None:
        """Sharded tables: keep a gathered copy of every row for evaluation and export, whose
        per-rank lookups then need no lockstep with the other ranks."""
        if self.tables is None:
            return
        self._frozen_rows = None
        if on:
            self._frozen_rows = self.all_item_rows().detach()

    def item_weights(self) -> torch.Tensor:
        return self.all_item_rows()[1:self.n_items + 1]

    @abc.abstractmethod
    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        """The state that predicts the next item after each history, ``[B, d]``."""

    def make_views(self, seqs: list[np.ndarray], rngs: list[np.random.Generator],
                   ctx: ViewContext) -> dict[str, torch.Tensor]:
        """Model-specific batch inputs drawn on the host: ``seqs`` are the rows' samples (model
        ids, the final target last), ``rngs`` one generator per row."""
        return {}

    def draws_views(self) -> bool:
        """Whether :meth:`make_views` draws anything (the task then seeds per-sample
        generators each epoch)."""
        return type(self).make_views is not SequentialModel.make_views

    def wants_sample_inputs(self) -> bool:
        """Whether :meth:`sample_inputs` gives anything (the task then builds them for every
        training batch and every evaluated or exported user, and calls :meth:`state`)."""
        return False

    def sample_inputs(self, users: np.ndarray, ends: np.ndarray | None,
                      histories: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Per-sample inputs built on the host, deterministic (no draw): row r is user
        ``users[r]`` with the history ``histories[r]`` (model ids, the input the model sees);
        ``ends[r]`` where that history ends in the user's training sequence: it holds
        positions ``< ends[r]`` and the target is position ``ends[r]``, so only what was made
        from positions ``< ends[r]`` may be read; None in evaluation and export (the whole
        training sequence)."""
        return {}

    def state(self, inputs: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`user_repr` with the rows' :meth:`sample_inputs` (``extra``, on the device)."""
        return self.user_repr(inputs)

    def loss_terms(self, batch: Any) -> int:
        """How many terms this rank's recommendation loss averages (for exact data parallel)."""
        return int((batch.targets > 0).sum())

    def rec_loss(self, batch: Any, loss_fn: LossFn) -> torch.Tensor:
        if not batch.last_only:
            raise ConfigError(f"model.backbone {self.name} scores the last position only: "
                              "model.params.samples must be prefixes")
        return loss_fn(self.user_repr(batch.inputs), batch.targets[:, -1])

    def losses(self, batch: Any, loss_fn: LossFn) -> dict[str, torch.Tensor]:
        """Weighted loss terms (differentiable): ``rec`` a mean over :meth:`loss_terms`, any
        other a mean over the batch's rows; the task adds them up."""
        return {"rec": self.rec_loss(batch, loss_fn)}


class PositionalModel(SequentialModel):
    """A model with a state per position (causal: position t has seen items <= t)."""

    @abc.abstractmethod
    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """A state per position, ``[B, L, d]``."""

    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.hidden(inputs)[:, -1]

    def rec_loss(self, batch: Any, loss_fn: LossFn) -> torch.Tensor:
        if batch.last_only:
            return super().rec_loss(batch, loss_fn)
        h = self.hidden(batch.inputs)
        keep = batch.targets > 0
        return loss_fn(h[keep], batch.targets[keep])


def pad_rows(rows: list[np.ndarray], width: int | None = None) -> torch.Tensor:
    """Right-aligned, 0-padded ``[len(rows), width]`` (default: the longest row)."""
    w = max(1, width or max((r.size for r in rows), default=1))
    out = np.zeros((len(rows), w), dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[-w:]
        if r.size:
            out[i, w - r.size:] = r
    return torch.from_numpy(out)


__all__ = ["LossFn", "PositionalModel", "SequentialModel", "SequentialParams", "ViewContext",
           "pad_rows"]
