"""Data sources: each turns one on-disk layout into :class:`RawData` (original string keys).

A source is one module that registers a loader with :func:`register`; the ingest pipeline
(:mod:`recalign.data.ingest`) does validation, repairs, filtering, id mapping and splitting
once for every source.
"""

from recalign.data.sources.base import SOURCES, RawData, get_source, register

__all__ = ["SOURCES", "RawData", "get_source", "register"]
