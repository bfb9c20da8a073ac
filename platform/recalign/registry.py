"""One registry helper for every pluggable piece: sources, backbones, alignments, engines.

A :class:`Registry` maps a config name to an object (a loader, a class, a factory). Each name
that ships with the project is listed in a lazy map, name -> module; the module registers the
object with ``@registry.register(name)`` when it is imported, and :meth:`Registry.get` imports
it on first use. So a registry module imports none of its entries (no import circles between
the registry and the modules that register into it), listing the names imports nothing, and a
piece's optional dependencies matter only to a config that names it.

Hand-written because nothing in the standard library does this: ``importlib`` imports, and
entry points (``importlib.metadata``) need installed package metadata for every entry.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from recalign.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Config name -> object, with the built-in entries imported lazily.

    kind: what the entries are, for messages ("backbone"; "known backbones: ...").
    modules: name -> module path that registers it when imported.
    key: the config key that names an entry ("model.backbone"), prefixed to errors.
    optional_deps: the modules need optional packages: an ImportError while importing one
      becomes a :class:`ConfigError` saying the entry is not usable here.
    """

    def __init__(self, kind: str, modules: Mapping[str, str], *, key: str | None = None,
                 optional_deps: bool = False) -> None:
        self.kind = kind
        self.key = key
        self.optional_deps = optional_deps
        self._modules = dict(modules)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``obj`` available as ``name``.

        A name in the lazy map must be registered by the module the map names (so that the map
        and the decorators cannot disagree); a name registered twice must be the same object
        (or the same definition re-imported).
        """

        def deco(obj: T) -> T:
            module = getattr(obj, "__module__", None)
            expected = self._modules.get(name)
            if expected is not None and module != expected:
                raise ValueError(f"{self.kind} {name!r} must be registered by {expected}, "
                                 f"not by {module}")
            old = self._entries.get(name)
            if old is not None and old is not obj and _definition(old) != _definition(obj):
                raise ValueError(f"{self.kind} {name!r} is already registered to {old!r}")
            self._entries[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        """Every known name, sorted; imports nothing."""
        return sorted(self._modules.keys() | self._entries.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._modules or name in self._entries

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its module on first use.

        An unknown name is a :class:`ConfigError` naming the kind, the name and the known names.
        """
        if name not in self._entries and name in self._modules:
            self._import(name)
        try:
            return self._entries[name]
        except KeyError:
            pass
        if name in self._modules:
            raise RuntimeError(f"{self._modules[name]} was imported but did not register "
                               f"{self.kind} {name!r}")
        prefix = f"{self.key}: " if self.key else ""
        raise ConfigError(f"{prefix}unknown {self.kind} {name!r}; known {self.kind}s: "
                          f"{', '.join(self.names()) or 'none'}")

    def load_all(self) -> dict[str, T]:
        """Every entry, importing their modules; a lazy entry whose module does not exist (yet)
        is left out."""
        out: dict[str, T] = {}
        for name in self.names():
            module = self._modules.get(name)
            if name not in self._entries and module is not None \
                    and importlib.util.find_spec(module) is None:
                continue
            out[name] = self.get(name)
        return out

    def _import(self, name: str) -> None:
        module = self._modules[name]
        if not self.optional_deps:
            importlib.import_module(module)
            return
        try:
            importlib.import_module(module)
        except ImportError as exc:
            prefix = f"{self.key}: " if self.key else ""
            raise ConfigError(f"{prefix}{self.kind} {name!r} is not usable here: {exc}") from exc


def _definition(obj: object) -> tuple[object, object]:
    return getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
