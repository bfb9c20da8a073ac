"""The ingest pipeline shared by every source: validate, repair (counted), filter, map ids, split.

Two paths with one set of steps:
- in memory, for sources that yield one table or when a global filter (k-core) is asked for;
- streamed, chunk by chunk with bounded memory, for sources whose chunks hold complete users
  (``RawData.user_grouped``): every step is then per user or per row.
Nothing is dropped silently: every removed row is counted in ``report`` and every invalid value
is an error naming the file, row and column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recalign.config import DataConfig
from recalign.data.dataset import Dataset
from recalign.data.dataset_snapshot import read_dataset_uri
from recalign.data.idmap import IdMap
from recalign.data.schema import (INTERACTIONS, ITEMS, RAW_INTERACTIONS, SPLIT_NAMES, USERS,
                                  conform)
from recalign.data.sources import RawData, get_source
from recalign.data.splits import loo_split, random_split, user_split
from recalign.errors import DataError


@dataclass
class IngestState:
    user_map: IdMap
    item_map: IdMap
    report: dict[str, Any] = field(default_factory=dict)
    rows_seen: int = 0

    def count(self, key: str, n: int) -> None:
        if n:
            self.report[key] = self.report.get(key, 0) + int(n)


#: sources whose output changed for the same input files: the version joins their fingerprint,
#: so a cached ingest of the old output is redone (movielens 2: a user's own tags on a movie
#: became the interaction's review)
SOURCE_VERSIONS = {"movielens": 2}


def input_fingerprint(cfg: DataConfig) -> str:
    """Hash of the data config, the source's output version and of every input file's content
    (sorted by relative path)."""
    # keys that do not change the ingested data stay out, and new keys at their defaults too,
    # so that adding a setting does not re-ingest every existing snapshot
    exclude: dict = {"item_attributes": True}
    if cfg.synthetic.order == "none":
        exclude["synthetic"] = {"order", "order_strength"}
    h = hashlib.sha256(cfg.model_dump_json(exclude=exclude).encode())
    if cfg.source in SOURCE_VERSIONS:
        h.update(f"source-version {SOURCE_VERSIONS[cfg.source]}".encode())
    if cfg.source == "synthetic":
        return h.hexdigest()[:16]
    root = Path(cfg.path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(root) if p != root else p.name).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _interactions_file(cfg: DataConfig) -> str:
    return str(cfg.path) if cfg.path else f"synthetic source ({cfg.dataset_name()})"


def _validate_values(t: pa.Table, where: str, row_offset: int) -> None:
    rating = t.column("rating")
    if rating.null_count < len(rating):
        bad = pc.or_(pc.is_nan(rating), pc.less(rating, 0))
        bad = pc.fill_null(bad, False)
        if pc.any(bad).as_py():
            i = pc.index(bad, True).as_py()
            raise DataError(f"rating {rating[i].as_py()!r} is not a valid rating "
                            f"(expected a finite number >= 0)", path=where, row=row_offset + i,
                            column="rating")


def _check_unknown_items(t: pa.Table, raw: RawData, cfg: DataConfig, state: IngestState,
                         where: str, row_offset: int) -> pa.Table:
    if raw.items is None:
        return t
    known = pc.is_in(t.column("item_key"), value_set=raw.items.column("item_key"))
    if pc.all(known).as_py():
        return t
    if cfg.on_unknown_item == "drop":
        state.count("unknown_items_dropped", len(known) - pc.sum(known).as_py())
        return t.filter(known)
    i = pc.index(known, False).as_py()
    raise DataError(f"item {t.column('item_key')[i].as_py()!r} is not in the items table "
                    f"(set data.on_unknown_item: drop to drop such rows, counted)",
                    path=where, row=row_offset + i, column="item_id")


def _filter_rating(t: pa.Table, cfg: DataConfig, state: IngestState, where: str,
                   row_offset: int) -> pa.Table:
    if cfg.min_rating is None:
        return t
    rating = t.column("rating")
    if rating.null_count:
        i = pc.index(pc.is_null(rating), True).as_py()
        raise DataError(f"data.min_rating is {cfg.min_rating} but this row has no rating",
                        path=where, row=row_offset + i, column="rating")
    op = pc.greater_equal if cfg.rating_op == ">=" else pc.greater
    keep = op(rating, cfg.min_rating)
    state.count("below_min_rating", len(keep) - pc.sum(keep).as_py())
    return t.filter(keep)


def _dedupe(t: pa.Table, cfg: DataConfig, state: IngestState, where: str,
            row_offset: int) -> pa.Table:
    """Repeated (user, item) pairs: keep the latest (by timestamp, then by row order)."""
    if t.num_rows < 2 or cfg.duplicates == "keep":
        return t
    u = pc.dictionary_encode(t.column("user_key")).combine_chunks().indices.to_numpy()
    i = pc.dictionary_encode(t.column("item_key")).combine_chunks().indices.to_numpy()
    ts = t.column("timestamp")
    ts = np.zeros(len(u), np.int64) if ts.null_count == len(ts) else \
        pc.fill_null(ts, np.iinfo(np.int64).min).to_numpy()
    order = np.lexsort((np.arange(len(u)), ts, i, u))
    su, si = u[order], i[order]
    last_of_pair = np.r_[(su[1:] != su[:-1]) | (si[1:] != si[:-1]), True]
    if last_of_pair.all():
        return t
    if cfg.duplicates == "error":
        first = int(np.sort(order[~last_of_pair])[0])
        raise DataError(f"duplicate interaction ({t.column('user_key')[first].as_py()!r}, "
                        f"{t.column('item_key')[first].as_py()!r}) (set data.duplicates: drop "
                        f"to keep the latest, counted, or keep)", path=where, row=row_offset + first)
    state.count("duplicates_dropped", int((~last_of_pair).sum()))
    return t.take(pa.array(np.sort(order[last_of_pair])))


def _kcore(t: pa.Table, k: int, state: IngestState) -> pa.Table:
    """Iteratively keep users and items with at least k interactions."""
    u = pc.dictionary_encode(t.column("user_key")).combine_chunks().indices.to_numpy()
    i = pc.dictionary_encode(t.column("item_key")).combine_chunks().indices.to_numpy()
    keep = np.ones(len(u), bool)
    while True:
        uc = np.bincount(u[keep], minlength=u.max() + 1 if len(u) else 0)
        ic = np.bincount(i[keep], minlength=i.max() + 1 if len(i) else 0)
        new_keep = keep & (uc[u] >= k) & (ic[i] >= k)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    state.count("kcore_removed", int((~keep).sum()))
    return t.filter(pa.array(keep))


def _split(t: pa.Table, users: np.ndarray, items: np.ndarray, cfg: DataConfig,
           state: IngestState, where: str, row_offset: int) -> np.ndarray:
    s = cfg.split
    if s.method == "given":
        col = t.column("split")
        if col.null_count == len(col) and len(col):
            raise DataError("split.method is 'given' but the source has no split column "
                            "(choose random, user or loo)", path=where, column="split")
        codes = pc.index_in(col, value_set=pa.array(list(SPLIT_NAMES)))
        if codes.null_count:
            i = pc.index(pc.is_null(codes), True).as_py()
            raise DataError(f"split value {col[i].as_py()!r} is not one of train/valid/test",
                            path=where, row=row_offset + i, column="split")
        return codes.to_numpy(zero_copy_only=False).astype(np.int8)
    if s.method == "random":
        return random_split(users, items, s.ratios, s.seed)
    if s.method == "user":
        out, short = user_split(users, items, s.ratios, s.seed)
        state.count("users_too_short_for_split", short)
        return out
    ts = t.column("timestamp")
    out, short = loo_split(users, None if ts.null_count == len(ts) else ts.to_numpy(), items, s.seed)
    state.count("users_too_short_for_split", short)
    return out


def prepare_chunk(t: pa.Table, raw: RawData, cfg: DataConfig, state: IngestState,
                  *, whole: bool) -> pa.Table:
    """One chunk of raw interactions -> canonical interactions, extending the id maps."""
    where = _interactions_file(cfg)
    row_offset = state.rows_seen
    state.rows_seen += t.num_rows
    state.count("rows_read", t.num_rows)
    t = conform(t, RAW_INTERACTIONS, source=where)
    _validate_values(t, where, row_offset)
    t = _check_unknown_items(t, raw, cfg, state, where, row_offset)
    t = _filter_rating(t, cfg, state, where, row_offset)
    t = _dedupe(t, cfg, state, where, row_offset)
    if cfg.kcore:
        if not whole:
            raise DataError("data.kcore needs the whole data set in memory (streamed chunks "
                            "cannot be k-core filtered)")
        t = _kcore(t, cfg.kcore, state)
    state.user_map, new_u = state.user_map.extended(t.column("user_key"))
    state.item_map, new_i = state.item_map.extended(t.column("item_key"))
    state.count("users_new", new_u)
    state.count("items_new", new_i)
    users = state.user_map.lookup(t.column("user_key"))
    items = state.item_map.lookup(t.column("item_key"))
    split = _split(t, users, items, cfg, state, where, row_offset)
    return pa.Table.from_arrays(
        [pa.array(users), pa.array(items), t.column("rating"), t.column("timestamp"),
         t.column("review"), pa.array(split, pa.int8())], schema=INTERACTIONS)


def _side_table(raw_table: pa.Table | None, key_col: str, id_map: IdMap, id_col: str,
                schema: pa.Schema) -> pa.Table | None:
    if raw_table is None:
        return None
    ids = id_map.lookup(raw_table.column(key_col))
    keep = ids >= 0
    t = raw_table.filter(pa.array(keep))
    ids = ids[keep]
    order = np.argsort(ids, kind="stable")
    cols = [pa.array(ids[order])] + [t.column(f.name).take(pa.array(order))
                                     for f in schema if f.name != id_col]
    return pa.Table.from_arrays(cols, schema=schema)


def load_raw(cfg: DataConfig) -> RawData:
    return get_source(cfg.source)(cfg)


def iter_prepared(cfg: DataConfig, raw: RawData, state: IngestState) -> Iterator[pa.Table]:
    """Prepared interaction chunks; the streamed path when the source allows it."""
    if raw.keep_all_entities:  # the side tables define the id universe, in their order
        if raw.users is not None:
            state.user_map, _ = state.user_map.extended(raw.users.column("user_key"))
        if raw.items is not None:
            state.item_map, _ = state.item_map.extended(raw.items.column("item_key"))
    stream = raw.user_grouped and not cfg.kcore and not isinstance(raw.interactions, pa.Table)
    if stream:
        for chunk in raw.chunks():
            yield prepare_chunk(chunk, raw, cfg, state, whole=False)
        return
    chunks = list(raw.chunks())
    whole = pa.concat_tables(chunks) if len(chunks) != 1 else chunks[0]
    yield prepare_chunk(whole, raw, cfg, state, whole=True)


def finish(cfg: DataConfig, raw: RawData, state: IngestState, kept_rows: int
           ) -> tuple[pa.Table | None, pa.Table | None]:
    if kept_rows == 0:
        raise DataError(f"no interactions left after filtering (read {state.report.get('rows_read', 0)} "
                        f"rows; min_rating={cfg.min_rating}, kcore={cfg.kcore}; repairs: "
                        f"{state.report})", path=_interactions_file(cfg))
    items = _side_table(raw.items, "item_key", state.item_map, "item", ITEMS)
    users = _side_table(raw.users, "user_key", state.user_map, "user", USERS)
    if raw.items is not None:
        state.count("catalog_items_without_interactions",
                    raw.items.num_rows - (items.num_rows if items is not None else 0))
    state.report.update(raw.report)
    return items, users


def load_dataset(cfg: DataConfig, *, user_map: IdMap | None = None,
                 item_map: IdMap | None = None) -> Dataset:
    """Read a source fully into memory as a :class:`Dataset` (no snapshot written)."""
    if cfg.source == "snapshot":
        return read_dataset_uri(str(cfg.path))
    raw = load_raw(cfg)
    state = IngestState(user_map or IdMap.empty(), item_map or IdMap.empty())
    parts = list(iter_prepared(cfg, raw, state))
    inter = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    items, users = finish(cfg, raw, state, inter.num_rows)
    return Dataset(cfg.dataset_name(), state.user_map, state.item_map, inter, items, users,
                   state.report)
