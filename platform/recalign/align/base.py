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
from typing import Any, ClassVar

import torch
from torch import nn

from recalign.errors import ConfigError


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


class NoAlignment(Alignment):
    name = "none"


_REGISTRY: dict[str, Callable[..., Alignment]] = {"none": lambda **_: NoAlignment()}


def register_alignment(name: str) -> Callable[[type[Alignment]], type[Alignment]]:
    def deco(cls: type[Alignment]) -> type[Alignment]:
        cls.name = name
        _REGISTRY[name] = cls.build if hasattr(cls, "build") else cls
        return cls
    return deco


def known_alignments() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    import importlib

    for module in ("rlmrec_con", "rlmrec_gen", "darec"):
        try:
            importlib.import_module(f"recalign.align.{module}")
        except ModuleNotFoundError as exc:  # not written yet
            if exc.name != f"recalign.align.{module}":
                raise


def build_alignment(method: str, **kwargs: Any) -> Alignment:
    """The alignment named ``method`` (``align.method``), built with its config and data."""
    _load_builtin()
    if method not in _REGISTRY:
        raise ConfigError(f"align.method: unknown alignment {method!r} "
                          f"(expected one of: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[method](**kwargs)
