"""CLLM4Rec: documents, losses against a brute force, frozen LM, 1 vs 2 ranks, the job, bad input.

Every test but one runs a tiny randomly initialised Llama (SmolLM2's architecture family and
tokenizer, 2 layers of width 32) so the suite stays fast; the slow one trains through the real
SmolLM2-135M."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from gloo_ranks import spawn_ranks  # noqa: E402
from llm_fixtures import write_text_dataset  # noqa: E402

from recalign.config import Config  # noqa: E402
from recalign.data.documents import LMData  # noqa: E402
from recalign.data.ingest import load_dataset  # noqa: E402
from recalign.errors import ConfigError  # noqa: E402
from recalign.train.api import make_trainer, train  # noqa: E402


def tiny_lm(folder: Path, tokenizer_from: str, hidden: int = 32) -> str:
    from recalign.models.cllm4rec import random_lm

    return random_lm(folder, tokenizer_from, hidden=hidden)


@pytest.fixture(scope="module")
def lm(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_lm(tmp_path_factory.mktemp("tinylm"), model_dir)


def cfg_of(folder: Path, lm: str, **params) -> Config:
    return Config.model_validate({
        "data": {"source": "parquet", "path": str(folder), "name": "t",
                 "split": {"method": "given"}},
        "model": {"backbone": "cllm4rec", "params": {"lm": lm, "max_tokens": 64, **params}},
        "train": {"max_epochs": 2, "batch_size": 4, "seed": 3}})


def clustered(folder: Path, n_clusters: int = 4, per: int = 12, users: int = 32,
              n_train: int = 8) -> Path:
    """Users interact within one topic cluster of items; reviews name the topic."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["gardening", "chess", "baking", "astronomy", "sailing"]
    rng = np.random.default_rng(0)
    items = {"item_id": [], "title": [], "description": [], "attributes": []}
    for c in range(n_clusters):
        for j in range(per):
            items["item_id"].append(f"i{c}-{j}")
            items["title"].append(f"A {topics[c]} book {j}")
            items["description"].append(None)
            items["attributes"].append(json.dumps({"genres": [topics[c]]}))
    inter = {k: [] for k in ("user_id", "item_id", "rating", "timestamp", "review", "split")}
    for u in range(users):
        c = u % n_clusters
        n_u = n_train - u % 3  # documents of different lengths
        picks = rng.choice(per, n_u + 2, replace=False)
        for k, j in enumerate(picks):
            inter["user_id"].append(f"u{u}")
            inter["item_id"].append(f"i{c}-{j}")
            inter["rating"].append(5.0)
            inter["timestamp"].append(k)
            inter["review"].append(f"I love {topics[c]}." if k % 2 else None)
            inter["split"].append("train" if k < n_u else ("valid" if k == n_u else "test"))
    pq.write_table(pa.table(items), folder / "items.parquet")
    pq.write_table(pa.table(inter), folder / "interactions.parquet")
    return folder


# ---------------------------------------------------------------------------- documents
def test_documents_keep_tokens_whole_and_use_training_text_only(tmp_path: Path, lm: str) -> None:
    from transformers import AutoTokenizer

    folder = write_text_dataset(tmp_path / "d", n_items=12, n_users=5, per_user=6)
    ds = load_dataset(cfg_of(folder, lm).data)
    tok = AutoTokenizer.from_pretrained(lm)
    data = LMData.from_dataset(ds, tok, 49152, max_text_tokens=6)
    n_train = ds.counts()["train"]
    assert data.doc_user.size == n_train == data.report["content_from_reviews"]
    texts = [tok.decode(data.text_ids[data.text_ptr[d]:data.text_ptr[d + 1]])
             for d in range(data.doc_user.size)]
    assert not any("LEAKMARK" in t for t in texts)  # valid/test reviews never become documents
    assert data.report["content_texts_truncated"] == n_train  # every review > 6 tokens
    assert all(data.text_ptr[d + 1] - data.text_ptr[d] == 6 for d in range(data.doc_user.size))
    # entity tokens: one id each, after the words
    ids, plen = data.content_doc(0, 64)
    u, i = int(data.doc_user[0]), int(data.doc_item[0])
    assert ids[0] == 49152 + u and ids.count(49152 + ds.n_users + i) == 1
    assert tok.decode(ids[1:plen - 2]) == " wrote the following review for"
    items = data.train_of(2)
    assert sorted(items.tolist()) == sorted(ds.matrix("train")[2].indices.tolist())
    ids, _ = data.collab_doc(2, items, 64)
    assert ids[-len(items):] == (49152 + ds.n_users + items).tolist()
    # a prompt too long keeps its suffix: the last items and "user_2 will interact with"
    full, cut = data.rec_prompt(2, items, 1000)
    short, cut2 = data.rec_prompt(2, items, 9)
    assert not cut and cut2 and short == full[-9:] and len(short) == 9
    assert short[-len(data.pieces["will"]) - 1] == 49152 + 2
    assert tok.decode(short[-len(data.pieces["will"]):]) == " will interact with"


def test_item_text_stands_in_where_an_interaction_has_no_review(tmp_path: Path, lm: str) -> None:
    from transformers import AutoTokenizer

    folder = clustered(tmp_path / "c", users=4)
    ds = load_dataset(cfg_of(folder, lm).data)
    tok = AutoTokenizer.from_pretrained(lm)
    data = LMData.from_dataset(ds, tok, 49152)
    r = data.report
    n = [8 - u % 3 for u in range(4)]  # training items per user; odd positions have reviews
    assert r["content_from_reviews"] == sum(k // 2 for k in n)
    assert r["content_from_item_text"] == sum(k - k // 2 for k in n)
    texts = {tok.decode(data.text_ids[data.text_ptr[d]:data.text_ptr[d + 1]])
             for d in range(data.doc_user.size)}
    assert " I love gardening." in texts
    title = ds.items["title"][int(data.doc_item[0])].as_py()
    assert any(t == f" {title} (genres: {title.split()[1]})" for t in texts)
    none = LMData.from_dataset(ds, tok, 49152, content="none")
    assert none.doc_user.size == 0 and none.report["content_documents"] == 0


# ---------------------------------------------------------------------------- losses
def _brute_states(task, docs: list[list[int]], side: str) -> list[torch.Tensor]:
    """Each document alone (no padding, no batch): the LM's states at every position."""
    m = task.model
    out = []
    for ids in docs:
        t = torch.tensor([ids])
        emb = m.embed(t, side)
        out.append(m.lm.base_model(inputs_embeds=emb).last_hidden_state[0].float())
    return out


def _row(tables, data: LMData, t: int) -> torch.Tensor:
    """The table row of unified id ``t`` (a user or an item token)."""
    none = torch.zeros(0, dtype=torch.long)
    if t < data.item0:
        return tables.lookup(torch.tensor([t - data.user0]), none)[0]
    return tables.lookup(none, torch.tensor([t - data.item0]))[1]


def _unpad(batch) -> list[list[int]]:
    return [batch.ids[r, :int(batch.mask[r].sum())].tolist() for r in range(len(batch))]


@pytest.mark.parametrize("kind", ["collab", "content", "rec", "rec-all"])
def test_losses_match_a_per_document_brute_force(tmp_path: Path, lm: str, kind: str) -> None:
    folder = clustered(tmp_path / "c", users=6, n_train=7)
    target = "all" if kind == "rec-all" else "heldout"
    kind = kind[:3] if kind.startswith("rec") else kind
    phase = "finetune" if kind == "rec" else "pretrain"
    cfg = cfg_of(folder, lm, phase=phase, warmup_epochs=0, lam=0.7)
    if phase == "finetune":  # a pretraining run to start from
        pre = train(cfg_of(folder, lm, warmup_epochs=0), load_dataset(cfg.data),
                    run_dir=str(tmp_path / "pre"))
        cfg = cfg_of(folder, lm, phase=phase, lam=0.7, init_from=pre["run_dir"],
                     finetune_target=target)
    tr = make_trainer(cfg, load_dataset(cfg.data))
    task = tr.task
    batch = next(iter(task._kind_batches(kind, 11)))
    assert len(batch) == 4 and batch.mask.sum(1).unique().numel() > 1  # padding is exercised
    got = task.loss(batch)
    m, data = task.model, task.data
    side = "content" if kind == "content" else "collab"
    docs = _unpad(batch)
    with torch.no_grad():
        states = _brute_states(task, docs, side)
        items = m.collab.all_rows()[1]
        terms, n = 0.0, 0
        for r, (ids, h) in enumerate(zip(docs, states)):
            if kind == "rec":
                logp = torch.log_softmax(h[-1] @ items.T, 0)
                goal = batch.extra["cols"][batch.extra["rows"] == r]
                terms -= float(logp[goal].sum())
                n += 1
                # the prompt holds the other training items, the targets are the removed ones
                prompt_items = {t - data.item0 for t in ids if t >= data.item0}
                train_items = set(data.train_of(int(ids[0] - data.user0)).tolist())
                k = max(1, int(np.floor(0.2 * len(train_items))))
                assert len(prompt_items) == len(train_items) - k
                if target == "heldout":  # the removed items (paper)
                    assert len(goal) == k and prompt_items | set(goal.tolist()) == train_items
                    assert not prompt_items & set(goal.tolist())
                else:  # every training item (the authors' code)
                    assert sorted(goal.tolist()) == sorted(train_items)
                continue
            plen = (1 + len(data.pieces["interacted"]) if kind == "collab"
                    else 3 + len(data.pieces["wrote"]) + len(data.pieces["colon"]) - 1)
            for t in range(plen - 1, len(ids) - 1):
                if kind == "collab":
                    logp = torch.log_softmax(h[t] @ items.T, 0)[ids[t + 1] - data.item0]
                else:
                    logp = torch.log_softmax(m.word_logits(h[t]), 0)[ids[t + 1]]
                terms -= float(logp)
                n += 1
        want_main = terms / n
        reg = 0.0
        for ids in docs:
            ents = sorted({t for t in ids if t >= data.user0}) if kind != "rec" else sorted(
                {ids[0]} | {data.item0 + i for i in data.train_of(ids[0] - data.user0)})
            for t in ents:
                reg += float(((_row(m.collab, data, t) - _row(m.content, data, t)) ** 2).sum())
        want_reg = reg / len(docs)
    key = {"collab": "collab_ce", "content": "content_ce", "rec": "rec_nll"}[kind]
    assert float(got[key]) == pytest.approx(want_main, rel=1e-4)
    assert float(got["mutual"]) == pytest.approx(want_reg, rel=1e-4)
    assert float(got["loss"].detach()) == pytest.approx(want_main + 0.7 * want_reg, rel=1e-4)


def test_finetuning_removes_random_items_whatever_the_item_order(tmp_path: Path,
                                                                lm: str) -> None:
    """With ``shuffle_items: false`` the prompt keeps the source's order, but which items leave
    it is still drawn afresh every epoch (not always the first ones)."""
    folder = clustered(tmp_path / "c", users=6, n_train=8)
    ds = load_dataset(cfg_of(folder, lm).data)
    pre = train(cfg_of(folder, lm, warmup_epochs=0), ds, run_dir=str(tmp_path / "pre"))
    tr = make_trainer(cfg_of(folder, lm, phase="finetune", init_from=pre["run_dir"],
                             shuffle_items=False), ds)
    data = tr.task.data
    u = 0
    order = data.train_of(u).tolist()
    removed = set()
    for seed in range(6):
        b = tr.task._make("rec", np.array([u]), seed)
        kept = [t - data.item0 for t in _unpad(b)[0] if t >= data.item0]
        assert kept == [i for i in order if i in kept]  # the source's order
        removed.add(tuple(sorted(b.extra["cols"].tolist())))
    assert len(removed) > 1  # not the same (first) items every epoch


def test_sampled_softmax_is_the_logq_corrected_loss_over_shared_negatives(
        tmp_path: Path, lm: str) -> None:
    """``loss: sampled`` (catalogues too large for full logits): the collaborative LM's loss
    over the target and the batch's shared negatives, each logit minus log q (uniform here),
    a negative equal to the target masked; computed by hand from the same draw."""
    folder = clustered(tmp_path / "c", users=6)
    cfg = cfg_of(folder, lm, warmup_epochs=0, loss="sampled", negatives=7)
    tr = make_trainer(cfg, load_dataset(cfg.data))
    task, m = tr.task, tr.task.model
    batch = next(iter(task._kind_batches("collab", 3)))
    h = m.hidden(batch.ids, batch.mask, "collab").reshape(-1, m.dim)[batch.pos]
    drawn = task.sampler.sample(7, task.neg_gen)  # model ids
    got = task._item_ce(h, batch.targets, drawn)
    neg = drawn - 1  # item ids
    items = m.collab.all_rows()[1]
    logq = -np.log(m.n_items)
    want = 0.0
    for hp, t in zip(h, batch.targets):
        logits = torch.cat([(hp @ items[t]).reshape(1) - logq, hp @ items[neg].T - logq])
        logits[1:][neg == t] = -float("inf")
        want -= float(torch.log_softmax(logits, 0)[0])
    assert float(got) == pytest.approx(want, rel=1e-5)
    out = train(cfg, load_dataset(cfg.data))
    assert out["history"][-1]["collab_ce"] < out["history"][0]["collab_ce"]


def test_only_the_trained_side_learns_and_the_lm_stays_frozen(tmp_path: Path, lm: str) -> None:
    folder = clustered(tmp_path / "c", users=8)
    cfg = cfg_of(folder, lm, warmup_epochs=0)
    tr = make_trainer(cfg, load_dataset(cfg.data))
    task, m = tr.task, tr.task.model
    before = {k: v.clone() for k, v in m.lm.state_dict().items()}
    assert not any(q.requires_grad for q in m.lm.parameters())
    # the optimizer holds the 4 tables and nothing else
    rows = task.data.n_users + task.data.n_items
    assert sum(q.numel() for q in tr.optim.params) == 2 * rows * 32
    for kind, trained, frozen in (("collab", m.collab, m.content),
                                  ("content", m.content, m.collab)):
        tr.optim.zero_grad()
        task.loss(next(iter(task._kind_batches(kind, 5))))["loss"].backward()
        assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in trained.parameters())
        assert all(q.grad is None for q in frozen.parameters())
    out = train(cfg, load_dataset(cfg.data), keep_model=True)
    after = out["task"].model.lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert out["history"][0]["collab_ce"] > 0 and "mutual" in out["history"][0]


# ---------------------------------------------------------------------------- training
def test_learns_topic_clusters_through_the_job(tmp_path: Path, lm: str,
                                               capsys: pytest.CaptureFixture) -> None:
    """``recalign cllm4rec`` (pretrain, finetune, predict) on clustered data: the test items
    are found far above chance, and the exported snapshot's scores are the evaluation's."""
    from recalign.jobs import cllm4rec as job
    from recalign.storage.snapshot import SnapshotStore

    folder = clustered(tmp_path / "c", users=32)
    conf = tmp_path / "c.yaml"
    conf.write_text(json.dumps({
        "data": {"source": "parquet", "path": str(folder), "name": "topics",
                 "split": {"method": "given"}},
        "model": {"params": {"lm": lm, "max_tokens": 64, "warmup_epochs": 1, "rounds": 4,
                             "finetune_epochs": 6, "lr": 0.01}},
        "train": {"batch_size": 8}, "output": {"root": str(tmp_path / "root")}}))
    assert job.main(["--config", str(conf)]) == 0
    store = SnapshotStore(str(tmp_path / "root"))
    ft = store.open("topics", "cllm4rec")
    pred = store.open("topics", "cllm4rec-predictions").read_table("predictions")
    ds = load_dataset(cfg_of(folder, lm).data)
    test, train_m = ds.matrix("test"), ds.matrix("train")
    keys = ds.user_map.keys.to_pylist()
    ikeys = ds.item_map.keys.to_pylist()
    hits = 0
    for uk, items in zip(pred["user_key"].to_pylist(), pred["items"].to_pylist()):
        u = keys.index(uk)
        top = [ikeys.index(k) for k in items[:20]]
        assert not set(top) & set(train_m[u].indices.tolist())  # training items masked
        hits += len(set(top) & set(test[u].indices.tolist()))
    recall20 = hits / 32
    # one test item per user among the ~41 items not in training: chance is about 1/2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["phases"] == ["pretrain", "finetune", "predict"]
    assert summary["finetune"]["test"]["recall@20"] == pytest.approx(recall20, abs=1e-6)
    assert recall20 >= 0.9
    # the snapshot becomes a FAISS index that recalign query serves
    from recalign.jobs import export as export_job
    from recalign.jobs import query as query_job

    sets = ["--config", str(conf), "--set", "export.source_artifact=cllm4rec"]
    assert export_job.main(sets) == 0
    assert query_job.main(sets + ["--user", keys[0], "-k", "3", "--include-train"]) == 0
    served = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from recalign.index.retrieval import embedding_arrays

    _, ukeys, uvec = embedding_arrays(ft.read_table("users"))
    _, ikeys_s, ivec = embedding_arrays(ft.read_table("items"))
    scores = ivec @ uvec[ukeys.to_pylist().index(keys[0])]
    assert [r["key"] for r in served["items"]] == [ikeys_s[int(j)].as_py()
                                                   for j in np.argsort(-scores)[:3]]
    assert ft.manifest["vectors"].startswith("RecLLM user states")


def test_torchrec_token_tables_train_as_the_torch_ones(tmp_path: Path, lm: str) -> None:
    """The same four tables in TorchRec embedding-bag collections (the sharding backend) give
    the same run as plain nn.Embedding tables."""
    folder = clustered(tmp_path / "c", users=8)
    ds = load_dataset(cfg_of(folder, lm).data)
    runs = {b: train(cfg_of(folder, lm, warmup_epochs=1, tables=b), ds)
            for b in ("torch", "torchrec")}
    for k in ("content_ce", "collab_ce", "mutual", "loss"):
        a = [h.get(k) for h in runs["torch"]["history"]]
        b = [h.get(k) for h in runs["torchrec"]["history"]]
        assert [x is None for x in a] == [x is None for x in b] and any(x for x in a), k
        assert [x for x in a if x is not None] == pytest.approx(
            [x for x in b if x is not None], rel=1e-5), k
    assert runs["torch"]["test"] == pytest.approx(runs["torchrec"]["test"], abs=1e-6)
    # epoch 0 is the content-only warm-up (no C-step regulariser), epoch 1 alternates L/C
    first, second = runs["torch"]["history"]
    assert "content_ce" in first and "collab_ce" not in first and "mutual" not in first
    assert {"content_ce", "collab_ce", "mutual"} <= set(second)


def _rank(rank: int, folder: str, lm: str, out: dict) -> None:
    from recalign.train.dist import Dist
    from recalign.train.trainer import RunInputs, Trainer

    cfg = cfg_of(Path(folder), lm, warmup_epochs=1)
    from recalign.train.tasks import task_of, with_task_defaults

    cfg = with_task_defaults(cfg)
    ds = load_dataset(cfg.data)
    data = task_of(cfg).prepare(cfg, ds)
    inp = RunInputs(config=cfg.model_dump(mode="json"), data=data, user_keys=ds.user_map.keys,
                    item_keys=ds.item_map.keys, run_dir=f"{folder}/run2")
    r = Trainer(inp, Dist(rank, 2)).run()
    if rank == 0:
        out["summary"] = {"test": r["test"], "valid": r["valid"]}
        out["curves"] = json.loads(Path(f"{folder}/run2/curves.json").read_text())


def assert_same_curves(history: list[dict], curves: dict, rel: float) -> None:
    """The loss terms of a 1-process run's history and of a 2-rank run's curves.json agree
    epoch by epoch (None where an epoch has no such term, e.g. collab_ce in the warm-up)."""
    for k in ("collab_ce", "content_ce", "mutual", "loss"):
        want = [h.get(k) for h in history]
        got = curves["loss"][k]
        assert any(a is not None for a in want) and len(want) == len(got), k
        for a, b in zip(want, got):
            assert (a is None and b is None) or a == pytest.approx(b, rel=rel), (k, want, got)


def test_two_ranks_follow_the_one_rank_run(tmp_path: Path, lm: str) -> None:
    folder = clustered(tmp_path / "c", users=10)
    one = train(cfg_of(folder, lm, warmup_epochs=1), load_dataset(cfg_of(folder, lm).data))
    with mp.Manager() as mgr:
        shared = mgr.dict()
        spawn_ranks(_rank, 2, str(folder), lm, shared)
        out = dict(shared)
    assert_same_curves(one["history"], out["curves"], rel=2e-4)
    for m in ("recall@20", "recall@40", "ndcg@100"):
        assert out["summary"]["test"][m] == pytest.approx(one["test"][m], abs=1e-6)


def test_resume_continues_the_phase_schedule_exactly(tmp_path: Path, lm: str) -> None:
    """Stopped after the warm-up and one round, resumed: the same rounds, losses and metrics."""
    from recalign.train.checkpoint import FolderCheckpoints, latest_checkpoint
    from recalign.train.trainer import Hooks

    folder = clustered(tmp_path / "c", users=8)
    ds = load_dataset(cfg_of(folder, lm).data)

    def cfg(epochs: int) -> Config:
        c = cfg_of(folder, lm, warmup_epochs=1)
        c.train.max_epochs, c.train.checkpoint_every = epochs, 1
        return c

    straight = train(cfg(4), ds)
    store = FolderCheckpoints(str(tmp_path / "run"))
    save = lambda local, epoch, metrics: store.save(local, epoch)  # noqa: E731
    # one run folder, as a real resume: the best weights of the first part stay readable
    run = str(tmp_path / "run")
    train(cfg(2), ds, hooks=Hooks(save=save), run_dir=run)
    resumed = train(cfg(4), ds, hooks=Hooks(load=lambda: latest_checkpoint(run), save=save),
                    run_dir=run)
    assert resumed["resumed_from_epoch"] == 2
    strip = lambda hs: [{k: v for k, v in h.items() if not k.endswith("_s")} for h in hs]  # noqa
    assert strip(resumed["history"]) == strip(straight["history"])
    assert "collab_ce" not in straight["history"][0] and "collab_ce" in straight["history"][3]
    assert resumed["test"] == straight["test"]
    assert resumed["tokens_trained"] == straight["tokens_trained"]


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error(tmp_path: Path, lm: str, model_dir: str) -> None:
    from transformers import AutoTokenizer, BertConfig

    folder = clustered(tmp_path / "c", users=4)
    ds = load_dataset(cfg_of(folder, lm).data)
    # not a causal LM
    bert = tmp_path / "bert"
    BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8, architectures=["BertModel"]).save_pretrained(bert)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(lm) / f, bert / f)
    with pytest.raises(ConfigError, match="model.params.lm .*not a causal LM"):
        make_trainer(cfg_of(folder, str(bert)), ds)
    # a vocabulary already holding entity tokens
    ext = tmp_path / "extended"
    shutil.copytree(lm, ext)
    tok = AutoTokenizer.from_pretrained(ext)
    tok.add_tokens(["user_7", "item_3"])
    tok.save_pretrained(ext)
    with pytest.raises(ConfigError, match="already holds entity tokens \\(item_3, user_7"):
        make_trainer(cfg_of(folder, str(ext)), ds)
    # documents longer than the model's context
    with pytest.raises(ConfigError, match="max_tokens 1024 exceeds the LM's context of 512"):
        make_trainer(cfg_of(folder, lm, max_tokens=1024), ds)
    # LLM-CF with a regulariser
    with pytest.raises(ConfigError, match="lam 1.0: must be 0 with content: none"):
        make_trainer(cfg_of(folder, lm, content="none"), ds)
    # fine-tuning without, or from an incompatible, pretraining run
    with pytest.raises(ConfigError, match="init_from: fine-tuning starts from"):
        make_trainer(cfg_of(folder, lm, phase="finetune"), ds)
    wide = tiny_lm(tmp_path / "wide", model_dir, hidden=48)
    pre = train(cfg_of(folder, wide, warmup_epochs=0), ds, run_dir=str(tmp_path / "pre48"))
    with pytest.raises(ConfigError, match="init_from .*pre48: its dim is 48, this run's is 32"):
        make_trainer(cfg_of(folder, lm, phase="finetune", init_from=pre["run_dir"]), ds)
    with pytest.raises(ConfigError, match="init_from .*: no result.json"):
        make_trainer(cfg_of(folder, lm, phase="finetune", init_from=str(tmp_path)), ds)


def test_users_without_training_items_are_counted_not_fatal(tmp_path: Path, lm: str) -> None:
    folder = clustered(tmp_path / "c", users=8)
    t = pq.read_table(folder / "interactions.parquet")
    split = t["split"].to_pylist()
    users = t["user_id"].to_pylist()
    split = ["valid" if (u == "u3" and s == "train") else s for u, s in zip(users, split)]
    pq.write_table(t.set_column(t.schema.get_field_index("split"), "split", pa.array(split)),
                   folder / "interactions.parquet")
    out = train(cfg_of(folder, lm, warmup_epochs=0), load_dataset(cfg_of(folder, lm).data))
    assert out["documents"]["users_without_training_items"] == 1
    assert out["documents"]["content_documents"] == sum(8 - u % 3 for u in range(8) if u != 3)
    assert out["test"]["users_evaluated"] == 8  # scored from the bare prompt, still evaluated


@pytest.mark.slow
def test_the_real_smollm2_reads_the_content_documents(tmp_path: Path, lm: str,
                                                      model_dir: str) -> None:
    """Through SmolLM2-135M the content LM's cross-entropy on the reviews and titles is far
    below a uniform guess over its 49,152 words (ln = 10.8), which a random LM of the same
    family stays at: the frozen pretrained LM, not the tables, models the text."""
    folder = clustered(tmp_path / "c", users=4)
    ds = load_dataset(cfg_of(folder, lm).data)
    ce = {}
    for name, path in (("smollm2", model_dir), ("random", lm)):
        c = cfg_of(folder, path, warmup_epochs=1, content_per_epoch=8, dtype="bfloat16")
        c.train.max_epochs = 1
        out = train(c, ds)
        ce[name] = out["history"][0]["content_ce"]
        assert out["lm_parameters_frozen"] > (1e8 if name == "smollm2" else 0)
    assert ce["smollm2"] < 7.0 < 10.0 < ce["random"], ce
