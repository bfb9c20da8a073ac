"""The sequential recommenders beside SASRec (GRU4Rec, BERT4Rec, FDSA, CL4SRec, DuoRec,
SR-GNN): each learns order through the one trainer, its evaluation equals a user-by-user
computation, 1 and 2 ranks agree, and the parts they share are checked against brute force."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from gloo_ranks import spawn_ranks
from recalign.config import Config, load_config
from recalign.data.augment import OPERATORS, augment, two_views
from recalign.data.item_attributes import ItemAttributes, from_json
from recalign.data.sequences import SameTarget, SequenceData
from recalign.errors import ConfigError, DataError
from recalign.models.contrastive import nt_xent
from recalign.models.registry import get_backbone
from recalign.models.srgnn import session_graphs
from recalign.train.api import train
from test_sequential import _brute_force_hr10, markov_sequences, write_sequences

OTHERS = ["gru4rec", "bert4rec", "fdsa", "cl4srec", "duorec", "srgnn"]
ALL = ["sasrec", *OTHERS]


def small_params(backbone: str, **over) -> dict:
    p = {"dim": 32}
    if backbone not in ("gru4rec", "srgnn"):
        p["inner"] = 64
    return {**p, **over}


def with_attributes(data: SequenceData) -> SequenceData:
    """Item i has attributes {i mod 7, 7 + (i + 1) mod 5} (for FDSA)."""
    data.attributes = ItemAttributes.from_lists(
        [[i % 7, 7 + (i + 1) % 5] for i in range(data.n_items)], {})
    return data


def cfg_for(backbone: str, epochs: int = 10, params: dict | None = None, **train_kw) -> Config:
    return Config.model_validate({
        "model": {"backbone": backbone, "params": params or small_params(backbone)},
        "train": {"max_epochs": epochs, "threads": 1, "seed": 3, "device": "cpu",
                  "optimizer": {"lr": 0.005}, **train_kw}})


def no_dropout(backbone: str) -> dict:
    p = small_params(backbone)
    if backbone != "srgnn":
        p["dropout"] = 0.0
    if backbone not in ("gru4rec", "srgnn"):
        p["attn_dropout"] = 0.0
    return p


def rank_data() -> SequenceData:
    return with_attributes(markov_sequences(200, 30, 10, seed=1))


# ------------------------------------------------------------------ ranks
def _ranks(rank: int, root: str, out: dict) -> None:
    from recalign.train.dist import Dist
    from recalign.train.tasks import with_task_defaults
    from recalign.train.trainer import RunInputs, Trainer

    for bb in ALL:
        cfg = with_task_defaults(cfg_for(bb, 3, no_dropout(bb), batch_size=64))
        inp = RunInputs(cfg.model_dump(mode="json"), rank_data(), None, None, f"{root}/{bb}")
        r = Trainer(inp, Dist(rank, 2)).run()
        if rank == 0:
            out[bb] = r


def test_two_ranks_follow_the_one_rank_loss_curve(tmp_path: Path) -> None:
    """Every model family data parallel on 2 ranks: without dropout the recommendation loss
    curve equals one rank's (float tolerance; masks and views are drawn per sample, so they do
    not depend on the ranks). CL4SRec and DuoRec keep in-rank negatives (half the batch each),
    so their contrastive term differs and the curves agree within 2%."""
    one = {bb: train(cfg_for(bb, 3, no_dropout(bb), batch_size=64), rank_data())
           for bb in ALL}
    with mp.Manager() as m:
        out = m.dict()
        spawn_ranks(_ranks, 2, str(tmp_path), out)
        two = dict(out)
    for bb in ALL:
        c1 = [h["rec"] for h in one[bb]["history"]]
        c2 = json.loads((tmp_path / bb / "curves.json").read_text())["loss"]["rec"]
        exact = bb not in ("cl4srec", "duorec")
        np.testing.assert_allclose(c2, c1, rtol=1e-4 if exact else 2e-2, err_msg=bb)
        assert two[bb]["workers"] == 2, bb
        assert two[bb]["sequences_trained"] == one[bb]["sequences_trained"], bb
        if exact:
            assert two[bb]["test"]["hr@10"] == pytest.approx(one[bb]["test"]["hr@10"],
                                                             abs=5e-3), bb


# ------------------------------------------------------------------ learning
LEARN = {"bert4rec": {"epochs": 40, "patience": 100}}  # masked items: ~20% of the positions


@pytest.mark.parametrize("backbone", OTHERS)
def test_learns_order_and_evaluation_matches_brute_force(backbone: str) -> None:
    """Walks i -> i+1 (near-uniform popularity): each model ranks the next item near the top,
    the trainer's HR@10 equals a user-by-user computation through ``user_repr``, and the model
    reads the order — the same histories reversed lose much of it."""
    data = with_attributes(markov_sequences(300, 40, 12, seed=0))
    over = LEARN.get(backbone, {})
    res = train(cfg_for(backbone, over.get("epochs", 10), batch_size=64,
                        patience=over.get("patience", 10)), data, keep_model=True)
    pop = np.bincount(data.items, minlength=40)
    pop_hr10 = float(np.mean([t in np.argsort(-pop, kind="stable")[:10] for t in data.test]))
    hr10 = res["test"]["hr@10"]
    assert hr10 > 0.75 > pop_hr10 + 0.4, (res["test"], pop_hr10)
    model = res["task"].model
    assert hr10 == pytest.approx(_brute_force_hr10(model, data), abs=1e-9)
    assert _brute_force_hr10(model, data, reverse=True) < hr10 - 0.25
    kind = get_backbone(backbone).Params().samples
    assert res["training_samples"]["kind"] == kind
    n = (data.training_windows(50) if kind == "windows" else data.training_prefixes())[0].size
    assert res["training_samples"]["count"] == n and res["sequences_trained"] == res["epochs"] * n


@pytest.mark.parametrize("backbone", ALL)
def test_leading_padding_changes_no_state(backbone: str) -> None:
    """Batches are trimmed to their longest history, so a history's state must not depend on
    how much padding precedes it (positions counted from the end, padding masked; GRU4Rec's
    bias-free GRU stays at zero through padding; SR-GNN's graphs ignore it)."""
    torch.manual_seed(0)
    data = with_attributes(markov_sequences(20, 30, 8, seed=0))
    model = get_backbone(backbone).build(30, small_params(backbone, max_len=12), data).eval()
    x = torch.tensor([[0, 0, 4, 5, 6, 20], [0, 3, 9, 9, 2, 1], [7, 8, 9, 10, 11, 12]])
    wide = torch.cat([torch.zeros(3, 4, dtype=torch.long), x], 1)
    with torch.no_grad():
        torch.testing.assert_close(model.user_repr(wide), model.user_repr(x))
        assert not torch.allclose(model.user_repr(x)[0], model.user_repr(x)[1])


# ------------------------------------------------------------------ shared parts
def test_session_graph_matches_the_definition() -> None:
    """Nodes, aliases and normalised in/out adjacency against a per-session loop."""
    x = torch.tensor([[0, 0, 5, 3, 5, 7], [0, 0, 0, 0, 2, 2], [1, 2, 3, 1, 2, 4]])
    nodes, alias, a_in, a_out = session_graphs(x)
    for b, row in enumerate(x.tolist()):
        seq = [i for i in row if i]
        uniq = sorted(set(seq))
        assert nodes[b, :len(uniq)].tolist() == uniq and not nodes[b, len(uniq):].any()
        pad = len(row) - len(seq)
        assert [uniq[a] for a in alias[b, pad:].tolist()] == seq
        adj = np.zeros((len(uniq), len(uniq)))
        for u, v in zip(seq, seq[1:]):
            adj[uniq.index(u), uniq.index(v)] = 1
        indeg, outdeg = adj.sum(0), adj.sum(1)
        want_in = adj.T / np.maximum(indeg, 1)[:, None]
        want_out = adj / np.maximum(outdeg, 1)[:, None]
        k = len(uniq)
        np.testing.assert_allclose(a_in[b, :k, :k].numpy(), want_in)
        np.testing.assert_allclose(a_out[b, :k, :k].numpy(), want_out)
        assert not a_in[b, k:].any() and not a_out[b, :, k:].any()


def test_augmentations() -> None:
    rng = np.random.default_rng(0)
    seq = np.arange(1, 11)
    c = augment(seq, "crop", rng, 0.6, 0.3, 0.6, 99)
    assert c.size == 6 and np.array_equal(c, np.arange(c[0], c[0] + 6))  # contiguous run
    m = augment(seq, "mask", rng, 0.6, 0.3, 0.6, 99)
    assert (m == 99).sum() == 3 and np.array_equal(m[m != 99], seq[m != 99])
    r = augment(seq, "reorder", rng, 0.6, 0.3, 0.6, 99)
    moved = np.flatnonzero(r != seq)
    assert sorted(r.tolist()) == seq.tolist() and moved.size >= 2
    assert moved.max() - moved.min() < 6  # inside one run of 6
    assert np.array_equal(augment(np.array([4]), "crop", rng, 0.6, 0.3, 0.6, 99), [4])
    seen = set()
    for s in range(40):  # two different operators per pair, all pairs reachable
        g = np.random.default_rng(s)
        a, b = g.choice(len(OPERATORS), 2, replace=False)
        seen.add((OPERATORS[a], OPERATORS[b]))
        v1, v2 = two_views(seq, np.random.default_rng(s), 0.6, 0.3, 0.6, 99)
        assert (v1.size == 6) == (OPERATORS[a] == "crop")
        assert ((v2 == 99).sum() == 3) == (OPERATORS[b] == "mask")
    assert len(seen) == 6


def test_nt_xent_matches_brute_force() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    z = torch.cat([z1, z2])
    want = []
    for i in range(10):
        j = (i + 5) % 10
        others = [k for k in range(10) if k != i]
        sims = torch.stack([z[i] @ z[k] / 0.5 for k in others])
        want.append(-(z[i] @ z[j] / 0.5) + torch.logsumexp(sims, 0))
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(torch.stack(want).mean().item(),
                                                        rel=1e-5)


def test_same_target_picks_another_sample_with_that_target() -> None:
    sd = markov_sequences(50, 12, 8, seed=4)
    users, ends = sd.training_prefixes()
    st = SameTarget(sd, users, ends)
    tgt = sd.sample_targets(users, ends)
    rng = np.random.default_rng(0)
    for g in range(users.size):
        o = st.pick(g, rng)
        assert tgt[o] == tgt[g]
        assert (o != g) == ((tgt == tgt[g]).sum() > 1)


def test_fdsa_item_features_are_mean_attribute_embeddings() -> None:
    data = with_attributes(markov_sequences(20, 30, 8, seed=0))
    data.attributes = ItemAttributes.from_lists(  # item 4 has no attributes
        [[i % 7, 7 + (i + 1) % 5] if i != 4 else [] for i in range(30)], {})
    a = data.attributes
    assert a.n_attributes == 12 and a.report["items_without"] == 1
    model = get_backbone("fdsa").build(30, small_params("fdsa"), data)
    x = torch.tensor([[0, 1, 5, 1], [3, 4, 5, 30]])
    got = model.item_features(x)
    emb = model.attributes.weight
    for b in range(2):
        for t in range(4):
            item = int(x[b, t]) - 1
            ids = a.ids[a.indptr[item]:a.indptr[item + 1]] if item >= 0 else []
            want = emb[list(ids)].mean(0) if len(ids) else torch.zeros(32)
            torch.testing.assert_close(got[b, t], want)


def test_bert4rec_masks_and_predicts_with_a_mask_token() -> None:
    model = get_backbone("bert4rec").build(30, small_params("bert4rec", max_len=6))
    seqs = [np.arange(1, 9), np.array([3])]
    v = model.make_views(seqs, [np.random.default_rng(s) for s in (0, 1)], None)
    masked, labels = v["masked"], v["labels"]
    assert masked.shape == (2, 6)  # the last max_len items
    hit = masked == model.mask_id
    assert hit.any(1).all() and torch.equal(labels > 0, hit)
    assert torch.equal(labels[0][hit[0]], torch.arange(3, 9)[hit[0]])
    assert torch.equal(masked[0][~hit[0]], torch.arange(3, 9)[~hit[0]])
    assert masked[1].tolist() == [0] * 5 + [model.mask_id] and labels[1, -1] == 3
    # prediction appends the mask token after the last max_len - 1 items
    model.eval()
    with torch.no_grad():
        x = torch.arange(1, 9).unsqueeze(0)
        want = model.hidden(torch.tensor([[4, 5, 6, 7, 8, model.mask_id]]))[:, -1]
        torch.testing.assert_close(model.user_repr(x), want)


# ------------------------------------------------------------------ the job and bad input
def _walks(n_users: int = 80) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    seqs = {}
    for u in range(n_users):
        s = [int(rng.integers(20))]
        for _ in range(int(rng.integers(4, 9))):
            s.append((s[-1] + 1) % 20)
        seqs[f"U{u}"] = [str(i + 1) for i in s]
    seqs["short"] = ["1", "2"]
    return seqs


def test_fdsa_job_reads_an_attribute_file_and_counts_unknown_items(tmp_path: Path) -> None:
    from recalign.jobs import train as train_job

    f = write_sequences(tmp_path / "seq.txt", _walks())
    attrs = {str(i + 1): [i % 4, 4 + i % 3] for i in range(20)}
    attrs.update({"999": [1], "1000": [2, 3]})  # not in the data: counted, not fatal
    a = tmp_path / "item2attributes.json"
    a.write_text(json.dumps(attrs))
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={f}",
                             "data.split.method=loo", "model.backbone=fdsa",
                             f"data.item_attributes={a}", f"output.root={tmp_path}",
                             "train.max_epochs=2"])
    out = train_job.run(cfg, None)
    rep = out["item_attributes"]
    assert rep["unknown_items"] == 2 and rep["attributes"] == 7 and rep["items_without"] == 0
    assert out["test"]["users_evaluated"] == 80 and out["users_without_heldout"] == 1
    assert set(out["test"]) >= {"hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20"}


@pytest.mark.parametrize("backbone", OTHERS)
def test_every_backbone_runs_as_a_job_without_further_keys(tmp_path: Path,
                                                           backbone: str) -> None:
    from recalign.jobs import train as train_job

    f = write_sequences(tmp_path / "seq.txt", _walks(40))
    extra = []
    if backbone == "fdsa":
        a = tmp_path / "attrs.json"
        a.write_text(json.dumps({str(i + 1): [i % 4] for i in range(20)}))
        extra = [f"data.item_attributes={a}"]
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={f}",
                             "data.split.method=loo", f"model.backbone={backbone}",
                             f"output.root={tmp_path}", "train.max_epochs=1", *extra])
    out = train_job.run(cfg, None)
    assert out["task"] == "next-item" and out["select_metric"] == "ndcg@10"
    assert out["model"]["params"] == get_backbone(backbone).Params().model_dump()
    assert out["test"]["users_evaluated"] == 40


@pytest.mark.parametrize("content,match", [
    ("[1, 2]", "expected an object item key"),
    ('{"1": [1, "brand"]}', "item '1'.*expected a list of integer attribute ids"),
    ("{not json", "not a JSON file"),
])
def test_bad_attribute_files_are_clear_errors(tmp_path: Path, content: str, match: str) -> None:
    import pyarrow as pa

    p = tmp_path / "a.json"
    p.write_text(content)
    with pytest.raises(DataError, match=match):
        from_json(p, pa.array(["1", "2"]))


@pytest.mark.parametrize("over,match", [
    (["model.backbone=fdsa"], "an attribute-aware model needs item attributes"),
    (["model.backbone=gru4rec", "model.params.max_len=1"], "max_len"),
    (["model.backbone=srgnn", "model.params.samples=windows"], "samples"),
    (["model.backbone=bert4rec", "model.params.mask_ratio=0"], "mask_ratio"),
    (["model.backbone=sasrec", "model.params.item_table=sharded",
      "model.params.table_optimizer={name: adam}"],
     r"'adam' has no fused fbgemm kernel on cpu; item_table: sharded needs one \(on cpu: "
     r"adagrad, rowwise_adagrad, sgd\)"),
])
def test_bad_model_input_is_a_clear_error(tmp_path: Path, over: list[str], match: str) -> None:
    from recalign.jobs import train as train_job

    f = write_sequences(tmp_path / "seq.txt", _walks(30))
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={f}",
                             "data.split.method=loo", f"output.root={tmp_path}",
                             "train.max_epochs=1", *over])
    with pytest.raises((ConfigError, DataError), match=match):
        train_job.run(cfg, None)


# ------------------------------------------------------------------ sharded item table
SHARDED = {"item_table": "sharded", "loss": "sampled", "negatives": 16,
           "table_optimizer": {"name": "rowwise_adagrad", "lr": 0.1}}
#: SASRec (the item table alone), SR-GNN (other lookups), FDSA (an attribute table beside it)
SHARDED_BACKBONES = ("sasrec", "srgnn", "fdsa")


def _sharded_ranks(rank: int, root: str, out: dict) -> None:
    from recalign.train.dist import Dist
    from recalign.train.tasks import with_task_defaults
    from recalign.train.trainer import RunInputs, Trainer

    for bb in SHARDED_BACKBONES:
        cfg = with_task_defaults(cfg_for(bb, 3, {**no_dropout(bb), **SHARDED}, batch_size=64))
        inp = RunInputs(cfg.model_dump(mode="json"), rank_data(), None, None, f"{root}/{bb}")
        r = Trainer(inp, Dist(rank, 2)).run()
        if rank == 0:
            out[bb] = r


def test_sharded_item_table_two_ranks_equal_one(tmp_path: Path) -> None:
    """``item_table: sharded``: the item rows in TorchRec tables, row-wise sharded over 2 ranks
    with a fused rowwise-Adagrad, sampled softmax looking up only targets and negatives; one
    process holds the same table unsharded with the same optimizer, so the loss curves and the
    evaluation agree (FDSA: its attribute table sharded beside the items)."""
    one = {bb: train(cfg_for(bb, 3, {**no_dropout(bb), **SHARDED}, batch_size=64), rank_data())
           for bb in SHARDED_BACKBONES}
    with mp.Manager() as m:
        out = m.dict()
        spawn_ranks(_sharded_ranks, 2, str(tmp_path), out)
        two = dict(out)
    for bb in SHARDED_BACKBONES:
        c1 = [h["rec"] for h in one[bb]["history"]]
        c2 = json.loads((tmp_path / bb / "curves.json").read_text())["loss"]["rec"]
        np.testing.assert_allclose(c2, c1, rtol=1e-4, err_msg=bb)
        assert one[bb]["item_table"] == two[bb]["item_table"] == "sharded"
        assert two[bb]["test"]["hr@10"] == pytest.approx(one[bb]["test"]["hr@10"], abs=5e-3)


def test_sharded_item_table_learns() -> None:
    data = markov_sequences(300, 40, 12, seed=0)
    res = train(cfg_for("sasrec", 10, {**small_params("sasrec"), **SHARDED}, batch_size=64),
                data, keep_model=True)
    assert res["test"]["hr@10"] > 0.75, res["test"]
    model = res["task"].model
    assert model.items is None and model.tables is not None
    assert res["test"]["hr@10"] == pytest.approx(_brute_force_hr10(model, data), abs=1e-9)


def test_fdsa_sharded_attribute_table_is_a_trained_torchrec_table() -> None:
    """``item_table: sharded`` with FDSA: the attribute rows leave the model's nn.EmbeddingBag
    for a third table of the TorchRec collection, start from the seeded init, are updated by
    the fused optimizer, and an item's feature is the mean of its attributes' rows there."""
    from recalign.tables.seeded_init import seeded_rows

    data = rank_data()
    res = train(cfg_for("fdsa", 2, {**no_dropout("fdsa"), **SHARDED}, batch_size=64), data,
                keep_model=True)
    model = res["task"].model
    assert model.attributes is None and model.tables.keys == ["user", "item", "attribute"]
    rows = model.tables.all_rows_of("attribute").detach()
    cfg = next(c for c in model.tables.configs if c.name == "attribute")
    assert rows.shape == (12, 32)
    init = seeded_rows("attribute", 0, 12, 32, cfg.weight_init_min, cfg.weight_init_max, 3)
    moved = (rows - init).abs().amax(1)
    assert (moved > 1e-3).all(), moved  # every attribute occurs in training
    x = torch.tensor([[0, 1, 5, 1], [3, 4, 5, 30]])
    a = data.attributes
    want = torch.stack([torch.stack([
        rows[a.ids[a.indptr[i - 1]:a.indptr[i]]].mean(0) if i > 0 else torch.zeros(32)
        for i in row.tolist()]) for row in x])
    torch.testing.assert_close(model.item_features(x).detach(), want)


def test_lr_step_decay_follows_the_epoch_and_changes_only_later_epochs() -> None:
    """``train.lr_decay`` (SR-GNN's authors: ×0.1 every 3 epochs, with Adam L2 1e-5): the
    optimizer's lr per epoch is lr·0.1^(epoch // 3); the first 3 epochs are those of the run
    without decay, later ones differ; a fused table optimizer (own lr) is refused."""
    data = markov_sequences(120, 20, 8, seed=2)
    kw = {"batch_size": 64, "patience": 100, "min_epochs": 0,
          "optimizer": {"lr": 0.005, "weight_decay": 1e-5}}
    decayed = train(cfg_for("srgnn", 5, lr_decay={"every": 3, "factor": 0.1}, **kw), data)
    plain = train(cfg_for("srgnn", 5, **kw), data)
    lrs = [h["lr"] for h in decayed["history"]]
    np.testing.assert_allclose(lrs, [5e-3, 5e-3, 5e-3, 5e-4, 5e-4], rtol=1e-12)
    assert "lr" not in plain["history"][0]
    d, p = ([h["rec"] for h in r["history"]] for r in (decayed, plain))
    np.testing.assert_allclose(d[:3], p[:3], rtol=1e-6)
    assert abs(d[3] - p[3]) > 1e-4 and abs(d[4] - p[4]) > 1e-4
    with pytest.raises(ConfigError, match="train.lr_decay: the decay applies to torch"):
        train(cfg_for("sasrec", 1, {**small_params("sasrec"), **SHARDED},
                      lr_decay={"every": 3}), data)


def test_length_buckets_keep_every_sample_once_and_cut_padding() -> None:
    """``length_buckets: k``: each run of k batches sorted by length into batches: every sample
    still trained once per epoch, batches much narrower than uniformly drawn ones."""
    from recalign.data.sequences import SequenceData
    from recalign.train.dist import Dist
    from recalign.train.tasks import with_task_defaults
    from recalign.train.tasks.next_item import NextItemTask
    from recalign.train.trainer import RunInputs

    rng = np.random.default_rng(0)
    lens = np.where(rng.random(400) < 0.1, 40, 4)  # a few long histories among short ones
    items = rng.integers(0, 50, lens.sum())
    sd = SequenceData(np.concatenate([[0], np.cumsum(lens)]), items, np.full(400, 1),
                      np.full(400, 2), 50)
    widths = {}
    for k in (0, 4):
        cfg = with_task_defaults(cfg_for("sasrec", 1, small_params(
            "sasrec", samples="prefixes", length_buckets=k), batch_size=32))
        task = NextItemTask(cfg, RunInputs(cfg.model_dump(mode="json"), sd, None, None, ""),
                            Dist(0, 1), np.random.default_rng(1))
        task.build()
        seen, w = [], []
        for b in task.batches():
            seen.append(b.targets[:, -1])
            w.append(b.inputs.shape[1])
        got = torch.cat(seen).sort().values
        want = torch.from_numpy(sd.sample_targets(*task.samples) + 1).sort().values
        assert torch.equal(got, want) and len(got) == task.samples[0].size
        widths[k] = float(np.mean(w))
    assert widths[4] < 0.5 * widths[0], widths


# ------------------------------------------------------------------ real sources
@pytest.mark.parametrize("source,path,backbone", [
    ("unisrec", "amazon-scientific", "gru4rec"),
    ("movielens", "movielens-latest-small", "fdsa"),   # attributes: the movies' genres
    ("amazon-sequences", "amazon-beauty-sequences/Beauty.txt", "srgnn"),
])
def test_real_sources_train_leave_one_out(tmp_path: Path, shared_data: Path, source: str,
                                          path: str, backbone: str) -> None:
    """Sequences from each kind of source (UniSRec positions, MovieLens timestamps, integer-id
    Beauty) train a few steps and are evaluated leave-one-out over all items."""
    from recalign.jobs import train as train_job

    cfg = load_config(None, [f"data.source={source}", f"data.path={shared_data / path}",
                             "data.split.method=loo", f"model.backbone={backbone}",
                             f"output.root={tmp_path}", "train.max_epochs=1",
                             "train.steps_per_epoch=3", "eval.max_users=300",
                             "train.threads=1"])
    out = train_job.run(cfg, None)
    assert out["test"]["users_evaluated"] == 300
    assert 0 <= out["test"]["hr@10"] <= out["test"]["hr@20"] <= 1
    if backbone == "fdsa":
        rep = out["item_attributes"]
        assert rep["source"] == "items table" and rep["attributes"] >= 18  # genres
        assert rep["items_without"] < 50
