"""Backbones by config name: ``model.backbone: lightgcn`` -> :class:`LightGCN`."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from recalign.errors import ConfigError
from recalign.models.base import Backbone
from recalign.registry import Registry

# backbone name -> module that registers it; imported on first use, so this module imports no
# model (the models import it for the decorator).
BACKBONES: Registry[type[Backbone]] = Registry("backbone", {
    "lightgcn": "recalign.models.lightgcn",
    "gccf": "recalign.models.gccf",
    "sgl": "recalign.models.sgl",
    "simgcl": "recalign.models.simgcl",
    "dccf": "recalign.models.dccf",
    "autocf": "recalign.models.autocf",
    "semantic-only": "recalign.models.semantic_only",
    "sasrec": "recalign.models.sasrec",
    "gru4rec": "recalign.models.gru4rec",
    "bert4rec": "recalign.models.bert4rec",
    "fdsa": "recalign.models.fdsa",
    "cl4srec": "recalign.models.cl4srec",
    "duorec": "recalign.models.duorec",
    "srgnn": "recalign.models.srgnn",
    "llmrg": "recalign.models.llmrg",
    "multivae": "recalign.models.multivae",
    "cllm4rec": "recalign.models.cllm4rec",
}, key="model.backbone")

B = TypeVar("B", bound=type[Backbone])


def register_backbone(name: str) -> Callable[[B], B]:
    """Class decorator: make a backbone available under ``name``."""

    def deco(cls: B) -> B:
        BACKBONES.register(name)(cls)
        cls.name = name
        return cls

    return deco


def resolve_params(name: str, params_cls: type, presets: dict[str, dict[str, Any]],
                   params: Any = None, preset: str | None = None) -> Any:
    """A backbone's params: the preset's values, then ``params`` (a model or a dict) on top.

    Shared by every backbone's ``build`` so that presets and overrides behave the same way.
    """
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"unknown {name} preset {preset!r} (model.preset); known: "
                              f"{', '.join(sorted(presets))}")
        base.update(presets[preset])
    if isinstance(params, params_cls):
        if preset is None:
            return params
        base.update(params.model_dump(exclude_unset=True))
    elif params is not None:
        base.update(dict(params))
    return params_cls(**base)


def known_backbones() -> list[str]:
    """Every backbone name (imports no model)."""
    return BACKBONES.names()


def cf_backbones() -> list[str]:
    """The registered CF backbones that learn ID embeddings (every one an alignment applies
    to): not the sequential models, not the semantic-only baseline."""
    return sorted(n for n, c in BACKBONES.load_all().items()
                  if issubclass(c, Backbone) and not c.needs_semantic)


def get_backbone(name: str) -> type[Backbone]:
    """The backbone class registered as ``name``; a :class:`ConfigError` lists known names."""
    return BACKBONES.get(name)


def build_backbone(name: str, train: Any, params: Any = None, *, preset: str | None = None,
                   optimizer: Any = None, **kwargs: Any) -> Backbone:
    """``get_backbone(name).build(train, params, preset=..., optimizer=..., **kwargs)``
    (``full_graph=False``: sampled propagation, for the backbones that offer it)."""
    return get_backbone(name).build(train, params, preset=preset, optimizer=optimizer, **kwargs)
