"""LLMRG reasoning graphs, read from a ``graphs`` snapshot (:mod:`recalign.data.graph_schema`)
into compact arrays for the fusion model (:mod:`recalign.models.llmrg`).

**Arrays.** Per dataset user a CSR slice of nodes (kind, dataset item or -1, text row or -1,
step) and of edges (local src/dst, kind, step); the reason/interest texts' vectors as one
``[n_texts, d]`` matrix, node text hashes mapped to its rows. Graph rows are matched to the
dataset's users by **key** (``users.key``), not by the stored integer id, so a re-ingest that
renumbers users keeps its graphs; keys the dataset does not have are counted and skipped.

**Load-time filters** (so that the ablations need no second generation):

* ``verify`` / ``tau``: with verification on, a chain whose ``score`` is below ``tau`` — or NaN,
  never verified — is dropped: its edges go, and then every non-item node left without an edge
  (its reasons, its divergent interests). With verification off every chain is kept.
* ``kinds``: the node kinds kept (item nodes always); edges need both ends kept.
* nodes the model cannot embed are dropped and counted: an item id outside the catalogue, a
  text hash with no vector, an unmatched interest (item -1) without text; edges pointing
  outside their row are dropped and counted.

**Who has a graph.** A user with an ``ok`` row whose graph keeps at least one node. Users
without (not sampled, ``failed``, emptied by the filters, or *stale*: generated from a training
sequence longer than the dataset's now — its steps could reach items that are held out today)
fall back to their plain sequence graph in the model; each case is counted in ``report``.
A row generated from a shorter training sequence (the user has grown) stays valid: its steps
index the same prefix.

**Steps.** Kept as stored; :meth:`ReasoningGraphs.subgraph` applies the no-look-ahead rule
(``step < end`` for a training sample whose history is positions ``[0, end)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recalign.data import graph_schema as gs
from recalign.errors import DataError, SnapshotError

KIND_CODE = {k: i for i, k in enumerate(gs.NODE_KINDS)}   # item 0, reason 1, divergent 2, direct 3
EDGE_CODE = {k: i for i, k in enumerate(gs.EDGE_KINDS)}
ITEM = KIND_CODE[gs.ITEM]
#: the node kinds an edge kind joins (an edge is kept only with both ends' kinds kept)
EDGE_ENDS = {"item_reason": (gs.ITEM, gs.REASON), "reason_item": (gs.REASON, gs.ITEM),
             "divergent": (gs.ITEM, gs.DIVERGENT), "direct": (gs.ITEM, gs.DIRECT)}


@dataclass
class ReasoningGraphs:
    """Per-user graphs in CSR form over the dataset's user ids (see the module docstring)."""

    node_ptr: np.ndarray    # [n_users + 1]
    node_kind: np.ndarray   # int8 codes of graph_schema.NODE_KINDS
    node_item: np.ndarray   # int64 dataset item id, -1: none
    node_text: np.ndarray   # int64 row of ``vectors``, -1: none
    node_step: np.ndarray   # int64
    edge_ptr: np.ndarray    # [n_users + 1]
    edge_src: np.ndarray    # int64 index into the user's nodes
    edge_dst: np.ndarray
    edge_kind: np.ndarray   # int8 codes of graph_schema.EDGE_KINDS
    edge_step: np.ndarray
    vectors: np.ndarray     # [n_texts, d] float32
    has_graph: np.ndarray   # [n_users] bool
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.node_ptr) - 1

    @property
    def text_dim(self) -> int:
        return int(self.vectors.shape[1])

    def subgraph(self, user: int, end: int | None, kinds: Iterable[str]
                 ) -> tuple[np.ndarray, ...]:
        """``(item, text, kind, step, src, dst)`` of ``user``'s nodes of ``kinds`` made before
        position ``end`` (``step < end``; ``None``: all), edges reindexed to those nodes."""
        a, b = self.node_ptr[user], self.node_ptr[user + 1]
        codes = [KIND_CODE[k] for k in kinds]
        keep = np.isin(self.node_kind[a:b], codes)
        if end is not None:
            keep &= self.node_step[a:b] < end
        new = np.cumsum(keep) - 1
        ea, eb = self.edge_ptr[user], self.edge_ptr[user + 1]
        src, dst = self.edge_src[ea:eb], self.edge_dst[ea:eb]
        ek = keep[src] & keep[dst]
        if end is not None:
            ek &= self.edge_step[ea:eb] < end
        return (self.node_item[a:b][keep], self.node_text[a:b][keep],
                self.node_kind[a:b][keep], self.node_step[a:b][keep], new[src[ek]],
                new[dst[ek]])


# ------------------------------------------------------------------ schema at the edge
def _type_problem(got: pa.DataType, want: pa.DataType, where: str) -> str | None:
    """The first mismatch of ``got`` against ``want`` (struct children by name, nullability
    ignored), as ``where: ...``; None when compatible."""
    if pa.types.is_struct(want):
        if not pa.types.is_struct(got):
            return f"{where}: expected a struct, got {got}"
        names = [got.field(i).name for i in range(got.num_fields)]
        for i in range(want.num_fields):
            w = want.field(i)
            if w.name not in names:
                return f"{where}.{w.name}: missing"
            p = _type_problem(got.field(names.index(w.name)).type, w.type, f"{where}.{w.name}")
            if p:
                return p
        return None
    if pa.types.is_list(want) or pa.types.is_large_list(want):
        if not (pa.types.is_list(got) or pa.types.is_large_list(got)):
            return f"{where}: expected a list, got {got}"
        return _type_problem(got.value_type, want.value_type, f"{where}[]")
    if pa.types.is_string(want) and (pa.types.is_string(got) or pa.types.is_large_string(got)):
        return None
    return None if got.equals(want) else f"{where}: expected {want}, got {got}"


def check_schema(table: pa.Table, want: pa.Schema, what: str) -> None:
    """A :class:`SnapshotError` naming ``what`` (the snapshot's table) and the first missing or
    mistyped field of ``want``."""
    for f in want:
        if f.name not in table.column_names:
            raise SnapshotError(f"{what}: field {f.name!r} missing (graph_schema."
                                f"{'USERS' if want is gs.USERS_SCHEMA else 'TEXTS'}_SCHEMA)")
        p = _type_problem(table.schema.field(f.name).type, f.type, f.name)
        if p:
            raise SnapshotError(f"{what}: field {p}")


# ------------------------------------------------------------------ loading
def open_graphs(root: str, dataset: str, artifact: str = gs.ARTIFACT,
                version: str | None = None) -> Any:
    """The graphs snapshot: ``version`` None -> LATEST of ``<root>/<dataset>/<artifact>``; a
    ``v=...`` name -> that version; a URI ``<root>/<dataset>/<artifact>[/v=...]`` -> it."""
    from recalign.storage.snapshot import SnapshotStore

    if version and "/" in version:
        parts = version.rstrip("/").split("/")
        ver = parts.pop() if parts[-1].startswith("v=") else None
        if len(parts) < 3:
            raise SnapshotError(f"graphs {version!r}: expected <root>/<dataset>/<artifact>"
                                "[/v=...] or a version name v=...")
        return SnapshotStore("/".join(parts[:-2])).open(parts[-2], parts[-1], ver)
    store = SnapshotStore(root)
    if version is None and store.latest_version(dataset, artifact) is None:
        raise SnapshotError(f"no {artifact} snapshot of dataset {dataset!r} under {root} (the "
                            "LLMRG model reads the reasoning graphs `recalign graphs` writes; "
                            "run it first, or train with model.params.graph: none / sequence)")
    return store.open(dataset, artifact, version)


def load_graphs(snap: Any, user_keys: pa.Array, n_items: int, train_lengths: np.ndarray, *,
                kinds: Iterable[str] = gs.NODE_KINDS, verify: bool = True,
                tau: float = 30.0) -> ReasoningGraphs:
    """A graphs snapshot -> :class:`ReasoningGraphs` over the dataset whose users are
    ``user_keys`` (index = dataset user id) with ``train_lengths`` training items each."""
    what = f"graphs snapshot {snap.uri}"
    if "users" not in snap.tables or "texts" not in snap.tables:
        raise SnapshotError(f"{what}: expected the tables users and texts, found "
                            f"{sorted(snap.tables)}")
    users = snap.read_table("users")
    texts = snap.read_table("texts")
    check_schema(users, gs.USERS_SCHEMA, f"{what}, table users")
    check_schema(texts, gs.TEXTS_SCHEMA, f"{what}, table texts")
    kinds = {gs.ITEM, *kinds}
    unknown = kinds - set(gs.NODE_KINDS)
    if unknown:
        raise DataError(f"unknown node kinds {sorted(unknown)} (known: {gs.NODE_KINDS})")
    n_users = len(user_keys)
    rep: dict[str, Any] = {"snapshot": snap.uri, "version": snap.version,
                           "verify": verify, "tau": tau if verify else None,
                           "kinds": sorted(kinds)}

    # ---- texts: hash -> row, one vector width
    vec_col = texts.column("vector").combine_chunks() if texts.num_rows else None
    if vec_col is not None and len(vec_col):
        widths = pc.list_value_length(vec_col).to_numpy(zero_copy_only=False)
        if (widths != widths[0]).any():
            raise SnapshotError(f"{what}, table texts: vectors of different lengths "
                                f"({sorted(set(widths.tolist()))[:5]})")
        vectors = pc.list_flatten(vec_col).to_numpy(zero_copy_only=False).astype(
            np.float32).reshape(len(vec_col), int(widths[0]))
    else:
        vectors = np.zeros((0, 0), np.float32)
    text_keys = texts.column("text").combine_chunks().cast(pa.string())

    # ---- users: by key onto the dataset
    keys = users.column("key").combine_chunks().cast(pa.string())
    uid = pc.fill_null(pc.index_in(keys, value_set=user_keys.cast(pa.string())), -1).to_numpy(
        zero_copy_only=False).astype(np.int64)
    rep["rows"] = users.num_rows
    rep["unknown_users"] = int((uid < 0).sum())
    known = uid[uid >= 0]
    if np.unique(known).size != known.size:
        from collections import Counter

        twice = [k for k, n in Counter(keys.filter(pa.array(uid >= 0)).to_pylist()).items()
                 if n > 1]
        raise SnapshotError(f"{what}: more than one row for users {twice[:5]}")
    status = users.column("status").to_numpy(zero_copy_only=False)
    n_train = users.column("n_train").to_numpy(zero_copy_only=False).astype(np.int64)
    lens = np.asarray(train_lengths, np.int64)
    ok = (uid >= 0) & (status == "ok")
    rep["failed"] = int(((uid >= 0) & (status != "ok")).sum())
    stale = ok & (n_train > lens[np.maximum(uid, 0)])
    rep["stale"] = int(stale.sum())
    rep["partial"] = int((ok & ~stale & (n_train < lens[np.maximum(uid, 0)])).sum())
    ok &= ~stale
    rows = np.flatnonzero(ok)

    # ---- flatten nodes / edges / chains of the rows kept
    sub = users.take(pa.array(rows, pa.int64()))
    nodes, n_cnt = _flat(sub.column("nodes"))
    edges, e_cnt = _flat(sub.column("edges"))
    chains, c_cnt = _flat(sub.column("chains"))
    r = rows.size
    node_row = np.repeat(np.arange(r), n_cnt)
    edge_row = np.repeat(np.arange(r), e_cnt)
    n_off = np.concatenate([[0], np.cumsum(n_cnt)])

    kind_s = _np(nodes.field("kind"))
    kind = np.full(kind_s.size, -1, np.int64)
    for k, c in KIND_CODE.items():
        kind[kind_s == k] = c
    if (kind < 0).any():
        bad = sorted(set(kind_s[kind < 0].tolist()))[:5]
        raise SnapshotError(f"{what}, table users: unknown node kinds {bad} (known: "
                            f"{gs.NODE_KINDS})")
    item = _np(nodes.field("item")).astype(np.int64)
    step = _np(nodes.field("step")).astype(np.int64)
    text_hash = nodes.field("text")
    trow = pc.fill_null(pc.index_in(text_hash, value_set=text_keys), -1).to_numpy(
        zero_copy_only=False).astype(np.int64)
    has_hash = pc.is_valid(text_hash).to_numpy(zero_copy_only=False)
    if vectors.shape[0] == 0:
        trow[:] = -1

    # nodes the model cannot use
    bad_item = (item >= n_items) | (item < -1) | ((kind == ITEM) & (item < 0))
    missing_vec = has_hash & (trow < 0) & (item < 0)
    no_repr = (item < 0) & ~has_hash
    bad_step = (step < 0) | (step >= n_train[rows][node_row])
    rep["nodes_unknown_item"] = int(bad_item.sum())
    rep["nodes_without_vector"] = int((missing_vec & ~bad_item).sum())
    rep["nodes_without_item_or_text"] = int((no_repr & ~bad_item).sum())
    rep["nodes_bad_step"] = int(bad_step.sum())
    node_keep = ~(bad_item | missing_vec | no_repr | bad_step)
    node_keep &= np.isin(kind, [KIND_CODE[k] for k in kinds])

    # chains: verification filter
    c_id = _np(chains.field("chain")).astype(np.int64)
    score = pc.fill_null(chains.field("score"), float("nan")).to_numpy(
        zero_copy_only=False).astype(np.float64)
    c_row = np.repeat(np.arange(r), c_cnt)
    rep["chains"] = int(c_id.size)
    c_fail = ~(score >= tau) if verify else np.zeros(c_id.size, bool)  # NaN fails
    rep["chains_dropped_by_tau"] = int(c_fail.sum())
    rep["chains_unverified"] = int(np.isnan(score).sum())
    rep["chains_from_kb"] = int(_np(chains.field("from_kb")).sum()) if c_id.size else 0
    # (row, chain id) of every chain and of the failed ones, as one int key per pair
    e_chain = _np(edges.field("chain")).astype(np.int64)
    width = int(max(c_id.max(initial=0), e_chain.max(initial=0)) + 2)
    chain_keys = c_row * width + c_id + 1
    failed_keys = chain_keys[c_fail]
    # edges
    src = _np(edges.field("src")).astype(np.int64)
    dst = _np(edges.field("dst")).astype(np.int64)
    e_kind_s = _np(edges.field("kind"))
    e_kind = np.full(e_kind_s.size, -1, np.int64)
    for k, c in EDGE_CODE.items():
        e_kind[e_kind_s == k] = c
    e_step = _np(edges.field("step")).astype(np.int64)
    inside = (src >= 0) & (dst >= 0) & (src < n_cnt[edge_row]) & (dst < n_cnt[edge_row]) & \
        (e_kind >= 0)
    rep["edges_invalid"] = int((~inside).sum())
    e_keep = inside.copy()
    gsrc = np.where(inside, n_off[edge_row] + src, 0)
    gdst = np.where(inside, n_off[edge_row] + dst, 0)
    e_key = edge_row * width + e_chain + 1
    unknown_chain = (e_chain >= 0) & ~np.isin(e_key, chain_keys)
    rep["edges_unknown_chain"] = int(unknown_chain.sum())  # no score: unverified
    chain_dropped = (e_chain >= 0) & (np.isin(e_key, failed_keys) | (unknown_chain & verify))
    e_keep &= ~chain_dropped
    e_keep &= node_keep[gsrc] & node_keep[gdst]
    # the tau filter takes a chain's reasons and interests with it: non-item nodes that had
    # edges and kept none go (nodes stored without any edge stay)
    touched = np.zeros(node_keep.size, bool)
    touched[gsrc[e_keep]] = True
    touched[gdst[e_keep]] = True
    had_edge = np.zeros(node_keep.size, bool)
    had_edge[gsrc[inside]] = True
    had_edge[gdst[inside]] = True
    orphan = node_keep & (kind != ITEM) & had_edge & ~touched
    rep["nodes_dropped_with_chains"] = int(orphan.sum())
    node_keep &= ~orphan
    e_keep &= node_keep[gsrc] & node_keep[gdst]

    # ---- compact, onto dataset users
    new_global = np.cumsum(node_keep) - 1
    kept_per_row = np.bincount(node_row[node_keep], minlength=r)
    new_off = np.concatenate([[0], np.cumsum(kept_per_row)])
    e_src = new_global[gsrc[e_keep]] - new_off[edge_row[e_keep]]
    e_dst = new_global[gdst[e_keep]] - new_off[edge_row[e_keep]]
    edges_per_row = np.bincount(edge_row[e_keep], minlength=r)
    users_of_rows = uid[rows]
    order_nodes = np.argsort(users_of_rows[node_row[node_keep]], kind="stable")
    order_edges = np.argsort(users_of_rows[edge_row[e_keep]], kind="stable")
    n_per_user = np.zeros(n_users, np.int64)
    e_per_user = np.zeros(n_users, np.int64)
    n_per_user[users_of_rows] = kept_per_row
    e_per_user[users_of_rows] = edges_per_row
    has_graph = n_per_user > 0
    rep["emptied"] = int((kept_per_row == 0).sum())
    rep["users_with_graph"] = int(has_graph.sum())
    rep["users_without_graph"] = int(n_users - has_graph.sum())
    kk = kind[node_keep][order_nodes]
    rep["nodes"] = {k: int((kk == c).sum()) for k, c in KIND_CODE.items()}
    rep["edges"] = int(e_keep.sum())
    rep["divergent_unmatched"] = int(((kk == KIND_CODE[gs.DIVERGENT])
                                      & (item[node_keep][order_nodes] < 0)).sum())
    rep["texts"] = int(vectors.shape[0])
    return ReasoningGraphs(
        node_ptr=np.concatenate([[0], np.cumsum(n_per_user)]).astype(np.int64),
        node_kind=kk.astype(np.int8),
        node_item=item[node_keep][order_nodes],
        node_text=trow[node_keep][order_nodes],
        node_step=step[node_keep][order_nodes],
        edge_ptr=np.concatenate([[0], np.cumsum(e_per_user)]).astype(np.int64),
        edge_src=e_src[order_edges], edge_dst=e_dst[order_edges],
        edge_kind=e_kind[e_keep][order_edges].astype(np.int8),
        edge_step=e_step[e_keep][order_edges],
        vectors=vectors, has_graph=has_graph, report=rep)


class _Fields:
    """The child arrays of a struct array by name (offsets applied: ``StructArray.flatten``)."""

    def __init__(self, arr: pa.StructArray) -> None:
        self._by_name = {arr.type.field(i).name: a for i, a in enumerate(arr.flatten())}

    def field(self, name: str) -> pa.Array:
        return self._by_name[name]


def _flat(col: pa.ChunkedArray) -> tuple[_Fields, np.ndarray]:
    """A list<struct> column -> (its values' fields, the length of each row's list)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    return _Fields(arr.flatten()), lengths.astype(np.int64)


def _np(a: pa.Array) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


__all__ = ["EDGE_CODE", "KIND_CODE", "ReasoningGraphs", "check_schema", "load_graphs",
           "open_graphs"]
