"""The nightly pipeline: the plan, skipping, --from/--only, failures named by stage, and two
"nights" on a grown data set with the real SmolLM2 (vLLM) and MiniLM engines, counting the LLM
and embedding calls each night makes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from llm_fixtures import SMALL, SharedEngine, model_cache, write_text_dataset
from recalign.config import Config, EmbedConfig
from recalign.data.snapshot_io import read_dataset
from recalign.jobs import nightly
from recalign.llm.embedding import LocalEmbedRunner
from recalign.llm.engine import build_embedding_engine
from recalign.llm.profiles import LocalRunner
from recalign.pipeline.stages import Marker, MarkerStore, decide, select_stages
from recalign.storage.snapshot import SnapshotStore

ROOT = Path(__file__).resolve().parents[1]


def args(**kw: Any) -> argparse.Namespace:
    base = {"dry_run": False, "start": None, "only": None, "force": False, "no_progress": True}
    return argparse.Namespace(**{**base, **kw})


def raw_config(root: Path, **over: Any) -> dict[str, Any]:
    """No LLM: raw-text vectors; ~30 s per full night here."""
    sem = str(root / "tiny" / "semantic-raw")
    tree = {
        "data": {"source": "synthetic", "name": "tiny",
                 "synthetic": {"users": 300, "items": 200, "interactions": 5000, "topics": 4,
                               "seed": 3},
                 "split": {"method": "random", "ratios": [0.6, 0.2, 0.2], "seed": 1}},
        "embed": {"source": "raw", "executor": "local"},
        "model": {"backbone": "lightgcn", "params": {"dim": 16, "layers": 2}},
        "align": {"method": "rlmrec-con", "semantic": {"users": sem, "items": sem}},
        "train": {"max_epochs": 6, "eval_every": 3},
        "nightly": {"stages": ["ingest", "embed", "train", "export"]},
        "output": {"root": str(root)},
    }
    for k, v in over.items():
        tree[k] = {**tree.get(k, {}), **v}
    return tree


class CountingEmbed:
    """The real MiniLM engine, shared across runs (close() is the test's business)."""

    def __init__(self) -> None:
        self.engine = build_embedding_engine(EmbedConfig(executor="local"))

    def factory(self) -> LocalEmbedRunner:
        return LocalEmbedRunner(lambda: SharedEngine(self.engine), 64)

    @property
    def texts(self) -> int:
        return self.engine.texts_embedded


def test_select_stages_orders_and_validates() -> None:
    all_ = ["ingest", "profiles", "embed", "train", "export"]
    assert select_stages(all_, "embed") == ["embed", "train", "export"]
    assert select_stages(all_, None, ["export", "ingest"]) == ["ingest", "export"]
    assert select_stages(["ingest", "train"], "embed") == []
    with pytest.raises(Exception, match="unknown stage 'trian'"):
        select_stages(all_, "trian")


def test_markers_roundtrip_and_distrust_damaged_ones(tmp_path: Path) -> None:
    store = MarkerStore(str(tmp_path), "ds")
    assert store.get("train") is None
    m = Marker("train", "k1", {"embeddings": "v=1"}, "2026-11-22T00:00:00+00:00", 1.5, {"a": 1})
    store.put(m)
    assert store.get("train") == m
    assert not list((tmp_path / "ds" / "nightly").glob(".*"))  # no temp file left behind
    assert decide("train", "k1", m, {"embeddings": "v=1"}).action == "skip"
    assert decide("train", "k2", m, {"embeddings": "v=1"}).action == "run"
    moved = decide("train", "k1", m, {"embeddings": "v=2"})
    assert moved.action == "run" and "embeddings" in moved.reason
    path = tmp_path / "ds" / "nightly" / "train.json"
    path.write_text("{not json")
    assert store.get("train") is None
    path.write_text(json.dumps({**m.__dict__, "from_the_future": 1}))
    assert store.get("train") is None
    with pytest.raises(ValueError):
        store.get("../../etc")  # stage names only, never a path


def test_plan_skip_and_stage_selection(tmp_path: Path) -> None:
    root = tmp_path / "root"
    cfg = Config.model_validate(raw_config(root))
    embed = CountingEmbed()
    hooks = nightly.Hooks(embed_runner=embed.factory)
    store = SnapshotStore(str(root))

    plan = nightly.run(cfg, args(dry_run=True), hooks)
    assert [(r["stage"], r["action"]) for r in plan["stages"]] == [
        ("ingest", "run"), ("embed", "run"), ("train", "run"), ("export", "run")]
    assert "ingest" in plan["stages"][2]["reason"] and "embed" in plan["stages"][2]["reason"]
    assert not (root / "tiny").exists()  # a dry run writes nothing

    first = nightly.run(cfg, args(), hooks)
    assert first["ran"] == ["ingest", "embed", "train", "export"]
    assert embed.texts == 500  # 300 users + 200 items, each once
    latest = {a: store.latest_version("tiny", a)
              for a in ("dataset", "semantic-raw", "embeddings", "index")}
    assert all(latest.values()), latest
    m = MarkerStore(str(root), "tiny").get("train")
    assert m is not None and m.outputs == {"embeddings": latest["embeddings"]}

    # unchanged: everything skipped, nothing embedded, no new version anywhere
    second = nightly.run(cfg, args(), hooks)
    assert second["ran"] == [] and second["skipped"] == ["ingest", "embed", "train", "export"]
    assert embed.texts == 500
    assert {a: store.latest_version("tiny", a) for a in latest} == latest
    plan = nightly.run(cfg, args(dry_run=True), hooks)
    assert {r["action"] for r in plan["stages"]} == {"skip"}

    # a train-config change reruns train, and export because its input moved
    cfg2 = Config.model_validate(raw_config(root, train={"max_epochs": 3}))
    plan = nightly.run(cfg2, args(dry_run=True), hooks)
    assert [r["action"] for r in plan["stages"]] == ["skip", "skip", "run", "run"]
    third = nightly.run(cfg2, args(only=["train"]), hooks)
    assert third["ran"] == ["train"] and [r["stage"] for r in third["stages"]] == ["train"]
    tr = third["stages"][0]["summary"]["aligned"]
    assert tr["epochs"] == 3
    # warm start from the night before: every user and item row is reused, nothing new
    assert tr["warm_start"]["user"] == {"reused": 300, "new": 0, "dropped": 0}
    assert tr["warm_start"]["item"] == {"reused": 200, "new": 0, "dropped": 0}
    assert store.latest_version("tiny", "embeddings") != latest["embeddings"]
    plan = nightly.run(cfg2, args(dry_run=True), hooks)
    assert [r["action"] for r in plan["stages"]] == ["skip", "skip", "skip", "run"]
    assert "export" in nightly.run(cfg2, args(start="train"), hooks)["ran"]
    assert store.latest_version("tiny", "index") != latest["index"]

    # someone moved LATEST by hand: the stage that wrote it no longer trusts its marker
    forced = nightly.run(cfg2, args(only=["export"], force=True), hooks)
    assert forced["ran"] == ["export"] and forced["stages"][0]["reason"] == "forced (--force)"


def test_failing_stage_is_named_and_exits_nonzero(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tree = raw_config(root)
    tree["align"]["semantic"] = {"users": str(root / "tiny" / "nowhere"),
                                 "items": str(root / "tiny" / "nowhere")}
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(tree))
    out = subprocess.run([sys.executable, "-m", "recalign.jobs.nightly", "--config",
                          str(cfg_file), "--no-progress"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode != 0
    assert "stage 'train' failed" in out.stderr and "nowhere" in out.stderr
    store = SnapshotStore(str(root))
    # the stages before it are committed; train wrote no visible version; the rerun (fixed
    # config) starts at train
    assert store.latest_version("tiny", "dataset") and store.latest_version("tiny", "semantic-raw")
    assert store.latest_version("tiny", "embeddings") is None
    fixed = Config.model_validate(raw_config(root))
    again = nightly.run(fixed, args(), nightly.Hooks(embed_runner=CountingEmbed().factory))
    assert again["ran"] == ["train", "export"] and again["skipped"] == ["ingest", "embed"]


# --- two nights with the real LLM ----------------------------------------------------------

def llm_config(src: Path, root: Path) -> Config:
    sem = str(root / "texty" / "semantic")
    return Config.model_validate({
        "data": {"source": "parquet", "path": str(src), "name": "texty",
                 "split": {"method": "given"}},
        "llm": {**SMALL, "cache_dir": model_cache(), "engine": "vllm", "max_attempts": 4},
        "embed": {"executor": "local"},
        "model": {"backbone": "lightgcn", "params": {"dim": 8, "layers": 1}},
        "align": {"method": "rlmrec-con", "semantic": {"users": sem, "items": sem}},
        "train": {"max_epochs": 3, "eval_every": 1},
        "output": {"root": str(root)},
    })


def profile_rows(root: Path, side: str) -> dict[str, dict]:
    snap = SnapshotStore(str(root)).open("texty", "profiles")
    return {r["key"]: r for r in snap.read_table(side).to_pylist()}


@pytest.mark.slow
def test_two_nights_on_grown_data_count_llm_and_embedding_calls(tmp_path: Path, vllm_engine,
                                                                model_dir: str) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    write_text_dataset(src, n_items=20, n_users=6)
    cfg = llm_config(src, root)
    llm = SharedEngine(vllm_engine)
    hooks = nightly.Hooks(
        profiles_runner=lambda: LocalRunner(lambda: llm, max_attempts=4, batch_size=16,
                                            close_engine=False),
        embed_runner=(embed := CountingEmbed()).factory)
    store = SnapshotStore(str(root))

    calls0 = vllm_engine.requests_made
    night1 = nightly.run(cfg, args(), hooks)
    assert night1["ran"] == ["ingest", "profiles", "embed", "train", "export"]
    prof1 = night1["stages"][1]["summary"]
    assert prof1["requests"] == vllm_engine.requests_made - calls0 >= 26
    items1, users1 = profile_rows(root, "items"), profile_rows(root, "users")
    ok1 = sum(r["status"] == "ok" for r in [*items1.values(), *users1.values()])
    assert embed.texts == ok1  # every ok profile embedded once
    v1 = {a: store.latest_version("texty", a) for a in ("profiles", "semantic", "embeddings",
                                                         "index")}

    # night 2: two new users arrive and 2 of the 20 items (10 %) get new titles
    write_text_dataset(src, n_items=20, n_users=8, titles={3: "Moonlit Fern Atlas",
                                                           11: "The Quiet Orchard"})
    calls1, texts1 = vllm_engine.requests_made, embed.texts
    night2 = nightly.run(cfg, args(), hooks)
    assert night2["ran"] == ["ingest", "profiles", "embed", "train", "export"]
    ds = read_dataset(store.open("texty", "dataset"))
    items2, users2 = profile_rows(root, "items"), profile_rows(root, "users")
    new = store.latest_version("texty", "profiles")
    t = ds.interactions.to_pandas()
    train = t[t.split == 0]
    # items: the two retitled ones and any that failed validation last night (retried) are
    # regenerated; besides them only items whose prompt can have changed: those without a
    # description (odd ids have one), whose sampled reviews now include the new users' reviews
    failed1 = {k for k, r in items1.items() if r["status"] != "ok"}
    new_users = {int(i) for i in ds.user_map.lookup(pa.array(["u6", "u7"]))}
    reviewed = set(ds.item_map.key_of(np.unique(
        train[train.user.isin(new_users)].item.to_numpy())).to_pylist())
    may_change = {k for k in reviewed if int(k[1:]) % 2 == 0}
    regen_items = {k for k, r in items2.items() if r["generated_in"] == new}
    assert {"i3", "i11"} | failed1 <= regen_items <= {"i3", "i11"} | failed1 | may_change
    # users: a prompt holds each training item's title and profile summary, so the users with
    # a training interaction on an item whose title or summary changed, the new users, and any
    # user that failed last night
    moved = {k for k in items2 if k in ("i3", "i11")
             or items2[k]["summarization"] != items1[k]["summarization"]}
    moved_ids = {int(i) for i in ds.item_map.lookup(pa.array(sorted(moved)))}
    touched = set(ds.user_map.key_of(np.unique(
        train[train.item.isin(moved_ids)].user.to_numpy())).to_pylist())
    expected_users = touched | {"u6", "u7"} | {k for k, r in users1.items() if r["status"] != "ok"}
    assert {k for k, r in users2.items() if r["generated_in"] == new} == expected_users
    prof2 = night2["stages"][1]["summary"]
    assert prof2["requests"] == vllm_engine.requests_made - calls1
    assert prof2["ok"] + prof2["failed"] == len(regen_items) + len(expected_users) < 28
    # only texts that changed are embedded again
    changed_texts = sum(1 for side1, side2 in ((items1, items2), (users1, users2))
                        for k, r in side2.items() if r["status"] == "ok"
                        and (k not in side1 or side1[k]["summarization"] != r["summarization"]))
    assert embed.texts - texts1 == changed_texts
    # train warm-started every known id; the new users were appended
    ws = night2["stages"][3]["summary"]["aligned"]["warm_start"]
    assert ws["user"] == {"reused": 6, "new": 2, "dropped": 0}
    assert ws["item"] == {"reused": 20, "new": 0, "dropped": 0}
    v2 = {a: store.latest_version("texty", a) for a in v1}
    assert all(v2[a] != v1[a] for a in v1)
    idx = store.open("texty", "index")
    assert v2["embeddings"] in json.dumps(idx.manifest)  # the index was built from tonight's

    # night 3, nothing new: no LLM call, no embedding, nothing rewritten
    calls2, texts2 = vllm_engine.requests_made, embed.texts
    night3 = nightly.run(cfg, args(), hooks)
    assert night3["ran"] == []
    assert vllm_engine.requests_made == calls2 and embed.texts == texts2
    assert {a: store.latest_version("texty", a) for a in v1} == v2


def test_report_from_markers(tmp_path: Path) -> None:
    """The demo report is built from the stages' markers (what ran when) and tonight's
    actions: base vs aligned with the relative gain, LLM accounting, index recall."""
    from recalign.pipeline.report import gather, table_rows, write_report
    from recalign.pipeline.stages import Marker, MarkerStore

    store = MarkerStore(str(tmp_path), "ds")
    base = {"test": {"recall@20": 0.40, "ndcg@20": 0.20}}
    aligned = {"test": {"recall@20": 0.42, "ndcg@20": 0.19}}
    store.put(Marker("profiles", "k1", {"profiles-items": "v=1"}, "t", 12.5,
                     {"requests": 10, "ok": 9, "failed": 1, "prompt_tokens": 300,
                      "completion_tokens": 40}))
    store.put(Marker("train", "k2", {"embeddings": "v=2"}, "t", 30.0,
                     {"base": base, "aligned": aligned}))
    fig = gather(str(tmp_path), "ds", {"stages": [{"stage": "train", "action": "skip",
                                                    "seconds": 0.1}], "seconds": 1.5})
    by = {s["stage"]: s for s in fig["stages"]}
    assert by["train"] == {"stage": "train", "action": "skip", "seconds_tonight": 0.1,
                           "seconds_when_run": 30.0}
    # stages with neither a marker nor a record tonight are not part of this pipeline
    assert list(by) == ["profiles", "train"] and fig["export"] == {}
    rows = dict(table_rows(fig))
    assert rows["test recall@20: base / aligned"] == "0.4 / 0.42 (+5.0 %)"
    assert rows["test ndcg@20: base / aligned"] == "0.2 / 0.19 (-5.0 %)"
    assert rows["LLM requests (ok / failed)"] == "10 (9 / 1)"
    uri = write_report(str(tmp_path), "ds", fig)
    text = Path(uri).read_text()
    assert "| test recall@20: base / aligned | 0.4 / 0.42 (+5.0 %) |" in text
    assert (tmp_path / "ds" / "report" / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_seeds_trains_each_seed_of_both_runs(tmp_path: Path) -> None:
    """``nightly.compare_seeds: 2``: base and aligned each with train.seed and train.seed + 1;
    the first seed's runs are the night's output, the extra seed exports to its own artifacts,
    and every run is in the marker for the report's seed spread."""
    root = tmp_path / "root"
    tree = raw_config(root, nightly={"stages": ["ingest", "embed", "train"],
                                     "compare_base": True, "compare_seeds": 2},
                      train={"max_epochs": 3, "eval_every": 1, "seed": 11})
    cfg = Config.model_validate(tree)
    embed = CountingEmbed()
    night = nightly.run(cfg, args(), nightly.Hooks(embed_runner=embed.factory))
    tr = night["stages"][-1]["summary"]
    seeds = tr["seeds"]
    assert [r["seed"] for r in seeds["aligned"]] == [11, 12]
    assert [r["seed"] for r in seeds["base"]] == [11, 12]
    # the first seed's entries are the night's own runs
    assert seeds["aligned"][0]["test"] == tr["aligned"]["test"]
    assert seeds["base"][0]["snapshot"] == tr["base"]["snapshot"]
    # another seed is another run: other initialisation, other numbers
    assert seeds["aligned"][1]["test"] != seeds["aligned"][0]["test"]
    assert seeds["base"][1]["test"] != seeds["aligned"][1]["test"]
    store = SnapshotStore(str(root))
    marker = MarkerStore(str(root), "tiny").get("train")
    assert marker is not None
    assert set(marker.outputs) == {"embeddings", "embeddings-base", "embeddings-seed12",
                                   "embeddings-seed12-base"}
    assert marker.outputs["embeddings"] == store.latest_version("tiny", "embeddings")
    assert seeds["aligned"][1]["snapshot"].endswith(
        f"embeddings-seed12/{marker.outputs['embeddings-seed12']}")
    # the extra seed started fresh (no warm start) even though the night's runs may warm-start
    assert seeds["aligned"][1]["warm_start"] is None
    # unchanged config: skipped; a different seed count is a different train stage
    assert nightly.run(cfg, args(dry_run=True))["stages"][-1]["action"] == "skip"
    more = Config.model_validate({**tree, "nightly": {**tree["nightly"], "compare_seeds": 3}})
    assert nightly.run(more, args(dry_run=True))["stages"][-1]["action"] == "run"
