"""The interface of sequential recommenders (the ``next-item`` task's models).

A sequential model holds an item table (model ids: dataset item id + 1, row 0 padding) and
turns a right-aligned history ``[B, L]`` into hidden states; the task scores hidden states
against the item table (tied output layer). Three calls, as for CF backbones:

* ``hidden(inputs) -> [B, L, d]`` — a state per position (position t has seen items <= t);
* ``user_repr(inputs) -> [B, d]`` — the state that predicts the next item (the last position);
* ``item_weights() -> [n_items, d]`` — the output embedding of every item (rows 1..n).

``losses(batch, loss_fn)`` defaults to every non-padding position of a causal model predicting
its target; a model with another objective (masked items, contrastive views) overrides it and
still uses the task's ``loss_fn`` (full or sampled softmax), so no model owns a loss variant.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(hidden [N, d], targets [N] model ids) -> scalar``, the task's softmax."""


class SequentialParams(BaseModel):
    """Settings every sequential model shares (RecBole/DuoRec defaults, REFERENCE.md)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(64, ge=1, description="hidden size")
    max_len: int = Field(50, ge=1, description="histories keep their last max_len items")
    dropout: float = Field(0.5, ge=0, lt=1, description="hidden dropout")
    loss: str = Field("full", pattern="^(full|sampled)$", description="full softmax over all "
                      "items, or sampled softmax with logQ correction (huge catalogues)")
    negatives: int = Field(1024, ge=1, description="sampled: shared negatives per batch")
    negative_sampler: str = Field("uniform", pattern="^(uniform|popularity)$")
    init_std: float = Field(0.02, gt=0)
    bf16: bool | Literal["auto"] = Field(False, description="score items in bf16 (fp32 "
                                         "accumulation, loss in fp32): ~2x faster output layer "
                                         "where bf16 is native (auto: CUDA, AVX512-BF16/AMX CPUs)")


class SequentialModel(nn.Module, abc.ABC):
    task: ClassVar[str] = "next-item"
    name: ClassVar[str] = ""
    needs_semantic: ClassVar[bool] = False
    Params: ClassVar[type[SequentialParams]] = SequentialParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, n_items: int, params: SequentialParams) -> None:
        super().__init__()
        self.n_items = int(n_items)
        self.params = params
        # padding_idx: row 0 stays zero and gets no gradient
        self.items = nn.Embedding(self.n_items + 1, params.dim, padding_idx=0)

    @classmethod
    def build(cls, n_items: int, params: Any = None) -> "SequentialModel":
        p = params if isinstance(params, cls.Params) else cls.Params(**(params or {}))
        return cls(n_items, p)

    def item_weights(self) -> torch.Tensor:
        return self.items.weight[1:]

    @abc.abstractmethod
    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """A state per position, ``[B, L, d]`` (position t has seen items <= t)."""

    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.hidden(inputs)[:, -1]

    def losses(self, batch: Any, loss_fn: LossFn) -> dict[str, torch.Tensor]:
        h = self.hidden(batch.inputs)
        keep = batch.targets > 0
        rec = loss_fn(h[keep], batch.targets[keep])
        return {"rec": rec.detach(), "loss": rec}
