"""The synthetic source: sizes, validity, determinism, chunking, planted structure, no leakage."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recalign.config import DataConfig, SyntheticConfig
from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS
from recalign.data.sources import get_source
from recalign.data.sources import synthetic as syn
from recalign.data.sources.base import RawData

SMALL = dict(users=600, items=400, interactions=12_000, topics=8, review_rate=0.3, seed=11)


def _load(**kw: object) -> tuple[RawData, list[pa.Table], pa.Table]:
    raw = get_source("synthetic")(DataConfig(source="synthetic", synthetic=SyntheticConfig(**kw)))
    chunks = list(raw.chunks())
    return raw, chunks, pa.concat_tables(chunks)


def _ids(col: pa.ChunkedArray) -> np.ndarray:
    """u0000123 / i0000045 -> 123 / 45 (the generator's index)."""
    return pc.cast(pc.utf8_slice_codeunits(col, 1), pa.int64()).to_numpy()


@pytest.fixture(scope="module")
def small() -> tuple[RawData, list[pa.Table], pa.Table]:
    return _load(**SMALL, chunk_users=64)


@pytest.fixture(scope="module")
def truth() -> dict:
    return syn.latent_truth(SyntheticConfig(**SMALL))


# ---- shape and validity ---------------------------------------------------------------------


def test_schemas_and_flags(small) -> None:
    raw, chunks, _ = small
    assert raw.user_grouped and raw.keep_all_entities and raw.fingerprint and raw.report == {}
    assert all(c.schema.equals(RAW_INTERACTIONS) for c in chunks)
    assert raw.items.schema.equals(RAW_ITEMS) and raw.users.schema.equals(RAW_USERS)
    assert all(c["split"].null_count == c.num_rows for c in chunks)  # no split of its own
    for t in [*chunks, raw.items, raw.users]:  # string columns are built from raw buffers
        t.validate(full=True)


def test_sizes_are_exact(small) -> None:
    raw, _, tab = small
    assert raw.users.num_rows == SMALL["users"] and raw.items.num_rows == SMALL["items"]
    # the water-filled activity hits the target exactly whenever it is feasible
    assert tab.num_rows == SMALL["interactions"]


def test_pairs_unique_keys_known_min_activity(small, truth) -> None:
    raw, _, tab = small
    u, i = _ids(tab["user_key"]), _ids(tab["item_key"])
    assert len(np.unique(u * SMALL["items"] + i)) == tab.num_rows
    assert pc.all(pc.is_in(tab["user_key"], value_set=raw.users["user_key"])).as_py()
    assert pc.all(pc.is_in(tab["item_key"], value_set=raw.items["item_key"])).as_py()
    counts = np.bincount(u, minlength=SMALL["users"])
    assert counts.min() >= syn.MIN_ACTIVITY
    np.testing.assert_array_equal(counts, truth["user_activity"])
    assert counts.max() > 5 * counts.mean()  # heavy tail
    # rows are grouped by user and timestamps strictly increase within a user
    assert np.all(np.diff(u) >= 0)
    ts = tab["timestamp"].to_numpy()
    assert np.all(np.diff(ts)[np.diff(u) == 0] > 0)
    r = tab["rating"].to_numpy()
    assert set(np.unique(r)) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_keys_and_json_look_real(small) -> None:
    raw, _, tab = small
    assert tab["user_key"][0].as_py() == "u0000000"
    assert re.fullmatch(r"i\d{7}", tab["item_key"][0].as_py())
    attrs = [json.loads(a) for a in raw.items["attributes"].to_pylist()]
    assert all(set(a) == {"category", "tags", "year"} and 2 <= len(a["tags"]) <= 4 for a in attrs)
    titles = raw.items["title"].to_pylist()
    assert all(2 <= len(t.split()) <= 5 for t in titles)
    assert len(set(titles)) > 0.8 * len(titles)
    sentences = [d.count(".") for d in raw.items["description"].to_pylist()]
    assert min(sentences) >= 1 and max(sentences) == 3


def test_infeasible_sizes_are_clamped_and_reported() -> None:
    raw, _, tab = _load(users=1000, items=100, interactions=500)  # below 5 per user
    assert raw.report == {"synthetic_interactions_clamped_to": 1000,
                          "synthetic_min_activity_lowered_to": 1}
    assert tab.num_rows == 1000
    raw, _, tab = _load(users=20, items=10, interactions=10_000)  # above items // 2 per user
    assert tab.num_rows == 20 * 5 and raw.report == {"synthetic_interactions_clamped_to": 100}


@pytest.mark.parametrize("kw", [
    dict(users=10, items=10, interactions=100, topics=2),
    dict(users=50, items=10, interactions=250, topics=64, noise=0.0),  # most topics empty
    dict(users=300, items=50, interactions=7000, topics=3, noise=0.0, popularity_exponent=3.0),
])
def test_edge_configs_stay_valid(kw) -> None:
    # tiny/skewed item sets force the redraw rounds and the exact Gumbel-top-k fallback
    _, _, tab = _load(**kw)
    u, i = _ids(tab["user_key"]), _ids(tab["item_key"])
    assert len(np.unique(u * kw["items"] + i)) == tab.num_rows
    assert tab.num_rows == min(kw["interactions"], kw["users"] * (kw["items"] // 2))
    assert np.bincount(u).min() >= 5


# ---- determinism and chunking ---------------------------------------------------------------


def test_deterministic_and_seed_sensitive(small) -> None:
    raw, _, tab = small
    raw2, _, tab2 = _load(**SMALL, chunk_users=64)
    assert tab.equals(tab2) and raw.items.equals(raw2.items) and raw.users.equals(raw2.users)
    raw3, _, tab3 = _load(**{**SMALL, "seed": 12}, chunk_users=64)
    assert not tab.equals(tab3) and not raw.items.equals(raw3.items)
    assert raw3.fingerprint != raw.fingerprint


def test_chunks_hold_whole_users_and_do_not_change_output(small) -> None:
    raw, chunks, tab = small
    cap = SMALL["items"] // 2
    seen: set[int] = set()
    for c in chunks:
        users = set(np.unique(_ids(c["user_key"])).tolist())
        assert len(users) <= 64 and c.num_rows <= 64 * cap
        assert not users & seen  # a user never spans two chunks
        seen |= users
    assert len(chunks) == -(-SMALL["users"] // 64)
    for cu in (1, 37, 5000, 10**6):  # below, across and above the internal block size
        raw2, chunks2, tab2 = _load(**SMALL, chunk_users=cu)
        assert len(chunks2) == -(-SMALL["users"] // cu)
        assert tab2.equals(tab) and raw2.fingerprint == raw.fingerprint


def test_many_blocks_are_consistent() -> None:
    # > USER_BLOCK users: several taste blocks and sampling blocks, sliced into odd chunks
    kw = dict(users=9000, items=2000, interactions=60_000, topics=12)
    _, chunks_a, a = _load(**kw, chunk_users=5000)
    _, chunks_b, b = _load(**kw, chunk_users=3333)
    assert a.equals(b) and a.num_rows == 60_000
    u = _ids(a["user_key"])
    assert np.all(np.diff(u) >= 0) and len(np.unique(u)) == 9000


def test_first_unique_fallback_matches_packed_path() -> None:
    rng = np.random.default_rng(0)
    uid = np.repeat(np.arange(50), 40)
    item = rng.integers(0, 30, len(uid))
    pos = np.tile(np.arange(40), 50)
    packed = syn._first_unique(uid, item, pos, 30)
    lex = syn._first_unique(uid, item, pos, 1 << 62)  # too wide to pack: lexsort path
    for x, y in zip(packed, lex):
        np.testing.assert_array_equal(x, y)
    # first occurrence in draw order, per user
    for u in (0, 17):
        seq = item[uid == u]
        _, first = np.unique(seq, return_index=True)
        np.testing.assert_array_equal(packed[1][packed[0] == u], seq[np.sort(first)])


# ---- planted structure ----------------------------------------------------------------------


def test_interactions_concentrate_on_user_topics(small, truth) -> None:
    _, _, tab = small
    u, i = _ids(tab["user_key"]), _ids(tab["item_key"])
    dom = truth["item_topic"]
    ut, uw = truth["user_topics"], truth["user_weights"]
    on = ((ut[u] == dom[i][:, None]) & (uw[u] > 0)).any(1)
    # chance: a uniformly random item's dominant topic is one of the user's topics
    mine = (truth["user_taste"] > 0).astype(float)  # (users, topics)
    topic_share = np.bincount(dom, minlength=SMALL["topics"]) / len(dom)
    chance = (mine @ topic_share)[u].mean()
    assert on.mean() > 0.6 and on.mean() > 2.5 * chance
    r = tab["rating"].to_numpy()
    assert r[on].mean() > r[~on].mean() + 1.5  # ratings follow taste match


def test_item_dominant_topic_is_close_to_planted(truth) -> None:
    w = truth["item_weight"]
    assert np.all(w > 0.5) and 0.75 < w.mean() < 0.95
    np.testing.assert_array_equal(truth["item_topics"].argmax(1), truth["item_topic"])
    np.testing.assert_allclose(truth["item_topics"].sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(truth["user_taste"].sum(1), 1.0, rtol=1e-5)
    assert set((truth["user_weights"] > 0).sum(1).tolist()) == {1, 2, 3}


def _bag(texts: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    vocab: dict[str, int] = {}
    rows = [Counter(vocab.setdefault(w, len(vocab)) for w in re.findall(r"[a-z]+", t.lower()))
            for t in texts]
    x = np.zeros((len(texts), len(vocab)))
    for r, c in enumerate(rows):
        for j, v in c.items():
            x[r, j] = v
    return x, vocab


def _topic_accuracy(raw: RawData, truth: dict, topics: int) -> float:
    """Multinomial naive Bayes on title + description words (not the category attribute)."""
    texts = [f"{a} {b}" for a, b in zip(raw.items["title"].to_pylist(),
                                          raw.items["description"].to_pylist())]
    x, _ = _bag(texts)
    y = truth["item_topic"]
    train, test = np.arange(0, len(x), 2), np.arange(1, len(x), 2)
    counts = np.stack([x[train][y[train] == t].sum(0) for t in range(topics)]) + 0.1
    logp = np.log(counts / counts.sum(1, keepdims=True))
    return float(((x[test] @ logp.T).argmax(1) == y[test]).mean())


def test_item_text_identifies_topic(small, truth) -> None:
    raw, _, _ = small
    assert _topic_accuracy(raw, truth, SMALL["topics"]) > 0.9
    cats = [json.loads(a)["category"] for a in raw.items["attributes"].to_pylist()]
    assert cats == [truth["topic_names"][t] for t in truth["item_topic"]]


def test_composed_topics_stay_separable() -> None:
    kw = dict(users=200, items=3000, interactions=2000, topics=40, seed=3)
    raw, _, _ = _load(**kw)
    truth = syn.latent_truth(SyntheticConfig(**kw))
    assert len(set(truth["topic_names"])) == 40
    assert _topic_accuracy(raw, truth, 40) > 0.8


def test_reviews_rate_topic_and_sentiment(small, truth) -> None:
    _, _, tab = small
    rev = tab["review"]
    assert abs((1 - rev.null_count / len(rev)) - SMALL["review_rate"]) < 0.08
    has = pc.is_valid(rev).to_numpy(zero_copy_only=False)
    texts = rev.filter(pc.is_valid(rev)).to_pylist()
    items = _ids(tab["item_key"])[has]
    ratings = tab["rating"].to_numpy()[has].astype(int)
    vocab = syn._vocab(SMALL["topics"])
    nouns = np.array(vocab.nouns.to_pylist()).reshape(SMALL["topics"], -1)
    dom, sec = truth["item_topic"], truth["item_secondary"]
    ok_topic = ok_sent = 0
    for text, it, r in zip(texts, items, ratings):
        words = set(re.findall(r"[a-z]+", text.lower()))
        ok_topic += bool(words & (set(nouns[dom[it]]) | set(nouns[sec[it]])))
        ok_sent += any(o in text for o in syn._OPENERS[r])
    assert ok_topic == len(texts) and ok_sent == len(texts)
    for rate in (0.0, 1.0):
        _, _, t = _load(**{**SMALL, "review_rate": rate})
        assert t["review"].null_count == (t.num_rows if rate == 0.0 else 0)


# ---- no leakage -----------------------------------------------------------------------------


def test_item_text_does_not_depend_on_interactions(small) -> None:
    raw, _, _ = small
    other, _, _ = _load(**{**SMALL, "users": 300, "interactions": 5000, "noise": 0.5,
                           "review_rate": 0.9})
    assert other.items.equals(raw.items)


def test_user_table_does_not_reveal_items_or_taste(small) -> None:
    raw, _, _ = small
    attrs = [json.loads(a) for a in raw.users["attributes"].to_pylist()]
    assert all(set(a) == {"age_band", "region", "member_since"} for a in attrs)
    text = " ".join(raw.users["attributes"].to_pylist())
    assert not re.search(r"i\d{7}", text)
    names = syn._vocab(SMALL["topics"]).names.to_pylist()
    assert not any(n in text for n in names)


def test_fingerprint_ignores_chunking_only() -> None:
    s = SyntheticConfig(**SMALL)
    assert syn.fingerprint(s) == syn.fingerprint(s.model_copy(update={"chunk_users": 7}))
    assert syn.fingerprint(s) != syn.fingerprint(s.model_copy(update={"noise": 0.2}))
    assert syn.fingerprint(s) == syn.fingerprint(DataConfig(synthetic=s))


def test_default_config_runs() -> None:
    raw, _, tab = _load()
    d = SyntheticConfig()
    assert tab.num_rows == d.interactions and raw.users.num_rows == d.users


def test_ingest_ids_match_latent_truth_rows() -> None:
    from recalign.data.ingest import load_dataset

    kw = dict(users=300, items=200, interactions=4000, chunk_users=70)
    ds = load_dataset(DataConfig(synthetic=SyntheticConfig(**kw)))
    assert ds.counts()["interactions"] == 4000 and ds.n_items == 200 and ds.n_users == 300
    assert ds.user_map.keys[123].as_py() == "u0000123"
    assert ds.item_map.keys[45].as_py() == "i0000045"
