"""The LLMRG fusion model (backbone ``llmrg``) on hand-written ``graphs`` snapshots in the schema
of :mod:`recalign.data.graph_schema`: the loader's filters and counts, no look-ahead in the
graphs a training sample sees, ``graph: none`` is the base model exactly, a graph that carries
the answer lifts the fused model clearly above its base while random graphs do not, 1 and 2
ranks agree, and every ablation runs as a ``recalign train`` job."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pytest
import torch

from gloo_ranks import spawn_ranks
from recalign.config import Config, load_config
from recalign.data import graph_schema as gs
from recalign.data.reasoning_graphs import load_graphs, open_graphs
from recalign.data.sequences import SequenceData
from recalign.errors import ConfigError, SnapshotError
from recalign.storage.snapshot import SnapshotStore
from recalign.train.api import train

DATA = ["data.source=synthetic", "data.split.method=loo", "data.synthetic.review_rate=0",
        "data.synthetic.users=120", "data.synthetic.items=60", "data.synthetic.interactions=1200",
        "data.synthetic.topics=4", "data.synthetic.seed=2", "data.synthetic.order=transitions",
        "data.synthetic.order_strength=0.3"]
TEXT_DIM = 8


def dataset(root: Path):
    from recalign.data.ingest import load_dataset

    cfg = load_config(None, [*DATA, f"output.root={root}"])
    ds = load_dataset(cfg.data)
    return cfg, ds, SequenceData.from_dataset(ds)


# ------------------------------------------------------------------ writing snapshots by hand
def user_row(key: str, uid: int, seq: np.ndarray, div: Callable[[int], int],
             score: Callable[[int], float], status: str = "ok",
             n_train: int | None = None) -> tuple[dict, list[str]]:
    """A walk over ``seq``: item nodes at their first position, per step p >= 1 a chain
    item[p-1] -> reason -> item[p] (chain p - 1, score ``score(p)``), per step p a divergent
    interest ``div(p)`` (item id, or -1: unmatched, a text) attached to item[p] in the chain of
    step p, and a direct guess (the same item) attached to item[p]."""
    nodes, edges, chains, texts = [], [], [], []
    where: dict[int, int] = {}

    def node(kind: str, item: int, step: int, text: str | None = None) -> int:
        h = None
        if text is not None:
            texts.append(text)
            h = gs.text_key(text)
        nodes.append({"kind": kind, "item": int(item), "text": h, "step": int(step)})
        return len(nodes) - 1

    for p, it in enumerate(seq.tolist()):
        if it not in where:
            where[it] = node(gs.ITEM, it, p)
        if p >= 1:
            r = node(gs.REASON, -1, p, f"{key} reason {p}")
            edges += [{"src": where[int(seq[p - 1])], "dst": r, "kind": "item_reason",
                       "step": p, "chain": p - 1},
                      {"src": r, "dst": where[it], "kind": "reason_item", "step": p,
                       "chain": p - 1}]
            chains.append({"chain": p - 1, "score": score(p), "from_kb": False})
        d = div(p)
        v = node(gs.DIVERGENT, d, p, None if d >= 0 else f"{key} interest {p}")
        edges.append({"src": where[it], "dst": v, "kind": "divergent", "step": p,
                      "chain": p - 1 if p >= 1 else -1})
        g = node(gs.DIRECT, max(d, 0), p)
        edges.append({"src": where[it], "dst": g, "kind": "direct", "step": p, "chain": -1})
    row = {"id": uid, "key": key, "status": status, "reason": None,
           "n_train": len(seq) if n_train is None else n_train, "nodes": nodes,
           "edges": edges, "chains": chains, "llm_calls": len(seq), "kb_hits": 0,
           "attempts": 1, "prompt_tokens": 10, "completion_tokens": 5, "fingerprint": "f",
           "model": "hand", "generated_in": "test"}
    return row, texts


def write_graphs(root: Path, name: str, rows: list[dict], texts: list[str],
                 users_schema: pa.Schema = gs.USERS_SCHEMA) -> str:
    rng = np.random.default_rng(0)
    uniq = sorted(set(texts))
    tt = pa.Table.from_pylist([{"text": gs.text_key(t), "value": t,
                                "vector": rng.normal(size=TEXT_DIM).astype(np.float32).tolist()}
                               for t in uniq], schema=gs.TEXTS_SCHEMA)
    w = SnapshotStore(str(root)).begin(name, gs.ARTIFACT)
    w.write_table("users", pa.Table.from_pylist(rows, schema=users_schema))
    w.write_table("texts", tt)
    w.commit()
    return w.version


def answer_graphs(root: Path, ds, sd: SequenceData, kind: str = "answer",
                  users: np.ndarray | None = None, score: float = 80.0) -> str:
    """Graphs for ``users`` (default all): ``answer`` — each step's divergent interest is the
    user's true next item (position p + 1; the validation item after the last position);
    ``random`` — a random item."""
    rng = np.random.default_rng(1)
    keys = ds.user_map.keys.to_pylist()
    rows, texts = [], []
    for u in (range(sd.n_users) if users is None else users):
        seq = sd.items[sd.indptr[u]:sd.indptr[u + 1]]
        if seq.size == 0:
            continue
        nxt = np.append(seq[1:], sd.valid[u])
        div = (lambda p, nxt=nxt: int(nxt[p])) if kind == "answer" else \
            (lambda p: int(rng.integers(sd.n_items)))
        row, t = user_row(keys[u], int(u), seq, div, lambda p: score)
        rows.append(row)
        texts += t
    return write_graphs(root, ds.name, rows, texts)


def llmrg_cfg(root: Path, epochs: int = 3, **params) -> Config:
    base = params.pop("base_params", {"inner": 64, "dropout": 0.0, "attn_dropout": 0.0})
    return Config.model_validate({
        "model": {"backbone": "llmrg", "params": {"dim": 32, "base_params": base, **params}},
        "output": {"root": str(root)},
        "train": {"max_epochs": epochs, "threads": 1, "seed": 3, "device": "cpu",
                  "batch_size": 64, "optimizer": {"lr": 0.005}, "patience": 100}})


def hand_snapshot(root: Path):
    """Four users of a tiny dataset: u0 with scores 10/50/NaN/80.., u1 without a row, u2
    failed, u3 stale (generated from more items than it has now), plus a row for a key the
    dataset does not have."""
    from recalign.data.ingest import load_dataset

    seqs = {"u0": list("abcdefg"), "u1": list("bcdef"), "u2": list("cdefg"), "u3": list("defga")}
    root.mkdir(parents=True, exist_ok=True)
    f = root / "seq.txt"
    f.write_text("".join(f"{u} {' '.join(s)}\n" for u, s in seqs.items()))
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={f}",
                             "data.split.method=loo", f"output.root={root}"])
    ds = load_dataset(cfg.data)
    sd = SequenceData.from_dataset(ds)
    uid = {k: i for i, k in enumerate(ds.user_map.keys.to_pylist())}
    scores = {1: 10.0, 2: 50.0, 3: float("nan")}

    def row(key: str, **kw):
        u = uid.get(key, 99)
        seq = sd.items[sd.indptr[u]:sd.indptr[u + 1]] if key in uid else np.array([0, 1, 2])
        return user_row(key, u, seq, lambda p: -1 if p == 2 else 0,
                        lambda p: scores.get(p, 80.0), **kw)

    parts = [row("u0"), row("u2", status="failed"), row("u3", n_train=9), row("ghost")]
    rows = [r for r, _ in parts]
    texts = [t for _, ts in parts for t in ts]
    return cfg, ds, sd, rows, texts


# ------------------------------------------------------------------ the loader
def test_loader_filters_and_counts(tmp_path: Path) -> None:
    cfg, ds, sd, rows, texts = hand_snapshot(tmp_path)
    write_graphs(tmp_path, ds.name, rows, texts)
    snap = open_graphs(str(tmp_path), ds.name)
    u0 = ds.user_map.lookup(pa.array(["u0"]))[0]
    n0 = sd.train_lengths()[u0]  # 5 training items: chains of steps 1..4
    g = load_graphs(snap, ds.user_map.keys, sd.n_items, sd.train_lengths())
    r = g.report
    assert r["unknown_users"] == 1 and r["failed"] == 1 and r["stale"] == 1
    assert r["users_with_graph"] == 1 and r["users_without_graph"] == 3
    assert g.has_graph.tolist() == [u == u0 for u in range(4)]
    # chains of steps 1 (score 10) and 3 (NaN) fail tau 30 on the rows kept (u0 only)
    assert r["chains"] == n0 - 1 and r["chains_dropped_by_tau"] == 2
    assert r["chains_unverified"] == 1
    item, text, kind, step, src, dst = g.subgraph(u0, None, gs.NODE_KINDS)
    kinds = [gs.NODE_KINDS[k] for k in kind]
    reasons = sorted(int(s) for s, k in zip(step, kinds) if k == gs.REASON)
    assert reasons == [2, 4]  # the reasons of the dropped chains are gone, with their edges
    div = sorted(int(s) for s, k in zip(step, kinds) if k == gs.DIVERGENT)
    assert div == [0, 2, 4]  # so are the interests their chains carried (steps 1, 3)
    assert r["divergent_unmatched"] == 1  # step 2's interest matched no item: a text node
    assert (text[(item < 0)] >= 0).all()
    # verification off: every chain and node kept; kinds select what is loaded
    g2 = load_graphs(snap, ds.user_map.keys, sd.n_items, sd.train_lengths(), verify=False,
                     kinds=[gs.ITEM, gs.REASON])
    assert g2.report["chains_dropped_by_tau"] == 0
    _, _, kind2, step2, src2, dst2 = g2.subgraph(u0, None, gs.NODE_KINDS)
    assert sorted(step2[kind2 == 1].tolist()) == [1, 2, 3, 4] and set(kind2.tolist()) == {0, 1}
    assert src2.size == 2 * (n0 - 1)


def test_large_graphs_keep_their_most_recent_nodes(tmp_path: Path) -> None:
    """``max_nodes``: the most recent nodes by step, the readout node always, the edges among
    them (u0's reasoning graph: items a..e at steps 0..4, reasons at steps 1..4)."""
    from recalign.models.llmrg import graph_tensors

    cfg, ds, sd, rows, texts = hand_snapshot(tmp_path)
    write_graphs(tmp_path, ds.name, rows, texts)
    g = load_graphs(open_graphs(str(tmp_path), ds.name), ds.user_map.keys, sd.n_items,
                    sd.train_lengths(), verify=False)
    u0 = int(ds.user_map.lookup(pa.array(["u0"]))[0])
    key = {k: i + 1 for i, k in enumerate(ds.item_map.keys.to_pylist())}
    hist = sd.history(u0, "valid") + 1
    full = graph_tensors(g, np.array([u0]), None, [hist], [gs.ITEM, gs.REASON], 256, "")
    assert int((full["item"] > 0).sum()) == 5 and int((full["text"] > 0).sum()) == 4
    x = graph_tensors(g, np.array([u0]), None, [hist], [gs.ITEM, gs.REASON], 4, "")
    item = x["item"][0].tolist()
    assert sorted(i for i in item if i) == sorted([key["d"], key["e"]])
    assert int((x["text"] > 0).sum()) == 2 and int(x["adj"].sum()) == 3  # r3->d->r4->e
    assert item[int(x["last"][0])] == key["e"]


def test_schema_errors_name_the_snapshot_and_the_field(tmp_path: Path) -> None:
    cfg, ds, sd, rows, texts = hand_snapshot(tmp_path)
    bad = pa.schema([f for f in gs.USERS_SCHEMA if f.name != "n_train"])
    for r in rows:
        r.pop("n_train")
    v = write_graphs(tmp_path, ds.name, rows, texts, users_schema=bad)
    snap = open_graphs(str(tmp_path), ds.name)
    with pytest.raises(SnapshotError, match=rf"graphs snapshot .*{v}.*'n_train' missing"):
        load_graphs(snap, ds.user_map.keys, sd.n_items, sd.train_lengths())
    node = pa.struct([f if f.name != "step" else pa.field("step", pa.string())
                      for f in gs.NODE])
    wrong = gs.USERS_SCHEMA.set(gs.USERS_SCHEMA.get_field_index("nodes"),
                                pa.field("nodes", pa.list_(node)))
    _, ds, sd, rows, texts = hand_snapshot(tmp_path / "b")
    for r in rows:
        for n in r["nodes"]:
            n["step"] = str(n["step"])
    write_graphs(tmp_path / "b", ds.name, rows, texts, users_schema=wrong)
    with pytest.raises(SnapshotError, match=r"nodes\[\]\.step: expected int32, got string"):
        load_graphs(open_graphs(str(tmp_path / "b"), ds.name), ds.user_map.keys, sd.n_items,
                    sd.train_lengths())
    with pytest.raises(SnapshotError, match="no graphs snapshot .*recalign graphs"):
        open_graphs(str(tmp_path / "none"), ds.name)


# ------------------------------------------------------------------ no look-ahead
def _task(cfg: Config, ds):
    from recalign.train.dist import Dist
    from recalign.train.tasks import with_task_defaults
    from recalign.train.tasks.next_item import NextItemTask
    from recalign.train.trainer import RunInputs

    cfg = with_task_defaults(cfg)
    data = NextItemTask.prepare(cfg, ds)
    task = NextItemTask(cfg, RunInputs(cfg.model_dump(mode="json"), data, None, None, ""),
                        Dist(0, 1), np.random.default_rng(1))
    task.build()
    return task


def test_training_samples_see_exactly_the_steps_before_their_end(tmp_path: Path) -> None:
    """Every row of an epoch's batches against the snapshot's own rows: the reasoning graph of
    a sample ending at e holds the item nodes first seen before e and the reasons of steps
    1..e-1, with their 2(e-1) edges; the divergent graph the interests of steps 0..e-1.
    Evaluation (end None) sees every step; at test time the validation item joins."""
    cfg, ds, sd = dataset(tmp_path)
    answer_graphs(tmp_path, ds, sd)
    task = _task(llmrg_cfg(tmp_path, max_len=6), ds)
    model = task.model
    calls = []
    build = model.sample_inputs

    def spy(users, ends, histories):
        out = build(users, ends, histories)
        calls.append((users, ends, histories, out))
        return out

    model.sample_inputs = spy
    batches = list(task.batches())
    seen = 0
    lens = sd.train_lengths()
    for b, (users, ends, hist, v) in zip(batches, calls):
        assert torch.equal(b.views["graph_ori_adj"], v["graph_ori_adj"])
        for r, (u, e) in enumerate(zip(users, ends)):
            seq = sd.items[sd.indptr[u]:sd.indptr[u] + lens[u]]
            assert b.targets[r, -1] == seq[e] + 1  # the target: position e
            assert hist[r].tolist() == (seq[:e][-6:] + 1).tolist()  # the history: [0, e)
            item = v["graph_ori_item"][r].numpy()
            text = v["graph_ori_text"][r].numpy()
            want_items = sorted(set(seq[:e].tolist()))
            assert sorted((item[item > 0] - 1).tolist()) == want_items
            assert int((text > 0).sum()) == e - 1
            assert int(v["graph_ori_adj"][r].sum()) == 2 * (e - 1)
            assert item[int(v["graph_ori_last"][r])] == seq[e - 1] + 1
            ditem = v["graph_div_item"][r].numpy()
            nxt = np.append(seq[1:], sd.valid[u])[:e]
            want = sorted(want_items + nxt.tolist())
            assert sorted((ditem[ditem > 0] - 1).tolist()) == want
            assert nxt[-1] == seq[e] and int(v["graph_div_adj"][r].sum()) == e
            seen += 1
    users = task.samples[0]
    assert seen == users.size
    # evaluation: the whole training sequence; test histories end with the validation item
    model.sample_inputs = build
    u = int(np.flatnonzero(sd.valid >= 0)[0])
    n = int(sd.train_lengths()[u])
    for upto, last in (("valid", sd.items[sd.indptr[u] + n - 1]), ("test", sd.valid[u])):
        h = sd.history(u, upto)[-6:] + 1
        x = model.sample_inputs(np.array([u]), None, [h])
        item = x["graph_ori_item"][0].numpy()
        assert int((x["graph_ori_text"][0] > 0).sum()) == n - 1
        assert item[int(x["graph_ori_last"][0])] == last + 1
        assert int(x["graph_div_adj"][0].sum()) == n + (upto == "test")


def test_users_without_a_graph_fall_back_to_their_session_graph(tmp_path: Path) -> None:
    """The host-built fallback equals SR-GNN's session graph on the device (the state without
    graph inputs), and users with a graph get a different state."""
    cfg, ds, sd = dataset(tmp_path)
    answer_graphs(tmp_path, ds, sd, users=np.arange(0, sd.n_users, 2))
    task = _task(llmrg_cfg(tmp_path), ds)
    rep = task.data.graphs.report
    assert rep["users_with_graph"] == (sd.n_users + 1) // 2
    assert rep["users_without_graph"] == sd.n_users // 2
    model = task.model.eval()
    users = np.arange(10)
    hs = [sd.history(int(u), "valid")[-50:] + 1 for u in users]
    from recalign.data.sequences import left_pad

    x = torch.from_numpy(left_pad([h - 1 for h in hs], 50))
    inputs = model.sample_inputs(users, None, hs)
    with torch.no_grad():
        # the fusion starts as the base (identity on E_base, zero on the graph states)
        torch.testing.assert_close(model.state(x, inputs), model.base.user_repr(x))
        torch.nn.init.normal_(model.fusion.weight, std=0.2)  # one that reads the graphs
        got = model.state(x, inputs)
        plain = model.user_repr(x)
    odd = users % 2 == 1
    torch.testing.assert_close(got[odd], plain[odd])
    assert not torch.allclose(got[~odd], plain[~odd])
    assert task.summary()["reasoning_graphs"]["users_without_graph"] == sd.n_users // 2


# ------------------------------------------------------------------ training
def test_graph_none_is_the_base_model_exactly(tmp_path: Path) -> None:
    cfg, ds, sd = dataset(tmp_path)
    base = {"inner": 64}
    duo = Config.model_validate({
        "model": {"backbone": "duorec", "params": {"dim": 32, **base}},
        "train": {"max_epochs": 2, "threads": 1, "seed": 3, "device": "cpu",
                  "batch_size": 64, "optimizer": {"lr": 0.005}}})
    a = train(duo, ds)
    b = train(llmrg_cfg(tmp_path, 2, graph="none", base_params=base), ds)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["test"] == b["test"]


def test_graph_user_metrics_cover_exactly_the_users_with_a_graph(tmp_path: Path) -> None:
    """Every variant, the base included, reports its test metrics over the users that got an
    LLM graph too; reading the snapshot for that changes nothing else."""
    cfg, ds, sd = dataset(tmp_path)
    some = np.arange(0, sd.n_users, 3)
    answer_graphs(tmp_path, ds, sd, "answer", users=some)
    base = train(llmrg_cfg(tmp_path, 1, graph="none"), ds)
    assert base["test_graph_users"]["users"] == int((sd.test[some] >= 0).sum())
    plain = train(llmrg_cfg(tmp_path / "no-snapshot", 1, graph="none"), ds)
    assert "test_graph_users" not in plain
    assert plain["test"] == base["test"]
    assert [h["loss"] for h in plain["history"]] == [h["loss"] for h in base["history"]]
    root = tmp_path / "all"
    _, ds2, sd2 = dataset(root)
    answer_graphs(root, ds2, sd2, "answer")
    full = train(llmrg_cfg(root, 1, graph="none"), ds2)
    sub = full["test_graph_users"]
    assert sub["users"] == int((sd2.test >= 0).sum())
    assert {k: sub[k] for k in full["test"]} == full["test"]


def test_a_graph_carrying_the_answer_beats_the_base_and_random_graphs_do_not(
        tmp_path: Path) -> None:
    """Divergent interests grounded to each step's true next item: the fused model far above
    its base on validation; the same graphs with random items: no clear gain."""
    torch.set_num_threads(2)
    out = {}
    for kind in ("answer", "random"):
        root = tmp_path / kind
        cfg, ds, sd = dataset(root)
        answer_graphs(root, ds, sd, kind)
        out[kind] = train(llmrg_cfg(root, 8), ds)["valid"]["ndcg@10"]
    out["base"] = train(llmrg_cfg(tmp_path / "answer", 8, graph="none"), ds)["valid"]["ndcg@10"]
    assert out["answer"] > out["base"] + 0.2, out
    assert out["random"] < out["base"] + 0.05, out


#: item rows in TorchRec tables (row-wise sharded over the ranks), read by the base and the
#: graph encoders alike; sampled softmax so that a step looks up targets and negatives only
SHARDED = {"item_table": "sharded", "loss": "sampled", "negatives": 16,
           "table_optimizer": {"name": "rowwise_adagrad", "lr": 0.1}}
RANK_PARAMS = {"replicated": {}, "sharded": SHARDED}


def _ranks(rank: int, root: str, out: dict) -> None:
    from recalign.train.dist import Dist
    from recalign.train.tasks import with_task_defaults
    from recalign.train.tasks.next_item import NextItemTask
    from recalign.train.trainer import RunInputs, Trainer

    _, ds, _ = dataset(Path(root))
    for name, params in RANK_PARAMS.items():
        cfg = with_task_defaults(llmrg_cfg(Path(root), 2, base="sasrec", **params))
        data = NextItemTask.prepare(cfg, ds)
        inp = RunInputs(cfg.model_dump(mode="json"), data, None, None, f"{root}/{name}")
        r = Trainer(inp, Dist(rank, 2)).run()
        if rank == 0:
            out[name] = r["test"]


def test_two_ranks_follow_the_one_rank_loss_curve(tmp_path: Path) -> None:
    """Data parallel with a replicated item table, and with the item table sharded row-wise
    over the ranks (one process holds the same table unsharded with the same fused
    optimizer): the loss curves and the evaluation of 1 and 2 ranks agree."""
    cfg, ds, sd = dataset(tmp_path)
    answer_graphs(tmp_path, ds, sd, users=np.arange(0, sd.n_users, 3))
    one = {name: train(llmrg_cfg(tmp_path, 2, base="sasrec", **params), ds, keep_model=True)
           for name, params in RANK_PARAMS.items()}
    with mp.Manager() as m:
        out = m.dict()
        spawn_ranks(_ranks, 2, str(tmp_path), out)
        two = dict(out)
    for name in RANK_PARAMS:
        c1 = [h["rec"] for h in one[name]["history"]]
        c2 = json.loads((tmp_path / name / "curves.json").read_text())["loss"]["rec"]
        np.testing.assert_allclose(c2, c1, rtol=1e-4, err_msg=name)
        assert two[name]["hr@10"] == pytest.approx(one[name]["test"]["hr@10"], abs=5e-3)
    sharded = one["sharded"]["task"].model
    assert sharded.items is None and sharded.base.items is None  # one table, in TorchRec
    assert sharded.tables is not None and sharded.base.embed(torch.tensor([3])).shape == (1, 32)
    assert one["sharded"]["history"][-1]["rec"] < one["sharded"]["history"][0]["rec"]


# ------------------------------------------------------------------ the job
@pytest.mark.parametrize("over", [
    ["model.params.graph=none"],
    ["model.params.graph=sequence"],
    [],                                                   # full: reasoning + divergent
    ["model.params.divergent=false"],
    ["model.params.verify=false"],
    ["model.params.direct=true"],
    ["model.preset=no-verify", "model.params.base=sasrec"],
])
def test_every_ablation_runs_as_a_train_job(tmp_path: Path, over: list[str]) -> None:
    from recalign.jobs import train as train_job

    _, ds, sd = dataset(tmp_path)
    v = answer_graphs(tmp_path, ds, sd, users=np.arange(0, sd.n_users, 2), score=40.0)
    cfg = load_config(None, [*DATA, f"output.root={tmp_path}", "model.backbone=llmrg",
                             "model.params.dim=16", "train.max_epochs=1", "train.threads=1",
                             "model.params.base_params={inner: 32}", *over])
    out = train_job.run(cfg, None)
    assert out["test"]["users_evaluated"] == int((sd.test >= 0).sum())
    with_graph = int((sd.test[np.arange(0, sd.n_users, 2)] >= 0).sum())
    assert out["test_graph_users"]["users"] == with_graph
    rep = out["reasoning_graphs"]
    if not any("graph=" in o for o in over):
        assert rep["version"] == v and rep["users_with_graph"] == (sd.n_users + 1) // 2
        assert rep["chains_dropped_by_tau"] == 0 and rep["chains"] > 0


@pytest.mark.parametrize("params,match", [
    ({"graph": "none", "divergent": True}, "divergent and direct read the LLM graphs"),
    ({"base_params": {"max_len": 10}}, r"base_params.max_len: set model.params.max_len"),
    ({"base": "bert4rec"}, "trains on prefixes"),
])
def test_bad_params_are_clear_errors(tmp_path: Path, params: dict, match: str) -> None:
    _, ds, sd = dataset(tmp_path)
    answer_graphs(tmp_path, ds, sd)
    with pytest.raises(ConfigError, match=match):
        train(llmrg_cfg(tmp_path, 1, **params), ds)
