"""Per-item attribute ids for attribute-aware sequential models (FDSA's feature stream).

Two sources:

* ``data.item_attributes: PATH`` — a JSON object mapping item key -> list of integer attribute
  ids, as ``Beauty_item2attributes.json`` (S3-Rec's categories and brand per item). Keys the
  dataset does not know are counted (``unknown_items``), never fatal; ids are re-indexed densely.
* otherwise the items table's ``attributes`` column (a JSON object per item): every
  ``name=value`` pair (list values give one pair per element) becomes one attribute id.

Items without attributes keep an empty list (counted, ``items_without``); the model then sees
only its ID stream for them. The file is untrusted input: it must be an object of lists of
integers, bounded in size, or the error names the key and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recalign.errors import DataError

MAX_FILE_BYTES = 1 << 30
MAX_PER_ITEM = 256  # longer lists are cut (counted): an item is a product, not a document


@dataclass
class ItemAttributes:
    """CSR lists of dense attribute ids (0..n_attributes-1) per dataset item id."""

    indptr: np.ndarray   # [n_items + 1]
    ids: np.ndarray      # attribute ids
    n_attributes: int
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_lists(cls, lists: list[list[Any]], report: dict[str, Any]) -> "ItemAttributes":
        vocab: dict[Any, int] = {}
        flat: list[int] = []
        lens = np.zeros(len(lists), dtype=np.int64)
        for i, attrs in enumerate(lists):
            for a in attrs:
                flat.append(vocab.setdefault(a, len(vocab)))
            lens[i] = len(attrs)
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        report = {**report, "items_without": int((lens == 0).sum()),
                  "attributes": len(vocab)}
        return cls(indptr, np.asarray(flat, dtype=np.int64), len(vocab), report)


def _bounded(attrs: list[Any], report: dict[str, Any]) -> list[Any]:
    if len(attrs) > MAX_PER_ITEM:
        report["lists_cut"] = report.get("lists_cut", 0) + 1
        return attrs[:MAX_PER_ITEM]
    return attrs


def from_json(path: str | Path, item_keys: pa.Array) -> ItemAttributes:
    """Attributes of each dataset item (``item_keys[i]`` is item ``i``'s key) from ``path``."""
    p = Path(path)
    if p.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{p}: {p.stat().st_size} bytes, the item attribute file may hold at "
                        f"most {MAX_FILE_BYTES}")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not a JSON file ({e}); expected an object item key -> list of "
                        "attribute ids") from e
    if not isinstance(raw, dict):
        raise DataError(f"{p}: a JSON {type(raw).__name__}; expected an object item key -> "
                        "list of attribute ids")
    index = {k: i for i, k in enumerate(item_keys.to_pylist())}
    lists: list[list[Any]] = [[] for _ in index]
    report: dict[str, Any] = {"source": str(p), "unknown_items": 0}
    for key, attrs in raw.items():
        if not isinstance(attrs, list) or not all(
                isinstance(a, int) and not isinstance(a, bool) for a in attrs):
            raise DataError(f"{p}: item {key[:64]!r}: {str(attrs)[:64]!r}; expected a list of "
                            "integer attribute ids")
        i = index.get(key)
        if i is None:
            report["unknown_items"] += 1
            continue
        lists[i] = _bounded(list(dict.fromkeys(attrs)), report)
    return ItemAttributes.from_lists(lists, report)


def from_items_table(items: pa.Table | None, n_items: int) -> ItemAttributes:
    """Attributes from the items table's ``attributes`` JSON objects (``name=value`` tokens)."""
    lists: list[list[Any]] = [[] for _ in range(n_items)]
    report: dict[str, Any] = {"source": "items table", "unreadable": 0}
    if items is not None:
        ids = items.column("item").to_numpy()
        for i, js in zip(ids, items.column("attributes").to_pylist()):
            if not js:
                continue
            try:
                obj = json.loads(js)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                report["unreadable"] += 1
                continue
            toks: list[str] = []
            for name, v in obj.items():
                for x in (v if isinstance(v, list) else [v]):
                    if isinstance(x, (str, int, float)) and not isinstance(x, bool):
                        toks.append(f"{name}={x}"[:200])
            lists[int(i)] = _bounded(list(dict.fromkeys(toks)), report)
    return ItemAttributes.from_lists(lists, report)


def load_item_attributes(path: str | None, ds: Any) -> ItemAttributes:
    """``data.item_attributes`` if given, else the dataset's items table."""
    if path:
        return from_json(path, ds.item_map.keys)
    return from_items_table(ds.items, ds.n_items)


__all__ = ["ItemAttributes", "from_items_table", "from_json", "load_item_attributes"]
