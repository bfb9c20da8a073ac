"""LLMRG reasoning graphs (``recalign graphs``): the knowledge base's hits and saved calls,
steps without look-ahead, grounding, fingerprint reuse, resume after an injected kill, invalid
output repaired and counted, the nightly stage.

Generation runs on the real local model (SmolLM2 on vLLM, the session engine of
``llm_fixtures``); grounding and verification scores go through the real sentence-transformers
engine. The model's answers are not scripted, so the tests derive the expected values by brute
force from what the run stored (the users rows, the ``kb`` table, the per-wave summary) and the
position rules of :mod:`recalign.data.graph_schema`: e.g. a step is a knowledge-base hit exactly
when its item pair was stored by an earlier wave or run. Two tests inject faults on purpose and
say so: :class:`ScriptedFaultInjector` (the process dies at a chosen engine call; its answers
are scripted so that the counts across the kill are exact) and :class:`InjectingEngine`
(broken outputs around the real engine).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_fixtures import SharedEngine, small_llm
from recalign.config import Config, EmbedConfig, LLMRGConfig
from recalign.data.graph_schema import TEXTS_SCHEMA, USERS_SCHEMA, row_items, row_links, text_key
from recalign.data.sequences import SequenceData
from recalign.data.snapshot_io import ingest_to_snapshot, read_dataset
from recalign.llm.engine import GenerationEngine, GenerationResult, build_embedding_engine
from recalign.llm.graph_prompts import validate_output
from recalign.llm.graphs import (KnowledgeBase, generate_graphs, ground, select_users,
                                 verification_score)
from recalign.llm.profiles import LocalRunner
from recalign.storage.snapshot import SnapshotStore

NAME = "seqs"
LEAK = "LEAKMARK"


# --- data and engines -----------------------------------------------------------------------

def write_sequences(folder: Path, seqs: dict[str, list[str]],
                    titles: dict[str, str] | None = None) -> Path:
    """One user per key, its training items in time order, then one validation and one test
    item whose titles carry LEAKMARK (they must never reach a prompt)."""
    folder.mkdir(parents=True, exist_ok=True)
    titles = titles or {}
    items: dict[str, str] = {}
    inter: dict[str, list[Any]] = {k: [] for k in ("user_id", "item_id", "rating", "timestamp",
                                                   "review", "split")}
    for u, (user, seq) in enumerate(seqs.items()):
        held = [f"V{user}", f"T{user}"]
        for k, item in enumerate([*seq, *held]):
            split = "train" if k < len(seq) else ("valid" if k == len(seq) else "test")
            items.setdefault(item, f"{LEAK} {split} item of {user}" if split != "train"
                             else titles.get(item, f"Herb garden guide {item}"))
            for col, val in zip(inter, (user, item, 4.0, 1000 * u + k, None, split)):
                inter[col].append(val)
    keys = list(items)
    pq.write_table(pa.table({
        "item_id": keys, "title": [items[k] for k in keys], "description": [None] * len(keys),
        "attributes": [json.dumps({"genres": ["gardening"], "brand": f"b{k}"}) for k in keys]}),
        folder / "items.parquet")
    pq.write_table(pa.table(inter), folder / "interactions.parquet")
    return folder


def ingest(src: Path, root: Path) -> None:
    cfg = Config.model_validate({"data": {"source": "parquet", "path": str(src), "name": NAME,
                                          "split": {"method": "given"}},
                                 "output": {"root": str(root)}})
    ingest_to_snapshot(cfg, SnapshotStore(str(root)))


class ScriptedFaultInjector(GenerationEngine):
    """A deliberately injected fault, NOT a model: the engine raises on call ``fail_at`` (the
    process dies there). Its answers are scripted and schema-valid (a step links from the
    previous item, the last ref the schema allows; verification answers a fixed title) so that
    what the killed run committed, and what the rerun salvages, is exact. Only the resume test
    uses it; every other test runs the real model."""

    name = "scripted-fault"

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    @property
    def model_label(self) -> str:
        return "scripted-fault"

    def _generate(self, requests):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("injected fault: the process dies here")
        out = []
        for r in requests:
            props = r.schema["properties"]
            if "from" in props:
                src = props["from"]["enum"][-1]
                v = {"from": src, "reason": f"both share the gardening topic after {src}"}
                v.update({k: "herb garden guide" for k in props if k.startswith("interest_")})
            else:
                v = {k: "Herb garden guide" for k in props}
            out.append(GenerationResult(r.id, json.dumps(v), 10, 5, "stop"))
        return out


@pytest.fixture(scope="session")
def st_engine() -> Any:
    """The real sentence-transformers embedding engine (all-MiniLM-L6-v2), one per session."""
    pytest.importorskip("sentence_transformers")
    engine = build_embedding_engine(EmbedConfig(threads=2))
    yield SharedEngine(engine)
    engine.close()


@pytest.fixture
def llm_engine(vllm_engine: Any) -> Any:
    """The session's real generation engine (SmolLM2 on vLLM); ``requests_made`` is the
    engine's own counter (compare differences)."""
    return SharedEngine(vllm_engine)


#: short real-model outputs: two cores run the whole file in a few minutes
REAL_LLM = {"max_attempts": 2, "max_tokens": 64}
REAL_G = {"divergent_k": 1, "reason_words": 10, "interest_words": 4, "title_words": 6}


def run_graphs(root: Path, engine: GenerationEngine, embedder: Any, *, llm: dict | None = None,
               **g: Any) -> tuple[dict, Any]:
    store = SnapshotStore(str(root))
    snap = store.open(NAME, "dataset")
    cfg_llm = small_llm(**{"max_attempts": 2, **(llm or {})})
    cfg = LLMRGConfig(**{"max_len": 4, "wave_size": 2, "tau": 0.0, **g})
    gens: list = []

    def keep(gen: Any) -> None:
        gen.prompts = []  # record every prompt sent
        gens.append(gen)

    summary = generate_graphs(
        read_dataset(snap), cfg_llm, cfg, store,
        lambda: LocalRunner(lambda: engine, max_attempts=cfg_llm.max_attempts,
                            batch_size=64, close_engine=False, validate=validate_output),
        lambda: embedder, model=engine.model_label, embed_model="all-MiniLM-L6-v2",
        dataset_version=snap.version, on_generator=keep)
    return summary, gens[0]


def users_rows(root: Path, artifact: str = "graphs") -> dict[str, dict]:
    snap = SnapshotStore(str(root)).open(NAME, artifact)
    return {r["key"]: r for r in snap.read_table("users").to_pylist()}


def sequences(root: Path) -> tuple[Any, dict[int, list[int]]]:
    """(dataset, training items per user id in time order) from SequenceData."""
    ds = read_dataset(SnapshotStore(str(root)).open(NAME, "dataset"))
    sd = SequenceData.from_dataset(ds)
    return ds, {u: sd.items[sd.indptr[u]:sd.indptr[u + 1]].tolist() for u in range(ds.n_users)}


def kb_table(root: Path, artifact: str = "graphs") -> list[dict]:
    snap = SnapshotStore(str(root)).open(NAME, artifact)
    return snap.read_table("kb").to_pylist() if snap.tables.get("kb", {}).get("parts") else []


def check_kb(s: dict, rows: dict[int, dict], seqs: dict[int, list[int]], known: set,
             kb: dict[tuple[int, int], dict], *, max_len: int, tau: float) -> set:
    """Brute force of the knowledge base over the generated ``rows`` (user id -> row), wave by
    wave (users in id order, as many per wave as the summary's waves say): the step to position
    p is a hit exactly when ``(item[p-1], item[p])`` is in ``known`` (the KB before the wave:
    loaded, plus the links of earlier waves' chains scoring >= tau), answered with the entry's
    reason; a chain made only of KB links is not verified and has its entries' lowest score;
    every other chain with a link costs one verification. Checks every count of the summary
    (per wave and in total) and returns the keys learned."""
    order = sorted(rows)
    assert sum(w["users"] for w in s["waves"]) == len(order) == s["generated"]
    known = set(known)
    learned_all: set = set()
    tot = {"steps": 0, "hits": 0, "saved": 0, "step_calls": 0, "verify_calls": 0, "calls": 0}
    start = 0
    for wave in s["waves"]:
        ids = order[start:start + wave["users"]]
        start += wave["users"]
        steps = hits = saved = verify = 0
        learned = set()
        for u in ids:
            r, seq = rows[u], seqs[u]
            lo = max(0, len(seq) - max_len)
            links = row_links(r)
            user_hits = 0
            for p in range(lo + 1, len(seq)):
                steps += 1
                pair = (seq[p - 1], seq[p])
                if pair in known:  # answered from the KB: the link p-1 -> p, the entry's reason
                    user_hits += 1
                    assert [lk[1:3] + lk[4:] for lk in links if lk[0] == p] == \
                        [(*pair, text_key(kb[pair]["reason"]))]
            assert r["kb_hits"] == user_hits, (r["key"], links)
            hits += user_hits
            chains = {c["chain"]: c for c in r["chains"]}
            for c, ch in chains.items():
                mine = [(a, b) for _, a, b, cc, _ in links if cc == c]
                if not mine:  # a root without a link: not verified
                    assert math.isnan(ch["score"]) and not ch["from_kb"]
                elif ch["from_kb"]:
                    saved += 1
                    assert set(mine) <= known
                    assert ch["score"] == pytest.approx(min(kb[k]["score"] for k in mine))
                else:
                    verify += 1
            for _, a, b, c, _ in links:
                sc = chains[c]["score"]
                if not math.isnan(sc) and sc >= tau:
                    learned.add((a, b))
        calls = sum(rows[u]["llm_calls"] for u in ids)
        assert (wave["steps"], wave["kb_hits"], wave["calls_saved"], wave["llm_calls"]) == \
            (steps, hits, hits + saved, calls)
        assert wave["kb_added"] == len(learned - known)
        for k, v in (("steps", steps), ("hits", hits), ("saved", saved), ("calls", calls),
                     ("step_calls", steps - hits), ("verify_calls", verify)):
            tot[k] += v
        learned_all |= learned - known
        known |= learned
    assert (s["steps"], s["kb_hits"], s["calls_saved"], s["llm_calls"]) == \
        (tot["steps"], tot["hits"], tot["hits"] + tot["saved"], tot["calls"])
    # every request is a step without a hit or a verification; retries are extra attempts
    assert (s["step_calls"], s["verify_calls"]) == (tot["step_calls"], tot["verify_calls"])
    assert s["llm_calls"] == s["step_calls"] + s["verify_calls"] + s["retries"]
    # an entry learned in this run carries the score of the chain its link came from
    for key in learned_all:
        e = kb[key]
        assert e["generated_in"] == s["version"]
        r = rows[e["user"]]
        scores = {c["chain"]: c["score"] for c in r["chains"]}
        assert any((a, b) == key and scores[c] == pytest.approx(e["score"])
                   for _, a, b, c, _ in row_links(r))
    return learned_all


def check_step_prompts(gen: Any, windows: list[list[str]]) -> int:
    """Every step prompt shows a prefix of one user's walked window as history and the item
    right after it as next (titles): nothing later than the step's own item. Returns how many."""
    n = 0
    for msgs in gen.prompts:
        payload = json.loads(msgs[-1]["content"])
        assert LEAK not in msgs[-1]["content"] and LEAK not in msgs[0]["content"]
        if "next" not in payload or "chains" not in payload:
            continue
        shown = [h["title"] for h in payload["history"]] + [payload["next"]["title"]]
        assert any(w[:len(shown)] == shown for w in windows), shown
        n += 1
    return n


def title(item: str) -> str:
    return f"Herb garden guide {item}"


# users u0..u5 in id order; wave_size 2 makes waves (u0, u1), (u2, u3), (u4, u5)
KB_CASE = {"u0": ["A", "B", "C"], "u1": ["D", "E"], "u2": ["A", "B", "D"],
           "u3": ["D", "E", "F"], "u4": ["A", "B", "C"], "u5": ["D", "E"]}


def _prompt_text(gen: Any) -> str:
    assert gen.prompts, "no prompt was recorded"
    return "\n".join(m["content"] for msgs in gen.prompts for m in msgs)


# --- knowledge base ----------------------------------------------------------------------------

@pytest.mark.slow
def test_kb_hits_and_saved_calls_match_brute_force(tmp_path: Path, llm_engine: Any,
                                                   st_engine: Any) -> None:
    """Real model, tau 0 (every verified link enters the KB), waves (u0, u1), (u2, u3),
    (u4, u5). Which link the model picks at a step is its choice, so the expected hits, saved
    calls and KB entries are recomputed from the stored rows wave by wave (:func:`check_kb`).
    Position 1 can only link from position 0, so u0's A>B and u1's D>E are sure to be learned
    in wave 0 and hit by u2, u3 (wave 1) and u4, u5 (wave 2); u5's only chain is then made of
    KB links and is not verified again."""
    root = tmp_path / "root"
    ingest(write_sequences(tmp_path / "src", KB_CASE), root)
    ds, seqs = sequences(root)
    uid = dict(zip(KB_CASE, ds.user_map.lookup(pa.array(list(KB_CASE))).tolist()))
    assert list(uid.values()) == list(range(6))
    item = dict(zip("ABCDEF", ds.item_map.lookup(pa.array(list("ABCDEF"))).tolist()))
    before = llm_engine.requests_made
    s, gen = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, **REAL_G)
    assert s["llm_calls"] == llm_engine.requests_made - before
    assert [w["users"] for w in s["waves"]] == [2, 2, 2] and s["kb_loaded"] == 0
    rows = {r["id"]: r for r in users_rows(root).values()}
    kb = {(r["prev_item"], r["item"]): r for r in kb_table(root)}
    learned = check_kb(s, rows, seqs, set(), kb, max_len=4, tau=0.0)
    assert set(kb) == learned and s["kb_size"] == s["kb_added"] == len(kb)
    # the pairs every user's first step is sure to take are learned and then hit
    assert {(item["A"], item["B"]), (item["D"], item["E"])} <= learned
    assert [rows[uid[u]]["kb_hits"] >= 1 for u in KB_CASE] == [False, False] + [True] * 4
    (c5,) = rows[uid["u5"]]["chains"]
    assert c5["from_kb"] and s["calls_saved"] > s["kb_hits"] >= 4
    steps = sum(len(q) - 1 for q in KB_CASE.values())
    assert s["steps"] == steps == 10
    windows = [[title(i) for i in q] for q in KB_CASE.values()]
    assert check_step_prompts(gen, windows) == s["step_calls"]

    # without the KB every step and every linked chain costs a request (one wave: the waves
    # matter only to the KB)
    before = llm_engine.requests_made
    off, _ = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, kb=False,
                        artifact="graphs-nokb", **{**REAL_G, "wave_size": 6})
    off_rows = users_rows(root, "graphs-nokb").values()
    linked = sum(1 for r in off_rows for c in r["chains"]
                 if any(lk[3] == c["chain"] for lk in row_links(r)))
    assert (off["kb_hits"], off["calls_saved"], off["kb_size"]) == (0, 0, 0)
    assert (off["step_calls"], off["verify_calls"]) == (steps, linked)
    assert off["llm_calls"] == steps + linked + off["retries"] == llm_engine.requests_made - before
    assert not any(c["from_kb"] for r in off_rows for c in r["chains"])

    # the KB persists: a fresh run (another tau, so every user is new; one wave) starts with
    # the stored entries and hits them from its first wave on
    s2, _ = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, tau=1.0,
                       **{**REAL_G, "wave_size": 6})
    assert s2["kb_loaded"] == len(kb) and s2["generated"] == 6
    kb2 = {(r["prev_item"], r["item"]): r for r in kb_table(root)}
    rows2 = {r["id"]: r for r in users_rows(root).values()}
    learned2 = check_kb(s2, rows2, seqs, set(kb), kb2, max_len=4, tau=1.0)
    assert set(kb2) == set(kb) | learned2 and s2["kb_size"] == len(kb2)
    assert s2["waves"][0]["kb_hits"] >= 6  # A>B of u0, u2, u4 and D>E of u1, u3, u5


def test_row_links_and_items_of_a_hand_made_row() -> None:
    from recalign.errors import DataError

    # walk 7 (step 0) -> 9 (step 1) -> 4 (step 2); chain 0 explains 9 by 7, chain 1 explains 4
    # by 9; a divergent node and edge that are not links
    nodes = [{"kind": "item", "item": 9, "text": None, "step": 1},
             {"kind": "item", "item": 7, "text": None, "step": 0},
             {"kind": "reason", "item": -1, "text": "ha", "step": 1},
             {"kind": "item", "item": 4, "text": None, "step": 2},
             {"kind": "reason", "item": -1, "text": "hb", "step": 2},
             {"kind": "divergent", "item": 5, "text": "hc", "step": 2}]
    edges = [{"src": 1, "dst": 2, "kind": "item_reason", "step": 1, "chain": 0},
             {"src": 2, "dst": 0, "kind": "reason_item", "step": 1, "chain": 0},
             {"src": 3, "dst": 5, "kind": "divergent", "step": 2, "chain": 1},
             {"src": 0, "dst": 4, "kind": "item_reason", "step": 2, "chain": 1},
             {"src": 4, "dst": 3, "kind": "reason_item", "step": 2, "chain": 1}]
    row = {"key": "u", "nodes": nodes, "edges": edges}
    assert row_items(row) == [7, 9, 4]
    assert row_links(row) == [(1, 7, 9, 0, "ha"), (2, 9, 4, 1, "hb")]
    bad = {"key": "u", "nodes": nodes, "edges": [{**edges[0], "chain": 3}, edges[1]]}
    with pytest.raises(DataError, match="user 'u'.*reason node 2.*step 1, chain 0"):
        row_links(bad)


def test_kb_key_is_the_item_pair() -> None:
    kb = KnowledgeBase("s")
    from recalign.llm.graphs import KBEntry
    assert kb.add(1, 2, KBEntry("r", ["x"], 50.0, 0)) and not kb.add(1, 2, KBEntry("q", [], 90.0, 1))
    assert kb.lookup(1, 2).reason == "r"          # the first entry of a key stays
    assert kb.lookup(2, 1) is None                # direction matters
    assert kb.lookup(1, 3) is None
    assert kb.lookup(1, 2, "other texts") is None  # an item's text changed since: a miss
    assert (kb.lookups, kb.hits) == (4, 1)
    assert kb.add(1, 2, KBEntry("new", [], 40.0, 2, pair_text="other texts"))
    assert kb.lookup(1, 2, "other texts").reason == "new"
    other = KnowledgeBase("other-settings")
    assert other.load(kb.table().to_pylist()) == 0  # entries of other settings are ignored
    assert KnowledgeBase("s").load(kb.table().to_pylist()) == 1


def test_kb_nearest_pair_by_item_similarity() -> None:
    """``kb_similarity``: a pair not stored takes the stored pair whose two items are both at
    cosine >= s with its own (ranked by the smaller cosine), order of the pair kept, a pair
    whose items' texts changed passed over."""
    from recalign.llm.graphs import KBEntry

    def unit(deg: float) -> list[float]:
        return [np.cos(np.radians(deg)), np.sin(np.radians(deg)), 0.0]

    # items 0-3 on a circle (0, 1 = one stored pair; 2 near 0, 3 near 1), 4 elsewhere,
    # 5 = 1's twin direction for a second stored pair (5, 4)
    v = np.array([unit(0), unit(90), unit(20), unit(105), [0, 0, 1.0], unit(90)])
    kb = KnowledgeBase("s")
    kb.add(0, 1, KBEntry("zero-one", ["x"], 60.0, 0, pair_text="t01"))
    kb.add(5, 4, KBEntry("five-four", [], 70.0, 1, pair_text="t54"))
    texts = {(0, 1): "t01", (5, 4): "t54"}
    text_of = lambda a, b: texts[(a, b)]  # noqa: E731
    e, sim, pair = kb.nearest(2, 3, v, 0.9, text_of)
    assert e.reason == "zero-one" and pair == (0, 1)
    assert sim == pytest.approx(min(np.cos(np.radians(20)), np.cos(np.radians(15))), abs=1e-6)
    assert kb.nearest(2, 3, v, 0.95, text_of) is None  # cos 20° = .940 < .95
    assert kb.nearest(3, 2, v, 0.5, text_of) is None   # direction matters
    assert kb.nearest(1, 4, v, 0.9, text_of)[0].reason == "five-four"  # 1 is 5's twin
    texts[(0, 1)] = "changed"
    assert kb.nearest(2, 3, v, 0.9, text_of) is None
    assert kb.similar_hits == 2


def _nearest_brute_force(queries: list[tuple[int, int]], stored: set[tuple[int, int]],
                         changed: set[tuple[int, int]], v: np.ndarray, threshold: float
                         ) -> list[tuple[float, tuple[int, int]] | None]:
    out = []
    for a, b in queries:
        best = None
        for sa, sb in sorted(stored):
            if max(a, b, sa, sb) >= len(v) or (sa, sb) in changed:
                continue
            s = min(float(v[a] @ v[sa]), float(v[b] @ v[sb]))
            if s >= threshold and (best is None or s > best[0] + 1e-6):
                best = (s, (sa, sb))
        out.append(best)
    return out


def _assert_nearest_matches(got: list, want: list, queries: list, v: np.ndarray) -> int:
    for (a, b), g, best in zip(queries, got, want):
        if best is None:
            assert g is None, (a, b)
        else:
            assert g is not None and g[1] == pytest.approx(best[0], abs=1e-5), (a, b)
            assert min(float(v[a] @ v[g[2][0]]), float(v[b] @ v[g[2][1]])) == \
                pytest.approx(best[0], abs=1e-5) and g[0].reason == f"{g[2][0]}>{g[2][1]}"
    return sum(g is not None for g in got)


def test_kb_nearest_many_equals_a_brute_force_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """One batched search per walk step = a pair-by-pair brute force: random item vectors in
    a few clusters (so that thresholds bite), stored pairs with some changed texts and an item
    outside the vectors, queries in chunks of 7 rows. Then, with the gathered entry vectors
    cached between calls: entries added, and another vector matrix, still = the brute force."""
    from recalign.llm.graphs import KBEntry

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 8))
    v = centres[rng.integers(0, 4, 60)] + 0.35 * rng.normal(size=(60, 8))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    kb = KnowledgeBase("s")
    stored = {(int(a), int(b)) for a, b in rng.integers(0, 60, (40, 2))} | {(3, 60)}
    changed = set(list(sorted(stored))[::5])
    for a, b in sorted(stored):
        kb.add(a, b, KBEntry(f"{a}>{b}", [], 50.0, 0, pair_text=f"{a},{b}"))
    text_of = lambda a, b: f"{a},{b}!" if (a, b) in changed else f"{a},{b}"  # noqa: E731
    queries = [(int(a), int(b)) for a, b in rng.integers(0, 60, (50, 2))] + [(60, 1)]
    monkeypatch.setattr(KnowledgeBase, "NEAREST_CELLS", 7 * len(stored))
    got = kb.nearest_many(queries, v, 0.75, text_of)
    n_hits = _assert_nearest_matches(got, _nearest_brute_force(queries, stored, changed, v, .75),
                                     queries, v)
    assert 5 <= n_hits < len(queries) and kb.similar_hits == n_hits

    more = {(int(a), int(b)) for a, b in rng.integers(0, 60, (30, 2))} - stored
    for a, b in sorted(more):
        kb.add(a, b, KBEntry(f"{a}>{b}", [], 50.0, 0, pair_text=f"{a},{b}"))
    stored |= more
    got2 = kb.nearest_many(queries, v, 0.75, text_of)
    n2 = _assert_nearest_matches(got2, _nearest_brute_force(queries, stored, changed, v, .75),
                                 queries, v)
    assert n2 > n_hits  # the added entries are searched
    w = v[rng.permutation(len(v))]  # another matrix: the cache must not serve v's vectors
    got3 = kb.nearest_many(queries, w, 0.75, text_of)
    n3 = _assert_nearest_matches(got3, _nearest_brute_force(queries, stored, changed, w, .75),
                                 queries, w)
    assert [g and g[2] for g in got3] != [g and g[2] for g in got2] and n3 > 0


@pytest.mark.slow
def test_kb_similarity_serves_similar_pairs_and_only_those(tmp_path: Path, llm_engine: Any,
                                                         st_engine: Any) -> None:
    """Real model and embedder. Wave 0 learns A>B (kettles) and P>Q (chess); in wave 1 the
    kettle pair C>D is served by A>B's link (its items' texts are both close to A's and B's),
    the bicycle pair R>S by nothing (an LLM call) — exactly the steps a brute force over the
    embedder's cosines predicts; with exact keys neither hits."""
    names = {"A": "Red enamel tea kettle", "B": "Blue enamel tea kettle",
             "C": "Green enamel tea kettle", "D": "Yellow enamel tea kettle",
             "P": "Chess opening repertoire book", "Q": "Wooden chess board set",
             "R": "Carbon road bicycle frame", "S": "Bicycle helmet with lights"}
    case = {"u0": ["A", "B"], "u1": ["P", "Q"], "u2": ["C", "D"], "u3": ["R", "S"]}
    root = tmp_path / "root"
    ingest(write_sequences(tmp_path / "src", case, names), root)
    ds, seqs = sequences(root)
    item = dict(zip(names, ds.item_map.lookup(pa.array(list(names))).tolist()))
    threshold = 0.8
    s, gen = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, kb_similarity=threshold,
                        **REAL_G)
    kb = {(r["prev_item"], r["item"]): r for r in kb_table(root)}
    assert {(item["A"], item["B"]), (item["P"], item["Q"])} <= set(kb)
    # brute force: cosines of the catalogue texts the generator embeds
    vec = gen.emb.items()
    stored = [(item["A"], item["B"]), (item["P"], item["Q"])]

    def best(a: str, b: str) -> tuple[float, tuple[int, int]]:
        return max((min(float(vec[item[a]] @ vec[x]), float(vec[item[b]] @ vec[y])), (x, y))
                   for x, y in stored)

    (sim_cd, pair_cd), (sim_rs, _) = best("C", "D"), best("R", "S")
    assert sim_cd >= threshold > sim_rs, (sim_cd, sim_rs)  # the case is what it claims
    assert pair_cd == (item["A"], item["B"])
    assert [w["kb_hits"] for w in s["waves"]] == [0, 1]
    assert s["kb_similar_hits"] == s["kb_hits"] == 1 and s["kb_similarity"] == threshold
    rows = {r["id"]: r for r in users_rows(root).values()}
    uid = dict(zip(case, ds.user_map.lookup(pa.array(list(case))).tolist()))
    assert rows[uid["u2"]]["kb_hits"] == 1 and rows[uid["u3"]]["kb_hits"] == 0
    reasons = {lk[4] for lk in row_links(rows[uid["u2"]])}
    assert text_key(kb[pair_cd]["reason"]) in reasons  # nodes hold text keys
    # a served link is not learned again: C>D did not enter the KB, R>S (generated) did
    assert (item["C"], item["D"]) not in kb
    exact, _ = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, artifact="graphs-exact",
                          **REAL_G)
    assert exact["kb_hits"] == exact["kb_similar_hits"] == 0


# --- steps, grounding --------------------------------------------------------------------------

@pytest.mark.slow
def test_steps_are_absolute_positions_without_look_ahead(tmp_path: Path, llm_engine: Any,
                                                         st_engine: Any) -> None:
    """Real model. Every node and edge is checked against graph_schema's position rules and
    SequenceData: item nodes at their first position in the walk, a link explaining the step
    to p carries step p, ends at item p and starts at an earlier position of the window, the
    interests proposed after p hang from item p with step p; no prompt shows a later item."""
    seqs = {"u0": list("ABCDEFG"), "u1": list("CDE"), "u2": list("Q")}  # u2: 1 item, no graph
    root = tmp_path / "root"
    ingest(write_sequences(tmp_path / "src", seqs), root)
    s, gen = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM,
                        **{**REAL_G, "max_len": 4, "divergent_k": 2, "wave_size": 8})
    assert s["users"] == 2 and s["dropped"] == s["repaired"] == 0
    # the windows D E F G (u0) and C D E (u1): 3 + 2 step prompts, none beyond its step
    assert check_step_prompts(gen, [[title(i) for i in "DEFG"], [title(i) for i in "CDE"]]) \
        == s["step_calls"] == 5
    ds, by_id = sequences(root)
    rows = users_rows(root)
    assert set(rows) == {"u0", "u1"}
    for key, r in rows.items():
        u = int(ds.user_map.lookup(pa.array([key]))[0])
        seq = by_id[u]
        lo = max(0, len(seq) - 4)
        assert r["id"] == u and r["n_train"] == len(seq) and r["status"] == "ok"
        nodes, edges = r["nodes"], r["edges"]
        assert all(lo <= x["step"] < len(seq) for x in [*nodes, *edges])
        items = [nd for nd in nodes if nd["kind"] == "item"]
        assert [(nd["item"], nd["step"]) for nd in items] == \
            [(i, lo + seq[lo:].index(i)) for i in dict.fromkeys(seq[lo:])]
        for e in edges:  # an edge never points at a node made after its step
            assert nodes[e["src"]]["step"] <= e["step"] and nodes[e["dst"]]["step"] <= e["step"]
            assert -1 <= e["chain"] < len(r["chains"])
            if e["kind"] == "divergent":
                assert nodes[e["src"]]["item"] == seq[e["step"]]
                assert nodes[e["dst"]]["kind"] == "divergent"
                assert nodes[e["dst"]]["step"] == e["step"]
        links = row_links(r)
        for step, a, b, chain, _ in links:
            assert b == seq[step]                 # the step's own item, never a later one
            assert a in seq[lo:step]              # explained by an earlier position
            assert 0 <= chain < len(r["chains"])
        for nd in nodes:
            if nd["kind"] == "reason":
                assert nd["step"] in [lk[0] for lk in links]
        # one link per step at most; interests at most divergent_k per step
        assert len({lk[0] for lk in links}) == len(links)
        per_step = [e["step"] for e in edges if e["kind"] == "divergent"]
        assert all(per_step.count(p) <= 2 for p in per_step)
        # every step of the window carries its link (no answer of the model failed)
        assert sorted(lk[0] for lk in links) == list(range(lo + 1, len(seq)))
    u0 = rows["u0"]
    # the window is D E F G at positions 3..6: links at steps 4, 5, 6
    assert min(n["step"] for n in u0["nodes"]) == 3
    assert sorted(n["step"] for n in u0["nodes"] if n["kind"] == "reason") == [4, 5, 6]
    # the schema is exactly graph_schema's
    snap = SnapshotStore(str(root)).open(NAME, "graphs")
    assert snap.read_table("users").schema.equals(USERS_SCHEMA)
    texts = snap.read_table("texts")
    assert texts.schema.equals(TEXTS_SCHEMA)
    vec = {r["text"]: r["vector"] for r in texts.to_pylist()}
    used = {n["text"] for r in rows.values() for n in r["nodes"] if n["text"]}
    assert used <= set(vec) and {len(v) for v in vec.values()} == {384}


def test_grounding_threshold_and_verification_score(st_engine: Any) -> None:
    items = st_engine.embed(["Basil and mint: growing kitchen herbs", "Chess openings for "
                             "beginners", "A history of the Roman empire"])
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    q = st_engine.embed(["a guide to growing basil herbs", "strategy board game book"])
    best, sim = ground(q, items, 0.3)
    assert best.tolist() == [0, 1] and (sim > 0.3).all()
    mid = float(sim.mean())  # between the two matches: the weaker one is unmatched
    assert ground(q, items, mid)[0].tolist() == [k if sim[k] >= mid else -1 for k in (0, 1)]
    assert (ground(q, items, mid)[0] == -1).sum() == 1
    assert ground(q, items, 0.999)[0].tolist() == [-1, -1]
    a = np.array([[1, 0], [1, 0], [1, 1], [2, 0]], np.float32)
    b = np.array([[0, 1], [-1, 0], [1, 0], [5, 0]], np.float32)
    assert verification_score(a, b) == pytest.approx([0.0, 0.0, 100 / math.sqrt(2), 100.0])


def test_user_selection_is_a_seeded_sample_of_users_with_two_items() -> None:
    lengths = np.array([0, 1, 2, 3, 5, 2, 9, 4])
    assert select_users(lengths, None, 7).tolist() == [2, 3, 4, 5, 6, 7]
    sample = select_users(lengths, 3, 7)
    assert len(sample) == 3 and set(sample.tolist()) <= {2, 3, 4, 5, 6, 7}
    assert sample.tolist() == sorted(sample.tolist())
    assert select_users(lengths, 3, 7).tolist() == sample.tolist()  # reproducible
    # a user's membership does not depend on the others: growing the data keeps the ranks
    grown = select_users(np.append(lengths, [0, 0]), 3, 7)
    assert grown.tolist() == sample.tolist()


# --- incremental, resumable --------------------------------------------------------------------

@pytest.mark.slow
def test_fingerprint_reuse_and_changed_item(tmp_path: Path, llm_engine: Any,
                                            st_engine: Any) -> None:
    """Real model. A second run makes no request and writes no version; a changed title of F
    regenerates exactly the users whose walked window holds F (u2 walked G A B: its F is
    before the window), and the KB entries made from F's old title miss."""
    case = {"u0": ["A", "B", "C"], "u1": ["D", "E", "F"], "u2": ["F", "G", "A", "B"],
            "u3": ["G", "F"]}
    src, root = tmp_path / "src", tmp_path / "root"
    ingest(write_sequences(src, case), root)
    g = {**REAL_G, "max_len": 3}
    first, _ = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, **g)
    assert first["generated"] == 4 and not first["skipped"]
    before = llm_engine.requests_made
    again, _ = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, **g)
    assert llm_engine.requests_made == before and again["skipped"] and again["llm_calls"] == 0
    assert again["version"] == first["version"] and again["reused"] == 4
    versions = [p.name for p in (root / NAME / "graphs").iterdir() if p.name.startswith("v=")]
    assert versions == [first["version"]]

    ds, seqs = sequences(root)
    old_kb = {(r["prev_item"], r["item"]): r for r in kb_table(root)}
    f = int(ds.item_map.lookup(pa.array(["F"]))[0])
    ingest(write_sequences(src, case, titles={"F": "Secret atlas of herbs"}), root)
    before = llm_engine.requests_made
    third, _ = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, **g)
    walked_f = {u for u, q in case.items() if "F" in q[-3:]}
    assert walked_f == {"u1", "u3"}
    rows = users_rows(root)
    assert len(rows) == 4
    assert {k for k, r in rows.items() if r["generated_in"] == third["version"]} == walked_f
    assert third["generated"] == 2 and third["reused"] == 2
    assert third["llm_calls"] == llm_engine.requests_made - before
    # the KB loaded from the first run: entries about F were made from its old title and miss
    kb = {(r["prev_item"], r["item"]): r for r in kb_table(root)}
    valid = {k for k in old_kb if f not in k}
    new_rows = {r["id"]: r for r in rows.values() if r["generated_in"] == third["version"]}
    check_kb(third, new_rows, seqs, valid, kb, max_len=3, tau=0.0)
    d, e = ds.item_map.lookup(pa.array(["D", "E"])).tolist()
    assert (d, e) in valid and rows["u1"]["kb_hits"] == 1  # D>E hits, E>F misses


def test_resume_after_injected_kill(tmp_path: Path, st_engine: Any) -> None:
    """An injected fault (:class:`ScriptedFaultInjector`, which says so): the process dies in
    wave 1; its answers are scripted so that what the rerun salvages and redoes is exact."""
    ingest(write_sequences(tmp_path / "src", KB_CASE), tmp_path / "root")
    # injected fault: the engine raises on its 4th call (wave 0 took 3: two step indexes and
    # the verification), so the run dies in wave 1 without committing, as a killed one would
    with pytest.raises(RuntimeError, match="injected fault"):
        run_graphs(tmp_path / "root", ScriptedFaultInjector(fail_at=4), st_engine)
    art = tmp_path / "root" / NAME / "graphs"
    (killed,) = [p for p in art.iterdir() if p.name.startswith("v=")]
    assert not (killed / "_SUCCESS").exists() and not (art / "LATEST").exists()
    engine = ScriptedFaultInjector()  # no fault: the rerun
    s, _ = run_graphs(tmp_path / "root", engine, st_engine)
    assert s["salvaged"] == 2 and s["reused"] == 2 and s["generated"] == 4
    # the killed run's KB entries were salvaged: the later waves hit exactly as in one run
    assert s["kb_loaded"] == 3 and s["kb_hits"] == 5
    assert s["llm_calls"] == engine.requests_made == 4  # waves 1 and 2 of the full run
    rows = users_rows(tmp_path / "root")
    assert len(rows) == 6
    assert {k for k, r in rows.items() if r["generated_in"] == killed.name} == {"u0", "u1"}


# --- the real model ----------------------------------------------------------------------------

class InjectingEngine(GenerationEngine):
    """Deliberately injected faults around the real engine: for chosen request ids the real
    output is replaced on the first ``n`` attempts — ``unknown``: the link's source becomes
    ``#99`` (an unknown item), ``broken``: the text is cut in half (invalid JSON)."""

    name = "injecting"

    def __init__(self, real: GenerationEngine, faults: dict[str, tuple[str, int]]) -> None:
        super().__init__()
        self.real, self.faults, self.seen = real, faults, {}
        self.texts: list[str] = []

    @property
    def model_label(self) -> str:
        return self.real.model_label

    def _generate(self, requests):
        out = []
        for r, res in zip(requests, self.real.generate(requests)):
            n = self.seen[r.id] = self.seen.get(r.id, 0) + 1
            kind, times = self.faults.get(r.id, ("", 0))
            text = res.text
            if n <= times and kind == "unknown":
                try:
                    value = json.loads(text)
                    value["from"] = "#99"
                    text = json.dumps(value)
                except (ValueError, TypeError):
                    pass
            elif n <= times and kind == "broken":
                text = text[: len(text) // 2]
            self.texts.append(text)
            out.append(GenerationResult(res.id, text, res.prompt_tokens, res.completion_tokens,
                                        res.finish_reason))
        return out


@pytest.mark.slow
def test_real_model_end_to_end_with_injected_invalid_outputs(tmp_path: Path, vllm_engine: Any,
                                                             st_engine: Any) -> None:
    seqs = {"u0": ["A", "B", "C"], "u1": ["D", "E", "F"], "u2": ["G", "H", "K"]}
    titles = {"A": "Basil growing guide", "B": "Mint and thyme handbook", "C": "Herb kitchen",
              "D": "Chess openings", "E": "Chess endgames", "F": "Go strategy",
              "G": "Roman history", "H": "Greek myths", "K": "Egyptian pyramids"}
    ingest(write_sequences(tmp_path / "src", seqs, titles), tmp_path / "root")
    ds = read_dataset(SnapshotStore(str(tmp_path / "root")).open(NAME, "dataset"))
    uid = dict(zip(seqs, ds.user_map.lookup(pa.array(list(seqs))).tolist()))
    faults = {f"{uid['u0']}:step:1": ("unknown", 99),   # repaired: B roots a chain, no link
              f"{uid['u1']}:step:2": ("broken", 99),    # dropped after the attempts
              f"{uid['u2']}:step:1": ("broken", 1)}     # retried, then the real answer
    engine = InjectingEngine(SharedEngine(vllm_engine), faults)
    s, gen = run_graphs(tmp_path / "root", engine, st_engine,
                        llm={"max_attempts": 2, "max_tokens": 72}, max_len=3, wave_size=8,
                        tau=30.0, divergent_k=1, reason_words=10, interest_words=4,
                        title_words=6)
    assert s["llm_calls"] == engine.requests_made and s["generated"] == 3
    assert s["repaired"] == 1 and s["dropped"] == 1
    assert s["retries"] >= 1 + 1 + 1
    assert s["fail_reasons"].get("not valid JSON", 0) >= 1
    assert s["status"] == {"ok": 3, "failed": 0}
    text = _prompt_text(gen)
    assert LEAK not in text and "Basil growing guide" in text
    rows = users_rows(tmp_path / "root")
    # u0: step 1 (B) was repaired: B roots a chain without a link, its interests kept
    u0 = rows["u0"]
    assert "repaired 1" in u0["reason"] and "unknown" in u0["reason"]
    reason_steps = sorted(n["step"] for n in u0["nodes"] if n["kind"] == "reason")
    assert 1 not in reason_steps and 1 in {n["step"] for n in u0["nodes"]
                                           if n["kind"] == "divergent"}
    # u1: step 2 (F) was dropped: no link and no interests carry step 2
    u1 = rows["u1"]
    assert "dropped 1" in u1["reason"]
    assert 2 not in {n["step"] for n in u1["nodes"] if n["kind"] != "item"}
    # linked chains were verified by the real model (a score in [0, 100], NaN only when its
    # answer stayed invalid); a root without a link has none
    for r in rows.values():
        for c in r["chains"]:
            linked = any(e["chain"] == c["chain"] and e["kind"] == "reason_item"
                         for e in r["edges"])
            assert linked or math.isnan(c["score"])
            assert math.isnan(c["score"]) or 0.0 <= c["score"] <= 100.0
    assert s["chains_verified"] >= 2 and s["grounded"] + s["unmatched"] >= 2



@pytest.mark.slow
def test_direct_mode_one_grounded_guess_per_position(tmp_path: Path, llm_engine: Any,
                                                     st_engine: Any) -> None:
    """Real model, direct ablation: one request per walked position, no KB, no verification;
    each guess is grounded to the catalogue item of highest cosine similarity when it reaches
    the threshold (recomputed here from the stored vectors and freshly embedded item texts)."""
    root = tmp_path / "root"
    ingest(write_sequences(tmp_path / "src", KB_CASE), root)
    before = llm_engine.requests_made
    d, gen = run_graphs(root, llm_engine, st_engine, llm=REAL_LLM, mode="direct", max_len=2,
                        ground_threshold=0.3, wave_size=3, title_words=6)
    # every walked position (the last 2 items of each user) asks once
    assert d["step_calls"] == 12 == d["steps"] and d["verify_calls"] == 0
    assert d["llm_calls"] == 12 + d["retries"] == llm_engine.requests_made - before
    assert d["kb_hits"] == 0 and d["kb_size"] == 0
    assert len(gen.prompts) == 12 and LEAK not in _prompt_text(gen)
    snap = SnapshotStore(str(root)).open(NAME, "graphs")
    texts = {r["text"]: np.asarray(r["vector"]) for r in snap.read_table("texts").to_pylist()}
    ds = read_dataset(SnapshotStore(str(root)).open(NAME, "dataset"))
    items = np.asarray(st_engine.embed([gen.catalog.text(i) for i in range(ds.n_items)]))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    n_direct = 0
    for r in users_rows(root).values():
        assert {n["kind"] for n in r["nodes"]} <= {"item", "direct"} and r["chains"] == []
        direct = [n for n in r["nodes"] if n["kind"] == "direct"]
        n_direct += len(direct)
        assert {n["step"] for n in direct} <= {r["n_train"] - 2, r["n_train"] - 1}
        assert len({n["step"] for n in direct}) == len(direct)
        assert all(e["kind"] == "direct" and e["chain"] == -1 for e in r["edges"])
        for n in direct:
            sims = items @ (texts[n["text"]] / np.linalg.norm(texts[n["text"]]))
            best = int(sims.argmax())
            if abs(sims[best] - 0.3) > 1e-4:
                assert n["item"] == (best if sims[best] >= 0.3 else -1)
    assert n_direct == 12 - d["dropped"]
    assert d["grounded"] + d["unmatched"] == n_direct


# --- nightly ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_nightly_runs_graphs_after_ingest_then_skips_it(tmp_path: Path, llm_engine: Any,
                                                        st_engine: Any) -> None:
    """The nightly graphs stage on the real model (waves of one user: u1 hits u0's A>B)."""
    import argparse

    from recalign.jobs import nightly
    case = {"u0": ["A", "B", "C"], "u1": ["A", "B"]}
    src, root = write_sequences(tmp_path / "src", case), tmp_path / "root"
    tree = {"data": {"source": "parquet", "path": str(src), "name": NAME,
                     "split": {"method": "given"}},
            "output": {"root": str(root)},
            "llm": {**small_llm(**REAL_LLM).model_dump(mode="json"), "batch_size": 64},
            "llmrg": {"enabled": True, "max_len": 4, "wave_size": 1, "tau": 0.0, **REAL_G}}
    cfg = Config.model_validate(tree)
    everything = ["ingest", "profiles", "embed", "graphs", "train", "export"]
    assert nightly.choose_stages(cfg, None, None) == everything
    assert nightly.choose_stages(cfg, "graphs", None) == ["graphs", "train", "export"]
    assert nightly.choose_stages(cfg, "train", None) == ["train", "export"]
    assert nightly.choose_stages(cfg, None, ["train", "graphs"]) == ["graphs", "train"]
    assert "graphs" in nightly.upstream_of("train", cfg)
    off = Config.model_validate({**tree, "llmrg": {"enabled": False}})
    assert "graphs" not in nightly.choose_stages(off, None, None)
    assert "graphs" not in nightly.upstream_of("train", off)

    hooks = nightly.Hooks(
        graphs_runner=lambda: LocalRunner(lambda: llm_engine, max_attempts=2, batch_size=64,
                                          close_engine=False, validate=validate_output),
        graphs_embedder=lambda: st_engine)
    night = Config.model_validate({**tree, "nightly": {"stages": ["ingest"]}})
    args = argparse.Namespace(dry_run=False, start=None, only=None, force=False,
                              no_progress=True)
    before = llm_engine.requests_made
    first = nightly.run(night, args, hooks)
    assert first["ran"] == ["ingest", "graphs"]
    summary = first["stages"][1]["summary"]
    assert summary["llm_calls"] == llm_engine.requests_made - before > 0
    root_rows = {r["id"]: r for r in users_rows(root).values()}
    _, seqs = sequences(root)
    kb = {(r["prev_item"], r["item"]): r for r in kb_table(root)}
    # the night's summary keeps the headline figures; the snapshot keeps the whole accounting
    snap = SnapshotStore(str(root)).open(NAME, "graphs")
    acc = {**snap.manifest["accounting"], "generated": len(root_rows), "version": snap.version}
    assert acc["llm_calls"] == summary["llm_calls"] and summary["version"] == snap.version
    check_kb(acc, root_rows, seqs, set(), kb, max_len=4, tau=0.0)
    assert acc["kb_hits"] >= 1  # u1's A>B, learned from u0 in wave 0
    before = llm_engine.requests_made
    second = nightly.run(night, args, hooks)
    assert second["skipped"] == ["ingest", "graphs"] and llm_engine.requests_made == before
    assert (root / NAME / "nightly" / "graphs.json").is_file()


# --- the persistent actor pool ---------------------------------------------------------------

@pytest.mark.slow
def test_persistent_actor_pool_keeps_its_engine_across_calls(ray_session: Any,
                                                             model_dir: str) -> None:
    """Two run() calls on RayActorPoolRunner: the same actor (and engine) answers both, and
    the validator chosen by name (llmrg) checks the item references inside the actor."""
    from recalign.llm.engine import GenerationRequest
    from recalign.llm.graph_prompts import step_messages, step_schema
    from recalign.operators.llm_pool import RayActorPoolRunner

    cfg = small_llm(engine="transformers", pool_size=1, num_cpus=1, batch_size=2,
                    max_attempts=2, threads=1)
    schema = step_schema(["#1", "#2"], 8, 4, 1)
    history = [{"ref": "#1", "title": "Basil guide"}, {"ref": "#2", "title": "Mint guide"}]
    msgs = step_messages("books", history, [], {"ref": "#3", "title": "Thyme guide"}, k=1,
                         reason_words=8, interest_words=4)
    reqs = [GenerationRequest(f"r{k}", msgs, schema, small_sampling(), seed=k) for k in range(3)]
    runner = RayActorPoolRunner(cfg, model_path=model_dir, validator="llmrg")
    try:
        first = [o for batch in runner.run(reqs[:2], {}) for o in batch]
        actors = list(runner.actors)
        second = [o for batch in runner.run(reqs[2:], {}) for o in batch]
        assert runner.actors == actors and len(actors) == 1
        (info,) = runner.info()
        assert info["requests_made"] == sum(o.attempts for o in first + second) >= 3
        assert sorted(o.id for o in first + second) == ["r0", "r1", "r2"]
        for o in first + second:
            assert o.status == "failed" or o.value["from"] in ("#1", "#2")
    finally:
        runner.close()
    with pytest.raises(ValueError, match="unknown validator"):
        RayActorPoolRunner(cfg, model_path=model_dir, validator="nope")


def small_sampling() -> Any:
    from recalign.llm.engine import SamplingSettings
    return SamplingSettings(temperature=0.6, top_p=0.95, max_tokens=96)
