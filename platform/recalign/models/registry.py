"""Backbones by config name: ``model.backbone: lightgcn`` -> :class:`LightGCN`."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from recalign.errors import ConfigError
from recalign.models.base import Backbone

_BACKBONES: dict[str, type[Backbone]] = {}

B = TypeVar("B", bound=type[Backbone])


def register_backbone(name: str) -> Callable[[B], B]:
    """Class decorator: make a backbone available under ``name``."""

    def deco(cls: B) -> B:
        if name in _BACKBONES and _BACKBONES[name] is not cls:
            raise ValueError(f"backbone {name!r} is already registered to {_BACKBONES[name]!r}")
        _BACKBONES[name] = cls
        cls.name = name
        return cls

    return deco


def _load_builtin() -> None:
    # importing the modules registers them
    from recalign.models import lightgcn  # noqa: F401
    from recalign.models import autocf, dccf, gccf, sgl, simgcl  # noqa: F401
    from recalign.models import semantic_only  # noqa: F401


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
    _load_builtin()
    return sorted(_BACKBONES)


def cf_backbones() -> list[str]:
    """The registered backbones that learn ID embeddings (every one an alignment applies to)."""
    _load_builtin()
    return sorted(n for n, c in _BACKBONES.items() if not c.needs_semantic)


def get_backbone(name: str) -> type[Backbone]:
    """The backbone class registered as ``name``; a :class:`ConfigError` lists known names."""
    _load_builtin()
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r} (model.backbone); known backbones: "
                          f"{', '.join(sorted(_BACKBONES)) or 'none'}") from None


def build_backbone(name: str, train: Any, params: Any = None, *, preset: str | None = None,
                   optimizer: Any = None, **kwargs: Any) -> Backbone:
    """``get_backbone(name).build(train, params, preset=..., optimizer=..., **kwargs)``
    (``full_graph=False``: sampled propagation, for the backbones that offer it)."""
    return get_backbone(name).build(train, params, preset=preset, optimizer=optimizer, **kwargs)
