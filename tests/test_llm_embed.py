"""Embeddings: the real all-MiniLM-L6-v2 (offline), the embed job on a Ray Data actor pool,
incremental by text fingerprint, raw user text from training items only."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from llm_fixtures import ingest_folder, write_text_dataset
from recalign.config import Config, EmbedConfig
from recalign.data.schema import embedding_schema
from recalign.data.snapshot_io import read_dataset
from recalign.llm.embedding import raw_texts
from recalign.llm.engines.st_embed import SentenceTransformersEngine
from recalign.llm.profiles import PROFILE_SCHEMA
from recalign.storage.snapshot import SnapshotStore


@pytest.fixture(scope="module")
def st_engine() -> SentenceTransformersEngine:
    return SentenceTransformersEngine(EmbedConfig(threads=2))


def test_minilm_vectors_are_normalised_and_meaningful(st_engine) -> None:
    m = st_engine.embed(["a book about growing herbs in a small garden",
                         "gardening guide for basil, thyme and mint",
                         "rocket engines and orbital mechanics"])
    assert m.shape == (3, 384) and m.dtype == np.float32
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    assert m[0] @ m[1] > m[0] @ m[2] + 0.2


def write_profiles(root: Path, summaries: dict[str, str | None]) -> str:
    """A profiles snapshot as the profiles job writes it (items; one failed row)."""
    store = SnapshotStore(str(root))
    ds = read_dataset(store.open("texty", "dataset"))
    ids = ds.item_map.lookup(pa.array(list(summaries)))
    rows = [{"id": int(i), "key": k, "summarization": s, "reasoning": "r",
             "status": "ok" if s else "failed", "reason": None if s else "not valid JSON",
             "attempts": 1, "fingerprint": "f", "model": "m", "prompt_tokens": 1,
             "completion_tokens": 1, "generated_in": "v"} for i, (k, s) in zip(ids, summaries.items())]
    w = store.begin("texty", "profiles")
    w.write_table("items", pa.Table.from_pylist(rows, schema=PROFILE_SCHEMA))
    w.write_table("users", PROFILE_SCHEMA.empty_table())
    return w.commit().version


def run_embed(root: Path, src: Path, **embed) -> dict:
    from recalign.jobs import embed as job

    cfg = Config.model_validate({"data": {"source": "parquet", "path": str(src), "name": "texty",
                                          "split": {"method": "given"}},
                                 "output": {"root": str(root)}, "embed": {"threads": 2, **embed}})
    return job.run(cfg, argparse.Namespace(no_progress=True))


def test_embed_job_on_ray_pool_is_incremental(tmp_path: Path, ray_session, st_engine) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    ingest_folder(write_text_dataset(src), root)
    summaries = {f"i{i}": f"Readers who enjoy gardening topic number {i}." for i in range(10)}
    summaries["i3"] = None  # a failed profile has no vector
    write_profiles(root, summaries)
    s1 = run_embed(root, src, batch_size=4, executor="ray")
    assert not s1["skipped"] and s1["embedded"] == 9 and s1["dim"] == 384
    snap = SnapshotStore(str(root)).open("texty", "semantic")
    items = snap.read_table("items")
    assert items.schema.equals(embedding_schema(384))
    assert sorted(items["key"].to_pylist()) == sorted(k for k, v in summaries.items() if v)
    vecs = np.stack(items["vector"].to_numpy(zero_copy_only=False))
    expected = st_engine.embed([summaries[k] for k in items["key"].to_pylist()])
    assert np.allclose(vecs, expected, atol=1e-4)
    assert snap.manifest["dim"] == 384 and snap.manifest["inputs"]["profiles"]

    s2 = run_embed(root, src, batch_size=4, executor="ray")
    assert s2["skipped"] and s2["embedded"] == 0 and s2["snapshot"] == s1["snapshot"]

    summaries["i5"] = "Readers who like rockets and space travel."
    write_profiles(root, summaries)
    s3 = run_embed(root, src, batch_size=4, executor="local")
    assert s3["embedded"] == 1 and s3["reused"] == 8
    items3 = SnapshotStore(str(root)).open("texty", "semantic").read_table("items").to_pylist()
    v5 = np.array(next(r["vector"] for r in items3 if r["key"] == "i5"))
    assert np.allclose(v5, st_engine.embed([summaries["i5"]])[0], atol=1e-4)


def test_raw_text_uses_training_items_only(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    ingest_folder(write_text_dataset(src), root)
    ds = read_dataset(SnapshotStore(str(root)).open("texty", "dataset"))
    texts = raw_texts(ds, seed=1, user_items=50, max_chars=5000)
    ids, keys, txts = texts["users"]
    t = ds.interactions.to_pandas()
    for u, text in zip(ids, txts):
        got = sorted(int(x) for x in re.findall(r"Garden Book (\d+)", text))
        train = t[(t.user == u) & (t.split == 0)].item.tolist()
        want = sorted(int(k[1:]) for k in ds.item_map.key_of(np.array(train)).to_pylist())
        assert got == want
    i_ids, _, i_texts = texts["items"]
    assert len(i_ids) == 20 and "gardening" in " ".join(i_texts) and "A calm guide" in " ".join(i_texts)
    s = run_embed(root, src, source="raw", executor="local")
    assert s["artifact"] == "semantic-raw" and s["counts"] == {"items": 20, "users": 6}
