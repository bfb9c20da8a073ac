"""LLMRG reasoning graphs (``recalign graphs``): the knowledge base's hits and saved calls,
steps without look-ahead, grounding, fingerprint reuse, resume after an injected kill, invalid
output repaired and counted, and one run of the real local model (SmolLM2 on vLLM).

Most bookkeeping tests drive the generator with :class:`ScriptedEngine`, a deterministic
stand-in for a model (it answers every step with a link from the previous item), so that
counts are exact; it is no model and says so. Grounding and verification scores always go
through the real sentence-transformers engine. The real generation model runs in
``test_real_model_end_to_end_with_injected_invalid_outputs``.
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
from recalign.data.graph_schema import TEXTS_SCHEMA, USERS_SCHEMA
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


class ScriptedEngine(GenerationEngine):
    """NOT a model: deterministic, schema-valid answers so that bookkeeping is exact. A step
    links from the previous item (the last ref the schema allows); verification and direct
    answers are fixed titles. ``fail_at``: an injected fault, the engine raises on that call."""

    name = "scripted"

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    @property
    def model_label(self) -> str:
        return "scripted"

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


# users u0..u5 in id order; wave_size 2 makes waves (u0, u1), (u2, u3), (u4, u5)
KB_CASE = {"u0": ["A", "B", "C"], "u1": ["D", "E"], "u2": ["A", "B", "D"],
           "u3": ["D", "E", "F"], "u4": ["A", "B", "C"], "u5": ["D", "E"]}


def _prompt_text(gen: Any) -> str:
    assert gen.prompts, "no prompt was recorded"
    return "\n".join(m["content"] for msgs in gen.prompts for m in msgs)


# --- knowledge base ----------------------------------------------------------------------------

def test_kb_hits_and_saved_calls_exact(tmp_path: Path, st_engine: Any) -> None:
    """Hand-built: wave 0 (u0 A>B>C, u1 D>E) has no KB: 3 step + 2 verification calls, and its
    verified links (A,B) (B,C) (D,E) enter the KB (tau 0). Wave 1: u2 A>B>D hits (A,B), misses
    (B,D); u3 D>E>F hits (D,E), misses (E,F): 2 step + 2 verification calls, 2 saved. Wave 2:
    u4 A>B>C and u5 D>E hit every step and their chains are made only of KB links (not verified
    again): 0 calls, 3 steps + 2 verifications saved."""
    ingest(write_sequences(tmp_path / "src", KB_CASE), tmp_path / "root")
    ds = read_dataset(SnapshotStore(str(tmp_path / "root")).open(NAME, "dataset"))
    assert ds.user_map.lookup(pa.array(list(KB_CASE))).tolist() == list(range(6))
    engine = ScriptedEngine()
    s, gen = run_graphs(tmp_path / "root", engine, st_engine)
    waves = [(w["steps"], w["kb_hits"], w["llm_calls"], w["calls_saved"]) for w in s["waves"]]
    assert waves == [(3, 0, 5, 0), (4, 2, 4, 2), (3, 3, 0, 5)]
    assert s["llm_calls"] == 9 == engine.requests_made
    assert s["kb_hits"] == 5 and s["steps"] == 10 and s["kb_hit_rate"] == 0.5
    assert s["calls_saved"] == 7 and s["kb_size"] == 5  # + (B,D), (E,F) from wave 1
    rows = users_rows(tmp_path / "root")
    assert [rows[u]["kb_hits"] for u in KB_CASE] == [0, 0, 1, 1, 2, 1]
    assert [rows[u]["llm_calls"] for u in KB_CASE] == [3, 2, 2, 2, 0, 0]
    # u4's only chain came from the KB: flagged, scored with its entries' lowest score
    kb = {(r["prev_item"], r["item"]): r for r in
          SnapshotStore(str(tmp_path / "root")).open(NAME, "graphs").read_table("kb").to_pylist()}
    item = dict(zip("ABCDEF", ds.item_map.lookup(pa.array(list("ABCDEF"))).tolist()))
    (c4,) = rows["u4"]["chains"]
    assert c4["from_kb"] and c4["score"] == pytest.approx(
        min(kb[(item["A"], item["B"])]["score"], kb[(item["B"], item["C"])]["score"]))
    assert all(not c["from_kb"] for u in ("u0", "u2", "u3") for c in rows[u]["chains"])

    # without the KB every step and every chain costs a call: 9 + 7 saved
    s_off, _ = run_graphs(tmp_path / "root", ScriptedEngine(), st_engine, kb=False,
                          artifact="graphs-nokb")
    assert s_off["llm_calls"] == 16 and s_off["kb_hits"] == 0

    # the KB persists: a fresh run (another tau, so every user is new) starts with 5 entries
    # and hits every step it can, in its first wave too
    s2, _ = run_graphs(tmp_path / "root", ScriptedEngine(), st_engine, tau=1.0)
    assert s2["kb_loaded"] == 5 and s2["waves"][0]["kb_hits"] == 3  # (A,B) (B,C) (D,E)


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


# --- steps, grounding --------------------------------------------------------------------------

def test_steps_are_absolute_positions_without_look_ahead(tmp_path: Path, st_engine: Any) -> None:
    seqs = {"u0": list("ABCDEFG"), "u1": list("CDE"), "u2": list("Q")}  # u2: 1 item, no graph
    ingest(write_sequences(tmp_path / "src", seqs), tmp_path / "root")
    s, gen = run_graphs(tmp_path / "root", ScriptedEngine(), st_engine, max_len=4, divergent_k=2)
    assert s["users"] == 2 and LEAK not in _prompt_text(gen)
    ds = read_dataset(SnapshotStore(str(tmp_path / "root")).open(NAME, "dataset"))
    sd = SequenceData.from_dataset(ds)
    rows = users_rows(tmp_path / "root")
    assert set(rows) == {"u0", "u1"}
    start = {k: max(0, rows[k]["n_train"] - 4) for k in rows}
    for key, r in rows.items():
        u = int(ds.user_map.lookup(pa.array([key]))[0])
        seq = sd.items[sd.indptr[u]:sd.indptr[u + 1]].tolist()
        assert r["n_train"] == len(seq)
        nodes = r["nodes"]
        for nd in nodes:
            assert 0 <= nd["step"] < len(seq)
            if nd["kind"] == "item":  # the position of the item's first occurrence
                assert seq.index(nd["item"], start[key]) == nd["step"]
        for e in r["edges"]:
            assert nodes[e["src"]]["step"] <= e["step"] and nodes[e["dst"]]["step"] <= e["step"]
            if e["kind"] in ("reason_item", "divergent"):
                tgt = nodes[e["dst"] if e["kind"] == "reason_item" else e["src"]]
                assert tgt["item"] == seq[e["step"]]  # the step's own item, never a later one
    u0 = rows["u0"]
    # the window is D E F G at positions 3..6: links at steps 4, 5, 6
    assert sorted(n["step"] for n in u0["nodes"] if n["kind"] == "reason") == [4, 5, 6]
    assert min(n["step"] for n in u0["nodes"]) == 3
    # the schema is exactly graph_schema's
    snap = SnapshotStore(str(tmp_path / "root")).open(NAME, "graphs")
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

def test_fingerprint_reuse_and_changed_item(tmp_path: Path, st_engine: Any) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    ingest(write_sequences(src, KB_CASE), root)
    first, _ = run_graphs(root, ScriptedEngine(), st_engine)
    engine = ScriptedEngine()
    again, _ = run_graphs(root, engine, st_engine)
    assert engine.requests_made == 0 and again["skipped"] and again["llm_calls"] == 0
    assert again["version"] == first["version"] and again["reused"] == 6
    # a changed title of F: only u3 (the one user who walked F) is generated again; its step
    # D>E still hits the KB, E>F misses (the entry was made from F's old title)
    ingest(write_sequences(src, KB_CASE, titles={"F": "Secret atlas of herbs"}), root)
    engine = ScriptedEngine()
    third, _ = run_graphs(root, engine, st_engine)
    assert third["generated"] == 1 and third["reused"] == 5
    assert third["kb_hits"] == 1 and engine.requests_made == 2  # one step, one verification
    rows = users_rows(root)
    assert {k for k, r in rows.items() if r["generated_in"] == third["version"]} == {"u3"}
    assert len(rows) == 6


def test_resume_after_injected_kill(tmp_path: Path, st_engine: Any) -> None:
    ingest(write_sequences(tmp_path / "src", KB_CASE), tmp_path / "root")
    # injected fault: the engine raises on its 4th call (wave 0 took 3: two step indexes and
    # the verification), so the run dies in wave 1 without committing, as a killed one would
    with pytest.raises(RuntimeError, match="injected fault"):
        run_graphs(tmp_path / "root", ScriptedEngine(fail_at=4), st_engine)
    art = tmp_path / "root" / NAME / "graphs"
    (killed,) = [p for p in art.iterdir() if p.name.startswith("v=")]
    assert not (killed / "_SUCCESS").exists() and not (art / "LATEST").exists()
    engine = ScriptedEngine()
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



def test_direct_mode_one_grounded_guess_per_position(tmp_path: Path, st_engine: Any) -> None:
    ingest(write_sequences(tmp_path / "src", KB_CASE), tmp_path / "root")
    d, gen = run_graphs(tmp_path / "root", ScriptedEngine(), st_engine, mode="direct",
                        max_len=2, ground_threshold=0.3)
    # every walked position (the last 2 items of each user) asks once; no KB, no verification
    assert d["step_calls"] == 12 == d["llm_calls"] and d["verify_calls"] == 0
    assert LEAK not in _prompt_text(gen)
    for r in users_rows(tmp_path / "root").values():
        assert {n["kind"] for n in r["nodes"]} == {"item", "direct"} and r["chains"] == []
        direct = [n for n in r["nodes"] if n["kind"] == "direct"]
        assert sorted(n["step"] for n in direct) == [r["n_train"] - 2, r["n_train"] - 1]
        # "Herb garden guide" is closest to an item titled "Herb garden guide X"
        assert all(n["item"] >= 0 for n in direct)
        assert all(e["kind"] == "direct" and e["chain"] == -1 for e in r["edges"])
    assert d["grounded"] == 12 and d["unmatched"] == 0


# --- nightly ---------------------------------------------------------------------------------

def test_nightly_runs_graphs_after_ingest_then_skips_it(tmp_path: Path, st_engine: Any) -> None:
    import argparse

    from recalign.jobs import nightly
    src, root = write_sequences(tmp_path / "src", KB_CASE), tmp_path / "root"
    tree = {"data": {"source": "parquet", "path": str(src), "name": NAME,
                     "split": {"method": "given"}},
            "output": {"root": str(root)}, "llm": {"max_attempts": 2, "batch_size": 64},
            "llmrg": {"enabled": True, "max_len": 4, "wave_size": 2, "tau": 0.0}}
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

    engine = ScriptedEngine()
    hooks = nightly.Hooks(
        graphs_runner=lambda: LocalRunner(lambda: engine, max_attempts=2, batch_size=64,
                                          close_engine=False, validate=validate_output),
        graphs_embedder=lambda: st_engine)
    night = Config.model_validate({**tree, "nightly": {"stages": ["ingest"]}})
    args = argparse.Namespace(dry_run=False, start=None, only=None, force=False,
                              no_progress=True)
    first = nightly.run(night, args, hooks)
    assert first["ran"] == ["ingest", "graphs"]
    assert first["stages"][1]["summary"]["llm_calls"] == 9 == engine.requests_made
    second = nightly.run(night, args, hooks)
    assert second["skipped"] == ["ingest", "graphs"] and engine.requests_made == 9
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
