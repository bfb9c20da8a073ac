"""Semantic vectors for alignment: load from a snapshot / ``.npy`` / ``.parquet``, match by key.

An alignment needs, for every user and item row of the dataset, the semantic vector of the same
entity. Vectors are matched to the dataset by the entity's **original key** (never by
position, since the embed job and the dataset may order rows differently):

* an embedding snapshot (the ``embed`` job's ``semantic`` / ``semantic-raw`` artifact): either a
  version folder (with ``_SUCCESS``) or the artifact folder (its ``LATEST`` is followed); the
  ``users`` / ``items`` table is read (``key``, ``vector``);
* a ``.parquet`` file with columns ``key`` and ``vector`` (the embedding interchange format);
* a ``.npy`` matrix: row *r* belongs to the key on line *r* of ``<file>.keys.txt`` when that
  file exists; otherwise row *r* is dense id *r* and the row count must equal the number of
  entities (the RLMRec pickles store vectors in id order).

Entities without a vector get a zero row and ``mask = False``: alignments exclude them from
their losses; keys in the file that the dataset does not know are dropped. Both are counted in
:attr:`SemanticVectors.summary`. Differing widths of the user and item vectors, duplicate
keys, or no key in common at all are :class:`DataError`s.

``shuffle`` (the ablation ``align.semantic_shuffle``) permutes the vectors among the entities
that have one, breaking the entity <-> vector correspondence while keeping the distribution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from recalign.data.idmap import IdMap
from recalign.errors import DataError

SIDES = ("users", "items")


@dataclass
class SideVectors:
    """Dense-id-ordered vectors of one side; ``mask[i]`` says whether entity ``i`` has one."""

    vectors: torch.Tensor  # [n, d] float32, zero rows where mask is False
    mask: torch.Tensor     # [n] bool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass
class SemanticVectors:
    """User and item semantic vectors aligned to a dataset's dense ids."""

    users: SideVectors
    items: SideVectors
    shuffled: bool = False

    def __post_init__(self) -> None:
        if self.users.dim != self.items.dim:
            raise DataError(f"semantic vectors: users have width {self.users.dim} but items "
                            f"have width {self.items.dim}; both sides must come from the same "
                            "embedding model")

    @property
    def dim(self) -> int:
        return self.users.dim

    @property
    def n_users(self) -> int:
        return int(self.users.vectors.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.items.vectors.shape[0])

    def all_nodes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[users; items]`` vectors and mask, in the backbone's layer-0 node order."""
        return (torch.cat([self.users.vectors, self.items.vectors], 0),
                torch.cat([self.users.mask, self.items.mask], 0))

    @property
    def summary(self) -> dict[str, Any]:
        return {"dim": self.dim, "shuffled": self.shuffled,
                "users": dict(self.users.counts), "items": dict(self.items.counts)}

    def shuffle(self, seed: int) -> "SemanticVectors":
        """The ablation: vectors permuted among the entities that have one (per side)."""
        g = torch.Generator().manual_seed(int(seed))
        sides = []
        for side in (self.users, self.items):
            idx = torch.nonzero(side.mask).flatten()
            perm = idx[torch.randperm(idx.numel(), generator=g)]
            v = side.vectors.clone()
            v[idx] = side.vectors[perm]
            sides.append(SideVectors(v, side.mask.clone(), dict(side.counts)))
        return SemanticVectors(sides[0], sides[1], shuffled=True)


# --------------------------------------------------------------------------- readers
def _fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lens = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if len(lens) and (lens.min() != lens.max()):
            raise DataError(f"vectors of different widths ({int(lens.min())}..{int(lens.max())})",
                            path=where, column="vector")
        width = int(lens[0]) if len(lens) else 0
    else:
        raise DataError(f"expected a list column of floats, got {arr.type}", path=where,
                        column="vector")
    if arr.null_count:
        raise DataError(f"{arr.null_count} null vectors", path=where, column="vector")
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(arr), width)


def _read_table(table: pa.Table, where: str) -> tuple[list[str] | None, np.ndarray]:
    if "vector" not in table.column_names:
        raise DataError("no 'vector' column (expected key, vector)", path=where)
    keys = table["key"].cast(pa.string()).to_pylist() if "key" in table.column_names else None
    return keys, _fixed_list_to_numpy(table["vector"], where)


def _open_snapshot_dir(path: str) -> Any:
    from recalign.storage.snapshot import LATEST, MANIFEST, SUCCESS, Snapshot
    from recalign.storage.uri import fsspec_filesystem, join

    fs, base = fsspec_filesystem(path)
    if fs.exists(f"{base}/{LATEST}") and not fs.exists(f"{base}/{MANIFEST}"):
        with fs.open(f"{base}/{LATEST}", "r") as f:
            version = f.read().strip()
        path = join(path, version)
        fs, base = fsspec_filesystem(path)
    if not fs.exists(f"{base}/{SUCCESS}"):
        raise DataError("not a committed embedding snapshot (no _SUCCESS, or no LATEST in an "
                        "artifact folder)", path=path)
    with fs.open(f"{base}/{MANIFEST}", "r") as f:
        manifest = json.load(f)
    return Snapshot(path, manifest)


def read_vectors(source: str, side: str) -> tuple[list[str] | None, np.ndarray]:
    """(keys or None, float32 matrix) of ``side`` (users/items) from a snapshot or file."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    p = Path(source)
    low = source.lower()
    if low.endswith(".npy"):
        if not p.is_file():
            raise DataError("file does not exist", path=source)
        m = np.load(p, allow_pickle=False)
        if m.ndim != 2:
            raise DataError(f"expected a 2-d matrix, got shape {m.shape}", path=source)
        keys_file = p.with_suffix(".keys.txt")
        keys = keys_file.read_text().splitlines() if keys_file.is_file() else None
        if keys is not None and len(keys) != m.shape[0]:
            raise DataError(f"{keys_file.name} has {len(keys)} keys for {m.shape[0]} rows",
                            path=source)
        return keys, np.asarray(m, dtype=np.float32)
    if low.endswith(".parquet"):
        if "://" not in source and not p.is_file():
            raise DataError("file does not exist", path=source)
        keys, m = _read_table(pq.read_table(source), source)
        if keys is None:
            raise DataError("no 'key' column: rows are matched to the dataset by key",
                            path=source)
        return keys, m
    if "://" not in source and not p.exists():
        raise DataError("does not exist (expected an embedding snapshot folder, .npy or "
                        ".parquet)", path=source)
    snap = _open_snapshot_dir(source)
    if side not in snap.tables:
        raise DataError(f"embedding snapshot has no {side!r} table (it has: "
                        f"{', '.join(sorted(snap.tables))})", path=source)
    keys, m = _read_table(snap.read_table(side), f"{snap.uri}/{side}")
    if keys is None:
        raise DataError("snapshot table has no 'key' column", path=snap.uri)
    return keys, m


def match_to_ids(keys: list[str] | None, matrix: np.ndarray, id_map: IdMap | int,
                 where: str) -> SideVectors:
    """Place ``matrix`` rows at the dense ids of their keys; count unknown and missing."""
    n = id_map if isinstance(id_map, int) else len(id_map)
    d = int(matrix.shape[1])
    out = np.zeros((n, d), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    if keys is None:
        if matrix.shape[0] != n:
            raise DataError(f"{matrix.shape[0]} rows without keys but the dataset has {n} "
                            "entities (give <file>.keys.txt to match by key)", path=where)
        out[:] = matrix
        mask[:] = True
        unknown = 0
    else:
        if isinstance(id_map, int):
            raise DataError("keys given but no id map to match them against", path=where)
        key_arr = pa.array(keys, pa.string())
        if len(pc.unique(key_arr)) != len(key_arr):
            raise DataError("duplicate keys", path=where)
        ids = id_map.lookup(key_arr)
        known = ids >= 0
        unknown = int((~known).sum())
        if known.sum() == 0 and len(keys):
            raise DataError(f"none of the {len(keys)} keys is in the dataset (e.g. "
                            f"{keys[0]!r}; dataset keys look like "
                            f"{id_map.key_of(np.array([0])).to_pylist()[0]!r}): key mismatch",
                            path=where)
        out[ids[known]] = matrix[known]
        mask[ids[known]] = True
    if not np.isfinite(out).all():
        raise DataError("non-finite values in vectors", path=where)
    counts = {"entities": n, "with_vector": int(mask.sum()), "without_vector": int(n - mask.sum()),
              "unknown_keys_dropped": unknown}
    return SideVectors(torch.from_numpy(out), torch.from_numpy(mask), counts)


def load_semantic(users: str, items: str, user_map: IdMap | int, item_map: IdMap | int, *,
                  shuffle: bool = False, seed: int = 0,
                  expect_dim: int | None = None) -> SemanticVectors:
    """Both sides matched to a dataset's id maps (``align.semantic.users`` / ``.items``)."""
    sides = []
    for src, side, id_map in ((users, "users", user_map), (items, "items", item_map)):
        keys, m = read_vectors(src, side)
        if expect_dim is not None and m.shape[1] != expect_dim:
            raise DataError(f"{side} vectors have width {m.shape[1]}, expected {expect_dim}",
                            path=src)
        sides.append(match_to_ids(keys, m, id_map, src))
    sv = SemanticVectors(sides[0], sides[1])
    return sv.shuffle(seed) if shuffle else sv


def from_arrays(users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor,
                user_mask: Any = None, item_mask: Any = None) -> SemanticVectors:
    """In-memory vectors already in dense-id order (tests, benchmarks)."""
    def side(v: Any, m: Any) -> SideVectors:
        t = torch.as_tensor(np.asarray(v, dtype=np.float32))
        mk = torch.ones(t.shape[0], dtype=torch.bool) if m is None else torch.as_tensor(
            np.asarray(m, dtype=bool))
        t = t * mk.unsqueeze(1)
        return SideVectors(t, mk, {"entities": t.shape[0], "with_vector": int(mk.sum()),
                                   "without_vector": int((~mk).sum()), "unknown_keys_dropped": 0})
    return SemanticVectors(side(users, user_mask), side(items, item_mask))
