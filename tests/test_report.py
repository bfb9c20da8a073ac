"""The demo report on a small real pipeline state: a dataset snapshot ingested from parquet, a
profiles snapshot written with the real profile schema (one profile trying to inject markup),
two embedding snapshots (base, aligned) whose rankings are known by construction, and nightly
markers with a train summary holding three seeds per model.

Checked: mean ± sample std and the gain against hand-computed numbers, top-10 lists against
a brute-force ranking, escaping in HTML and Markdown, a self-contained HTML (PNG data URIs
only), and a report that still renders (and says so) when inputs are missing or damaged."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recalign.config import Config
from recalign.data.schema import embedding_schema
from recalign.data.snapshot_io import ingest_to_snapshot, read_dataset
from recalign.llm.profiles import PROFILE_SCHEMA
from recalign.pipeline import report as R
from recalign.pipeline.stages import Marker, MarkerStore
from recalign.storage.snapshot import SnapshotStore

DS = "rep"
N_ITEMS = 30
EVIL = "</td><script>alert(1)</script> | pipe `code` [x](javascript:alert(2)) *b*\nnext line"
# user -> (train items, valid items, test items)
HISTORY = {
    "u0": ([0, 1, 2, 3, 4], [5], [6, 7, 8]),
    "u1": ([10, 11, 12], [13], [14, 15, 16, 17]),  # most test items, but its profile failed
    "u2": ([20, 21, 22], [], [23, 24]),
    "u3": ([1, 3, 5, 7], [], [9, 11]),
    "u4": ([2, 4], [6], [8]),
    "u5": ([18, 19, 25, 26, 27, 28, 29], [], []),  # every item is in some interaction
}
# seed runs: recall@20 per seed; ndcg@20 per seed
ALIGNED_R = [0.30, 0.32, 0.34]
BASE_R = [0.25, 0.26, 0.30]
ALIGNED_N = [0.10, 0.12, 0.17]
BASE_N = [0.11, 0.11, 0.11]


def write_parquet(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    titles = [f"Title {i}" for i in range(N_ITEMS)]
    titles[7] = "<b>Bold</b> | title"
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(N_ITEMS)], "title": titles,
                             "description": [None] * N_ITEMS, "attributes": [None] * N_ITEMS}),
                   folder / "items.parquet")
    inter: dict[str, list[Any]] = {"user_id": [], "item_id": [], "split": []}
    for u, splits in HISTORY.items():
        for name, items in zip(("train", "valid", "test"), splits):
            for i in items:
                inter["user_id"].append(u)
                inter["item_id"].append(f"i{i}")
                inter["split"].append(name)
    pq.write_table(pa.table(inter), folder / "interactions.parquet")


def profile_rows(side: str, entries: list[tuple[str, int, str, str | None]]) -> pa.Table:
    rows = []
    for key, pid, status, text in entries:
        ok = status == "ok"
        rows.append({"id": pid, "key": key, "summarization": text if ok else None,
                     "reasoning": f"because {key}" if ok else None, "status": status,
                     "reason": None if ok else "invalid JSON", "attempts": 1,
                     "fingerprint": f"fp-{key}", "model": "tiny", "prompt_tokens": 10,
                     "completion_tokens": 5, "generated_in": "v=x"})
    return pa.Table.from_pylist(rows, schema=PROFILE_SCHEMA)


def weights(variant: str, user: str) -> np.ndarray:
    """The score of every item (by item number) for ``user``: one-hot item vectors make the
    user's vector exactly these scores."""
    i = np.arange(N_ITEMS, dtype=np.float64)
    if variant == "base":
        return 100.0 - i  # low item numbers first (the training items must be skipped)
    w = i.copy()  # high item numbers first ...
    w[HISTORY[user][2]] += 100.0  # ... after the user's test items
    return w


def write_embeddings(store: SnapshotStore, artifact: str, variant: str) -> str:
    w = store.begin(DS, artifact)
    users = list(HISTORY)
    uvec = np.stack([weights(variant, u) for u in users]).astype(np.float32)
    ivec = np.eye(N_ITEMS, dtype=np.float32)
    order = list(range(N_ITEMS))[::-1]  # rows out of id order: the report matches by key

    def table(keys: list[str], vecs: np.ndarray) -> pa.Table:
        vec = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()),
                                                vecs.shape[1])
        return pa.Table.from_arrays([pa.array(np.arange(len(keys)), pa.int64()),
                                     pa.array(keys), vec],
                                    schema=embedding_schema(vecs.shape[1]))
    w.write_table("users", table(users, uvec))
    w.write_table("items", table([f"i{i}" for i in order], ivec[order]))
    return w.commit().uri


def run_dir(tmp: Path, name: str, ys: list[float]) -> str:
    d = tmp / "runs" / name
    d.mkdir(parents=True)
    (d / "curves.json").write_text(json.dumps(
        {"epoch": [1, 2], "loss": {}, "valid_epoch": [1, 2],
         "valid": {"recall@20": ys}, "select_metric": "recall@20"}))
    return str(d)


def seeds_of(tmp: Path, variant: str, rec: list[float], ndcg: list[float]) -> list[dict]:
    return [{"seed": 1 + k, "test": {"recall@20": r, "ndcg@20": n},
             "valid": {"recall@20": r}, "run_dir": run_dir(tmp, f"{variant}-s{k}", [r / 2, r])}
            for k, (r, n) in enumerate(zip(rec, ndcg))]


@pytest.fixture()
def state(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "root"
    write_parquet(tmp_path / "raw")
    cfg = Config.model_validate({
        "data": {"source": "parquet", "path": str(tmp_path / "raw"), "name": DS,
                 "split": {"method": "given"}},
        "output": {"root": str(root)}})
    store = SnapshotStore(str(root))
    ingest_to_snapshot(cfg, store)
    ds = read_dataset(store.open(DS, "dataset"))
    iid = {k: n for n, k in enumerate(ds.item_map.keys.to_pylist())}
    uid = {k: n for n, k in enumerate(ds.user_map.keys.to_pylist())}
    snaps = {v: write_embeddings(store, f"emb-{v}", v) for v in ("base", "aligned")}
    seeds = {"aligned": seeds_of(tmp_path, "aligned", ALIGNED_R, ALIGNED_N),
             "base": seeds_of(tmp_path, "base", BASE_R, BASE_N)}
    train = {v: {"test": seeds[v][0]["test"], "valid": seeds[v][0]["valid"], "epochs": 3,
                 "snapshot": snaps[v], "run_dir": seeds[v][0]["run_dir"]}
             for v in ("base", "aligned")}
    train["seeds"] = seeds
    markers = MarkerStore(str(root), DS)
    markers.put(Marker("profiles", "k1", {"profiles": "v=1"}, "t", 20.0,
                       {"requests": 12, "ok": 9, "failed": 1, "retried": 2, "reused": 0,
                        "prompt_tokens": 3000, "completion_tokens": 500}))
    markers.put(Marker("train", "k2", {"emb-aligned": "v=2"}, "t", 30.0, train))
    return {"root": str(root), "store": store, "ds": ds, "iid": iid, "uid": uid,
            "train": train, "tmp": tmp_path}


def write_profiles(st: dict[str, Any]) -> None:
    iid, uid = st["iid"], st["uid"]
    w = st["store"].begin(DS, "profiles")
    items = [("i3", iid["i3"], "ok", "third item"), ("i0", iid["i0"], "failed", None),
             ("i2", iid["i2"], "ok", EVIL), ("i1", iid["i1"], "ok", "x" * 1000),
             ("i7", iid["i7"], "ok", "seventh item")]
    w.write_table("items", profile_rows("items", items))
    users = [("u1", uid["u1"], "failed", None), ("u0", uid["u0"], "ok", "likes " + EVIL),
             ("u2", uid["u2"], "ok", "likes twenties"), ("u3", uid["u3"], "ok", "likes odds")]
    w.write_table("users", profile_rows("users", users))
    w.commit()


def night() -> dict[str, Any]:
    return {"stages": [{"stage": "train", "action": "skip", "seconds": 0.1}], "seconds": 2.0}


def brute_top10(st: dict[str, Any], variant: str, user: str) -> list[str]:
    """Every item scored one by one from its snapshot vectors, training items dropped."""
    snap = st["train"][variant]["snapshot"]
    ukeys, U = R.read_embeddings(snap, "users")
    ikeys, I = R.read_embeddings(snap, "items")
    u = U[ukeys.index(user)]
    train = {f"i{i}" for i in HISTORY[user][0]}
    scored = [(-float(np.dot(u, I[r])), st["iid"][k], k) for r, k in enumerate(ikeys)
              if k not in train]
    return [k for _, _, k in sorted(scored)[:10]]


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[int] = []  # <td> count of each <tr>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th"):
            self.rows[-1] += 1


def md_cells(line: str) -> list[str]:
    """Cells of a Markdown table row, split at unescaped pipes."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


# ---------------------------------------------------------------------------------------


def test_mean_std_gain_and_seeds_by_hand(state: dict[str, Any]) -> None:
    write_profiles(state)
    fig = R.gather(state["root"], DS, night())
    stats = R.metric_stats(fig["train"])
    a, b = stats["aligned"]["recall@20"], stats["base"]["recall@20"]
    # aligned 0.30 0.32 0.34: mean 0.32, deviations ±0.02 -> var (0.0004 + 0.0004) / 2
    assert a.n == 3 and a.mean == pytest.approx(0.32) and a.std == pytest.approx(0.02)
    # base 0.25 0.26 0.30: mean 0.27, deviations -0.02 -0.01 0.03 -> var 0.0014 / 2
    assert b.mean == pytest.approx(0.27) and b.std == pytest.approx(math.sqrt(0.0007))
    assert [s for s, _ in a.values] == [1, 2, 3]
    # base ndcg constant: std 0; aligned ndcg 0.10 0.12 0.17: mean 0.13, var (9+1+16)e-4 / 2
    assert stats["base"]["ndcg@20"].std == pytest.approx(0.0)
    assert stats["aligned"]["ndcg@20"].std == pytest.approx(math.sqrt(0.0013))
    assert "recall@10" not in stats["aligned"]
    rows = dict(R.table_rows(fig))
    # 0.32 / 0.27 - 1 = 0.185185...
    assert rows["test recall@20: base / aligned"] == "0.2700 ± 0.0265 / 0.3200 ± 0.0200 (+18.5 %)"
    assert rows["test ndcg@20: base / aligned"] == "0.1100 ± 0.0000 / 0.1300 ± 0.0361 (+18.2 %)"
    assert rows["test recall@10: base / aligned"] == "None / None"
    assert rows["seeds per run (base / aligned)"].startswith("3 / 3")
    # throughput: (9 ok + 1 failed) / 20 s of the profiles stage; 500 completion tokens / 20 s
    assert rows["LLM throughput"] == "0.5 profiles/s, 25.0 completion tokens/s"
    md = Path(R.write_report(state["root"], DS, fig)).read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| recall@20 |"))
    cells = [c.strip() for c in md_cells(line)]
    assert cells == ["recall@20", "0.2700 ± 0.0265", "0.3200 ± 0.0200", "+18.5 %",
                     "seed 1: 0.2500, seed 2: 0.2600, seed 3: 0.3000",
                     "seed 1: 0.3000, seed 2: 0.3200, seed 3: 0.3400"]
    assert "sample standard deviation (n − 1)" in md


def test_single_run_without_seeds_as_before(state: dict[str, Any]) -> None:
    train = {k: v for k, v in state["train"].items() if k != "seeds"}
    MarkerStore(state["root"], DS).put(Marker("train", "k2", {}, "t", 30.0, train))
    fig = R.gather(state["root"], DS, night())
    rows = dict(R.table_rows(fig))
    assert rows["test recall@20: base / aligned"] == "0.25 / 0.3 (+20.0 %)"
    assert "seeds per run (base / aligned)" not in rows
    md = Path(R.write_report(state["root"], DS, fig)).read_text()
    assert "One run per model" in md


def test_top10_equal_brute_force_and_by_hand(state: dict[str, Any]) -> None:
    write_profiles(state)
    rec = R.gather(state["root"], DS, night())["recommendations"]
    assert rec["missing"] == [] and rec["variants"] == ["base", "aligned"]
    # u1 has the most test items but no ok profile; u2 and u3 tie on 2: the lower id wins
    assert state["uid"]["u2"] < state["uid"]["u3"]
    assert [u["key"] for u in rec["users"]] == ["u0", "u2"]
    assert "most held-out test items" in rec["how"]
    by = {u["key"]: u for u in rec["users"]}
    keys = lambda u, v: [it["key"] for it in by[u]["top"][v]]  # noqa: E731
    # by hand: base ranks low numbers first, u0's training items 0-4 skipped
    assert keys("u0", "base") == [f"i{i}" for i in range(5, 15)]
    # aligned: u0's test items 8, 7, 6 first, then the highest numbers
    assert keys("u0", "aligned") == ["i8", "i7", "i6"] + [f"i{i}" for i in range(29, 22, -1)]
    assert by["u0"]["hits"] == {"base": 3, "aligned": 3}
    assert [it["test"] for it in by["u0"]["top"]["base"]] == [False, True, True, True] + [False] * 6
    # aligned for u2: test items 24, 23 first, then 29..25, then 19, 18, 17 (20-22 are training)
    assert keys("u2", "aligned") == ["i24", "i23", "i29", "i28", "i27", "i26", "i25", "i19",
                                     "i18", "i17"]
    for u in ("u0", "u2"):
        for v in ("base", "aligned"):
            assert keys(u, v) == brute_top10(state, v, u), (u, v)
            assert not {f"i{i}" for i in HISTORY[u][0]} & set(keys(u, v))
    assert by["u0"]["top"]["aligned"][1]["title"] == "<b>Bold</b> | title"
    assert by["u0"]["profile"].startswith("likes </td>")
    # what the user had, beside the lists: their training and test items' titles
    title = lambda i: "<b>Bold</b> | title" if i == 7 else f"Title {i}"  # noqa: E731
    for u in ("u0", "u2"):
        assert set(by[u]["train_titles"]) == {title(i) for i in HISTORY[u][0]}
        assert set(by[u]["test_titles"]) == {title(i) for i in HISTORY[u][2]}


def test_html_escaped_and_self_contained(state: dict[str, Any]) -> None:
    write_profiles(state)
    fig = R.gather(state["root"], DS, night())
    prof = fig["profiles"]
    # the first three ok profiles by id, exactly as written, with the item's title
    ok_items = sorted((state["iid"][k], k) for k in ("i3", "i7", "i1", "i2"))[:3]
    assert [(p["id"], p["key"]) for p in prof["items"]] == ok_items == [(1, "i1"), (2, "i2"),
                                                                          (3, "i3")]
    evil = next(p for p in prof["items"] if p["key"] == "i2")
    assert evil["summarization"] == EVIL and evil["title"] == "Title 2"
    assert [p["key"] for p in prof["users"]] == sorted(
        ["u0", "u2", "u3"], key=lambda k: state["uid"][k])
    uris = R.write_reports(state["root"], DS, fig)
    assert uris["html"] == R.report_html_uri(state["root"], DS)
    page = Path(uris["html"]).read_text()
    assert "<script" not in page.lower()
    assert "&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt; | pipe" in page
    assert "&lt;b&gt;Bold&lt;/b&gt; | title" in page
    p = Tags()
    p.feed(page)
    names = {t for t, _ in p.tags}
    assert "script" not in names and "b" not in names and "a" not in names
    # every row of a table has as many cells as its header: nothing broke out of a cell
    tables = re.findall(r"<table>.*?</table>", page, re.S)
    for t in tables:
        q = Tags()
        q.feed(t)
        assert len(set(q.rows)) == 1, t[:300]
    # self-contained: no link, stylesheet or script fetched; images are inline PNGs
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) == 2  # metrics and curves
    for a in imgs:
        src = a["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(a.get("href") for _, a in p.tags) and "url(" not in page
    assert all((a.get("src") or "").startswith("data:") for _, a in p.tags if "src" in a)
    # the long profile is cut and says so
    assert "[truncated: 1000 characters, first 400 shown]" in page
    assert "x" * 401 not in page
    # recommendations side by side, test hits marked
    assert "✓ Title 8" in page and "✓ &lt;b&gt;Bold&lt;/b&gt; | title" in page
    # the curves of every seed are drawn: six runs
    assert len(R.run_curves(fig["train"])) == 6
    assert set(R.run_curves(fig["train"])) >= {"aligned seed 1", "base seed 3"}


def test_markdown_escaped(state: dict[str, Any]) -> None:
    write_profiles(state)
    md = Path(R.write_report(state["root"], DS, R.gather(state["root"], DS, night()))).read_text()
    assert not re.search(r"(?<!\\)[<>`\[\]*]", md.replace("![training curves](curves.png)", "")
                         .replace("![base vs aligned](metrics.png)", ""))
    assert "\\<script\\>" in md and "\\[x\\](javascript:alert(2))" in md and "\\`code\\`" in md
    lines = md.splitlines()
    # every table row has as many cells as its header (no pipe or newline broke it)
    header = None
    for ln in lines:
        if ln.startswith("|") and not ln.startswith("|---"):
            n = len(md_cells(ln))
            if header is None:
                header = n
            assert n == header, ln
        elif not ln.startswith("|"):
            header = None
    evil_row = next(ln for ln in lines if "alert(1)" in ln and ln.startswith("| "))
    assert "next line" in evil_row  # the newline inside the profile stayed inside the cell
    assert "![training curves](curves.png)" in md
    rep = Path(state["root"]) / DS / "report"
    assert (rep / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_inputs_render_the_rest(state: dict[str, Any]) -> None:
    # no profiles snapshot; the base run's snapshot is not a committed version
    train = json.loads(json.dumps(state["train"]))
    bad = Path(state["tmp"]) / "not-a-snapshot" / "v=20240101T000000-x"
    bad.mkdir(parents=True)
    train["base"]["snapshot"] = str(bad)
    Path(train["seeds"]["aligned"][1]["run_dir"], "curves.json").write_text("{not json")
    MarkerStore(state["root"], DS).put(Marker("train", "k2", {}, "t", 30.0, train))
    fig = R.gather(state["root"], DS, night())
    assert fig["profiles"]["items"] == [] and "no profiles snapshot" in \
        fig["profiles"]["missing"][0]
    rec = fig["recommendations"]
    assert rec["variants"] == ["aligned"] and any("base embedding snapshot" in m
                                                  for m in rec["missing"])
    # without profiles, users are chosen among all: u1 has the most test items
    assert rec["users"][0]["key"] == "u1"
    uris = R.write_reports(state["root"], DS, fig)
    md, page = Path(uris["markdown"]).read_text(), Path(uris["html"]).read_text()
    for text in (md, page):
        assert "no profiles snapshot" in text
        assert "Missing: the base embedding snapshot" in text
        assert "recall@20" in text  # the rest is there
        assert "curves of aligned seed 2" in text
    assert page.count("data:image/png;base64,") == 2  # the other five curves still drawn
    assert len(R.run_curves(train)) == 5


def test_nothing_at_all_still_writes_a_report(tmp_path: Path) -> None:
    fig = R.gather(str(tmp_path), DS, {"stages": [], "seconds": 0.5})
    uris = R.write_reports(str(tmp_path), DS, fig)
    page = Path(uris["html"]).read_text()
    assert "train stage has not completed" in page and "no base run" in page
    assert "profiles stage has not completed" in page
    assert "<img" not in page  # no plot of nothing


def test_escaping_helpers() -> None:
    assert R.md_escape("a|b\nc`d<e>&") == "a\\|b c\\`d\\<e\\>\\&"
    assert R.html_escape('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"
    assert R.bounded("y" * 10, 4) == "yyyy… [truncated: 10 characters, first 4 shown]"
    assert R.bounded("a\u2028b\tc") == "a b c"


def test_throughput_basis_and_malformed_figures(tmp_path: Path) -> None:
    fig = R.gather(str(tmp_path), DS, {"stages": [], "seconds": 1.0})
    fig["llm"] = {"ok": 30, "failed": 2, "completion_tokens": 1600, "generation_s": 8.0}
    tp = R.llm_throughput(fig)  # the generation time wins over the stage's wall time
    assert (tp["profiles_per_s"], tp["completion_tokens_per_s"], tp["basis"]) == \
        (4.0, 200.0, "generation time")
    # seeds that are not a list of runs, a run that is not a dict: ignored, not a crash
    fig["train"] = {"aligned": {"test": {"recall@20": "n/a"}}, "base": "oops",
                    "seeds": {"aligned": "x", "base": [1, 2]}}
    assert R.metric_stats(fig["train"]) == {"aligned": {}}
    fig["stages"] = [{"stage": "train"}]  # a malformed stage record: that section is lost
    page = Path(R.write_reports(str(tmp_path), DS, fig)["html"]).read_text()
    assert "stage times section could not be rendered" in page
    assert "LLM profiles: requests, tokens, throughput" in page
