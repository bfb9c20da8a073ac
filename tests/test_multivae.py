"""Multi-VAE and the ``multinomial`` task through the one trainer: the loss against a dense
brute force with the exact KL schedule, learning clustered tastes far beyond popularity,
evaluation and export against brute force, 1 vs 2 gloo ranks, checkpoint resume, the train
job with nothing but a source, a per-user split and the backbone, and bad input."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from gloo_ranks import spawn_ranks
from recalign.config import Config, load_config
from recalign.errors import ConfigError
from recalign.models.multivae import MultiVAE
from recalign.train.api import make_trainer, train
from recalign.train.data import CFData


def clustered(n_users: int = 400, n_clusters: int = 8, per: int = 25, k: int = 10,
              seed: int = 0) -> CFData:
    """Disjoint clusters of ``per`` items, all equally popular; user u draws ``k`` items of
    cluster ``u % n_clusters``: 8 for training, 1 for validation, 1 for test."""
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list[int], list[int]]] = {s: ([], []) for s in ("tr", "va", "te")}
    for u in range(n_users):
        items = (u % n_clusters) * per + rng.choice(per, k, replace=False)
        for s, its in (("tr", items[:-2]), ("va", items[-2:-1]), ("te", items[-1:])):
            parts[s][0].extend([u] * its.size)
            parts[s][1].extend(its.tolist())
    shape = (n_users, n_clusters * per)
    m = {s: sp.csr_matrix((np.ones(len(r)), (r, c)), shape=shape) for s, (r, c) in parts.items()}
    return CFData(m["tr"], m["va"], m["te"])


def vae_config(params: dict | None = None, **train_settings) -> Config:
    return Config.model_validate({
        "model": {"backbone": "multivae", "params": {"hidden": 64, "latent": 16, **(params or {})}},
        "train": {"max_epochs": 15, "batch_size": 50, "threads": 1, "seed": 1, "device": "cpu",
                  **train_settings}})


def dense(m: sp.csr_matrix, users: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(m[users].toarray()).double()


def brute_scores(model: MultiVAE, x: torch.Tensor) -> torch.Tensor:
    """Logits at z = mu from binary rows ``x``, by the paper's dense formulas (float64)."""
    w = {k: v.detach().double() for k, v in model.state_dict().items()}
    xn = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    h = torch.tanh(xn @ w["enc_in.weight"] + w["enc_in_bias"])
    mu = (h @ w["enc_out.weight"].T + w["enc_out.bias"])[:, :model.params.latent]
    hd = torch.tanh(mu @ w["dec_hidden.weight"].T + w["dec_hidden.bias"])
    return hd @ w["dec_out.weight"].T + w["dec_out.bias"]


# ------------------------------------------------------------------ defaults and the loss
def test_backbone_task_and_published_defaults() -> None:
    from recalign.models.registry import get_backbone
    from recalign.train.tasks import task_of, with_task_defaults
    from recalign.train.tasks.multinomial import MultinomialTask

    cfg = Config.model_validate({"model": {"backbone": "multivae"}})
    assert get_backbone("multivae") is MultiVAE and task_of(cfg) is MultinomialTask
    full = with_task_defaults(cfg)
    assert (full.train.batch_size, full.train.eval_every, full.eval.protocol) == (500, 1,
                                                                                  "cllm4rec")
    opt = full.train.optimizer
    assert (opt.name, opt.lr, opt.weight_decay) == ("adam", 1e-3, 0.0)
    m = MultiVAE.build(50)
    p = m.params
    assert (p.hidden, p.latent, p.dropout, p.anneal_cap, p.total_anneal_steps) == (
        600, 200, 0.5, 0.2, 200_000)
    # [50 -> 600] tanh -> mu, logvar (200 each); [200 -> 600] tanh -> 50
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items() if k.endswith("weight")}
    assert shapes == {"enc_in.weight": (50, 600), "enc_out.weight": (400, 600),
                      "dec_hidden.weight": (600, 200), "dec_out.weight": (50, 600)}
    assert [m.beta(s) for s in (0, 20_000, 40_000, 10**6)] == [0.0, 0.1, 0.2, 0.2]
    # a user explicitly choosing another protocol keeps it
    other = with_task_defaults(Config.model_validate({"model": {"backbone": "multivae"},
                                                      "eval": {"protocol": "rlmrec"}}))
    assert other.eval.protocol == "rlmrec"


def test_loss_matches_brute_force_with_the_kl_schedule() -> None:
    """One batch's loss = mean over users of -sum x log softmax + beta * KL, from dense
    matrices in float64, with the batch's own dropout draw and eps; beta = min(cap,
    step / total) at the step the task has counted (0, 2, 10 of 20 with cap 0.2)."""
    data = clustered(n_users=40)
    cfg = vae_config({"total_anneal_steps": 20}, batch_size=16)
    task = make_trainer(cfg, data).task
    batch = next(iter(task.batches()))
    users = batch.users
    assert len(batch) == batch.global_size == 16
    x = dense(data.train, users)
    n_u = x.sum(1)
    # the dropout multiplier per training item: 0 or 1 / (1 - 0.5), roughly half kept
    mult = batch.weights.double() * n_u[batch.rows].sqrt()
    assert set(np.round(mult.numpy(), 5)) <= {0.0, 2.0}
    assert 0.3 < float((mult > 0).double().mean()) < 0.7
    drop = torch.zeros_like(x)
    drop[batch.rows, batch.items] = mult

    w = {k: v.detach().double() for k, v in task.model.state_dict().items()}
    xin = x / x.norm(dim=1, keepdim=True) * drop
    h = torch.tanh(xin @ w["enc_in.weight"] + w["enc_in_bias"])
    out = h @ w["enc_out.weight"].T + w["enc_out.bias"]
    mu, logvar = out[:, :16], out[:, 16:]
    z = mu + batch.eps.double() * torch.exp(0.5 * logvar)
    logits = (torch.tanh(z @ w["dec_hidden.weight"].T + w["dec_hidden.bias"])
              @ w["dec_out.weight"].T + w["dec_out.bias"])
    nll = -(torch.log_softmax(logits, dim=1) * x).sum(1)
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
    for step, beta in ((0, 0.0), (2, 0.1), (10, 0.2)):
        task.steps = step
        got = task.loss(batch)
        assert task.steps == step + 1  # one optimizer step counted
        want = float((nll + beta * kl).mean())
        assert float(got["loss"].detach()) == pytest.approx(want, rel=1e-5)
        assert float(got["nll"]) == pytest.approx(float(nll.mean()), rel=1e-5)
        assert float(got["kl"]) == pytest.approx(float(kl.mean()), rel=1e-4)
        assert float(got["beta"]) == beta
    # the gradient reaches every parameter, the first layer only through the batch's items
    task.model.zero_grad()
    got["loss"].backward()
    assert all(p.grad is not None for p in task.model.parameters())
    touched = torch.zeros(data.n_items, dtype=torch.bool)
    touched[batch.items[mult.numpy() > 0]] = True
    g = task.model.enc_in.weight.grad.abs().sum(1)
    assert bool((g[~touched] == 0).all()) and bool((g[touched] > 0).all())


# ------------------------------------------------------------------ learning, evaluation, export
def test_learns_clusters_far_beyond_popularity_and_metrics_match_brute_force() -> None:
    """8 disjoint, equally popular item clusters: the held-out item is one of the 17
    unseen items of the user's cluster, so recall@20 near 1 is reachable, while popularity
    (computed here) cannot tell clusters apart. The trainer's recall@20/ndcg@100 equal a
    user-by-user computation with min(k, |T|) (CLLM4Rec), and the export's inner products are
    the model's logits."""
    data = clustered()
    res = train(vae_config(), data, keep_model=True)
    assert res["task"] is not None and res["select_metric"] == "recall@20"
    pop = np.asarray(data.train.sum(0)).ravel()
    pop_hits = []
    for u in range(data.n_users):
        s = pop.astype(float) + np.arange(data.n_items)[::-1] * 1e-6  # ties: lower id first
        s[data.train[u].indices] = -np.inf
        pop_hits.append(data.valid[u].indices[0] in np.argsort(-s, kind="stable")[:20])
    pop_r20 = float(np.mean(pop_hits))
    assert res["valid"]["recall@20"] > 0.85 > pop_r20 + 0.5, (res["valid"], pop_r20)

    task = res["task"]
    users = np.arange(data.n_users)
    want = brute_scores(task.model, dense(data.train, users))
    got = task.score_users(users)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    s = want.clone()
    s[torch.from_numpy(data.train.nonzero()[0]), torch.from_numpy(data.train.nonzero()[1])] = \
        -math.inf
    r20, n100 = [], []
    for u in users:
        order = np.lexsort((np.arange(data.n_items), -s[u].numpy()))  # score desc, id asc
        target = set(data.test[u].indices.tolist())
        r20.append(len(target & set(order[:20].tolist())) / min(20, len(target)))
        dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(order[:100]) if i in target)
        n100.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(100, len(target)))))
    assert res["test"]["recall@20"] == pytest.approx(np.mean(r20), abs=1e-9)
    assert res["test"]["ndcg@100"] == pytest.approx(np.mean(n100), abs=1e-9)
    # export rows: [h_u, 1] . [w_j, b_j] is the logit, bias included
    ur, ir = task.user_rows(users), task.item_rows()
    assert ur.shape == (data.n_users, 65) and ir.shape == (data.n_items, 65)
    torch.testing.assert_close((ur @ ir.T).double(), want, atol=1e-4, rtol=1e-4)
    # every training user once per epoch
    assert res["users_trained"] == res["epochs"] * data.n_users
    assert res["training_users"] == data.n_users


# ------------------------------------------------------------------ ranks and resume
def _rank(rank: int, root: str, out: dict) -> None:
    from recalign.train.dist import Dist
    from recalign.train.tasks import with_task_defaults
    from recalign.train.trainer import RunInputs, Trainer

    cfg = with_task_defaults(vae_config({"total_anneal_steps": 30}, max_epochs=3,
                                        batch_size=63))
    inp = RunInputs(cfg.model_dump(mode="json"), clustered(n_users=200), None, None,
                    f"{root}/run")
    r = Trainer(inp, Dist(rank, 2)).run()
    if rank == 0:
        out["two"] = r


def test_two_ranks_follow_the_one_rank_loss_curve(tmp_path: Path) -> None:
    """Every rank draws the global batch's noise and keeps its slice, and scales its sum to its
    share of the global mean: with dropout and sampling on, and beta growing, 1 and 2 ranks
    train the same model (float tolerance)."""
    # 63 users a batch: the ranks hold 31 and 32 of them (the last batch 11: 5 and 6)
    cfg = vae_config({"total_anneal_steps": 30}, max_epochs=3, batch_size=63)
    one = train(cfg, clustered(n_users=200))
    with mp.Manager() as m:
        out = m.dict()
        spawn_ranks(_rank, 2, str(tmp_path), out)
        two = dict(out)["two"]
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())["loss"]
    for term in ("loss", "nll", "kl"):
        np.testing.assert_allclose(curves[term], [h[term] for h in one["history"]], rtol=1e-4)
    for k in ("recall@20", "recall@40", "ndcg@100"):
        assert two["test"][k] == pytest.approx(one["test"][k], abs=2e-3), k
    assert two["workers"] == 2 and two["users_trained"] == one["users_trained"]


def test_resume_from_a_checkpoint_reproduces_the_run(tmp_path: Path) -> None:
    """Interrupted after 2 epochs and resumed: the same losses and metrics. beta still grows
    (8 steps an epoch, total 64 steps, cap 1), so a resume that restarted its clock differs."""
    from recalign.train.checkpoint import FolderCheckpoints, latest_checkpoint
    from recalign.train.trainer import Hooks

    data = clustered()
    params = {"total_anneal_steps": 64, "anneal_cap": 1.0}
    straight = train(vae_config(params, max_epochs=4), data)
    betas = [h["beta"] for h in straight["history"]]
    assert betas == pytest.approx([np.mean(np.arange(8 * e, 8 * e + 8) / 64) for e in range(4)])
    store = FolderCheckpoints(str(tmp_path / "run"))
    save = lambda local, epoch, metrics: store.save(local, epoch)  # noqa: E731
    train(vae_config(params, max_epochs=2), data, hooks=Hooks(save=save))
    resumed = train(vae_config(params, max_epochs=4), data,
                    hooks=Hooks(load=lambda: latest_checkpoint(str(tmp_path / "run")), save=save))
    assert resumed["resumed_from_epoch"] == 2
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["test"] == straight["test"]
    assert resumed["kl_anneal"] == straight["kl_anneal"] == {"steps": 32, "beta": 0.5}


# ------------------------------------------------------------------ the job
def test_train_job_with_nothing_but_source_split_and_backbone(tmp_path: Path) -> None:
    """``model.backbone: multivae`` alone: the paper's model, the task's defaults (batch 500,
    validation every epoch, CLLM4Rec metrics), a per-user 80/10/10 split, and a snapshot whose
    inner products rank items as the model does."""
    from recalign.data.ingest import load_dataset
    from recalign.eval.metrics import evaluate
    from recalign.jobs import train as train_job
    from recalign.storage.snapshot import SnapshotStore

    cfg = load_config(None, ["data.source=synthetic", "data.synthetic.users=300",
                             "data.synthetic.items=200", "data.synthetic.interactions=6000",
                             "data.synthetic.seed=3", "data.split.method=user",
                             "data.split.ratios=[0.8, 0.1, 0.1]", "model.backbone=multivae",
                             f"output.root={tmp_path}", "train.max_epochs=2"])
    out = train_job.run(cfg, None)
    assert out["task"] == "multinomial" and out["select_metric"] == "recall@20"
    assert set(out["test"]) >= {"recall@20", "recall@40", "ndcg@100"}
    assert out["model"]["params"]["hidden"] == 600 and out["model"]["params"]["latent"] == 200
    data = CFData.from_dataset(load_dataset(cfg.data))
    assert out["test"]["users_evaluated"] == int((np.diff(data.test.indptr) > 0).sum())
    curves = json.loads(Path(out["run_dir"], "curves.json").read_text())
    assert curves["valid_epoch"] == [0, 1] and out["epochs"] == 2
    # 300 users, batch 500: one step an epoch
    assert out["kl_anneal"]["steps"] == 2
    snap = SnapshotStore(str(tmp_path)).open(out["snapshot"].split("/")[-3], "embeddings")

    def rows(table: str) -> torch.Tensor:
        t = snap.read_table(table).sort_by("id")
        return torch.tensor(np.stack(t["vector"].to_numpy(zero_copy_only=False)))

    u, i = rows("users"), rows("items")
    assert u.shape == (data.n_users, 601) and i.shape == (data.n_items, 601)
    assert bool((u[:, -1] == 1).all())
    from_snapshot = evaluate(lambda ids: u[ids] @ i.T, data.test, data.train,
                             protocol="cllm4rec")
    for k in ("recall@20", "recall@40", "ndcg@100"):
        assert from_snapshot[k] == pytest.approx(out["test"][k], abs=1e-3), k


def test_selection_on_the_cllm4rec_sum() -> None:
    """``eval.select_metric: cllm4rec_sum`` (as CLLM4Rec's authors select) works for the
    baseline too: validation reports R@20 + R@40 + N@100 and the trainer selects on it."""
    tree = vae_config(max_epochs=2).model_dump(mode="json")
    tree["eval"] = {"select_metric": "cllm4rec_sum"}  # the protocol from the task defaults
    res = train(Config.model_validate(tree), clustered(n_users=40))
    v = res["valid"]
    assert res["select_metric"] == "cllm4rec_sum"
    assert v["cllm4rec_sum"] == pytest.approx(v["recall@20"] + v["recall@40"] + v["ndcg@100"])


@pytest.mark.parametrize("over,match", [
    ({"eval": {"protocol": "loo"}}, "expects one validation item"),
    ({"align": {"method": "rlmrec-con", "semantic": {"users": "U", "items": "I"}}},
     "alignments apply"),
    ({"model": {"backbone": "multivae", "params": {"latent": 0}}}, "latent"),
])
def test_bad_input_is_a_clear_error(over: dict, match: str) -> None:
    data = clustered(n_users=40)
    data.valid = (data.valid + data.test).tocsr()  # two validation items per user
    tree = vae_config().model_dump(mode="json")
    for k, v in over.items():
        tree[k] = {**tree[k], **v}
    with pytest.raises(ConfigError, match=match):
        train(Config.model_validate(tree), data)
