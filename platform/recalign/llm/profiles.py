"""RLMRec profiles: item profiles first, then user profiles (item-to-user), incremental and
resumable. Engine-agnostic and Ray-free: the work is handed to a :class:`Runner` (in this
process, or a Ray Data actor pool from ``recalign.operators.llm_pool``).

**What goes into a prompt** (REFERENCE.md): an item's title + description, or, without a
description, title + attributes + a seeded sample of reviews from *training* interactions; a
user's seeded sample of *training* interactions, each with the item's title, the item profile's
summarization and the user's own review. Validation and test interactions are dropped before
anything else happens (:func:`training_interactions`).

**Incremental.** Every entity's fingerprint hashes its prompt messages, the model, the
sampling settings and the output schema. An entity whose fingerprint already has an ``ok`` row
(in the LATEST profiles snapshot, or salvaged from a killed run) is copied, not sent again.
Samples are keyed by hashes of (seed, user id, item id) so they do not move when other
entities change; a changed item therefore re-fingerprints exactly itself and the users whose
sampled history contains it.

**Resumable.** Results are written as parts of the new snapshot version as each batch
completes. A run that dies leaves an uncommitted version; the next run salvages every readable
``ok`` row from such versions whose fingerprint still matches, so nothing completed is
generated again.

**Invalid output** is retried (new seed) up to ``llm.max_attempts`` and then stored as
``failed`` with the reason; failed entities are tried again by the next run, continuing their
attempt count (so with fresh seeds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recalign.data.dataset import Dataset
from recalign.data.schema import TRAIN
from recalign.llm.engine import (GenerationEngine, GenerationRequest, Outcome, SamplingSettings,
                                 Validator, chunked, generate_validated)
from recalign.llm.prompts import (TextBounder, bound_attributes, domain_for, fingerprint,
                                  item_messages, user_messages)
from recalign.llm.schemas import max_tokens_for, parse_and_validate, profile_schema
from recalign.storage.snapshot import SnapshotStore
from recalign.storage.uri import arrow_filesystem, fsspec_filesystem, join, split_uri

ARTIFACT = "profiles"
SIDES = ("items", "users")

PROFILE_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("summarization", pa.string()),
    pa.field("reasoning", pa.string()),
    pa.field("status", pa.string(), nullable=False),      # ok | failed
    pa.field("reason", pa.string()),                      # why it failed (last attempt)
    pa.field("attempts", pa.int32(), nullable=False),     # total over all runs
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("completion_tokens", pa.int64(), nullable=False),
    pa.field("generated_in", pa.string(), nullable=False),  # version of the run that made it
])


class Runner(Protocol):
    """Runs validated generation over many requests, yielding outcomes batch by batch."""

    def run(self, requests: list[GenerationRequest],
            first_attempt: dict[str, int]) -> Iterator[list[Outcome]]: ...

    def close(self) -> None: ...


class LocalRunner:
    """In this process: the engine is built on first use (a run with nothing to do builds none)."""

    def __init__(self, engine_factory: Callable[[], GenerationEngine], *, max_attempts: int,
                 batch_size: int, close_engine: bool = True,
                 validate: Validator = parse_and_validate) -> None:
        self.engine_factory = engine_factory
        self.validate = validate
        self.close_engine = close_engine
        self.engine: GenerationEngine | None = None
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.startup_s: float | None = None

    def run(self, requests: list[GenerationRequest],
            first_attempt: dict[str, int]) -> Iterator[list[Outcome]]:
        if not requests:
            return
        if self.engine is None:
            t0 = time.perf_counter()
            self.engine = self.engine_factory()
            self.startup_s = time.perf_counter() - t0
        for batch in chunked(requests, self.batch_size):
            yield generate_validated(self.engine, batch, self.validate, self.max_attempts,
                                     first_attempt={r.id: first_attempt.get(r.id, 1) for r in batch})

    def close(self) -> None:
        if self.engine is not None and self.close_engine:
            self.engine.close()


# --- planning: which entities, what prompts --------------------------------------------------

def mix64(seed: int, a: np.ndarray, b: np.ndarray | int = 0) -> np.ndarray:
    """Vectorised splitmix64 of (seed, a, b): a reproducible rank independent of row order."""
    with np.errstate(over="ignore"):
        x = (np.asarray(a, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ (np.asarray(b, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFF)) * np.uint64(0xBF58476D1CE4E5B9))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def training_interactions(ds: Dataset) -> pa.Table:
    """The only interactions any prompt may see."""
    t = ds.interactions
    return t.filter(pc.equal(t["split"], TRAIN))


def seeded_sample(groups: np.ndarray, others: np.ndarray, seed: int, k: int) -> np.ndarray:
    """Row indexes: at most ``k`` rows per group, chosen by a hash of (seed, group, other)."""
    if len(groups) == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    rank = mix64(seed, groups, others)
    order = np.lexsort((rank, groups))
    g = groups[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    pos = np.arange(len(g)) - np.repeat(start, np.diff(np.r_[start, len(g)]))
    return order[pos < k]


@dataclass
class Task:
    side: str
    id: int
    key: str
    messages: list[dict[str, str]]
    fingerprint: str

    @property
    def request_id(self) -> str:
        return f"{self.side}:{self.id}"


@dataclass
class ProfileSettings:
    domain: str
    model: str
    sampling_items: SamplingSettings
    sampling_users: SamplingSettings
    item_schema: dict[str, Any]
    user_schema: dict[str, Any]
    seed: int
    item_reviews: int
    user_interactions: int
    field_tokens: int
    title_tokens: int
    item_words: int
    user_words: int
    reasoning_words: int
    max_attempts: int

    @classmethod
    def from_config(cls, llm: Any, *, domain: str, model: str) -> "ProfileSettings":
        item_schema = profile_schema(llm.item_words, llm.reasoning_words)
        user_schema = profile_schema(llm.user_words, llm.reasoning_words)

        def sampling(schema: dict[str, Any]) -> SamplingSettings:
            return SamplingSettings(llm.temperature, llm.top_p,
                                    llm.max_tokens or max_tokens_for(schema),
                                    llm.repetition_penalty)
        return cls(domain, model, sampling(item_schema), sampling(user_schema), item_schema,
                   user_schema, llm.seed, llm.item_reviews, llm.user_interactions,
                   llm.field_tokens, llm.title_tokens, llm.item_words, llm.user_words,
                   llm.reasoning_words, llm.max_attempts)

    def fingerprint_sampling(self, side: str) -> dict[str, Any]:
        s = self.sampling_items if side == "items" else self.sampling_users
        return {**s.to_dict(), "seed": self.seed}


class Planner:
    """Builds the prompts of items and users from a dataset (no engine involved)."""

    def __init__(self, ds: Dataset, settings: ProfileSettings, bound: TextBounder) -> None:
        self.ds, self.s, self.bound = ds, settings, bound
        self.train = training_interactions(ds)
        self.item_keys = ds.item_map.key_of(np.arange(ds.n_items)).to_pylist()
        self.user_keys = ds.user_map.key_of(np.arange(ds.n_users)).to_pylist()
        self._items_meta: dict[int, tuple[str | None, str | None, str | None]] = {}
        if ds.items is not None:
            for i, t, d, a in zip(ds.items["item"].to_pylist(), ds.items["title"].to_pylist(),
                                  ds.items["description"].to_pylist(),
                                  ds.items["attributes"].to_pylist()):
                self._items_meta[i] = (t, d, a)

    # items
    def item_ids(self) -> np.ndarray:
        return np.arange(self.ds.n_items, dtype=np.int64)

    def _reviews_by_item(self, items: np.ndarray) -> dict[int, list[str]]:
        k = self.s.item_reviews
        if k <= 0:
            return {}
        t = self.train.filter(pc.invert(pc.is_null(self.train["review"])))
        if t.num_rows == 0:
            return {}
        it, us = t["item"].to_numpy(), t["user"].to_numpy()
        keep = np.isin(it, items)
        rows = np.flatnonzero(keep)
        sel = rows[seeded_sample(it[rows], us[rows], self.s.seed + 1, k)]
        out: dict[int, list[tuple[int, str]]] = {}
        reviews = t["review"]
        ranks = mix64(self.s.seed + 1, it[sel], us[sel])
        for r, rank in zip(sel.tolist(), ranks.tolist()):
            text = self.bound(reviews[r].as_py(), self.s.field_tokens)
            if text:
                out.setdefault(int(it[r]), []).append((rank, text))
        return {i: [x for _, x in sorted(v)] for i, v in out.items()}

    def item_tasks(self, items: np.ndarray) -> list[Task]:
        reviews = self._reviews_by_item(items)
        tasks = []
        for i in items.tolist():
            key = self.item_keys[i]
            title, desc, attrs = self._items_meta.get(i, (None, None, None))
            title_b = self.bound(title, self.s.title_tokens) or self.bound(key, self.s.title_tokens)
            desc_b = self.bound(desc, self.s.field_tokens)
            msgs = item_messages(self.s.domain, title=title_b, description=desc_b or None,
                                 attributes=bound_attributes(attrs, self.bound,
                                                             self.s.field_tokens),
                                 reviews=[] if desc_b else reviews.get(i, []),
                                 summary_words=self.s.item_words,
                                 reasoning_words=self.s.reasoning_words)
            fp = fingerprint(msgs, self.s.model, self.s.fingerprint_sampling("items"),
                             self.s.item_schema)
            tasks.append(Task("items", i, key, msgs, fp))
        return tasks

    # users
    def user_ids(self) -> np.ndarray:
        return np.unique(self.train["user"].to_numpy())

    def histories(self, users: np.ndarray) -> dict[int, list[tuple[int, str | None]]]:
        """user -> [(item, review)], the seeded sample of training interactions, in time order."""
        t = self.train
        us, it = t["user"].to_numpy(), t["item"].to_numpy()
        rows = np.flatnonzero(np.isin(us, users))
        sel = rows[seeded_sample(us[rows], it[rows], self.s.seed + 2, self.s.user_interactions)]
        ts = pc.fill_null(t["timestamp"], 0).to_numpy()
        order = sel[np.lexsort((it[sel], ts[sel], us[sel]))]
        reviews = t["review"].take(pa.array(order)).to_pylist()
        out: dict[int, list[tuple[int, str | None]]] = {}
        for r, rev in zip(order.tolist(), reviews):
            out.setdefault(int(us[r]), []).append((int(it[r]), rev))
        return out

    def user_tasks(self, users: np.ndarray, item_summary: dict[int, str]) -> list[Task]:
        hist = self.histories(users)
        tasks = []
        for u in users.tolist():
            entries = []
            for i, review in hist.get(u, []):
                title, _, _ = self._items_meta.get(i, (None, None, None))
                e = {"title": self.bound(title, self.s.title_tokens)
                     or self.bound(self.item_keys[i], self.s.title_tokens),
                     "description": self.bound(item_summary.get(i), self.s.field_tokens)}
                r = self.bound(review, self.s.field_tokens)
                if r:
                    e["review"] = r
                entries.append(e)
            msgs = user_messages(self.s.domain, entries, summary_words=self.s.user_words,
                                 reasoning_words=self.s.reasoning_words)
            fp = fingerprint(msgs, self.s.model, self.s.fingerprint_sampling("users"),
                             self.s.user_schema)
            tasks.append(Task("users", u, self.user_keys[u], msgs, fp))
        return tasks

    def request(self, task: Task) -> GenerationRequest:
        schema = self.s.item_schema if task.side == "items" else self.s.user_schema
        sampling = self.s.sampling_items if task.side == "items" else self.s.sampling_users
        seed = int(mix64(self.s.seed, np.array([task.id]), 1 if task.side == "items" else 2)[0]
                   & np.uint64(0x7FFFFFFF))
        return GenerationRequest(task.request_id, task.messages, schema, sampling, seed)


def select_entities(planner: Planner, llm: Any) -> tuple[np.ndarray, np.ndarray]:
    """(items, users) to profile, after the optional seeded caps of the config."""
    users = planner.user_ids()
    if llm.max_users is not None and len(users) > llm.max_users:
        users = np.sort(users[np.argsort(mix64(llm.seed + 3, users), kind="stable")[:llm.max_users]])
    if llm.items_scope == "needed":
        hist = planner.histories(users)
        items = np.unique(np.array([i for h in hist.values() for i, _ in h], dtype=np.int64))
    else:
        items = planner.item_ids()
    if llm.max_items is not None and len(items) > llm.max_items:
        items = np.sort(items[np.argsort(mix64(llm.seed + 4, items), kind="stable")[:llm.max_items]])
    return items, users


# --- previous results ---------------------------------------------------------------------

def _rows_by_id(table: pa.Table) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in table.to_pylist()}


def previous_rows(store: SnapshotStore, dataset: str) -> tuple[dict[str, dict[int, dict]], str | None, int]:
    """Rows of the LATEST snapshot, overlaid with ok rows salvaged from killed runs.

    Returns (side -> id -> row, LATEST version or None, number of salvaged rows)."""
    rows: dict[str, dict[int, dict]] = {s: {} for s in SIDES}
    latest = store.try_open(dataset, ARTIFACT)
    if latest is not None:
        for side in SIDES:
            if side in latest.tables and latest.tables[side]["parts"]:
                rows[side] = _rows_by_id(latest.read_table(side))
    salvaged = 0
    for v in store.list_versions(dataset, ARTIFACT):
        if v.committed or (latest is not None and v.version < latest.version):
            continue
        base = join(store.artifact_uri(dataset, ARTIFACT), v.version)
        for side in SIDES:
            for row in read_parts(join(base, side)):
                if row["status"] != "ok":
                    continue
                old = rows[side].get(row["id"])
                if old is None or old["fingerprint"] != row["fingerprint"] or old["status"] != "ok":
                    rows[side][row["id"]] = row
                    salvaged += 1
    return rows, (latest.version if latest else None), salvaged


def read_parts(folder_uri: str, schema: pa.Schema = PROFILE_SCHEMA) -> Iterator[dict[str, Any]]:
    """Every readable row (``schema``'s columns) of the parquet parts in an uncommitted folder
    (files torn by a kill are skipped)."""
    fs, path = fsspec_filesystem(folder_uri)
    try:
        names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    except FileNotFoundError:
        return
    afs, _ = arrow_filesystem(folder_uri)
    for name in names:
        try:
            table = pq.read_table(split_uri(name)[1] if "://" in name else name, filesystem=afs)
        except Exception:  # noqa: BLE001 - a part torn by the kill: skip it
            continue
        if set(schema.names) <= set(table.column_names):
            yield from table.select(schema.names).to_pylist()


# --- the run -------------------------------------------------------------------------------

@dataclass
class Accounting:
    requests: int = 0
    ok: int = 0
    retried: int = 0
    retries: int = 0
    failed: int = 0
    reused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_result_s: float | None = None
    generation_s: float = 0.0
    fail_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.requests += o.attempts
            self.prompt_tokens += o.prompt_tokens
            self.completion_tokens += o.completion_tokens
            if o.attempts > 1:
                self.retried += 1
                self.retries += o.attempts - 1
            if o.status == "ok":
                self.ok += 1
            else:
                self.failed += 1
                kind = (o.reason or "?").split(" (")[0][:80]
                self.fail_reasons[kind] = self.fail_reasons.get(kind, 0) + 1


def _row(task: Task, o: Outcome, prev_attempts: int, model: str, version: str) -> dict[str, Any]:
    v = o.value or {}
    return {"id": task.id, "key": task.key, "summarization": v.get("summarization"),
            "reasoning": v.get("reasoning"), "status": o.status,
            "reason": None if o.status == "ok" else o.reason,
            "attempts": prev_attempts + o.attempts, "fingerprint": task.fingerprint,
            "model": model, "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens, "generated_in": version}


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PROFILE_SCHEMA)


def generate_profiles(ds: Dataset, llm: Any, store: SnapshotStore, make_runner: Callable[[], Runner],
                      *, model: str, bound: TextBounder | None = None,
                      data_source: str | None = None, dataset_version: str | None = None,
                      progress: Any = None, config_hash: str | None = None,
                      log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Generate (or reuse) item then user profiles; write a profiles snapshot; return summary.

    ``model`` is the model label used in fingerprints (known without starting the engine).
    ``make_runner`` is called only if some entity needs generating.
    """
    t_start = time.perf_counter()
    domain = domain_for(llm.domain, data_source, ds.name)
    settings = ProfileSettings.from_config(llm, domain=domain, model=model)
    planner = Planner(ds, settings, bound or TextBounder())
    items, users = select_entities(planner, llm)
    prev, latest_version, salvaged = previous_rows(store, ds.name)
    acc = Accounting()
    runner: Runner | None = None
    writer = None
    pending: list[tuple[str, list[dict[str, Any]]]] = []  # reused rows, written once we commit
    if progress is not None:
        progress.reset(total=len(items) + len(users))
    changed = False
    summaries: dict[int, str] = {}

    def get_writer() -> Any:
        """The new version's writer, with every reused row queued so far written to it."""
        nonlocal writer
        if writer is None:
            writer = store.begin(ds.name, ARTIFACT)
        for side, rows in pending:
            for part in chunked(rows, 100_000):
                writer.write_table(side, _table(part))
        pending.clear()
        return writer

    def phase(side: str, tasks: list[Task]) -> None:
        nonlocal runner, changed
        old = prev[side]
        reuse, todo, first = [], [], {}
        for t in tasks:
            p = old.get(t.id)
            if p is not None and p["fingerprint"] == t.fingerprint and p["status"] == "ok":
                reuse.append(p)
            else:
                todo.append(t)
                if p is not None and p["fingerprint"] == t.fingerprint:
                    first[t.request_id] = int(p["attempts"]) + 1  # continue with new seeds
        if len(reuse) != len(old) or todo:
            changed = True
        acc.reused += len(reuse)
        if reuse:
            pending.append((side, reuse))
        if changed:
            get_writer()
        for r in reuse:
            if side == "items" and r["summarization"]:
                summaries[r["id"]] = r["summarization"]
        if progress is not None:
            progress.update(len(reuse))
        log(f"profiles: {side}: {len(reuse)} reused, {len(todo)} to generate")
        if not todo:
            return
        if runner is None:
            runner = make_runner()
        w = get_writer()
        by_id = {t.request_id: t for t in todo}
        requests = [planner.request(t) for t in todo]
        t0 = time.perf_counter()
        for outcomes in runner.run(requests, first):
            if acc.first_result_s is None:
                acc.first_result_s = time.perf_counter() - t_start
            acc.add(outcomes)
            rows = []
            for o in outcomes:
                t = by_id[o.id]
                prev_attempts = first.get(o.id, 1) - 1
                rows.append(_row(t, o, prev_attempts, model, w.version))
                if side == "items" and o.status == "ok":
                    summaries[t.id] = o.value["summarization"]
            w.write_table(side, _table(rows))  # persisted as it completes
            if progress is not None:
                progress.update(len(rows))
                progress.set_postfix(ok=acc.ok, failed=acc.failed, retried=acc.retried)
        acc.generation_s += time.perf_counter() - t0

    try:
        phase("items", planner.item_tasks(items))
        phase("users", planner.user_tasks(users, summaries))
    finally:
        if runner is not None:
            runner.close()
    wall = time.perf_counter() - t_start
    accounting = {
        "requests": acc.requests, "ok": acc.ok, "retried": acc.retried, "retries": acc.retries,
        "failed": acc.failed, "reused": acc.reused, "salvaged": salvaged,
        "prompt_tokens": acc.prompt_tokens, "completion_tokens": acc.completion_tokens,
        "wall_s": round(wall, 3), "generation_s": round(acc.generation_s, 3),
        "first_result_s": None if acc.first_result_s is None else round(acc.first_result_s, 3),
        "completion_tokens_per_s": round(acc.completion_tokens / acc.generation_s, 2)
        if acc.generation_s > 0 else None,
        "tokens_per_s": round((acc.prompt_tokens + acc.completion_tokens) / acc.generation_s, 2)
        if acc.generation_s > 0 else None,
        "profiles_per_s": round((acc.ok + acc.failed) / acc.generation_s, 3)
        if acc.generation_s > 0 else None,
        "fail_reasons": acc.fail_reasons,
        "cost": round(acc.prompt_tokens / 1000 * llm.price_prompt_per_1k
                      + acc.completion_tokens / 1000 * llm.price_completion_per_1k, 6),
    }
    if getattr(runner, "startup_s", None) is not None:
        accounting["engine_startup_s"] = round(runner.startup_s, 3)
    base = {"job": "profiles", "dataset": ds.name, "domain": domain, "model": model,
            "items": int(len(items)), "users": int(len(users)), **accounting}
    if not changed and latest_version is not None:
        # nothing to generate and the same entities as LATEST: no new version is written
        snap = store.open(ds.name, ARTIFACT)
        return {**base, "skipped": True, "snapshot": snap.uri, "version": snap.version,
                "reason": f"every profile is up to date in {snap.version}"}
    writer = get_writer()
    totals = {}
    for side in SIDES:
        info = writer.parts_written().get(side)
        totals[side] = int(info["rows"]) if info else 0
    snap = writer.commit(
        inputs={"dataset": dataset_version or "", **({"previous": latest_version} if latest_version else {})},
        config_hash=config_hash,
        extra={"counts": totals, "accounting": accounting, "domain": domain, "model": model,
               "sampling": {"items": settings.fingerprint_sampling("items"),
                            "users": settings.fingerprint_sampling("users")},
               "schemas": {"items": settings.item_schema, "users": settings.user_schema},
               "llm_config": llm.model_dump(mode="json")})
    status = {side: _status_counts(snap.read_table(side, columns=["status"]))
              for side in SIDES if totals[side]}
    return {**base, "skipped": False, "snapshot": snap.uri, "version": snap.version,
            "counts": totals, "status": status}


def _status_counts(t: pa.Table) -> dict[str, int]:
    vals, counts = np.unique(np.array(t["status"].to_pylist(), dtype=object).astype(str),
                             return_counts=True)
    return {str(v): int(c) for v, c in zip(vals, counts)}
