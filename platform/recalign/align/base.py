"""The alignment interface and registry.

An alignment owns its parameters (projection MLPs, mask token, DaRec heads) and turns one
training step's :class:`recalign.models.base.RecOutput` (the backbone's final representations
of the batch rows and of all nodes) plus the semantic vectors of the same rows into extra
loss terms. It may also rewrite the layer-0 embedding matrix before propagation
(``layer0_hook``; RLMRec-Gen masks nodes there). ``none`` is an alignment too: no parameters,
no losses, no hook. Any alignment runs on any backbone without a new model file.

The training loop calls, per step::

    out = backbone.rec_forward(batch, layer0_hook=alignment.layer0_hook)
    losses = alignment(out)            # dict of already-weighted terms, summed into the loss

and optimises ``alignment.parameters()`` together with the backbone's dense parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from recalign.registry import Registry


class Alignment(nn.Module):
    """Base class; subclasses register with :func:`register_alignment`."""

    name: ClassVar[str] = ""

    def layer0_hook(self, layer0: torch.Tensor) -> torch.Tensor:
        """Rewrite ``[all users; all items]`` layer-0 rows before propagation (default: none)."""
        return layer0

    @property
    def uses_layer0_hook(self) -> bool:
        return type(self).layer0_hook is not Alignment.layer0_hook

    def forward(self, out: Any) -> dict[str, torch.Tensor]:  # out: RecOutput
        return {}


# alignment name -> module that registers it, imported on first use; "none" is registered below
ALIGNMENTS: Registry[type[Alignment]] = Registry("alignment", {
    "rlmrec-con": "recalign.align.rlmrec_con",
    "rlmrec-gen": "recalign.align.rlmrec_gen",
    "darec": "recalign.align.darec",
}, key="align.method")

A = TypeVar("A", bound=type[Alignment])


def register_alignment(name: str) -> Callable[[A], A]:
    """Class decorator: make an alignment available as ``align.method: name``; it is built
    with its ``build(**kwargs)`` classmethod when it has one, else with ``cls(**kwargs)``."""

    def deco(cls: A) -> A:
        ALIGNMENTS.register(name)(cls)
        cls.name = name
        return cls

    return deco


@register_alignment("none")
class NoAlignment(Alignment):
    """No parameters, no losses, no hook; built from any arguments."""

    @classmethod
    def build(cls, **_: Any) -> "NoAlignment":
        return cls()


def known_alignments() -> list[str]:
    return ALIGNMENTS.names()


def build_alignment(method: str, **kwargs: Any) -> Alignment:
    """The alignment named ``method`` (``align.method``), built with its config and data."""
    cls = ALIGNMENTS.get(method)
    build = getattr(cls, "build", None)
    return build(**kwargs) if build is not None else cls(**kwargs)
