"""LightGCN engine: graph normalisation, propagation, sampler, tables, training, determinism."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recalign.data.graph import bipartite_adjacency, normalized_adjacency, spmm
from recalign.data.sampler import BPRSampler
from recalign.errors import ConfigError
from recalign.eval.metrics import evaluate
from recalign.models import build_backbone, get_backbone, known_backbones
from recalign.models.lightgcn import LightGCN, LightGCNParams, lightgcn_params
from recalign.tables import IdTables, ModelOptimizer, TableOptimizerSpec, init_bound
from cf_train import run_cf
from recalign.config import TrainConfig
from recalign.train.data import CFData, seed_everything

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")


def small_train() -> sp.csr_matrix:
    # 2 users x 3 items: u0 -> {i0, i1}, u1 -> {i1}; i2 has no interaction
    return sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))


def test_normalised_adjacency_by_hand():
    # nodes u0, u1, i0, i1, i2 (items offset by 2); degrees u0=2, u1=1, i0=1, i1=2, i2=0
    # Â[u0,i0] = 1/sqrt(2*1) = .7071068, Â[u0,i1] = 1/sqrt(2*2) = .5, Â[u1,i1] = 1/sqrt(1*2);
    # symmetric; no self-loops; the isolated item i2 has an all-zero row and column.
    g = normalized_adjacency(small_train())
    a = g.to_scipy().toarray()
    r2 = 1 / math.sqrt(2)
    expected = np.array([
        [0, 0, r2, 0.5, 0],
        [0, 0, 0, r2, 0],
        [r2, 0, 0, 0, 0],
        [0.5, r2, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ])
    np.testing.assert_allclose(a, expected, atol=1e-7)
    # the transpose view reproduces the transpose for arbitrary values on the structure
    v = torch.arange(1, g.nnz + 1, dtype=torch.float32)
    np.testing.assert_allclose(g.transpose_matrix(v).to_dense().numpy(),
                               g.matrix(v).to_dense().numpy().T)
    # self-loops (GCCF) add the identity before normalising: degree(u0) = 3 -> Â[u0,u0] = 1/3
    a_sl = bipartite_adjacency(small_train(), self_loops=True).toarray()
    assert np.all(np.diag(a_sl) == 1)


def random_train(rng, n_users=25, n_items=18, p=0.2) -> sp.csr_matrix:
    m = (rng.random((n_users, n_items)) < p).astype(np.float32)
    m[0, 0] = 1
    return sp.csr_matrix(m)


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_propagation_is_sum_of_layers(layers):
    rng = np.random.default_rng(0)
    train = random_train(rng)
    torch.manual_seed(0)
    model = LightGCN.build(train, {"layers": layers, "dim": 8})
    model.eval()
    with torch.no_grad():
        u, i = model()
    u0, i0 = model.tables.weights()
    e = np.concatenate([u0.numpy(), i0.numpy()]).astype(np.float64)
    # dense reference: D^-1/2 A D^-1/2 and sum over l = 0..L of Â^l E0
    r = train.toarray().astype(np.float64)
    nu, ni = r.shape
    a = np.block([[np.zeros((nu, nu)), r], [r.T, np.zeros((ni, ni))]])
    d = a.sum(1)
    dinv = np.where(d > 0, d, 1) ** -0.5 * (d > 0)
    a_hat = dinv[:, None] * a * dinv[None, :]
    acc, h = e.copy(), e.copy()
    for _ in range(layers):
        h = a_hat @ h
        acc += h
    np.testing.assert_allclose(np.concatenate([u.numpy(), i.numpy()]), acc, atol=1e-5)


def test_spmm_backward_matches_dense_with_dropout():
    rng = np.random.default_rng(1)
    g = normalized_adjacency(random_train(rng))
    torch.manual_seed(0)
    vals = g.edge_dropout(0.8)
    kept = (vals != 0).float().mean().item()
    assert 0.6 < kept < 0.95
    # kept values are the original ones, not rescaled
    nz = vals != 0
    assert torch.equal(vals[nz], g.values[nz])
    dense = g.matrix(vals).to_dense()
    x = torch.randn(g.n_nodes, 4, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    w = torch.randn(g.n_nodes, 4)
    (spmm(g, spmm(g, x, vals), vals) * w).sum().backward()
    (dense @ (dense @ x2) * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_sampler_rejects_positives_and_is_uniform():
    rng = np.random.default_rng(0)
    n_items = 20
    dense = np.zeros((50, n_items), dtype=np.float32)
    dense[:, :15] = rng.random((50, 15)) < 0.7   # heavy users: most draws would hit positives
    dense[0, :18] = 1                               # user 0: only items 18, 19 are negatives
    train = sp.csr_matrix(dense)
    s = BPRSampler(train)
    users = np.repeat(np.arange(50), 400)
    neg = s.sample_negatives(users, np.random.default_rng(1))
    assert not dense[users, neg].any(), "a training positive was returned as a negative"
    # user 0: uniform over {18, 19}
    c = np.bincount(neg[users == 0], minlength=n_items)
    assert c[:18].sum() == 0 and abs(c[18] - 200) < 60
    # pooled over users, each item's count is close to its expected count under uniformity
    expected = np.zeros(n_items)
    for u in range(50):
        free = np.flatnonzero(dense[u] == 0)
        expected[free] += 400 / free.size
    got = np.bincount(neg, minlength=n_items)
    chi2 = ((got - expected) ** 2 / np.maximum(expected, 1e-9))[expected > 0].sum()
    assert chi2 < 60  # ~19 degrees of freedom; p(chi2 > 60) < 1e-5
    # an epoch yields every training pair exactly once, in batches of the given size
    batches = list(s.epoch(np.random.default_rng(2), 128))
    assert [len(b) for b in batches[:-1]] == [128] * (len(batches) - 1)
    pairs = np.concatenate([(b.users * n_items + b.pos).numpy() for b in batches])
    assert np.array_equal(np.sort(pairs), s._keys)
    with pytest.raises(ValueError, match="every item"):
        BPRSampler(sp.csr_matrix(np.ones((2, 3))))


def test_registry_and_presets():
    assert "lightgcn" in known_backbones()
    assert get_backbone("lightgcn") is LightGCN
    with pytest.raises(ConfigError, match="known backbones: .*lightgcn"):
        get_backbone("lightgnc")
    assert lightgcn_params("rlmrec-steam").layers == 2
    p = lightgcn_params("rlmrec-amazon-book")
    assert (p.layers, p.reg_weight, p.dim, p.keep_rate) == (3, 1e-6, 32, 0.8)
    assert lightgcn_params("rlmrec-yelp", layers=1).layers == 1
    with pytest.raises(ConfigError, match="rlmrec-amazon-book"):
        lightgcn_params("amazon")


def test_tables_init_and_fused_kernel():
    torch.manual_seed(0)
    t = IdTables(40, 30, 8)
    assert t.kernel == "dense"  # Adam has no fused fbgemm kernel on CPU
    u, i = t.weights()
    assert u.abs().max() <= init_bound(40, 8) and i.abs().max() <= init_bound(30, 8)
    assert u.abs().max() > 0.8 * init_bound(40, 8)  # xavier bound sqrt(6 / (40 + 8))
    lu, li = t.lookup(torch.tensor([3, 1]), torch.tensor([0, 29, 5]))
    torch.testing.assert_close(lu, u[[3, 1]])
    torch.testing.assert_close(li, i[[0, 29, 5]])
    with pytest.raises(ConfigError, match="no fused fbgemm kernel"):
        IdTables(4, 3, 2, optimizer=TableOptimizerSpec(name="adam", kernel="fused"))
    # fused row-wise Adagrad: full lookup equals the weights; backward applies the update
    spec = TableOptimizerSpec(name="rowwise_adagrad", lr=0.1)
    f = IdTables(40, 30, 8, optimizer=spec)
    assert f.fused and f.fused_parameter_ids()
    u0, i0 = (w.clone() for w in f.weights())
    au, ai = f.all_rows()
    torch.testing.assert_close(au, u0)
    opt = ModelOptimizer([f], spec)
    assert opt.dense is None
    (au.sum() + ai.sum()).backward()
    opt.step()
    u1, _ = f.weights()
    assert (u1 - u0).abs().min() > 0.05  # every row moved by ~lr


def test_lightgcn_trains_with_fused_tables():
    rng = np.random.default_rng(0)
    data = planted(rng)
    params = dict(optimizer={"name": "rowwise_adagrad", "lr": 0.05},
                  batch_size=512, max_epochs=2, eval_every=1, patience=5, seed=3)
    res = run_cf(data, "lightgcn", {"dim": 16, "layers": 2}, **params)
    assert res["model"].tables.fused
    assert res["history"][-1]["bpr"] < res["history"][0]["bpr"] < 0.7


def planted(rng: np.random.Generator, n_users=300, n_items=150, clusters=5) -> CFData:
    """Users and items in clusters; each user takes 10 items of its own cluster and 2 items
    from a shared popular head (items 0-9), split 60/20/20 per interaction."""
    per = n_items // clusters
    rows, cols = [], []
    for u in range(n_users):
        c = u % clusters
        own = rng.choice(np.arange(c * per, (c + 1) * per), 10, replace=False)
        head = rng.choice(10, 2, replace=False)
        items = np.unique(np.concatenate([own, head]))
        rows += [u] * items.size
        cols += items.tolist()
    rows, cols = np.array(rows), np.array(cols)
    split = rng.random(rows.size)
    mats = []
    for lo, hi in ((0, 0.6), (0.6, 0.8), (0.8, 1.01)):
        sel = (split >= lo) & (split < hi)
        mats.append(sp.csr_matrix((np.ones(sel.sum(), np.float32), (rows[sel], cols[sel])),
                                  shape=(n_users, n_items)))
    return CFData(*mats)


def test_training_beats_popularity_and_is_deterministic():
    data = planted(np.random.default_rng(0))
    params = dict(optimizer={"lr": 1e-2}, batch_size=256, max_epochs=30,
                  eval_every=3, patience=3, seed=7, threads=1)
    model_params = {"dim": 32, "layers": 2, "reg_weight": 1e-4}
    res = run_cf(data, "lightgcn", model_params, **params)
    pop = np.asarray(data.train.sum(0)).ravel().astype(np.float32)
    pop_metrics = evaluate(lambda u: torch.from_numpy(pop).repeat(len(u), 1), data.test,
                           data.train)
    # popularity recommends the shared head and the globally busiest items: recall@20 .278;
    # LightGCN finds the user's cluster: .723 (seed 7, measured)
    assert pop_metrics["recall@20"] == pytest.approx(0.2784, abs=1e-3)
    assert res["test"]["recall@20"] > 0.6
    assert res["test"]["recall@20"] > pop_metrics["recall@20"] + 0.3
    assert res["test"]["ndcg@20"] > pop_metrics["ndcg@20"]
    assert res["best_epoch"] % 3 == 0 and res["epochs"] <= 30
    assert [h["epoch"] for h in res["history"] if "valid" in h][:3] == [0, 3, 6]
    assert res["valid"]["recall@20"] == max(h["valid"]["recall@20"]
                                            for h in res["history"] if "valid" in h)
    # determinism: same seed -> same metrics and weights; another seed -> different weights
    again = run_cf(data, "lightgcn", model_params, **params)
    def untimed(h):
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in h]

    assert again["test"] == res["test"]
    assert untimed(again["history"]) == untimed(res["history"])
    for (k, a), (_, b) in zip(res["model"].state_dict().items(),
                              again["model"].state_dict().items()):
        assert torch.equal(a, b), k
    other = run_cf(data, "lightgcn", model_params, **{**params, "seed": 8, "max_epochs": 1})
    assert not torch.equal(other["model"].tables.weights()[0], res["model"].tables.weights()[0])


def test_rec_forward_exposes_batch_representations_and_reg():
    rng = np.random.default_rng(0)
    train = random_train(rng)
    seed_everything(0)
    model = build_backbone("lightgcn", train, {"dim": 4, "layers": 1, "reg_weight": 0.5})
    s = BPRSampler(train)
    batch = next(s.epoch(np.random.default_rng(0), 8))
    model.train()
    out = model.rec_forward(batch, layer0_hook=lambda e: e * 1.0)
    assert out.users.shape == (8, 4) and out.pos.shape == (8, 4) and out.neg.shape == (8, 4)
    u0, i0 = model.tables.weights()
    # reg over the full tables, sum of squares (reference reg_params)
    assert out.losses["reg"].item() == pytest.approx(
        0.5 * float(u0.square().sum() + i0.square().sum()), rel=1e-5)
    pos = (out.users * out.pos).sum(-1)
    neg = (out.users * out.neg).sum(-1)
    assert out.losses["bpr"].item() == pytest.approx(
        float(torch.nn.functional.softplus(neg - pos).mean()), rel=1e-5)
    # a layer-0 hook that zeroes everything zeroes the representations
    zero = model.rec_forward(batch, layer0_hook=lambda e: e * 0.0)
    assert zero.all_users.abs().max() == 0
    # eval scores = inner products of the full-graph representations (no dropout)
    model.eval()
    u, i = model()
    torch.testing.assert_close(model.score_users(torch.tensor([2, 0])), u[[2, 0]] @ i.T)
    assert isinstance(model.params, LightGCNParams)


@pytest.mark.parametrize("kernel", ["dense", "fused"])
def test_same_module_under_dmp_world_size_1(kernel):
    """DistributedModelParallel (gloo, one process) shards ``tables.ebc`` of the same LightGCN
    with a hand-built row-wise/table-wise plan; lookups go through the KJT path, read by key."""
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import (construct_module_sharding_plan, row_wise,
                                                    table_wise)
    from torchrec.distributed.types import ShardingEnv, ShardingPlan

    from recalign.tables import sharder_fused_params

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        train = random_train(np.random.default_rng(0), 50, 40)
        torch.manual_seed(0)
        model = LightGCN.build(train, {"dim": 8, "layers": 2})
        model.eval()
        ref_u, ref_i = model()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        plan = construct_module_sharding_plan(
            model.tables.ebc, per_param_sharding={"user": row_wise(compute_kernel=kernel),
                                                  "item": table_wise(rank=0, compute_kernel=kernel)},
            local_size=1, world_size=1, device_type="cpu")
        spec = TableOptimizerSpec(name="rowwise_adagrad", lr=0.05)
        sharder = EmbeddingBagCollectionSharder(
            fused_params=sharder_fused_params(spec) if kernel == "fused" else None)
        dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.group.WORLD),
                                       device=torch.device("cpu"),
                                       plan=ShardingPlan({"tables.ebc": plan}),
                                       sharders=[sharder], init_data_parallel=False)
        # sharded tables are freshly initialised: load the unsharded weights (same keys)
        dmp.load_state_dict(state)
        m = dmp.module
        assert type(m.tables.ebc).__name__ == "ShardedEmbeddingBagCollection"
        m.eval()
        u, i = m()
        torch.testing.assert_close(u, ref_u)
        torch.testing.assert_close(i, ref_i)
        m.train()
        batch = next(BPRSampler(train).epoch(np.random.default_rng(0), 64))
        opt = torch.optim.Adam(dmp.parameters(), lr=1e-2) if kernel == "dense" else None
        m.rec_forward(batch).losses["loss"].backward()
        if opt is not None:
            opt.step()
        m.eval()
        m.invalidate_cache()
        assert not torch.allclose(m()[0], ref_u)
    finally:
        dist.destroy_process_group()


def test_rowwise_adagrad_on_dense_parameters_with_biases() -> None:
    """Alignment MLPs have 1-d biases: row-wise Adagrad state needs rows, so matrices get
    torchrec's RowWiseAdagrad and vectors plain Adagrad (torchrec's fails on 1-d)."""
    from torchrec.optim import RowWiseAdagrad

    from recalign.tables.optim import OptimizerChain, TableOptimizerSpec, dense_optimizer

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    opt = dense_optimizer(mlp.parameters(), TableOptimizerSpec(name="rowwise_adagrad", lr=0.1))
    assert isinstance(opt, OptimizerChain)
    ref = copy.deepcopy(mlp)
    mats = [p for p in ref.parameters() if p.dim() == 2]
    vecs = [p for p in ref.parameters() if p.dim() == 1]
    ref_opts = [RowWiseAdagrad(mats, lr=0.1), torch.optim.Adagrad(vecs, lr=0.1, eps=1e-8)]
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, opts in ((mlp, [opt]), (ref, ref_opts)):
            for o in opts:
                o.zero_grad()
            model(x).square().mean().backward()
            for o in opts:
                o.step()
    for a, b in zip(mlp.parameters(), ref.parameters()):
        assert torch.allclose(a, b)
    state = opt.state_dict()
    assert len(state["parts"]) == 2
    opt.load_state_dict(state)


def test_min_epochs_holds_off_early_stopping():
    """With a learning rate too small to change any ranking, validation never improves on
    epoch 0: patience 1 stops after epoch 1, unless min_epochs holds the run to 5 epochs
    (the best weights, epoch 0's, are still the ones tested)."""
    data = planted(np.random.default_rng(0))
    params = dict(optimizer={"lr": 1e-12}, batch_size=512,
                  max_epochs=20, eval_every=1, patience=1, seed=7, threads=1, min_epochs=0)
    model_params = {"dim": 16, "layers": 2}
    assert TrainConfig().min_epochs == 30  # the default floor
    early = run_cf(data, "lightgcn", model_params, **params)
    held = run_cf(data, "lightgcn", model_params, **{**params, "min_epochs": 5})
    assert (early["epochs"], early["best_epoch"]) == (2, 0)
    assert (held["epochs"], held["best_epoch"]) == (5, 0)
    assert held["test"] == early["test"]
