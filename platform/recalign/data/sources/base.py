"""The source interface and registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from recalign.registry import Registry


@dataclass
class RawData:
    """What a source yields, before id mapping and splitting.

    interactions: one table or an iterator of chunks, each in ``RAW_INTERACTIONS`` schema
      (conformed by the source). ``split`` is filled only when the source has its own split.
    user_grouped: True when every chunk holds all interactions of its users, so per-user
      operations (dedup, per-user splits) can run chunk by chunk with bounded memory.
    items / users: side tables in ``RAW_ITEMS`` / ``RAW_USERS`` schema, or None.
    files: input files read, for fingerprinting (a rerun on unchanged files does nothing).
    fingerprint: optional explicit fingerprint (generated sources have no files).
    report: repairs the loader made itself (e.g. ``{"ratings_below_min": 12}``); never silent.
    keep_all_entities: the side tables define the id universe (e.g. the shape of RLMRec's
      matrices): every user/item key in them gets an id, in table order, even without
      interactions. Otherwise only entities with kept interactions get ids.
    """

    interactions: pa.Table | Iterator[pa.Table]
    items: pa.Table | None = None
    users: pa.Table | None = None
    user_grouped: bool = False
    files: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    keep_all_entities: bool = False

    def chunks(self) -> Iterator[pa.Table]:
        if isinstance(self.interactions, pa.Table):
            yield self.interactions
        else:
            yield from self.interactions


Loader = Callable[[Any], RawData]  # takes recalign.config.DataConfig

# source name -> module that registers it (imported lazily so that a source's optional
# dependencies are needed only when it is used)
SOURCES: Registry[Loader] = Registry("source", {
    "parquet": "recalign.data.sources.tabular",
    "csv": "recalign.data.sources.tabular",
    "rlmrec": "recalign.data.sources.rlmrec",
    "movielens": "recalign.data.sources.movielens",
    "unisrec": "recalign.data.sources.unisrec",
    "amazon-sequences": "recalign.data.sources.amazon",
    "amazon-reviews": "recalign.data.sources.amazon",
    "synthetic": "recalign.data.sources.synthetic",
}, key="data.source")


def register(name: str) -> Callable[[Loader], Loader]:
    """Function decorator: make a loader available as ``data.source: name``."""
    return SOURCES.register(name)


def get_source(name: str) -> Loader:
    """The loader registered as ``name``; a :class:`ConfigError` lists the known sources."""
    return SOURCES.get(name)
