"""LLMRG reasoning graphs (``recalign graphs``): chained reasoning, divergent extension,
self-verification and a knowledge base, written as a ``graphs`` snapshot in the Arrow schema of
:mod:`recalign.data.graph_schema`. Engine-agnostic and Ray-free: prompts go to a
:class:`recalign.llm.profiles.Runner` (in process, or the persistent Ray actor pool of
``recalign.operators.llm_pool``).

**Input.** Per user the time-ordered *training* sequence (the order of
:meth:`recalign.data.sequences.SequenceData.from_dataset`), of which the last ``llmrg.max_len``
items are walked; positions (``step``) are absolute positions in the whole training sequence.
Users: every user with >= 2 training items, or a seeded sample of ``llmrg.max_users``
(:func:`recalign.llm.profiles.mix64` of ``llm.seed``, as the profiles' user sample).

**Walk** (``mode: graph``). At window position ``p >= 1`` the step prompt holds the items so
far, the most recent chains and item ``p``; the answer is one link ``item_a -> reason -> item_p``
(``a < p``) and ``llmrg.divergent_k`` imagined next interests, all carrying step ``p``. The link
extends the chain ending at ``item_a``, else starts a new chain ``[a, p]``. An answer that stays
invalid after ``llm.max_attempts`` is *repaired* when only its source is unusable (item ``p``
becomes the root of a new chain without a link; its interests are kept) and *dropped*
otherwise; both are counted, neither is fatal. ``mode: direct`` asks at every position only for
the next item's title.

**Grounding.** Interests (and direct guesses) are embedded by the embedding engine and matched by
cosine similarity to the catalogue's item texts (title + attributes); the best item when its
similarity is >= ``llmrg.ground_threshold``, else item -1 (counted as unmatched).

**Verification.** The last item of every chain with a link is masked and the LLM names it;
score = 100 * max(0, cos(embed(answer), embed(true item text))). Every chain is stored with its
score; the fusion model filters by ``tau`` at load time.

**Knowledge base.** Key: ``(previous item id, item id)`` of a link. A reason explains the
transition between exactly these two items, so it transfers to any user who takes the same
transition; a key on attributes (genre -> genre) would hand a reason to items it does not talk
about. Value: the reason and the step's interests, from chains scoring >= ``tau``. A step whose
``(item_{p-1}, item_p)`` is in the KB is answered from it without an LLM call (the link extends
the chain ending at ``item_{p-1}``; an entry made when either item's title or attributes were
different misses); a chain made only of KB links is not verified again (its
score is the lowest score of the chains its links came from). Users go in waves of
``llmrg.wave_size``: within a wave step ``p`` of every user is one engine call, and a wave's
verified links enter the KB before the next wave starts. The KB is the table ``kb`` of the
snapshot and is loaded by the next run (entries of other settings — model, prompt version,
domain, output bounds — are ignored).

**Incremental and resumable.** A user's fingerprint hashes the walked items (ids, keys, the
bounded prompt entries), their absolute offset, the model, the prompt version, the sampling and
the settings that change the output (the embedding model included). A user with an ``ok`` row of
the same fingerprint in LATEST, or in the parts a killed run wrote, is copied, not regenerated;
rows, texts and KB entries are written per wave. Reused rows keep the grounding they were made
with (catalogue items added later are candidates once the user is regenerated).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recalign.data.dataset import Dataset
from recalign.data.graph_schema import (ARTIFACT, DIRECT, DIVERGENT, ITEM, PROMPT_VERSION,
                                        REASON, TEXTS_SCHEMA, USERS_SCHEMA, text_key)
from recalign.llm.engine import (EmbeddingEngine, GenerationRequest, Outcome, SamplingSettings,
                                 chunked)
from recalign.llm.graph_prompts import (MASK, direct_messages, ref, step_messages, step_schema,
                                        title_schema, validate_output, verify_messages)
from recalign.llm.profiles import Runner, mix64, read_parts, training_interactions
from recalign.llm.prompts import TextBounder, bound_attributes, domain_for, sanitize
from recalign.llm.schemas import max_tokens_for
from recalign.storage.snapshot import SnapshotStore
from recalign.storage.uri import join

KB_SCHEMA = pa.schema([
    pa.field("prev_item", pa.int64(), nullable=False),
    pa.field("item", pa.int64(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("interests", pa.list_(pa.string()), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("pair_text", pa.string(), nullable=False),  # hash of both items' prompt entries
    pa.field("user", pa.int64(), nullable=False),        # whose verified chain it came from
    pa.field("settings", pa.string(), nullable=False),   # hash of what makes entries comparable
    pa.field("generated_in", pa.string(), nullable=False),
])


# --- input -----------------------------------------------------------------------------------

def training_sequences(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [n_users + 1], items): training items per user in time order; ties keep the
    interactions' order (as :meth:`SequenceData.from_dataset`, without its leave-one-out
    requirements, so any split works)."""
    t = training_interactions(ds)
    users = t["user"].to_numpy()
    order = np.lexsort((pc.fill_null(t["timestamp"], 0).to_numpy(), users))
    counts = np.bincount(users, minlength=ds.n_users)
    return (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            t["item"].to_numpy()[order].astype(np.int64))


def select_users(lengths: np.ndarray, max_users: int | None, seed: int) -> np.ndarray:
    """Users with >= 2 training items, or a seeded sample of ``max_users`` of them (sorted)."""
    users = np.flatnonzero(lengths >= 2).astype(np.int64)
    if max_users is not None and len(users) > max_users:
        users = np.sort(users[np.argsort(mix64(seed + 5, users), kind="stable")[:max_users]])
    return users


@dataclass(frozen=True)
class GraphSettings:
    domain: str
    model: str
    embed_model: str
    mode: str
    max_len: int
    k: int
    ground_threshold: float
    tau: float
    kb: bool
    kb_similarity: float | None
    verify: bool
    max_chains: int
    reason_words: int
    interest_words: int
    title_words: int
    title_tokens: int
    attribute_tokens: int
    seed: int
    max_attempts: int
    temperature: float
    top_p: float
    repetition_penalty: float
    max_tokens: int | None

    @classmethod
    def from_config(cls, llm: Any, g: Any, *, domain: str, model: str,
                    embed_model: str) -> "GraphSettings":
        return cls(domain, model, embed_model, g.mode, g.max_len, g.divergent_k,
                   g.ground_threshold, g.tau, g.kb, g.kb_similarity, g.verify,
                   g.max_chains_in_prompt,
                   g.reason_words, g.interest_words, g.title_words, g.title_tokens,
                   g.attribute_tokens, llm.seed, llm.max_attempts, llm.temperature, llm.top_p,
                   llm.repetition_penalty, llm.max_tokens)

    def sampling(self, schema: dict[str, Any]) -> SamplingSettings:
        return SamplingSettings(self.temperature, self.top_p,
                                self.max_tokens or max_tokens_for(schema), self.repetition_penalty)

    def output_settings(self) -> dict[str, Any]:
        """Everything but the input that changes a user's graph (its fingerprint)."""
        d = dict(self.__dict__)
        d.pop("max_attempts")
        if d["kb_similarity"] is None:  # exact keys: the fingerprints of earlier versions
            d.pop("kb_similarity")
        return {**d, "prompt_version": PROMPT_VERSION}

    def kb_settings(self) -> str:
        """What makes KB entries of two runs interchangeable."""
        keep = ("domain", "model", "mode", "k", "reason_words", "interest_words", "title_tokens",
                "attribute_tokens")
        blob = json.dumps({**{k: getattr(self, k) for k in keep}, "v": PROMPT_VERSION},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Catalog:
    """Bounded prompt entries and embedding texts of items (untrusted text bounded once)."""

    def __init__(self, ds: Dataset, bound: TextBounder, s: GraphSettings) -> None:
        self.keys = ds.item_map.key_of(np.arange(ds.n_items)).to_pylist()
        self.meta: dict[int, tuple[Any, Any, Any]] = {}
        if ds.items is not None:
            cols = [ds.items[c].to_pylist() for c in ("item", "title", "description", "attributes")]
            for i, t, d, a in zip(*cols):
                self.meta[i] = (t, d, a)
        self.bound, self.s = bound, s
        self._entries: dict[int, dict[str, Any]] = {}

    def entry(self, i: int) -> dict[str, Any]:
        """``{"title", "attributes"?, "description"?}`` (a short description only without
        attributes)."""
        e = self._entries.get(i)
        if e is None:
            t, d, a = self.meta.get(i, (None, None, None))
            e = {"title": self.bound(t, self.s.title_tokens)
                 or self.bound(self.keys[i], self.s.title_tokens)}
            attrs = bound_attributes(a, self.bound, self.s.attribute_tokens, max_keys=6,
                                     max_list=6)
            if attrs:
                e["attributes"] = attrs
            elif d:
                e["description"] = self.bound(d, 2 * self.s.attribute_tokens)
            self._entries[i] = e
        return e

    def pair_text(self, a: int, b: int) -> str:
        """Hash of two items' prompt entries (KB entries are valid while they are unchanged)."""
        blob = json.dumps([self.entry(a), self.entry(b)], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def prompt_entry(self, i: int, k: int) -> dict[str, Any]:
        return {"ref": ref(k), **self.entry(i)}

    def text(self, i: int) -> str:
        """Embedding text: title. key: value; ... (or the short description)."""
        e = self.entry(i)
        parts = [e["title"]]
        for key, v in e.get("attributes", {}).items():
            parts.append(f"{key}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
        if "description" in e:
            parts.append(e["description"])
        return sanitize(". ".join(parts))


# --- knowledge base ----------------------------------------------------------------------------

class _GatheredEntries(NamedTuple):
    """The knowledge base's stored keys and their items' vectors, transposed for one matrix
    product per query chunk; valid while ``vectors`` and ``n_entries`` are unchanged."""
    vectors: np.ndarray
    n_entries: int
    keys: np.ndarray
    left_t: np.ndarray
    right_t: np.ndarray


@dataclass
class KBEntry:
    reason: str
    interests: list[str]
    score: float
    user: int
    generated_in: str = ""
    pair_text: str = ""  # the two items' texts when it was made: a changed item misses


class KnowledgeBase:
    """Verified links keyed by ``(previous item, item)``. The first entry of a key stays while
    both items' texts are unchanged; an entry made from older texts misses and is replaced."""

    def __init__(self, settings: str) -> None:
        self.settings = settings
        self.entries: dict[tuple[int, int], KBEntry] = {}
        self.lookups = self.hits = self.similar_hits = 0
        # nearest_many's gathered entry vectors, kept while the entries and the vector
        # matrix are the same
        self._gathered: _GatheredEntries | None = None

    def lookup(self, prev_item: int, item: int, pair_text: str = "") -> KBEntry | None:
        """The entry of the key, unless either item's text changed since it was made."""
        self.lookups += 1
        e = self.entries.get((prev_item, item))
        if e is not None and e.pair_text != pair_text:
            e = None
        self.hits += e is not None
        return e

    def nearest(self, prev_item: int, item: int, vectors: np.ndarray, threshold: float,
                pair_text_of: Callable[[int, int], str]
                ) -> tuple[KBEntry, float, tuple[int, int]] | None:
        """:meth:`nearest_many` for one pair."""
        return self.nearest_many([(prev_item, item)], vectors, threshold, pair_text_of)[0]

    #: query pairs x entries scored at once (float32 cells): bounds the similarity matrix
    NEAREST_CELLS = 1 << 24

    def nearest_many(self, pairs: list[tuple[int, int]], vectors: np.ndarray, threshold: float,
                     pair_text_of: Callable[[int, int], str]
                     ) -> list[tuple[KBEntry, float, tuple[int, int]] | None]:
        """Per query pair ``(a, b)``: the entry of the stored pair ``(a', b')`` most like it,
        the similarity and the stored pair, or None. Similarity: ``min(cos(a, a'), cos(b,
        b'))`` (``vectors``: unit item text vectors, row = item id), at least ``threshold``; a
        stored pair whose items' texts changed since its entry was made (``pair_text_of``) is
        passed over. All queries of a walk step go in one call: two matrix products per chunk
        of queries against every entry — exact, written here because no library (FAISS
        included) searches by the smaller of two cosines; a catalogue-scale KB would put an
        approximate index in front of this."""
        out: list[tuple[KBEntry, float, tuple[int, int]] | None] = [None] * len(pairs)
        if not self.entries or not pairs:
            return out
        keys, left, right = self._entry_vectors(vectors)
        q = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        ok = np.flatnonzero((q < len(vectors)).all(1))
        if not keys.size or not ok.size:
            return out
        step = max(1, self.NEAREST_CELLS // len(keys))
        for c0 in range(0, len(ok), step):
            rows = ok[c0:c0 + step]
            sim = np.minimum(vectors[q[rows, 0]] @ left, vectors[q[rows, 1]] @ right)
            for r, s_row in zip(rows, sim):
                cand = np.flatnonzero(s_row >= threshold)
                for j in cand[np.argsort(-s_row[cand], kind="stable")]:
                    a, b = int(keys[j, 0]), int(keys[j, 1])
                    e = self.entries[(a, b)]
                    if e.pair_text == pair_text_of(a, b):
                        self.similar_hits += 1
                        out[r] = (e, float(s_row[j]), (a, b))
                        break
        return out

    def _entry_vectors(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored keys within ``vectors`` and their items' vectors (transposed), gathered
        once per change of the key set rather than once per walk step. A replaced entry keeps
        its key, so the entry count tells a changed key set (entries are never removed)."""
        g = self._gathered
        if g is None or g.vectors is not vectors or g.n_entries != len(self.entries):
            keys = np.array(list(self.entries), dtype=np.int64).reshape(-1, 2)
            keys = keys[(keys < len(vectors)).all(1)]
            g = _GatheredEntries(vectors, len(self.entries), keys,
                                 np.ascontiguousarray(vectors[keys[:, 0]].T),
                                 np.ascontiguousarray(vectors[keys[:, 1]].T))
            self._gathered = g
        return g.keys, g.left_t, g.right_t

    def add(self, prev_item: int, item: int, entry: KBEntry) -> bool:
        old = self.entries.get((prev_item, item))
        if old is not None and old.pair_text == entry.pair_text:
            return False
        self.entries[(prev_item, item)] = entry
        return True

    def load(self, rows: list[dict[str, Any]]) -> int:
        n = 0
        for r in rows:
            if r["settings"] == self.settings:
                n += self.add(int(r["prev_item"]), int(r["item"]), KBEntry(
                    r["reason"], list(r["interests"]), float(r["score"]), int(r["user"]),
                    r["generated_in"], r["pair_text"]))
        return n

    def table(self, keys: list[tuple[int, int]] | None = None) -> pa.Table:
        keys = list(self.entries) if keys is None else keys
        es = [self.entries[k] for k in keys]
        return pa.Table.from_pydict({
            "prev_item": [k[0] for k in keys], "item": [k[1] for k in keys],
            "reason": [e.reason for e in es], "interests": [e.interests for e in es],
            "score": [e.score for e in es], "pair_text": [e.pair_text for e in es],
            "user": [e.user for e in es],
            "settings": [self.settings] * len(keys),
            "generated_in": [e.generated_in for e in es]}, schema=KB_SCHEMA)


# --- one user's walk ---------------------------------------------------------------------------

@dataclass
class Link:
    src: int          # window position
    dst: int
    reason: str
    chain: int
    kb_score: float | None = None  # set when the link came from the knowledge base


@dataclass
class Walk:
    user: int
    key: str
    items: list[int]         # the walked window (dataset item ids)
    offset: int              # absolute position of items[0]
    n_train: int
    fingerprint: str
    links: list[Link] = field(default_factory=list)
    chains: list[list[int]] = field(default_factory=list)   # window positions per chain
    interests: dict[int, list[str]] = field(default_factory=dict)
    interest_chain: dict[int, int] = field(default_factory=dict)
    direct: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    llm_calls: int = 0
    kb_hits: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repaired: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def account(self, o: Outcome) -> None:
        self.llm_calls += o.attempts
        self.attempts += o.attempts
        self.prompt_tokens += o.prompt_tokens
        self.completion_tokens += o.completion_tokens

    def add_link(self, src: int, dst: int, reason: str, kb_score: float | None = None) -> int:
        for c, chain in enumerate(self.chains):
            if chain[-1] == src:
                chain.append(dst)
                break
        else:
            self.chains.append([src, dst])
            c = len(self.chains) - 1
        self.links.append(Link(src, dst, reason, c, kb_score))
        return c

    def root(self, p: int) -> int:
        self.chains.append([p])
        return len(self.chains) - 1

    def chain_links(self, c: int) -> list[Link]:
        return [lk for lk in self.links if lk.chain == c]

    def chain_from_kb(self, c: int) -> bool:
        links = self.chain_links(c)
        return bool(links) and all(lk.kb_score is not None for lk in links)

    def chain_tokens(self, c: int, bound: TextBounder, reason_tokens: int) -> list[str]:
        """Alternating refs and (bounded) reasons: how a chain appears in later prompts."""
        chain = self.chains[c]
        out = [ref(chain[0])]
        for lk in self.chain_links(c):
            out += [bound(lk.reason, reason_tokens), ref(lk.dst)]
        return out


# --- results of earlier runs -------------------------------------------------------------------

@dataclass
class Previous:
    users: dict[int, dict[str, Any]]
    texts: dict[str, tuple[str, list[float]]]   # hash -> (value, vector)
    kb_rows: list[dict[str, Any]]
    latest: str | None
    salvaged: int


def previous(store: SnapshotStore, dataset: str, artifact: str) -> Previous:
    """LATEST's rows, overlaid with the ok rows (and texts, KB entries) of killed runs."""
    users: dict[int, dict[str, Any]] = {}
    texts: dict[str, tuple[str, list[float]]] = {}
    kb_rows: list[dict[str, Any]] = []
    snap = store.try_open(dataset, artifact)
    if snap is not None:
        if snap.tables.get("users", {}).get("parts"):
            users = {r["id"]: r for r in snap.read_table("users").to_pylist()}
        if snap.tables.get("texts", {}).get("parts"):
            for r in snap.read_table("texts").to_pylist():
                texts[r["text"]] = (r["value"], r["vector"])
        if snap.tables.get("kb", {}).get("parts"):
            kb_rows = snap.read_table("kb").to_pylist()
    salvaged = 0
    for v in store.list_versions(dataset, artifact):
        if v.committed or (snap is not None and v.version < snap.version):
            continue
        base = join(store.artifact_uri(dataset, artifact), v.version)
        for r in read_parts(join(base, "texts"), TEXTS_SCHEMA):
            texts.setdefault(r["text"], (r["value"], r["vector"]))
        kb_rows += list(read_parts(join(base, "kb"), KB_SCHEMA))
        for r in read_parts(join(base, "users"), USERS_SCHEMA):
            old = users.get(r["id"])
            if r["status"] == "ok" and (old is None or old["fingerprint"] != r["fingerprint"]
                                        or old["status"] != "ok"):
                users[r["id"]] = r
                salvaged += 1
    return Previous(users, texts, kb_rows, snap.version if snap else None, salvaged)


# --- embeddings: texts, grounding, scores ------------------------------------------------------

def unit_rows(m: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    m = np.asarray(m, dtype=np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


class Embeddings:
    """The embedding engine behind a text cache; the catalogue matrix is built on first use."""

    def __init__(self, factory: Callable[[], EmbeddingEngine], catalog: Catalog, n_items: int,
                 known: dict[str, tuple[str, list[float]]]) -> None:
        self.factory, self.catalog, self.n_items = factory, catalog, n_items
        self.engine: EmbeddingEngine | None = None
        self.vectors: dict[str, np.ndarray] = {v: np.asarray(vec, np.float32)
                                               for v, vec in known.values()}
        self._items: np.ndarray | None = None
        self.embedded = 0

    def _engine(self) -> EmbeddingEngine:
        if self.engine is None:
            self.engine = self.factory()
        return self.engine

    def of(self, texts: list[str]) -> np.ndarray:
        """Vectors of ``texts`` (cached by value)."""
        todo = sorted({t for t in texts if t not in self.vectors})
        for part in chunked(todo, 1024):
            for t, v in zip(part, self._engine().embed(part)):
                self.vectors[t] = v
            self.embedded += len(part)
        if not texts:
            return np.zeros((0, 1), np.float32)
        return np.stack([self.vectors[t] for t in texts])

    def items(self) -> np.ndarray:
        """Unit vectors of every catalogue item's text (row = item id)."""
        if self._items is None:
            texts = [self.catalog.text(i) for i in range(self.n_items)]
            parts = [unit_rows(self._engine().embed(p)) for p in chunked(texts, 4096)]
            self._items = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
        return self._items

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def ground(vectors: np.ndarray, items: np.ndarray, threshold: float,
           chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(best item or -1, its cosine similarity) per row of ``vectors`` against unit ``items``."""
    n = len(vectors)
    best = np.full(n, -1, np.int64)
    sim = np.full(n, -np.inf, np.float32)
    if n == 0 or len(items) == 0:
        return best, sim
    q = unit_rows(vectors)
    for start in range(0, len(items), chunk):
        s = q @ items[start:start + chunk].T
        arg = s.argmax(axis=1)
        val = s[np.arange(n), arg]
        better = val > sim
        best[better], sim[better] = arg[better] + start, val[better]
    best[sim < threshold] = -1
    return best, sim


def verification_score(answer: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """100 * max(0, cosine) per row."""
    return 100.0 * np.maximum(0.0, np.sum(unit_rows(answer) * unit_rows(truth), axis=1))


# --- the generator -----------------------------------------------------------------------------

@dataclass
class WaveStats:
    wave: int
    users: int
    steps: int = 0
    kb_hits: int = 0
    kb_similar_hits: int = 0  # of kb_hits: served by a similar pair (kb_similarity)
    llm_calls: int = 0
    calls_saved: int = 0
    kb_added: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "seconds": round(self.seconds, 3),
                "kb_hit_rate": round(self.kb_hits / self.steps, 4) if self.steps else None}


class GraphGenerator:
    """Plans prompts, walks waves of users through a runner, grounds, verifies, builds rows."""

    def __init__(self, ds: Dataset, s: GraphSettings, bound: TextBounder,
                 embeddings: Embeddings | None, kb: KnowledgeBase,
                 make_runner: Callable[[], Runner], log: Callable[[str], None]) -> None:
        self.s, self.bound, self.kb, self.log = s, bound, kb, log
        self.catalog = embeddings.catalog if embeddings else Catalog(ds, bound, s)
        self.emb = embeddings
        self.make_runner = make_runner
        self.runner: Runner | None = None
        self.user_keys = ds.user_map.key_of(np.arange(ds.n_users)).to_pylist()
        self.prompt_digest = self._prompt_digest()
        #: set to a list to keep every prompt sent (tests check that nothing leaks into them)
        self.prompts: list[list[dict[str, str]]] | None = None
        self.totals: dict[str, Any] = {
            "step_calls": 0, "verify_calls": 0, "kb_hits": 0, "kb_similar_hits": 0, "steps": 0,
            "calls_saved": 0,
            "chains": 0, "chains_verified": 0, "chains_below_tau": 0, "grounded": 0,
            "unmatched": 0, "repaired": 0, "dropped": 0, "retries": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "fail_reasons": {}, "generation_s": 0.0}

    def _prompt_digest(self) -> str:
        """Hash of the system prompts and output schemas: editing them regenerates graphs."""
        s = self.s
        parts = [step_messages(s.domain, [], [], {}, k=s.k, reason_words=s.reason_words,
                               interest_words=s.interest_words)[0],
                 direct_messages(s.domain, [], words=s.title_words)[0],
                 verify_messages(s.domain, [], [], words=s.title_words)[0],
                 step_schema(["#1"], s.reason_words, s.interest_words, s.k),
                 title_schema("title", s.title_words)]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    # planning
    def walk(self, user: int, seq: np.ndarray) -> Walk:
        n = len(seq)
        window = seq[-self.s.max_len:].tolist()
        offset = n - len(window)
        entries = [[self.catalog.keys[i], self.catalog.entry(i)] for i in window]
        blob = json.dumps({"items": window, "entries": entries, "offset": offset,
                           "settings": self.s.output_settings(),
                           "prompts": self.prompt_digest}, sort_keys=True, ensure_ascii=False)
        fp = hashlib.sha256(blob.encode()).hexdigest()[:32]
        return Walk(user, self.user_keys[user], window, offset, n, fp)

    def _request(self, w: Walk, kind: str, p: int, msgs: list[dict[str, str]],
                 schema: dict[str, Any]) -> GenerationRequest:
        code = {"step": 0, "direct": 1, "verify": 2}[kind]
        seed = int(mix64(self.s.seed, np.array([w.user]), 4 * p + code)[0] & np.uint64(0x7FFFFFFF))
        if self.prompts is not None:
            self.prompts.append(msgs)
        return GenerationRequest(f"{w.user}:{kind}:{p}", msgs, schema, self.s.sampling(schema),
                                 seed)

    def step_request(self, w: Walk, p: int) -> GenerationRequest:
        history = [self.catalog.prompt_entry(i, k) for k, i in enumerate(w.items[:p])]
        recent = list(range(len(w.chains)))[-self.s.max_chains:] if self.s.max_chains else []
        chains = [w.chain_tokens(c, self.bound, 2 * self.s.reason_words) for c in recent]
        msgs = step_messages(self.s.domain, history, chains,
                             self.catalog.prompt_entry(w.items[p], p), k=self.s.k,
                             reason_words=self.s.reason_words,
                             interest_words=self.s.interest_words)
        schema = step_schema([ref(k) for k in range(p)], self.s.reason_words,
                             self.s.interest_words, self.s.k)
        return self._request(w, "step", p, msgs, schema)

    def direct_request(self, w: Walk, p: int) -> GenerationRequest:
        history = [self.catalog.prompt_entry(i, k) for k, i in enumerate(w.items[:p + 1])]
        msgs = direct_messages(self.s.domain, history, words=self.s.title_words)
        return self._request(w, "direct", p, msgs, title_schema("next", self.s.title_words))

    def verify_request(self, w: Walk, c: int) -> GenerationRequest:
        tokens = w.chain_tokens(c, self.bound, 2 * self.s.reason_words)
        tokens[-1] = MASK
        seen = sorted(set(w.chains[c][:-1]))
        items = [self.catalog.prompt_entry(w.items[k], k) for k in seen]
        msgs = verify_messages(self.s.domain, tokens, items, words=self.s.title_words)
        return self._request(w, "verify", c, msgs, title_schema("title", self.s.title_words))

    # engine
    def generate(self, requests: list[GenerationRequest]) -> dict[str, Outcome]:
        if not requests:
            return {}
        if self.runner is None:
            self.runner = self.make_runner()
        t0 = time.perf_counter()
        out = {o.id: o for batch in self.runner.run(requests, {}) for o in batch}
        self.totals["generation_s"] += time.perf_counter() - t0
        for o in out.values():
            self.totals["retries"] += o.attempts - 1
            self.totals["prompt_tokens"] += o.prompt_tokens
            self.totals["completion_tokens"] += o.completion_tokens
            if o.status != "ok":
                kind = (o.reason or "?").split(" (")[0][:80]
                self.totals["fail_reasons"][kind] = self.totals["fail_reasons"].get(kind, 0) + 1
        return out

    # the walk
    def apply_step(self, w: Walk, p: int, o: Outcome, schema: dict[str, Any]) -> None:
        w.account(o)
        keys = [f"interest_{j + 1}" for j in range(self.s.k)]
        if o.status == "ok":
            v = o.value
            src = int(v["from"][1:]) - 1
            c = w.add_link(src, p, v["reason"])
        else:
            # repair: a well-formed answer whose source alone is unusable keeps its interests,
            # and item p roots a new chain; anything else drops the step
            loose = {**schema, "properties": {**schema["properties"], "from": {"type": "string"}}}
            v, _ = validate_output(o.last_text, loose)
            if v is None:
                w.dropped.append(f"step {w.offset + p}: {o.reason}")
                self.totals["dropped"] += 1
                return
            c = w.root(p)
            w.repaired.append(f"step {w.offset + p}: unknown source item {str(v['from'])[:20]!r}")
            self.totals["repaired"] += 1
        if keys:
            w.interests[p] = list(dict.fromkeys(v[k] for k in keys))  # distinct, in order
            w.interest_chain[p] = c

    def apply_kb(self, w: Walk, p: int, e: KBEntry) -> None:
        c = w.add_link(p - 1, p, e.reason, kb_score=e.score)
        w.kb_hits += 1
        if e.interests:
            w.interests[p] = list(e.interests)
            w.interest_chain[p] = c

    def _from_kb(self, pairs: list[tuple[int, int]], stats: WaveStats
                 ) -> list[KBEntry | None]:
        """The KB's links for the steps ``a -> b`` of ``pairs``: each pair's own, or with
        ``kb_similarity`` the most similar stored pair's (one search for the misses)."""
        if not self.s.kb:
            return [None] * len(pairs)
        found = [self.kb.lookup(a, b, self.catalog.pair_text(a, b)) for a, b in pairs]
        miss = [i for i, e in enumerate(found) if e is None]
        if miss and self.s.kb_similarity is not None and self.emb is not None:
            near = self.kb.nearest_many([pairs[i] for i in miss], self.emb.items(),
                                        self.s.kb_similarity, self.catalog.pair_text)
            for i, n in zip(miss, near):
                if n is not None:
                    found[i] = n[0]
                    stats.kb_similar_hits += 1
        return found

    def walk_graph(self, walks: list[Walk], stats: WaveStats) -> None:
        for p in range(1, max(len(w.items) for w in walks)):
            todo: list[tuple[Walk, GenerationRequest]] = []
            live = [w for w in walks if p < len(w.items)]
            stats.steps += len(live)
            entries = self._from_kb([(w.items[p - 1], w.items[p]) for w in live], stats)
            for w, e in zip(live, entries):
                if e is not None:
                    self.apply_kb(w, p, e)
                    stats.kb_hits += 1
                else:
                    todo.append((w, self.step_request(w, p)))
            outs = self.generate([r for _, r in todo])
            self.totals["step_calls"] += len(todo)
            for w, r in todo:
                self.apply_step(w, p, outs[r.id], r.schema)

    def walk_direct(self, walks: list[Walk], stats: WaveStats) -> None:
        todo = [(w, p, self.direct_request(w, p)) for w in walks for p in range(len(w.items))]
        stats.steps += len(todo)
        outs = self.generate([r for _, _, r in todo])
        self.totals["step_calls"] += len(todo)
        for w, p, r in todo:
            o = outs[r.id]
            w.account(o)
            if o.status == "ok":
                w.direct[p] = o.value["next"]
            else:
                w.dropped.append(f"step {w.offset + p}: {o.reason}")
                self.totals["dropped"] += 1

    def verify(self, walks: list[Walk], stats: WaveStats) -> None:
        todo = []
        for w in walks:
            for c in range(len(w.chains)):
                if not w.chain_links(c):
                    continue  # a root without a link: nothing to verify (NaN)
                if w.chain_from_kb(c):
                    w.scores[c] = min(lk.kb_score for lk in w.chain_links(c))
                    stats.calls_saved += 1
                elif self.s.verify:
                    todo.append((w, c, self.verify_request(w, c)))
        outs = self.generate([r for _, _, r in todo])
        self.totals["verify_calls"] += len(todo)
        answered = []
        for w, c, r in todo:
            o = outs[r.id]
            w.account(o)
            if o.status == "ok":
                answered.append((w, c, o.value["title"]))
        if answered and self.emb is not None:
            a = self.emb.of([t for _, _, t in answered])
            truth = self.emb.of([self.catalog.text(w.items[w.chains[c][-1]])
                                 for w, c, _ in answered])
            for (w, c, _), sc in zip(answered, verification_score(a, truth)):
                w.scores[c] = float(sc)

    def learn(self, walks: list[Walk], version: str) -> list[tuple[int, int]]:
        """Links of chains scoring >= tau (generated ones) enter the KB; returns new keys."""
        added = []
        for w in walks:
            for lk in w.links:
                sc = w.scores.get(lk.chain)
                if lk.kb_score is not None or sc is None or math.isnan(sc) or sc < self.s.tau:
                    continue
                key = (w.items[lk.src], w.items[lk.dst])
                if self.kb.add(*key, KBEntry(lk.reason, w.interests.get(lk.dst, []), sc, w.user,
                                             version, self.catalog.pair_text(*key))):
                    added.append(key)
        return added

    # rows
    def row(self, w: Walk, grounded: dict[str, int], version: str, model: str
            ) -> dict[str, Any]:
        nodes: list[dict[str, Any]] = []
        edges: list[dict[str, Any]] = []
        item_node: dict[int, int] = {}
        for k, i in enumerate(w.items):
            if i not in item_node:
                item_node[i] = len(nodes)
                nodes.append({"kind": ITEM, "item": i, "text": None, "step": w.offset + k})

        def text_node(kind: str, value: str, step: int, item: int = -1) -> int:
            nodes.append({"kind": kind, "item": item, "text": text_key(value), "step": step})
            return len(nodes) - 1

        for lk in sorted(w.links, key=lambda x: x.dst):
            step = w.offset + lk.dst
            r = text_node(REASON, lk.reason, step)
            edges.append({"src": item_node[w.items[lk.src]], "dst": r, "kind": "item_reason",
                          "step": step, "chain": lk.chain})
            edges.append({"src": r, "dst": item_node[w.items[lk.dst]], "kind": "reason_item",
                          "step": step, "chain": lk.chain})
        for p in sorted(w.interests):
            for t in w.interests[p]:
                d = text_node(DIVERGENT, t, w.offset + p, grounded.get(t, -1))
                edges.append({"src": item_node[w.items[p]], "dst": d, "kind": "divergent",
                              "step": w.offset + p, "chain": w.interest_chain.get(p, -1)})
        for p in sorted(w.direct):
            d = text_node(DIRECT, w.direct[p], w.offset + p, grounded.get(w.direct[p], -1))
            edges.append({"src": item_node[w.items[p]], "dst": d, "kind": "direct",
                          "step": w.offset + p, "chain": -1})
        chains = [{"chain": c, "score": w.scores.get(c, float("nan")),
                   "from_kb": w.chain_from_kb(c)} for c in range(len(w.chains))]
        empty = not (w.links or w.direct or w.interests) and len(w.items) > 1
        notes = ([f"repaired {len(w.repaired)}: " + "; ".join(w.repaired)] if w.repaired else []) \
            + ([f"dropped {len(w.dropped)}: " + "; ".join(w.dropped)] if w.dropped else [])
        return {"id": w.user, "key": w.key, "status": "failed" if empty else "ok",
                "reason": " | ".join(notes)[:2000] or None, "n_train": w.n_train,
                "nodes": nodes, "edges": edges, "chains": chains, "llm_calls": w.llm_calls,
                "kb_hits": w.kb_hits, "attempts": w.attempts, "prompt_tokens": w.prompt_tokens,
                "completion_tokens": w.completion_tokens, "fingerprint": w.fingerprint,
                "model": model, "generated_in": version}

    def wave(self, walks: list[Walk], number: int, version: str
             ) -> tuple[list[dict[str, Any]], list[str], list[tuple[int, int]], WaveStats]:
        """Walk, verify, ground and learn one wave; (rows, texts used, new KB keys, stats)."""
        t0 = time.perf_counter()
        stats = WaveStats(number, len(walks))
        if self.s.mode == "direct":
            self.walk_direct(walks, stats)
        else:
            self.walk_graph(walks, stats)
            self.verify(walks, stats)
        # ground interests and direct guesses
        guesses = sorted({t for w in walks for ts in w.interests.values() for t in ts}
                         | {t for w in walks for t in w.direct.values()})
        grounded: dict[str, int] = {}
        if guesses and self.emb is not None:
            best, _ = ground(self.emb.of(guesses), self.emb.items(), self.s.ground_threshold)
            grounded = dict(zip(guesses, best.tolist()))
        rows = [self.row(w, grounded, version, self.s.model) for w in walks]
        for r in rows:
            for nd in r["nodes"]:
                if nd["kind"] in (DIVERGENT, DIRECT):
                    self.totals["grounded" if nd["item"] >= 0 else "unmatched"] += 1
            for ch in r["chains"]:
                self.totals["chains"] += 1
                if not math.isnan(ch["score"]):
                    self.totals["chains_verified"] += 1
                    self.totals["chains_below_tau"] += ch["score"] < self.s.tau
        added = self.learn(walks, version) if self.s.kb and self.s.mode == "graph" else []
        stats.kb_added = len(added)
        stats.llm_calls = sum(w.llm_calls for w in walks)
        stats.calls_saved += stats.kb_hits
        self.totals["kb_hits"] += stats.kb_hits
        self.totals["kb_similar_hits"] += stats.kb_similar_hits
        self.totals["steps"] += stats.steps
        self.totals["calls_saved"] += stats.calls_saved
        texts = sorted({t for w in walks for t in [lk.reason for lk in w.links]}
                       | set(guesses))
        stats.seconds = time.perf_counter() - t0
        return rows, texts, added, stats

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


# --- the run -----------------------------------------------------------------------------------

def _users_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=USERS_SCHEMA)


def _texts_table(values: list[str], emb: Embeddings,
                 known: dict[str, tuple[str, list[float]]]) -> pa.Table:
    """Rows of the texts table; vectors from an earlier snapshot or the embedding engine."""
    missing = [v for v in values if text_key(v) not in known]
    fresh = dict(zip(missing, emb.of(missing).tolist())) if missing else {}
    vecs = [list(known[text_key(v)][1]) if v not in fresh else fresh[v] for v in values]
    return pa.Table.from_pydict({"text": [text_key(v) for v in values], "value": values,
                                 "vector": vecs}, schema=TEXTS_SCHEMA)


def referenced_texts(row: dict[str, Any]) -> set[str]:
    return {n["text"] for n in row["nodes"] if n["text"]}


def generate_graphs(ds: Dataset, llm: Any, llmrg: Any, store: SnapshotStore,
                    make_runner: Callable[[], Runner],
                    make_embedder: Callable[[], EmbeddingEngine], *, model: str,
                    embed_model: str, bound: TextBounder | None = None,
                    data_source: str | None = None, dataset_version: str | None = None,
                    config_hash: str | None = None, progress: Any = None,
                    log: Callable[[str], None] = lambda _m: None,
                    on_generator: Callable[[GraphGenerator], None] | None = None
                    ) -> dict[str, Any]:
    """Generate (or reuse) every selected user's graph; write a graphs snapshot; return the
    summary. ``model`` / ``embed_model`` are the labels used in fingerprints (known without
    starting an engine); ``make_runner`` / ``make_embedder`` are called only when needed.
    ``on_generator`` sees the generator before any work (tests keep its prompts)."""
    t_start = time.perf_counter()
    artifact = llmrg.artifact
    domain = domain_for(llm.domain, data_source, ds.name)
    s = GraphSettings.from_config(llm, llmrg, domain=domain, model=model, embed_model=embed_model)
    bound = bound or TextBounder()
    prev = previous(store, ds.name, artifact)
    catalog = Catalog(ds, bound, s)
    emb = Embeddings(make_embedder, catalog, ds.n_items, prev.texts)
    kb = KnowledgeBase(s.kb_settings())
    kb_loaded = kb.load(prev.kb_rows) if s.kb else 0
    kb_loaded_keys = set(kb.entries)
    gen = GraphGenerator(ds, s, bound, emb, kb, make_runner, log)
    if on_generator is not None:
        on_generator(gen)
    indptr, seq_items = training_sequences(ds)
    users = select_users(np.diff(indptr), llmrg.max_users, llm.seed)
    walks = [gen.walk(int(u), seq_items[indptr[u]:indptr[u + 1]]) for u in users.tolist()]
    reuse, todo = [], []
    for w in walks:
        p = prev.users.get(w.user)
        if p is not None and p["status"] == "ok" and p["fingerprint"] == w.fingerprint:
            reuse.append(p)
        else:
            todo.append(w)
    changed = bool(todo) or {r["id"] for r in reuse} != set(prev.users) or prev.latest is None
    log(f"graphs: {len(walks)} users: {len(reuse)} reused ({prev.salvaged} salvaged from killed "
        f"runs), {len(todo)} to generate; knowledge base {kb_loaded} entries")
    if progress is not None:
        progress.reset(total=len(walks))
        progress.update(len(reuse))
    base = {"job": "graphs", "dataset": ds.name, "mode": s.mode, "model": model,
            "embed_model": embed_model, "domain": domain, "users": len(walks),
            "reused": len(reuse), "salvaged": prev.salvaged, "generated": len(todo)}
    if not changed:
        snap = store.open(ds.name, artifact)
        return {**base, "skipped": True, "snapshot": snap.uri, "version": snap.version,
                "llm_calls": 0, "reason": f"every graph is up to date in {snap.version}"}
    writer = store.begin(ds.name, artifact)
    written_texts: set[str] = set()
    reused_texts = set().union(*(referenced_texts(r) for r in reuse)) if reuse else set()
    for part in chunked(reuse, 10_000):
        writer.write_table("users", _users_table(part))
    keep = sorted(h for h in reused_texts if h in prev.texts)
    for part in chunked(keep, 50_000):
        writer.write_table("texts", pa.Table.from_pydict(
            {"text": part, "value": [prev.texts[h][0] for h in part],
             "vector": [list(prev.texts[h][1]) for h in part]}, schema=TEXTS_SCHEMA))
    written_texts |= set(keep)
    if prev.kb_rows:  # the whole KB carries over (entries of other settings too)
        writer.write_table("kb", pa.Table.from_pylist(prev.kb_rows, schema=KB_SCHEMA))
    waves: list[dict[str, Any]] = []
    status = {"ok": len(reuse), "failed": 0}
    llm_calls = 0
    try:
        for number, wave in enumerate(chunked(todo, llmrg.wave_size)):
            rows, texts, added, stats = gen.wave(wave, number, writer.version)
            new_texts = [t for t in texts if text_key(t) not in written_texts]
            writer.write_table("users", _users_table(rows))  # persisted per wave
            if new_texts:
                writer.write_table("texts", _texts_table(new_texts, emb, prev.texts))
                written_texts |= {text_key(t) for t in new_texts}
            if added:
                writer.write_table("kb", kb.table(added))
            for r in rows:
                status[r["status"]] += 1
            llm_calls += stats.llm_calls
            waves.append(stats.to_dict())
            log(f"graphs: wave {number}: {stats.users} users, {stats.steps} steps, "
                f"{stats.kb_hits} KB hits ({stats.to_dict()['kb_hit_rate']}; "
                f"{stats.kb_similar_hits} by a similar pair), "
                f"{stats.llm_calls} LLM calls, {stats.calls_saved} saved, "
                f"{stats.kb_added} KB entries added, {stats.seconds:.1f}s")
            if progress is not None:
                progress.update(len(rows))
    finally:
        gen.close()
        emb.close()
    t = gen.totals
    gen_s = t["generation_s"]
    wall = time.perf_counter() - t_start
    accounting = {
        "llm_calls": llm_calls, "step_calls": t["step_calls"], "verify_calls": t["verify_calls"],
        "retries": t["retries"], "steps": t["steps"], "kb_hits": t["kb_hits"],
        "kb_similar_hits": t["kb_similar_hits"], "kb_similarity": s.kb_similarity,
        "kb_hit_rate": round(t["kb_hits"] / t["steps"], 4) if t["steps"] else None,
        "calls_saved": t["calls_saved"], "kb_loaded": kb_loaded,
        "kb_size": len(kb.entries), "kb_added": len(set(kb.entries) - kb_loaded_keys),
        "chains": t["chains"], "chains_verified": t["chains_verified"],
        "chains_below_tau": t["chains_below_tau"], "tau": s.tau, "grounded": t["grounded"],
        "unmatched": t["unmatched"], "repaired": t["repaired"], "dropped": t["dropped"],
        "fail_reasons": t["fail_reasons"], "prompt_tokens": t["prompt_tokens"],
        "completion_tokens": t["completion_tokens"], "texts_embedded": emb.embedded,
        "generation_s": round(gen_s, 3), "wall_s": round(wall, 3),
        "graphs_per_s": round(len(todo) / wall, 4) if wall > 0 else None,
        "llm_calls_per_user": round(llm_calls / len(todo), 3) if todo else None,
        "waves": waves}
    if getattr(gen.runner, "startup_s", None) is not None:
        accounting["engine_startup_s"] = round(gen.runner.startup_s, 3)
    info = writer.parts_written()
    counts = {k: int(v["rows"]) for k, v in info.items()}
    snap = writer.commit(
        inputs={"dataset": dataset_version or "",
                **({"previous": prev.latest} if prev.latest else {})},
        config_hash=config_hash,
        extra={"counts": counts, "accounting": accounting, "settings": s.output_settings(),
               "kb_settings": s.kb_settings(), "prompt_version": PROMPT_VERSION,
               "llm_config": llm.model_dump(mode="json"),
               "llmrg_config": llmrg.model_dump(mode="json")})
    return {**base, **accounting, "skipped": False, "snapshot": snap.uri,
            "version": snap.version, "counts": counts, "status": status}


__all__ = ["ARTIFACT", "Catalog", "GraphGenerator", "GraphSettings",
           "KB_SCHEMA", "KBEntry", "KnowledgeBase", "Walk", "generate_graphs", "ground",
           "select_users", "training_sequences", "unit_rows", "verification_score"]
