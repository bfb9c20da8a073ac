"""The RLMRec backbone zoo: GCCF, SGL, SimGCL, DCCF, AutoCF and their shared pieces.

Hand-computed values on tiny graphs for each piece, then each backbone trained a few epochs
on a planted data set (it must beat popularity), fused (shardable-path) tables, the alignment
hooks, and the presets' published numbers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recalign.data.graph import bipartite_adjacency, edge_spmm, normalized_adjacency, propagate
from recalign.data.sampler import BPRSampler
from recalign.eval.metrics import evaluate
from recalign.models import build_backbone, known_backbones
from recalign.models.augment import (EdgeCSR, autocf_seed_scores, binary_graph,
                                     mask_subgraphs, uniform_noise, valued_spmm)
from recalign.models.autocf import AutoCF, GraphTransformerLayer
from recalign.models.contrastive import (batch_view_info_nce, info_nce, l2_sum,
                                         log_sum_exp_contrast, row_logsumexp_mm,
                                         weighted_row_lse)
from recalign.models.dccf import DCCF, adaptive_values
from recalign.models.gccf import GCCF
from recalign.models.sgl import SGL
from recalign.models.simgcl import SimGCL
from recalign.tables import ModelOptimizer, TableOptimizerSpec
from cf_train import run_cf
from recalign.train.data import CFData, seed_everything

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")

ZOO = ["gccf", "sgl", "simgcl", "dccf", "autocf"]


def small_train() -> sp.csr_matrix:
    # 2 users x 3 items: u0 -> {i0, i1}, u1 -> {i1}; i2 isolated
    return sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))


def random_train(seed: int = 0, n_users: int = 25, n_items: int = 18, p: float = 0.2):
    rng = np.random.default_rng(seed)
    m = (rng.random((n_users, n_items)) < p).astype(np.float32)
    m[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1  # every user has an item
    return sp.csr_matrix(m)


def planted(rng: np.random.Generator, n_users: int = 300, n_items: int = 150,
            clusters: int = 5) -> CFData:
    """Users in clusters of items + 2 items from a popular head; split 60/20/20."""
    per = n_items // clusters
    rows, cols = [], []
    for u in range(n_users):
        c = u % clusters
        own = rng.choice(np.arange(c * per, (c + 1) * per), 10, replace=False)
        items = np.unique(np.concatenate([own, rng.choice(10, 2, replace=False)]))
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


def popularity_recall(data: CFData) -> float:
    """Test Recall@20 of ranking by training popularity (the bar a trained model must clear)."""
    pop = torch.from_numpy(np.asarray(data.train.sum(0)).ravel().astype(np.float32))
    return evaluate(lambda u: pop.repeat(len(u), 1), data.test, data.train)["recall@20"]


def first_batch(train: sp.csr_matrix, size: int = 16):
    return next(BPRSampler(train).epoch(np.random.default_rng(0), size))


# ----------------------------------------------------------------------------- shared losses
def test_info_nce_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    # unit rows: a = (1,0), (0,1); p = (.7071,.7071), (0,1); c = (.7071,.7071), (0,1), (-1,0)
    r = 1 / math.sqrt(2)
    row0 = -r / tau + math.log(math.exp(r / tau) + math.exp(0) + math.exp(-1 / tau))
    row1 = -1 / tau + math.log(math.exp(r / tau) + math.exp(1 / tau) + math.exp(0))
    assert info_nce(a, p, c, tau).item() == pytest.approx(row0 + row1, rel=1e-5)
    # AutoCF's contrast: raw inner products, mean over rows
    lse = log_sum_exp_contrast(a, c).item()
    assert lse == pytest.approx((math.log(math.e + 1 + math.exp(-1))
                                 + math.log(math.exp(2) + math.exp(2) + 1)) / 2, rel=1e-6)
    assert l2_sum([a, p]).item() == pytest.approx(1 + 4 + 2 + 1)


def test_row_logsumexp_mm_value_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(row_logsumexp_mm(x, y), torch.logsumexp(x @ y.T, -1))
    assert torch.autograd.gradcheck(row_logsumexp_mm, (x * 20, y))  # large scores: stable


def test_batch_view_info_nce_counts_rows_and_candidates():
    torch.manual_seed(0)
    u1, u2, i1, i2 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3), torch.randn(5, 3)
    users, pos, neg = torch.tensor([0, 0, 2]), torch.tensor([1, 3, 4]), torch.tensor([2, 2, 0])
    got = batch_view_info_nce((u1, i1), (u2, i2), users, pos, neg, 0.2)
    want = (info_nce(u1[users], u2[users], u2, .2) + info_nce(i1[pos], i2[pos], i2, .2)
            + info_nce(i1[neg], i2[neg], i2, .2)) / 3  # duplicates count, all candidates
    torch.testing.assert_close(got, want)
    no_neg = batch_view_info_nce((u1, i1), (u2, i2), users, pos, None, 0.2)
    torch.testing.assert_close(no_neg, want - info_nce(i1[neg], i2[neg], i2, .2) / 3)


def _naive_info_nce(a, p, c, tau):
    """The RLMRec reference ``cal_infonce_loss``, written out straightforwardly."""
    def unit(x):
        return x / torch.sqrt(1e-8 + x.square().sum(-1, keepdim=True))
    a, p, c = unit(a), unit(p), unit(c)
    return (-(a * p / tau).sum(-1) + torch.log(torch.exp(a @ c.T / tau).sum(-1))).sum()


@pytest.mark.parametrize("block", [1, 4, 7, 64])
def test_weighted_row_lse_matches_straightforward_value_and_gradients(block):
    torch.manual_seed(1)
    x = (torch.randn(23, 5, dtype=torch.float64) * 4).requires_grad_()
    y = torch.randn(31, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(23, dtype=torch.float64) * 3
    got = weighted_row_lse(x, y, w, block=block)
    gx, gy = torch.autograd.grad(got * 1.7, (x, y))
    want = (w * torch.logsumexp(x @ y.T, -1)).sum()
    wx, wy = torch.autograd.grad(want * 1.7, (x, y))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx, wx)
    torch.testing.assert_close(gy, wy)
    # rows of x taken from y: gradients of both uses add up, as autograd's
    z = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 3, 3, 11])
    g1 = torch.autograd.grad(weighted_row_lse(z[idx], z, block=block), z)[0]
    g2 = torch.autograd.grad(torch.logsumexp(z[idx] @ z.T, -1).sum(), z)[0]
    torch.testing.assert_close(g1, g2)
    # without gradients: value only (nothing kept for backward)
    with torch.no_grad():
        torch.testing.assert_close(weighted_row_lse(x, y, w, block=block), want.detach())


def test_batch_view_info_nce_equals_reference_without_dedup_value_and_gradients():
    """Dedup with multiplicities + merged pos/neg items == the reference's row-by-row sum."""
    torch.manual_seed(2)
    n_u, n_i, d = 9, 11, 6
    tabs = [torch.randn(n, d, dtype=torch.float64, requires_grad=True)
            for n in (n_u, n_u, n_i, n_i)]
    users = torch.tensor([0, 0, 2, 5, 5, 5, 8, 1])
    pos = torch.tensor([1, 3, 4, 4, 10, 1, 0, 3])
    neg = torch.tensor([2, 2, 0, 4, 9, 1, 7, 7])  # overlaps pos on purpose
    for negs in (neg, None):
        u1, u2, i1, i2 = tabs
        got = batch_view_info_nce((u1, i1), (u2, i2), users, pos, negs, 0.3)
        want = _naive_info_nce(u1[users], u2[users], u2, .3) + _naive_info_nce(
            i1[pos], i2[pos], i2, .3)
        if negs is not None:
            want = want + _naive_info_nce(i1[negs], i2[negs], i2, .3)
        want = want / users.numel()
        torch.testing.assert_close(got, want)
        for g, w in zip(torch.autograd.grad(got, tabs), torch.autograd.grad(want, tabs)):
            torch.testing.assert_close(g, w)


def test_log_sum_exp_contrast_weights_equal_repeated_rows():
    torch.manual_seed(3)
    items = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    users = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([0, 4, 4, 1, 0, 0])
    uq, counts = torch.unique(batch, return_counts=True)
    got = log_sum_exp_contrast(users[uq], items, counts)
    want = torch.log(torch.exp(users[batch] @ items.T).sum(-1)).mean()  # reference contrast()
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, (users, items)),
                    torch.autograd.grad(want, (users, items))):
        torch.testing.assert_close(g, w)


# ----------------------------------------------------------------------------- GCCF
def test_gccf_self_loop_adjacency_by_hand_and_concat():
    # with I: degrees u0=3, u1=2, i0=2, i1=3, i2=1 (self-loop only)
    g = normalized_adjacency(small_train(), self_loops=True)
    a = g.to_scipy().toarray()
    d = np.array([3, 2, 2, 3, 1.0])
    raw = np.eye(5)
    for u, i in ((0, 2), (0, 3), (1, 3)):
        raw[u, i] = raw[i, u] = 1
    np.testing.assert_allclose(a, raw / np.sqrt(d[:, None] * d[None, :]), atol=1e-7)
    assert a[0, 0] == pytest.approx(1 / 3) and a[4, 4] == pytest.approx(1.0)
    torch.manual_seed(0)
    model = GCCF.build(random_train(), {"dim": 4, "layers": 2})
    model.eval()
    u, i = model()
    assert u.shape == (25, 12) and i.shape == (18, 12) and model.out_dim == 12
    a_hat = normalized_adjacency(random_train(), self_loops=True).to_scipy().toarray()
    e0 = torch.cat(model.tables.weights()).numpy().astype(np.float64)
    want = np.concatenate([e0, a_hat @ e0, a_hat @ a_hat @ e0], axis=1)
    np.testing.assert_allclose(torch.cat([u, i]).detach().numpy(), want, atol=1e-5)


# ----------------------------------------------------------------------------- SimGCL
def test_simgcl_noise_magnitude_and_sign():
    torch.manual_seed(0)
    x = torch.randn(50, 8)
    n = uniform_noise(x, 0.9)
    torch.testing.assert_close(n.norm(dim=-1), torch.full((50,), 0.9))
    assert torch.all(torch.sign(n) == torch.sign(x))
    model = SimGCL.build(random_train(), {"dim": 8, "layers": 2, "eps": 0.1})
    model.train()
    ego = torch.cat(model.tables.all_rows())
    clean_u, _ = model._encode(ego, view=False)
    v1, v2 = model._encode(ego, view=True)[0], model._encode(ego, view=True)[0]
    assert not torch.allclose(v1, v2)
    # each of the 2 layers adds noise of norm eps; propagation shrinks earlier noise, so the
    # view stays within (1 + ||Â||) eps... here we check the bound L·eps·(1 + spectral radius)
    assert (v1 - clean_u).norm(dim=-1).max() <= 0.1 * 2 * 2 + 1e-5
    zero = SimGCL.build(random_train(), {"dim": 8, "layers": 2, "eps": 0.0})
    ego0 = torch.cat(zero.tables.all_rows())
    torch.testing.assert_close(zero._encode(ego0, view=True)[0], zero._encode(ego0, view=False)[0])


# ----------------------------------------------------------------------------- SGL
def test_sgl_views_differ_and_cl_loss_decreases():
    train = random_train(1, 40, 30, 0.15)
    seed_everything(0)
    model = SGL.build(train, {"dim": 16, "layers": 2, "cl_weight": 1.0, "temperature": 0.2})
    ego = torch.cat(model.tables.all_rows())
    (u1, _), (u2, _) = model._encode(ego, view=True), model._encode(ego, view=True)
    assert not torch.allclose(u1, u2)
    # one dropout mask per view: about 80% of the adjacency entries survive
    kept = (model.graph.edge_dropout(0.8) != 0).float().mean().item()
    assert 0.7 < kept < 0.9
    opt = ModelOptimizer([model], TableOptimizerSpec(lr=0.05))
    batch = first_batch(train, 64)
    cls = []
    for _ in range(30):
        opt.zero_grad()
        out = model.rec_forward(batch)
        out.losses["loss"].backward()
        opt.step()
        cls.append(out.losses["cl"].item())
    assert np.mean(cls[-5:]) < 0.8 * np.mean(cls[:5])
    assert set(out.losses) == {"loss", "bpr", "reg", "cl"}


# ----------------------------------------------------------------------------- DCCF
def test_valued_spmm_matches_edge_spmm_value_and_gradients():
    torch.manual_seed(5)
    n = 13
    adj = normalized_adjacency(random_train(3, 6, 7, 0.4))
    rows = torch.repeat_interleave(torch.arange(n), torch.diff(adj.crow))
    cols = adj.col
    edges = EdgeCSR.build(rows, cols, n)
    vals = torch.rand(rows.numel(), dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, 4, dtype=torch.float64)
    got, want = valued_spmm(edges, vals, x), edge_spmm(rows, cols, vals, x, n)
    torch.testing.assert_close(got, want)
    for g, ww in zip(torch.autograd.grad((got * w).sum(), (vals, x)),
                     torch.autograd.grad((want * w).sum(), (vals, x))):
        torch.testing.assert_close(g, ww)


def test_dccf_adaptive_masks_shapes_and_loss_decreasing():
    train = random_train(2, 30, 20, 0.2)
    seed_everything(0)
    model = DCCF.build(train, {"dim": 8, "intents": 6, "layers": 2})
    n = model.graph.n_nodes
    x = torch.randn(n, 8)
    v = adaptive_values(x, model.rows, model.cols, n)
    row_sums = torch.zeros(n).index_add_(0, model.rows, v)
    deg = torch.diff(model.graph.crow)
    torch.testing.assert_close(row_sums[deg > 0], torch.ones(int((deg > 0).sum())))
    assert torch.all(v > 0)
    # an edge's weight is (cos + 1) / 2 over its row's sum
    r, c = int(model.rows[0]), int(model.cols[0])
    alpha = lambda a, b: (torch.nn.functional.cosine_similarity(x[a], x[b], 0) + 1) / 2
    nb = model.cols[model.rows == r]
    assert v[0].item() == pytest.approx((alpha(r, c) / sum(alpha(r, int(j)) for j in nb)).item(),
                                        rel=1e-5)
    # edge_spmm is differentiable in the weights
    w = v.clone().requires_grad_(True)
    edge_spmm(model.rows, model.cols, w, x, n).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    u, i = model()
    assert u.shape == (30, 8) and i.shape == (20, 8)
    opt = ModelOptimizer([model], TableOptimizerSpec(lr=0.02))
    batch = first_batch(train, 64)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        out = model.rec_forward(batch)
        out.losses["loss"].backward()
        opt.step()
        losses.append(out.losses["loss"].item())
    assert losses[-1] < 0.7 * losses[0]
    assert model.user_intent.grad is not None and model.user_intent.grad.abs().sum() > 0
    assert out.losses["cl"].item() > 0


# ----------------------------------------------------------------------------- AutoCF
def path_graph():
    # users u0..u2, items i0..i2: u0-i0, u1-i0, u1-i1, u2-i1, u2-i2 (a path u0 i0 u1 i1 u2 i2)
    return sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32))


def test_autocf_masking_by_hand():
    train = path_graph()
    ones = binary_graph(bipartite_adjacency(train), 3, 3)
    # nodes: u0=0 u1=1 u2=2 i0=3 i1=4 i2=5; path 0-3-1-4-2-5. Seed u0, depth 2:
    # hop 0 removes 0-3, frontier {0, 3}; hop 1 removes 3-1; kept: 1-4, 4-2, 2-5
    torch.manual_seed(0)
    m = mask_subgraphs(ones, torch.tensor([0]), depth=2, keep_rate=0.0)
    assert m.masked_edges == 4  # 2 undirected edges, both directions
    enc = m.encoder.to_scipy().toarray()
    kept = {(1, 4), (4, 2), (2, 5)}
    for a in range(6):
        for b in range(6):
            if (a, b) in kept or (b, a) in kept:
                deg = {1: 1, 4: 2, 2: 2, 5: 1}
                assert enc[a, b] == pytest.approx(1 / math.sqrt(deg[a] * deg[b]))
            else:
                assert enc[a, b] == 0
    assert set(m.masked_nodes.tolist()) == {0, 3}
    dec = set(zip(m.decoder_rows.tolist(), m.decoder_cols.tolist()))
    assert {(k, k) for k in range(6)} <= dec  # self-loops
    assert {e for e in kept} | {(b, a) for a, b in kept} <= dec  # kept edges
    assert all(a in (0, 3) and b in (0, 3) for a, b in dec
               if (a, b) not in kept and (b, a) not in kept and a != b)
    # seed scores: one per node, top-k indices, gradient reaches the embeddings
    ego = torch.randn(6, 4, requires_grad=True)
    scores, seeds = autocf_seed_scores(ones, ego, 2)
    assert scores.shape == (6,) and seeds.shape == (2,)
    assert set(seeds.tolist()) == set(torch.topk(scores.detach(), 2).indices.tolist())
    (-scores.mean()).backward()
    assert ego.grad.abs().sum() > 0


def test_graph_transformer_layer_matches_dense_attention():
    torch.manual_seed(0)
    layer = GraphTransformerLayer(8, 2)
    x = torch.randn(4, 8)
    rows = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    cols = torch.tensor([1, 2, 0, 0, 1, 3, 3])
    got = layer(rows, cols, x)
    q, k, v = (x @ layer.q).view(4, 2, 4), (x @ layer.k).view(4, 2, 4), (x @ layer.v).view(4, 2, 4)
    want = torch.zeros(4, 2, 4)
    for r in range(4):
        nb = cols[rows == r]
        att = torch.exp((q[r] * k[nb]).sum(-1).clamp(-10, 10))  # [deg, heads]
        att = att / (att.sum(0) + 1e-8)
        want[r] = (att.unsqueeze(-1) * v[nb]).sum(0)
    torch.testing.assert_close(got, want.reshape(4, 8), rtol=1e-5, atol=1e-6)


def _naive_graph_transformer(layer, rows, cols, x):
    """The reference GTLayer formula (gather rows, project, scatter), via autograd."""
    n, d = x.shape
    h = layer.heads
    q = (x[rows] @ layer.q).view(-1, h, d // h)
    k = (x[cols] @ layer.k).view(-1, h, d // h)
    v = (x[cols] @ layer.v).view(-1, h, d // h)
    att = torch.exp(torch.einsum("ehd,ehd->eh", q, k).clamp(-10.0, 10.0))
    att = att / (torch.zeros(n, h, dtype=x.dtype).index_add_(0, rows, att)[rows] + 1e-8)
    msg = torch.einsum("eh,ehd->ehd", att, v).reshape(-1, d)
    return torch.zeros(n, d, dtype=x.dtype).index_add_(0, rows, msg)


@pytest.mark.parametrize("scale", [1.0, 6.0])  # 6: many scores clamped at ±10
def test_graph_transformer_fast_backward_matches_reference_gradients(scale):
    torch.manual_seed(4)
    n, d = 15, 8
    layer = GraphTransformerLayer(d, 2).double()
    r, c = torch.randint(n, (60,)), torch.randint(n, (60,))
    hsh = torch.unique(torch.cat([r * n + c, torch.arange(n) * (n + 1)]))  # + self-loops
    rows, cols = hsh // n, hsh % n
    x = (torch.randn(n, d, dtype=torch.float64) * scale).requires_grad_()
    w = torch.randn(n, d, dtype=torch.float64)
    params = [x, layer.q, layer.k, layer.v]
    got = layer(rows, cols, x)
    want = _naive_graph_transformer(layer, rows, cols, x)
    torch.testing.assert_close(got, want)
    for g, ww in zip(torch.autograd.grad((got * w).sum(), params),
                     torch.autograd.grad((want * w).sum(), params)):
        torch.testing.assert_close(g, ww)
    # unsorted edge order gives the same result (EdgeCSR sorts)
    perm = torch.randperm(rows.numel())
    torch.testing.assert_close(layer(rows[perm], cols[perm], x), got)


def test_autocf_schedule_and_loss_decreasing():
    train = random_train(3, 40, 30, 0.15)
    seed_everything(0)
    model = AutoCF.build(train, {"dim": 8, "heads": 2, "seed_num": 5, "fix_steps": 3,
                                 "ssl_reg": 1.0})
    opt = ModelOptimizer([model], TableOptimizerSpec(lr=0.02))
    batch = first_batch(train, 64)
    losses, infomax = [], []
    model.train()
    for step in range(12):
        opt.zero_grad()
        out = model.rec_forward(batch)
        out.losses["loss"].backward()
        opt.step()
        losses.append(out.losses["rec"].item())
        infomax.append("infomax" in out.losses)
    assert infomax == [s % 3 == 0 for s in range(12)]  # resampled every fix_steps steps
    assert losses[-1] < losses[0]
    assert model.gt[0].q.grad is not None
    model.eval()
    u, i = model()
    assert u.shape == (40, 8) and i.shape == (30, 8)


# ----------------------------------------------------------------------------- all backbones
@pytest.mark.parametrize("name", ZOO)
def test_backbone_beats_popularity_on_planted_data(name):
    data = planted(np.random.default_rng(0))
    params = dict(optimizer={"lr": 1e-2}, batch_size=256, max_epochs=12,
                  eval_every=3, patience=3, seed=7, threads=1)
    extra = {"seed_num": 10} if name == "autocf" else {}
    res = run_cf(data, name, extra, **params)
    pop = np.asarray(data.train.sum(0)).ravel().astype(np.float32)
    pop_m = evaluate(lambda u: torch.from_numpy(pop).repeat(len(u), 1), data.test, data.train)
    assert pop_m["recall@20"] == pytest.approx(0.2784, abs=1e-3)
    # measured (seed 7, 12 epochs): gccf .72, sgl .68, simgcl .70, dccf .57, autocf .69
    assert res["test"]["recall@20"] > pop_m["recall@20"] + 0.2, res["test"]
    assert res["test"]["ndcg@20"] > pop_m["ndcg@20"]


@pytest.mark.parametrize("name", ZOO)
def test_fused_tables_and_alignment_hook(name):
    """Fused (fbgemm) tables take the KJT lookup path that sharded tables use; the layer-0
    hook runs once per step and the RecOutput exposes the batch's rows."""
    train = random_train(4, 30, 20, 0.2)
    seed_everything(0)
    spec = TableOptimizerSpec(name="rowwise_adagrad", lr=0.05)
    extra = {"seed_num": 5, "heads": 2} if name == "autocf" else {}
    extra |= {"intents": 4} if name == "dccf" else {}
    model = build_backbone(name, train, {"dim": 8, **extra}, optimizer=spec)
    assert model.tables.fused
    opt = ModelOptimizer([model], spec)
    before = model.tables.weights()[0].clone()
    calls = []

    def hook(e):
        calls.append(e.shape)
        return e * 1.0

    batch = first_batch(train, 16)
    model.train()
    out = model.rec_forward(batch, layer0_hook=hook)
    assert calls == [(50, 8)]
    out.losses["loss"].backward()
    opt.step()
    assert not torch.equal(model.tables.weights()[0], before)
    d = model.out_dim
    assert out.users.shape == (16, d) and out.pos.shape == (16, d) and out.neg.shape == (16, d)
    assert out.all_users.shape == (30, d) and out.all_items.shape == (20, d)
    assert out.layer0_users.shape == (30, 8)
    torch.testing.assert_close(out.users, out.all_users[batch.users])
    model.eval()
    u, i = model.eval_representations()
    torch.testing.assert_close(model.score_users(torch.tensor([1, 0])), u[[1, 0]] @ i.T)


# ----------------------------------------------------------------------------- presets
PUBLISHED = {  # REFERENCE.md "Other backbones", base column (Amazon-book, Yelp)
    "gccf": [{"layers": 2, "reg_weight": 1e-6}, {"layers": 2, "reg_weight": 1e-6}],
    "sgl": [{"layers": 3, "reg_weight": 1e-5, "cl_weight": .1, "temperature": .2,
             "keep_rate": .8},
            {"layers": 3, "reg_weight": 1e-6, "cl_weight": 1e-3, "temperature": .1,
             "keep_rate": .8}],
    "simgcl": [{"layers": 3, "reg_weight": 1e-5, "cl_weight": .1, "temperature": .2, "eps": .9}] * 2,
    "dccf": [{"layers": 2, "reg_weight": 1e-4, "cl_weight": 1e-3, "temperature": .1,
              "intents": 128}] * 2,
    "autocf": [{"gcn_layers": 2, "reg_weight": 1e-6, "ssl_reg": 5, "keep_rate": .2,
                "gt_layers": 1, "heads": 4, "seed_num": 100, "mask_depth": 2, "fix_steps": 10},
               {"gcn_layers": 3, "reg_weight": 1e-7, "ssl_reg": 2, "keep_rate": .2,
                "gt_layers": 1, "heads": 4, "seed_num": 100, "mask_depth": 2, "fix_steps": 10}],
}


@pytest.mark.parametrize("name", ZOO)
def test_presets_carry_published_settings(name):
    assert name in known_backbones()
    train = random_train()
    for preset, want in zip(("rlmrec-amazon-book", "rlmrec-yelp"), PUBLISHED[name]):
        p = build_backbone(name, train, preset=preset).params
        assert p.dim == 32
        for k, v in want.items():
            assert getattr(p, k) == pytest.approx(v), (name, preset, k)
    # overrides on top of a preset; unknown presets are config errors
    p = build_backbone(name, train, {"reg_weight": 0.5}, preset="rlmrec-yelp").params
    assert p.reg_weight == 0.5
    from recalign.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown .* preset"):
        build_backbone(name, train, preset="nope")


# ----------------------------------------------------------------------------- sampled mode
SAMPLED = ["gccf", "sgl", "simgcl"]


def _sampled_batch(name: str, train: sp.csr_matrix, fanout: int, size: int = 12):
    from recalign.data.subgraph import NeighbourSampler
    from recalign.models import get_backbone

    cls = get_backbone(name)
    layers = 2
    ns = NeighbourSampler(train, [fanout], layers, self_loops=cls.self_loops)
    return ns.batch(first_batch(train, size), np.random.default_rng(1))


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_forward_matches_full_with_wide_fanout(name):
    """Fan-out ≥ every degree: the batch rows' representations and BPR loss on the sampled
    subgraph equal full propagation (GCCF: self-looped adjacency, concatenated layers)."""
    train = random_train(3, 80, 60, 0.03)
    seed_everything(0)
    params = {"dim": 6, "layers": 2}
    full = build_backbone(name, train, params)
    samp = build_backbone(name, train, params, full_graph=False)
    assert samp.graph is None
    with torch.no_grad():
        for a, b in zip(samp.tables.weights(), full.tables.weights()):
            a.copy_(b)
    sb = _sampled_batch(name, train, 10_000, size=4)
    assert sb.subgraph.nodes.size < 140  # a proper subgraph, not the whole graph
    torch.manual_seed(5)
    f = full.rec_forward(first_batch(train, 4))
    torch.manual_seed(5)
    s = samp.rec_forward(sb)
    for k in ("users", "pos", "neg"):
        torch.testing.assert_close(getattr(s, k), getattr(f, k), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.losses["bpr"], f.losses["bpr"], atol=1e-6, rtol=1e-5)
    assert s.all_users.shape[0] == sb.subgraph.graph.n_users < 80
    assert torch.equal(s.extras["user_ids"], sb.subgraph.user_ids)
    # the L2 term covers only the rows looked up for the step
    assert s.losses["reg"] < f.losses["reg"]
    with pytest.raises(RuntimeError, match="sampled propagation"):
        samp.forward()


def test_sgl_sampled_infonce_candidates_are_the_subgraph_nodes():
    """keep_rate 1 makes both views the clean forward: the CL term is then exactly the
    InfoNCE over the subgraph's users (and items) as candidates — computed here by hand."""
    train = random_train(5, 40, 30, 0.15)
    seed_everything(0)
    tau, w = 0.3, 0.7
    m = build_backbone("sgl", train, {"dim": 6, "layers": 2, "keep_rate": 1.0,
                                      "cl_weight": w, "temperature": tau}, full_graph=False)
    sb = _sampled_batch("sgl", train, 3)
    out = m.rec_forward(sb)
    zu = torch.nn.functional.normalize(out.all_users.detach(), dim=-1)
    zi = torch.nn.functional.normalize(out.all_items.detach(), dim=-1)
    bu, bp, bn = sb.subgraph.local(sb.users), None, None
    nu = zu.shape[0]
    bp = sb.subgraph.local(sb.pos + sb.subgraph.n_users) - nu
    bn = sb.subgraph.local(sb.neg + sb.subgraph.n_users) - nu

    def term(z: torch.Tensor, rows: torch.Tensor) -> float:
        return sum(float(torch.logsumexp(z[r] @ z.T / tau, 0) - 1.0 / tau) for r in rows)

    want = w * (term(zu, bu) + term(zi, torch.cat([bp, bn]))) / len(sb.users)
    assert float(out.losses["cl"]) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_mode_trains_and_exports_exact_representations(tmp_path, name):
    """The runner in sampled mode: the model learns, and the exported vectors are the exact
    full-graph representations of the trained layer-0 rows (checked against a full-mode model
    loaded with the exported layer-0 tables: self-loops and layer combination per backbone)."""
    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.jobs import train as train_job
    from recalign.storage.snapshot import SnapshotStore

    extra = "cl_weight: 0.05, " if name != "gccf" else ""
    cfg = load_config(None, [
        "data.source=synthetic", "data.synthetic.users=300", "data.synthetic.items=200",
        "data.synthetic.interactions=6000", "data.synthetic.seed=3",
        f"model.backbone={name}", f"model.params={{dim: 8, layers: 2, {extra}}}",
        "train.batch_size=512", "train.eval_every=2", "train.max_epochs=12",
        "train.optimizer={name: adam, lr: 0.02}",
        "train.propagation={mode: sampled, fanout: [6, 6]}", f"output.root={tmp_path}"])
    out = train_job.run(cfg, None)
    assert out["propagation"] == "sampled"
    data = CFData.from_dataset(load_dataset(cfg.data))
    # measured: lightgcn .46, gccf .41, sgl .39 against popularity .24 (same in full mode)
    assert out["test"]["recall@20"] > popularity_recall(data) + 0.1, out["test"]
    snap = SnapshotStore(str(tmp_path)).open("synthetic-u300-i200-n6000-s3", "embeddings")

    def rows(table: str) -> torch.Tensor:
        t = snap.read_table(table).sort_by("id")
        return torch.tensor(np.stack(t["vector"].to_numpy(zero_copy_only=False)))

    full = build_backbone(name, data.train, {"dim": 8, "layers": 2})
    with torch.no_grad():
        u0, i0 = full.tables.weights()
        u0.copy_(rows("users_layer0"))
        i0.copy_(rows("items_layer0"))
    full.eval()
    u, i = full.forward()
    assert u.shape[1] == (24 if name == "gccf" else 8)
    torch.testing.assert_close(rows("users"), u, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rows("items"), i, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["dccf", "autocf"])
def test_full_only_backbones_refuse_sampled_mode(tmp_path, name):
    from recalign.config import load_config
    from recalign.errors import ConfigError
    from recalign.jobs import train as train_job

    cfg = load_config(None, ["data.source=synthetic", "data.synthetic.users=50",
                             "data.synthetic.items=40", "data.synthetic.interactions=600",
                             f"model.backbone={name}", "train.propagation.mode=sampled",
                             f"output.root={tmp_path}"])
    with pytest.raises(ConfigError, match=f"backbone '{name}' supports full propagation only"):
        train_job.run(cfg, None)


@pytest.mark.parametrize("name", ["lightgcn", *SAMPLED])
def test_sampled_mode_construction_is_checked(name):
    """Sampled mode (no graph) is sized by n_users/n_items; given tables must match the sizes."""
    from recalign.models import get_backbone
    from recalign.tables.collection import IdTables

    cls = get_backbone(name)
    params = cls.Params(dim=8)
    m = cls(None, params, n_users=7, n_items=5)
    assert (m.n_users, m.n_items, m.graph) == (7, 5, None)
    assert (m.tables.n_users, m.tables.n_items, m.tables.dim) == (7, 5, 8)
    with pytest.raises(ValueError, match="needs n_users and n_items"):
        cls(None, params, n_items=5)
    with pytest.raises(ValueError, match="do not match the graph's 7 users, 5 items"):
        cls(None, params, n_users=7, n_items=5, tables=IdTables(7, 6, 8))
