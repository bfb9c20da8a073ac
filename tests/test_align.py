"""Alignment objectives: every alignment on every registered backbone, losses by hand, loading."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recalign.align.base import build_alignment, known_alignments
from recalign.align.darec import (DaRec, _gather_rows, global_structure, local_structure,
                                  orthogonality, two_heads, uniformity)
from recalign.align.kmeans import MiniBatchKMeans, greedy_match
from recalign.align.presets import (ALIGN_PRESETS, align_model_overrides, build_from_config,
                                    resolve)
from recalign.align.rlmrec_con import RLMRecCon, infonce_sum, projection_mlp
from recalign.align.rlmrec_gen import RLMRecGen, ssl_con_loss
from recalign.align.semantic import from_arrays, load_semantic
from recalign.config import AlignConfig
from recalign.data.idmap import IdMap
from recalign.data.sampler import BPRBatch, BPRSampler
from recalign.errors import ConfigError, DataError
from recalign.models.base import RecOutput
from recalign.models.registry import build_backbone, cf_backbones, known_backbones
from recalign.tables.optim import ModelOptimizer, TableOptimizerSpec
from cf_train import bpr_epoch

N_USERS, N_ITEMS, D_SEM = 40, 30, 24


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _train_matrix(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    m = (rng.random((N_USERS, N_ITEMS)) < 0.2).astype(np.float32)
    m[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = 1.0  # every user has one
    m[rng.integers(0, N_USERS, N_ITEMS), np.arange(N_ITEMS)] = 1.0  # every item too
    return sp.csr_matrix(m)


def _keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _write_semantic(tmp_path, rng, drop_user: int = 3, extra_keys: int = 2):
    """Parquet files keyed by original key, rows shuffled, one user without a vector."""
    paths = {}
    for side, prefix, n in (("users", "u", N_USERS), ("items", "i", N_ITEMS)):
        keys = _keys(prefix, n) + [f"zz{side}{j}" for j in range(extra_keys)]
        vec = rng.standard_normal((len(keys), D_SEM)).astype(np.float32)
        order = rng.permutation(len(keys))
        keys = [keys[j] for j in order]
        vec = vec[order]
        if side == "users":
            keep = [j for j, k in enumerate(keys) if k != f"u{drop_user}"]
            keys, vec = [keys[j] for j in keep], vec[keep]
        flat = pa.array(vec.reshape(-1), pa.float32())
        t = pa.table({"key": pa.array(keys, pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(flat, D_SEM)})
        paths[side] = str(tmp_path / f"{side}.parquet")
        pq.write_table(t, paths[side])
    return paths


def _batch(train: sp.csr_matrix, rng: np.random.Generator, size: int = 64) -> BPRBatch:
    s = BPRSampler(train)
    pick = rng.choice(len(s), size=size, replace=False)
    neg = s.sample_negatives(s.users[pick], rng)
    return BPRBatch(torch.from_numpy(s.users[pick]), torch.from_numpy(s.items[pick]),
                    torch.from_numpy(neg))


# ------------------------------------------------------------------ cross product
@pytest.mark.parametrize("method", ["none", "rlmrec-con", "rlmrec-gen", "darec"])
@pytest.mark.parametrize("backbone", cf_backbones())
def test_every_alignment_trains_on_every_backbone(backbone: str, method: str, tmp_path) -> None:
    """Built from config alone; a few steps lower the alignment loss; its parameters get grads."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = _train_matrix()
    paths = _write_semantic(tmp_path, rng)
    cfg = AlignConfig(method=method, semantic={"users": paths["users"], "items": paths["items"]}
                      if method != "none" else {},
                      params={"darec": {"n_sample": 32, "k": 4, "width": 8, "weight": 1.0},
                              "rlmrec-con": {"kd_weight": 1.0},
                              "rlmrec-gen": {"recon_weight": 1.0, "mask_ratio": 0.3}}.get(method, {}))
    model = build_backbone(backbone, train)
    align = build_from_config(cfg, model, user_map=IdMap(_keys("u", N_USERS)),
                              item_map=IdMap(_keys("i", N_ITEMS)))
    assert align.name == method
    opt = ModelOptimizer([model, align], TableOptimizerSpec(lr=1e-2))
    batch = _batch(train, rng)
    hook = align.layer0_hook if align.uses_layer0_hook else None
    history = []
    model.train()
    for step in range(25):
        opt.zero_grad()
        out = model.rec_forward(batch, layer0_hook=hook)
        extra = align(out)
        total = out.losses["loss"] + sum(extra.values(), torch.zeros(()))
        total.backward()
        if step == 0 and method != "none":
            grads = [p.grad for p in align.parameters()]
            assert grads and all(g is not None for g in grads), "alignment params without grad"
            assert sum(float(g.abs().sum()) for g in grads) > 0
        opt.step()
        watched = (sum(v.detach() for k, v in extra.items() if k != "align_reg")
                   if method != "none" else out.losses["loss"].detach())
        history.append(float(watched))
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert np.isfinite(history).all()
    assert last < first, f"{backbone}+{method}: loss {first:.4f} -> {last:.4f}"


def test_known_alignments_and_unknown_method() -> None:
    assert known_alignments() == ["darec", "none", "rlmrec-con", "rlmrec-gen"]
    with pytest.raises(ConfigError, match="unknown alignment 'nope'"):
        build_alignment("nope")


def test_step_passes_layer0_hook_and_optimises_alignment() -> None:
    """The training loop masks through the hook (Gen's token moves) and steps alignment params."""
    torch.manual_seed(0)
    train = _train_matrix(1)
    rng = np.random.default_rng(1)
    sem = from_arrays(rng.standard_normal((N_USERS, D_SEM)), rng.standard_normal((N_ITEMS, D_SEM)))
    model = build_backbone("lightgcn", train)
    align = build_alignment("rlmrec-gen", semantic=sem, dim=32, params={"mask_ratio": 0.5})
    before = align.mask_token.detach().clone()
    w_before = align.mlp[0].weight.detach().clone()
    opt = ModelOptimizer([model, align], TableOptimizerSpec())
    logs = bpr_epoch(model, opt, BPRSampler(train), rng, 64, align)
    assert "align_gen" in logs and logs["align_gen"] > 0
    assert not torch.equal(before, align.mask_token.detach())
    assert not torch.equal(w_before, align.mlp[0].weight.detach())


# ------------------------------------------------------------------ Con by hand
def _np_unit(x):
    return x / np.sqrt(1e-8 + (x ** 2).sum(-1, keepdims=True))


def test_infonce_matches_hand_computation() -> None:
    e = np.array([[1.0, 0.0], [0.5, 0.5]])
    p = np.array([[0.8, 0.6], [0.0, 1.0]])
    c = np.array([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    want = 0.0
    for i in range(2):
        ei, pi = _np_unit(e[i]), _np_unit(p[i])
        want += -(ei @ pi) / tau + math.log(sum(math.exp(ei @ _np_unit(cj) / tau) for cj in c))
    got = infonce_sum(torch.tensor(e), torch.tensor(p), torch.tensor(c), tau)
    assert float(got) == pytest.approx(want, rel=1e-6)


def _identity_mlp(module) -> None:
    """Make a 2-layer projection (d -> h -> d, h >= d) compute x for x >= 0."""
    with torch.no_grad():
        for lin in (module[0], module[2]):
            lin.weight.zero_()
            lin.bias.zero_()
            n = min(lin.weight.shape)
            lin.weight[:n, :n] = torch.eye(n)


def test_con_loss_by_hand() -> None:
    """Users: all users' projections as candidates; items: in-batch; missing users left out."""
    us = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    it = np.array([[1.0, 2.0], [2.0, 1.0], [0.0, 3.0]])
    sem = from_arrays(us, it, user_mask=[True, True, False])
    con = RLMRecCon(sem, dim=2, params=RLMRecCon.Params(kd_weight=0.5, tau=0.2))
    _identity_mlp(con.mlp)  # projections equal the (non-negative) semantic vectors
    users_rep = torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0]])
    items_rep = torch.tensor([[0.5, 1.0], [1.0, 0.1], [0.2, 0.9]])
    b = BPRBatch(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]), torch.tensor([2, 2, 1]))
    out = RecOutput({}, users_rep[b.users], items_rep[b.pos], items_rep[b.neg], users_rep,
                    items_rep, b)
    got = float(con(out)["align_con"])

    def nce(rows, pos, cands):
        return sum(-(_np_unit(r) @ _np_unit(p)) / 0.2
                   + math.log(sum(math.exp(_np_unit(r) @ _np_unit(c) / 0.2) for c in cands))
                   for r, p in zip(rows, pos))
    U, I = users_rep.numpy(), items_rep.numpy()
    user_term = nce(U[[0, 1]], us[[0, 1]], us[[0, 1]])            # user 2 has no vector
    pos_term = nce(I[[0, 1, 0]], it[[0, 1, 0]], it[[0, 1, 0]])      # duplicates kept
    neg_term = nce(I[[2, 2, 1]], it[[2, 2, 1]], it[[2, 2, 1]])
    want = 0.5 * (user_term + pos_term + neg_term) / 3
    assert got == pytest.approx(want, rel=1e-5)
    con_no_neg = RLMRecCon(sem, dim=2, params=RLMRecCon.Params(kd_weight=0.5, tau=0.2,
                                                                neg_term=False))
    _identity_mlp(con_no_neg.mlp)
    assert float(con_no_neg(out)["align_con"]) == pytest.approx(
        0.5 * (user_term + pos_term) / 3, rel=1e-5)


def test_con_user_candidates_batch_and_bf16() -> None:
    """``user_candidates: batch`` takes the batch's users (with multiplicity) as candidates,
    ``all`` every user with a vector; ``bf16`` stores the vectors in bf16 and stays within
    bf16 rounding of fp32 in value and gradient."""
    us = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    it = np.array([[1.0, 2.0], [2.0, 1.0], [0.0, 3.0]])
    sem = from_arrays(us, it, user_mask=[True, True, False])
    users_rep = torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0]], requires_grad=True)
    items_rep = torch.tensor([[0.5, 1.0], [1.0, 0.1], [0.2, 0.9]])
    b = BPRBatch(torch.tensor([0, 0, 2]), torch.tensor([0, 1, 0]), torch.tensor([2, 2, 1]))

    def nce(rows, pos, cands):
        return sum(-(_np_unit(r) @ _np_unit(p)) / 0.2
                   + math.log(sum(math.exp(_np_unit(r) @ _np_unit(c) / 0.2) for c in cands))
                   for r, p in zip(rows, pos))
    U, I = users_rep.detach().numpy(), items_rep.numpy()
    items = nce(I[[0, 1, 0]], it[[0, 1, 0]], it[[0, 1, 0]]) + nce(I[[2, 2, 1]], it[[2, 2, 1]],
                                                                    it[[2, 2, 1]])
    for cands, want_users in (("all", nce(U[[0, 0]], us[[0, 0]], us[[0, 1]])),
                              ("batch", nce(U[[0, 0]], us[[0, 0]], us[[0, 0]]))):
        grads = {}
        for bf16 in (False, True):
            con = RLMRecCon(sem, dim=2, params=RLMRecCon.Params(
                kd_weight=0.5, tau=0.2, user_candidates=cands, bf16=bf16))
            _identity_mlp(con.mlp)
            out = RecOutput({}, users_rep[b.users], items_rep[b.pos], items_rep[b.neg],
                            users_rep, items_rep, b)
            assert con.sem_users.dtype == (torch.bfloat16 if bf16 else torch.float32)
            assert con.sem_users.shape[0] == 2  # only the users with a vector are kept
            loss = con(out)["align_con"]
            want = 0.5 * (want_users + items) / 3
            assert float(loss) == pytest.approx(want, rel=2e-2 if bf16 else 1e-5), (cands, bf16)
            (grads[bf16],) = torch.autograd.grad(loss, users_rep)
        torch.testing.assert_close(grads[True], grads[False], rtol=0.05, atol=0.02)


# ------------------------------------------------------------------ Gen by hand
def test_ssl_con_loss_by_hand() -> None:
    x = np.array([[1.0, 0.0], [1.0, 1.0]])
    y = np.array([[2.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    want = 0.0
    for i in range(2):
        xi = x[i] / np.linalg.norm(x[i])
        s = [math.exp(xi @ (y[j] / np.linalg.norm(y[j])) / tau) for j in range(2)]
        want += -math.log(s[i] / (sum(s) + 1e-8) + 1e-8)
    got = ssl_con_loss(torch.tensor(x), torch.tensor(y), tau)
    assert float(got) == pytest.approx(want / 2, rel=1e-6)


def test_gen_masks_with_token_and_reconstructs_masked_rows() -> None:
    torch.manual_seed(3)
    sem = from_arrays(np.abs(np.random.default_rng(0).standard_normal((6, 4))),
                      np.abs(np.random.default_rng(1).standard_normal((4, 4))),
                      item_mask=[True, True, False, True])
    gen = RLMRecGen(sem, dim=4, params=RLMRecGen.Params(mask_ratio=0.5, recon_weight=2.0, tau=0.3))
    with torch.no_grad():
        gen.mask_token.fill_(7.0)
    layer0 = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    masked = gen.layer0_hook(layer0)
    seeds = gen._seeds.clone()
    assert seeds.numel() == 5 and len(set(seeds.tolist())) == 5
    changed = torch.nonzero((masked != layer0).any(1)).flatten()
    assert sorted(changed.tolist()) == sorted(seeds.tolist())
    assert torch.all(masked[seeds] == 7.0)
    _identity_mlp(gen.mlp)
    final = torch.rand(10, 4)
    b = BPRBatch(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    out = RecOutput({}, final[:1], final[6:7], final[7:8], final[:6], final[6:], b)
    got = float(gen(out)["align_gen"])
    keep = [s for s in seeds.tolist() if s != 8]  # item 2 (node 8) has no vector
    allsem = torch.cat([sem.users.vectors, sem.items.vectors])
    want = 2.0 * float(ssl_con_loss(final[keep].clamp(min=0), allsem[keep], 0.3))
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(RuntimeError, match="layer0_hook"):
        gen(out)  # no hook call before this step


def test_gen_bf16_stores_vectors_in_bf16_and_tracks_fp32() -> None:
    sem = from_arrays(np.random.default_rng(0).standard_normal((30, 64)),
                      np.random.default_rng(1).standard_normal((20, 64)))
    final = torch.randn(50, 8)
    b = BPRBatch(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    got = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        gen = RLMRecGen(sem, dim=8, params=RLMRecGen.Params(mask_ratio=0.5, bf16=bf16))
        assert gen.sem.dtype == (torch.bfloat16 if bf16 else torch.float32)
        gen.layer0_hook(torch.zeros(50, 8))
        out = RecOutput({}, final[:1], final[30:31], final[31:32], final[:30], final[30:], b)
        got[bf16] = float(gen(out)["align_gen"])
    assert got[True] == pytest.approx(got[False], rel=2e-2)


def test_gen_sampled_subgraph_masks_its_rows_and_reconstructs_their_global_vectors() -> None:
    """Sampled propagation: the hook masks a fraction of the subgraph's rows; each masked row
    is reconstructed against the vector of its *global* node (users, items offset by 6)."""
    torch.manual_seed(4)
    rng = np.random.default_rng(2)
    sem = from_arrays(np.abs(rng.standard_normal((6, 4))), np.abs(rng.standard_normal((4, 4))),
                      user_mask=[True] * 4 + [False, True])
    gen = RLMRecGen(sem, dim=4, params=RLMRecGen.Params(mask_ratio=0.6, recon_weight=1.5,
                                                        tau=0.4))
    users, items = torch.tensor([4, 1, 5]), torch.tensor([3, 0])  # user 4 has no vector
    layer0 = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    gen.layer0_hook(layer0)
    seeds = gen._seeds.clone()
    assert seeds.numel() == 3 and int(seeds.max()) < 5  # 60 % of the 5 subgraph rows
    _identity_mlp(gen.mlp)
    final = torch.rand(5, 4)
    b = BPRBatch(torch.tensor([1]), torch.tensor([0]), torch.tensor([3]))
    out = RecOutput({}, final[1:2], final[4:5], final[3:4], final[:3], final[3:], b,
                    extras={"user_ids": users, "item_ids": items})
    got = float(gen(out)["align_gen"])
    glob = torch.cat([users, items + 6])
    keep = [s for s in seeds.tolist() if int(glob[s]) != 4]
    allsem = torch.cat([sem.users.vectors, sem.items.vectors])
    want = 1.5 * float(ssl_con_loss(final[keep].clamp(min=0), allsem[glob[keep]], 0.4))
    assert got == pytest.approx(want, rel=1e-5)
    gen.layer0_hook(torch.zeros(7, 4))  # a layer-0 table that is not the subgraph's rows
    with pytest.raises(ValueError, match="7 rows, expected 5"):
        gen(out)


# ------------------------------------------------------------------ DaRec by hand
def test_darec_terms_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    cos = [(a[i] @ b[i]) / (a[i].norm() * b[i].norm()) for i in range(3)]
    assert float(orthogonality(a, b)) == pytest.approx(float(sum(c ** 2 for c in cos) / 3), abs=1e-6)
    na = F.normalize(a, dim=-1)
    pairs = [(0, 1), (0, 2), (1, 2)]
    u = math.log(sum(math.exp(-2 * float((na[i] - na[j]).square().sum())) for i, j in pairs) / 3)
    assert float(uniformity(a)) == pytest.approx(u, rel=1e-6)
    nb = F.normalize(b, dim=-1)
    # the paper's squared Frobenius norm: a sum over all N-hat^2 pairs (mean: / N-hat^2)
    g = sum(float(na[i] @ na[j] - nb[i] @ nb[j]) ** 2 for i in range(3) for j in range(3))
    assert float(global_structure(a, b)) == pytest.approx(g, rel=1e-6)
    assert float(global_structure(a, b, "mean")) == pytest.approx(g / 9, rel=1e-6)
    perm = torch.tensor([2, 0, 1])
    s = [[float(F.cosine_similarity(a[i], b[perm[j]], dim=0)) for j in range(3)] for i in range(3)]
    loc = sum((s[i][i] - 1) ** 2 for i in range(3)) / 3 + sum(
        s[i][j] ** 2 for i in range(3) for j in range(3) if i != j) / 6
    assert float(local_structure(a, b, perm)) == pytest.approx(loc, rel=1e-6)


@pytest.mark.parametrize("n,a,b", [(7, 3, 5), (4, 6, 9), (50, 8, 2)])
def test_darec_global_structure_trace_identity_matches_explicit(n: int, a: int, b: int) -> None:
    """The N-hat x N-hat-free form gives the explicit |S^C - S^L|_F^2 and its gradients, for
    widths below and above N-hat (each Gram taken by its smaller form)."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, a, generator=g, requires_grad=True)
    y = torch.randn(n, b, generator=g, requires_grad=True)
    for centre in (False, True):
        xc, yc = (x - x.mean(0), y - y.mean(0)) if centre else (x, y)
        nx, ny = F.normalize(xc, dim=-1), F.normalize(yc, dim=-1)
        ref = (nx @ nx.T - ny @ ny.T).square().sum()
        gx, gy = torch.autograd.grad(ref, (x, y))
        got = global_structure(x, y, centre=centre)
        hx, hy = torch.autograd.grad(got, (x, y))
        assert float(got) == pytest.approx(float(ref), rel=1e-4)
        torch.testing.assert_close(hx, gx, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(hy, gy, rtol=1e-4, atol=1e-5)
        # a side without gradient: constant=False drops |S^L|_F^2 from the value only
        fixed = y.detach()
        nf = F.normalize(fixed - fixed.mean(0) if centre else fixed, dim=-1)
        nx = F.normalize(x - x.mean(0) if centre else x, dim=-1)
        ref_x = (nx @ nx.T - nf @ nf.T).square().sum()
        (gx_ref,) = torch.autograd.grad(ref_x, x)
        got_x = global_structure(x, fixed, centre=centre, constant=False)
        (gx_got,) = torch.autograd.grad(got_x, x)
        want = float(ref_x) - float((nf @ nf.T).square().sum())
        assert float(got_x) == pytest.approx(want, rel=1e-4, abs=1e-3)
        torch.testing.assert_close(gx_got, gx_ref, rtol=1e-4, atol=1e-5)
        # the fixed rows' squared norms given (DaRec computes them once): the same
        got_sq = global_structure(x, fixed, centre=centre, constant=False,
                                  l_sq=fixed.square().sum(1))
        (gx_sq,) = torch.autograd.grad(got_sq, x)
        assert float(got_sq) == pytest.approx(float(got_x), rel=1e-5, abs=1e-4)
        torch.testing.assert_close(gx_sq, gx_got, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_rows", [1, 4, 9, 64, 256])
def test_darec_uniformity_gradient_matches_pairwise_reference(block_rows: int) -> None:
    """The hand-written blocked backward: gradcheck in double precision, and value and gradient
    equal to the pairwise-distance form (pdist) on a wider sample, for blocks of one row, of a
    size that does not divide the rows, and of all rows at once."""
    x = torch.randn(9, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: uniformity(t, block_rows), (x,))
    y = torch.randn(200, 16, requires_grad=True)
    ny = F.normalize(y, dim=-1)
    ref = torch.pdist(ny).square().mul(-2).exp().mean().log()
    (g_ref,) = torch.autograd.grad(ref, y)
    got = uniformity(y, block_rows)
    (g_got,) = torch.autograd.grad(got, y)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # no gradient wanted: the same value, nothing kept for a backward
        assert float(uniformity(y, block_rows)) == pytest.approx(float(ref), rel=1e-5)


def test_darec_two_heads_and_row_gather_match_the_plain_forms() -> None:
    """One product for both heads' first layers = each head on its own (values and every
    parameter's gradient); rows of users/items without their concatenation = index_select on it."""
    torch.manual_seed(0)
    a, b = projection_mlp(12, 3, 5), projection_mlp(12, 3, 7)  # different hidden widths
    x = torch.randn(10, 12)
    got = two_heads(x, a, b)
    ga = torch.autograd.grad(got[0].square().sum() + got[1].sin().sum(),
                             [*a.parameters(), *b.parameters()])
    want = a(x), b(x)
    wa = torch.autograd.grad(want[0].square().sum() + want[1].sin().sum(),
                             [*a.parameters(), *b.parameters()])
    for g_, w_ in zip((*got, *ga), (*want, *wa)):
        torch.testing.assert_close(g_, w_)
    users, items = torch.randn(4, 2), torch.randn(3, 2)
    idx = torch.tensor([5, 1, 6, 0, 4])
    order, rows = _gather_rows(users, items, idx)
    assert order.tolist() == [1, 0, 5, 6, 4]  # users first, each id with its own row
    assert torch.equal(rows, torch.cat([users, items]).index_select(0, order))


def test_darec_global_structure_centred_and_on_representations() -> None:
    """The two opt-in L_glo extensions: centring each side, and comparing the un-projected CF
    representations with the semantic vectors (different widths) instead of the shared parts."""
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.0], [1.0, 1.0, 1.0]])  # 3-d: other width
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = F.normalize(ca, dim=-1), F.normalize(cb, dim=-1)
    g = sum(float(na[i] @ na[j] - nb[i] @ nb[j]) ** 2 for i in range(3) for j in range(3))
    assert float(global_structure(a, b, centre=True)) == pytest.approx(g, rel=1e-6)
    # a common offset added to every row changes the uncentred value, not the centred one
    assert float(global_structure(a + 5, b, centre=True)) == pytest.approx(g, rel=1e-5)
    assert float(global_structure(a + 5, b)) != pytest.approx(float(global_structure(a, b)))

    rng = np.random.default_rng(0)
    sem = from_arrays(rng.standard_normal((8, 5)), rng.standard_normal((6, 5)))
    reps = torch.randn(14, 3, requires_grad=True)
    b1 = BPRBatch(torch.tensor([1]), torch.tensor([0]), torch.tensor([3]))
    out = RecOutput({}, reps[:1], reps[8:9], reps[9:10], reps[:8], reps[8:], b1)
    grads = {}
    for constant in (True, False):
        torch.manual_seed(0)
        dr = DaRec(sem, dim=3, params=DaRec.Params(
            n_sample=10, k=2, width=4, weight=0.5, reg_weight=0.0, glo_on="representations",
            glo_centre=True, glo_constant=constant, bf16=False,
            term_weights={"or": 0.0, "uni": 0.0, "loc": 0.0}))
        state = dr._gen.get_state()
        idx = dr.sample()
        dr._gen.set_state(state)  # forward draws the same rows
        losses = dr(out)
        want = 0.5 * float(global_structure(reps[idx].detach(), dr.sem[idx], centre=True))
        if not constant:  # the value leaves out the sampled semantic rows' own |S^L|_F^2
            ls = F.normalize(dr.sem[idx] - dr.sem[idx].mean(0), dim=-1)
            want -= 0.5 * float((ls @ ls.T).square().sum())
        assert float(losses["align_darec_glo"]) == pytest.approx(want, rel=1e-5)
        reps.grad = None
        sum(losses.values()).backward()
        assert reps.grad is not None and reps.grad[idx].abs().sum() > 0  # the CF rows move
        grads[constant] = reps.grad.clone()
        # the heads play no part in this term: with the other terms weighted 0, no gradient
        assert all(p.grad is None or not p.grad.any() for p in dr.parameters())
    # leaving the parameter-free term out changes the value, not the training
    torch.testing.assert_close(grads[True], grads[False])


def test_darec_bf16_semantic_side_tracks_fp32() -> None:
    """``bf16``: the semantic vectors are stored in bfloat16 (half the memory) and the semantic
    side's products run in bf16; the CF heads stay fp32. Same rows, same initial weights:
    every term and the CF gradient stay within bf16 rounding of the fp32 run."""
    rng = np.random.default_rng(1)
    sem = from_arrays(rng.standard_normal((40, 96)) + 0.5, rng.standard_normal((30, 96)) + 0.5)
    reps = torch.randn(70, 8, requires_grad=True)
    b1 = BPRBatch(torch.tensor([1]), torch.tensor([0]), torch.tensor([3]))
    out = RecOutput({}, reps[:1], reps[40:41], reps[41:42], reps[:40], reps[40:], b1)
    parts, grads = {}, {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        dr = DaRec(sem, dim=8, params=DaRec.Params(n_sample=64, k=3, width=4, weight=1.0,
                                                   reg_weight=0.0, bf16=bf16))
        assert dr.sem.dtype == (torch.bfloat16 if bf16 else torch.float32)
        reps.grad = None
        losses = dr(out)
        sum(losses.values()).backward()
        parts[bf16], grads[bf16] = dict(dr.last_parts), reps.grad.clone()
        assert all(p.dtype == torch.float32 for p in dr.c_sh.parameters())
        assert dr.l_sh[0].weight.grad is not None and dr.l_sh[0].weight.grad.abs().sum() > 0
    for k, v in parts[False].items():
        assert parts[True][k] == pytest.approx(v, rel=0.01, abs=0.01), k
    cos = F.cosine_similarity(grads[True].flatten(), grads[False].flatten(), dim=0)
    assert float(cos) > 0.99


@pytest.mark.parametrize("native", [False, True])
def test_bf16_auto_follows_native_support(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """``bf16: auto`` (DaRec's default; accepted by Con and Gen) stores and multiplies the
    semantic side in bf16 exactly where the hardware multiplies bf16 natively. The CPU
    capability probes are replaced (an injected fault: the test must cover both kinds of CPU
    whatever this machine is); explicit true/false ignore them."""
    import recalign.align.precision as prec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert prec.native_bf16() is native and prec.native_bf16("cpu") is native
    assert prec.resolve_bf16("auto") is native
    assert prec.resolve_bf16(True) is True and prec.resolve_bf16(False) is False
    assert prec.native_bf16("meta") is False
    rng = np.random.default_rng(0)
    sem = from_arrays(rng.standard_normal((6, 5)), rng.standard_normal((4, 5)))
    want = torch.bfloat16 if native else torch.float32
    dr = DaRec(sem, dim=3, params=DaRec.Params(n_sample=8, k=2, width=4))
    assert DaRec.Params().bf16 == "auto" and dr.bf16 is native and dr.sem.dtype == want
    for flag in (True, False):  # explicit settings win over the probe
        d2 = DaRec(sem, dim=3, params=DaRec.Params(n_sample=8, k=2, width=4, bf16=flag))
        assert d2.sem.dtype == (torch.bfloat16 if flag else torch.float32)
    assert prec.precision_of(dr) == ("bf16" if native else "fp32")
    assert prec.precision_of(build_alignment("none")) == "fp32"
    con = RLMRecCon(sem, dim=3, params=RLMRecCon.Params(bf16="auto"))
    gen = RLMRecGen(sem, dim=3, params=RLMRecGen.Params(bf16="auto"))
    assert con.sem_users.dtype == want and gen.sem.dtype == want
    # Con and Gen keep the reference precision unless asked
    assert RLMRecCon(sem, dim=3).sem_users.dtype == torch.float32
    assert RLMRecGen(sem, dim=3).sem.dtype == torch.float32
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="bf16"):
        DaRec.Params(bf16="fast")


def test_darec_term_weights_scale_each_term() -> None:
    """lambda times the per-term multiplier (default 1: the paper's single lambda); the
    terms are computed from the same rows either way (same seed, same sampled rows)."""
    rng = np.random.default_rng(0)
    sem = from_arrays(rng.standard_normal((8, 5)), rng.standard_normal((6, 5)))
    reps_u, reps_i = torch.randn(8, 3), torch.randn(6, 3)
    b = BPRBatch(torch.tensor([1]), torch.tensor([0]), torch.tensor([3]))
    out = RecOutput({}, reps_u[:1], reps_i[:1], reps_i[1:2], reps_u, reps_i, b)
    got = {}
    for name, tw in (("plain", {}), ("weighted", {"glo": 0.0, "loc": 3.0})):
        torch.manual_seed(0)
        dr = DaRec(sem, dim=3, params=DaRec.Params(n_sample=10, k=2, width=4, weight=0.5,
                                                   term_weights=tw, reg_weight=0.0))
        got[name] = {k: float(v) for k, v in dr(out).items()}
    p, w = got["plain"], got["weighted"]
    assert w["align_darec_glo"] == 0.0 and p["align_darec_glo"] != 0
    assert w["align_darec_loc"] == pytest.approx(3 * p["align_darec_loc"], rel=1e-6)
    for k in ("or", "uni"):
        assert w[f"align_darec_{k}"] == pytest.approx(p[f"align_darec_{k}"], rel=1e-6)
    with pytest.raises(ValueError, match="term weights must be >= 0"):
        DaRec.Params(term_weights={"glo": -1.0})
    with pytest.raises(ValueError):
        DaRec.Params(term_weights={"global": 1.0})  # unknown term name


def test_greedy_matching_takes_closest_pair_first() -> None:
    # greedy: (a1, b0) at 0.1 first, then (a0, b1) at 2.5 -- the optimal assignment would be
    # (a0, b0) + (a1, b1) = 2.4, so this distinguishes greedy from Hungarian matching
    a = torch.tensor([[0.0], [1.1]])
    b = torch.tensor([[1.0], [2.5]])
    assert greedy_match(a, b).tolist() == [1, 0]
    a3 = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    b3 = torch.tensor([[0.0, 4.9], [0.1, 0.0], [5.0, 0.2]])
    assert greedy_match(a3, b3).tolist() == [1, 2, 0]


def test_kmeans_update_by_hand_and_reduce_hook() -> None:
    km = MiniBatchKMeans(2, 1, decay=0.5)
    km.centres.copy_(torch.tensor([[0.0], [10.0]]))
    km.counts.copy_(torch.tensor([2.0, 4.0]))
    km.initialised.fill_(True)
    x = torch.tensor([[1.0], [2.0], [9.0]])
    idx, n = km.update(x)
    assert idx.tolist() == [0, 0, 1] and n.tolist() == [2.0, 1.0]
    # c0 = (0.5*2*0 + 3) / (1 + 2) = 1; c1 = (0.5*4*10 + 9) / (2 + 1) = 29/3
    assert km.centres.flatten().tolist() == pytest.approx([1.0, 29 / 3])
    assert km.counts.tolist() == [3.0, 3.0]
    # the reduce hook sees [sums | counts] and its result is what is applied
    seen = []

    def double(t):
        seen.append(t.clone())
        return t * 2
    km2 = MiniBatchKMeans(2, 1, decay=1.0, reduce_fn=double)
    km2.centres.copy_(torch.tensor([[0.0], [10.0]]))
    km2.initialised.fill_(True)
    km2.update(x)
    assert seen[0].tolist() == [[3.0, 2.0], [9.0, 1.0]]
    assert km2.counts.tolist() == [4.0, 2.0]
    assert km2.centres.flatten().tolist() == pytest.approx([1.5, 9.0])
    # differentiable centres: value = centres, gradient 1/count on the row's centre
    xr = x.clone().requires_grad_(True)
    c = km2.differentiable_centres(xr, torch.tensor([0, 0, 1]))
    assert torch.allclose(c.detach(), km2.centres)
    c.sum().backward()
    assert xr.grad.flatten().tolist() == pytest.approx([0.25, 0.25, 0.5])


def test_darec_excludes_rows_without_vectors_and_samples_n_hat() -> None:
    rng = np.random.default_rng(0)
    sem = from_arrays(rng.standard_normal((10, 6)), rng.standard_normal((5, 6)),
                      user_mask=[True] * 8 + [False] * 2)
    dr = DaRec(sem, dim=4, params=DaRec.Params(n_sample=50, k=3, width=4))
    idx = dr.sample()
    assert idx.numel() == 13 and not ({8, 9} & set(idx.tolist()))
    dr2 = DaRec(sem, dim=4, params=DaRec.Params(n_sample=5, k=3, width=4))
    assert dr2.sample().numel() == 5


def test_darec_sampled_subgraph_rows_pair_with_their_global_vectors() -> None:
    """Sampled propagation: reps are the subgraph's rows; each pairs with its own vector."""
    rng = np.random.default_rng(1)
    sem = from_arrays(rng.standard_normal((6, 5)), rng.standard_normal((4, 5)),
                      user_mask=[True] * 4 + [False, True])
    dr = DaRec(sem, dim=3, params=DaRec.Params(n_sample=100, k=2, width=4, bf16=False))
    seen = {}

    def terms(e_c, e_l, l_sq):
        seen["c"], seen["l"], seen["sq"] = e_c.detach().clone(), e_l.detach().clone(), l_sq
        return {"glo": e_c.sum() * 0}
    dr.terms = terms
    users, items = torch.tensor([4, 1, 5]), torch.tensor([3, 0])  # user 4 has no vector
    reps_u = torch.arange(9.0).reshape(3, 3)
    reps_i = 100 + torch.arange(6.0).reshape(2, 3)
    b = BPRBatch(torch.tensor([1]), torch.tensor([0]), torch.tensor([3]))
    out = RecOutput({}, reps_u[:1], reps_i[:1], reps_i[1:], reps_u, reps_i, b,
                    extras={"user_ids": users, "item_ids": items})
    dr(out)
    allsem = torch.cat([sem.users.vectors, sem.items.vectors])
    local = torch.cat([reps_u, reps_i])
    glob = torch.cat([users, items + 6])
    got = {tuple(r.tolist()) for r in seen["c"]}
    assert got == {tuple(local[j].tolist()) for j in (1, 2, 3, 4)}  # not user 4 (row 0)
    for c, l_ in zip(seen["c"], seen["l"]):
        j = next(j for j in range(5) if torch.equal(local[j], c))
        assert torch.equal(l_, allsem[glob[j]])
    # the precomputed squared norms travel with their rows
    torch.testing.assert_close(seen["sq"], seen["l"].square().sum(1))


# ------------------------------------------------------------------ semantic vectors
def test_semantic_loading_matches_by_key_and_counts(tmp_path) -> None:
    rng = np.random.default_rng(0)
    paths = _write_semantic(tmp_path, rng, drop_user=3, extra_keys=2)
    um, im = IdMap(_keys("u", N_USERS)), IdMap(_keys("i", N_ITEMS))
    sv = load_semantic(paths["users"], paths["items"], um, im)
    assert sv.dim == D_SEM
    assert sv.summary["users"] == {"entities": N_USERS, "with_vector": N_USERS - 1,
                                   "without_vector": 1, "unknown_keys_dropped": 2}
    assert sv.summary["items"]["without_vector"] == 0
    assert not bool(sv.users.mask[3]) and float(sv.users.vectors[3].abs().sum()) == 0
    t = pq.read_table(paths["users"]).to_pylist()
    row = next(r for r in t if r["key"] == "u7")
    assert np.allclose(sv.users.vectors[7].numpy(), row["vector"])
    # the shuffle ablation permutes vectors among entities that have one
    sh = sv.shuffle(1)
    assert sh.shuffled and torch.equal(sh.users.mask, sv.users.mask)
    assert not torch.equal(sh.users.vectors, sv.users.vectors)
    assert float(sh.users.vectors[3].abs().sum()) == 0
    a = sorted(map(tuple, sv.users.vectors[sv.users.mask].tolist()))
    assert a == sorted(map(tuple, sh.users.vectors[sh.users.mask].tolist()))


def test_semantic_npy_with_and_without_keys(tmp_path) -> None:
    m = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "u.npy", m)
    um = IdMap(["a", "b", "c", "d"])
    np.save(tmp_path / "i.npy", m[:2])
    (tmp_path / "i.keys.txt").write_text("y\nx\n")
    sv = load_semantic(str(tmp_path / "u.npy"), str(tmp_path / "i.npy"), um, IdMap(["x", "y", "z"]))
    assert torch.equal(sv.users.vectors, torch.from_numpy(m))
    assert sv.items.vectors[0].tolist() == [3, 4, 5] and sv.items.vectors[1].tolist() == [0, 1, 2]
    assert sv.items.counts["without_vector"] == 1
    with pytest.raises(DataError, match="4 rows without keys but the dataset has 5"):
        load_semantic(str(tmp_path / "u.npy"), str(tmp_path / "i.npy"),
                      IdMap(list("abcde")), IdMap(["x", "y"]))


def test_semantic_width_and_key_mismatch_are_errors(tmp_path) -> None:
    np.save(tmp_path / "u.npy", np.zeros((2, 384), np.float32))
    np.save(tmp_path / "i.npy", np.zeros((2, 1536), np.float32))
    with pytest.raises(DataError, match="users have width 384 but items have width 1536"):
        load_semantic(str(tmp_path / "u.npy"), str(tmp_path / "i.npy"), IdMap(["a", "b"]),
                      IdMap(["x", "y"]))
    with pytest.raises(DataError, match="width 384, expected 1536"):
        load_semantic(str(tmp_path / "u.npy"), str(tmp_path / "u.npy"), IdMap(["a", "b"]),
                      IdMap(["x", "y"]), expect_dim=1536)
    np.save(tmp_path / "k.npy", np.zeros((2, 8), np.float32))
    (tmp_path / "k.keys.txt").write_text("item-1\nitem-2\n")
    with pytest.raises(DataError, match="none of the 2 keys is in the dataset.*key mismatch"):
        load_semantic(str(tmp_path / "k.npy"), str(tmp_path / "k.npy"), IdMap(["1", "2"]),
                      IdMap(["1", "2"]))
    (tmp_path / "k.keys.txt").write_text("1\n1\n")
    with pytest.raises(DataError, match="duplicate keys"):
        load_semantic(str(tmp_path / "k.npy"), str(tmp_path / "k.npy"), IdMap(["1", "2"]),
                      IdMap(["1", "2"]))
    with pytest.raises(DataError, match="does not exist"):
        load_semantic(str(tmp_path / "nope"), str(tmp_path / "k.npy"), IdMap(["1"]), IdMap(["1"]))


def test_semantic_from_embedding_snapshot(tmp_path) -> None:
    """The embed job's snapshot format, by version folder and by artifact folder (LATEST)."""
    from recalign.llm.embedding import vectors_table
    from recalign.storage.snapshot import SnapshotStore

    store = SnapshotStore(str(tmp_path))
    w = store.begin("ds", "semantic")
    rng = np.random.default_rng(0)
    w.write_table("users", vectors_table([0, 1], ["b", "a"], rng.standard_normal((2, 5))))
    w.write_table("items", vectors_table([0], ["x"], rng.standard_normal((1, 5))))
    snap = w.commit()
    store.set_latest("ds", "semantic", snap.version)
    for src in (snap.uri, store.artifact_uri("ds", "semantic")):
        sv = load_semantic(src, src, IdMap(["a", "b", "c"]), IdMap(["x", "y"]))
        assert sv.dim == 5
        assert sv.users.mask.tolist() == [True, True, False]
        assert sv.items.counts["without_vector"] == 1


# ------------------------------------------------------------------ presets / config
def test_presets_follow_reference_tables() -> None:
    r = resolve("rlmrec-gen", "lightgcn", "rlmrec-amazon-book")
    assert r == {"model": {"layers": 2, "reg_weight": 1e-7},
                 "align": {"mask_ratio": 0.15, "recon_weight": 0.1, "tau": 0.5}}
    assert resolve("rlmrec-con", "lightgcn", "rlmrec-steam")["align"] == {"kd_weight": 1e-3, "tau": 0.1}
    assert resolve("rlmrec-con", "autocf", "rlmrec-yelp")["align"]["neg_term"] is False
    assert resolve("rlmrec-gen", "gccf", "rlmrec-yelp")["align"]["tau"] == 1.0
    assert resolve("darec", "lightgcn", "rlmrec-amazon-book") == {"model": {}, "align": {}}
    with pytest.raises(ConfigError, match="no published rlmrec-con setting"):
        resolve("rlmrec-con", "sgl", "rlmrec-steam")
    cfg = AlignConfig(method="rlmrec-con", preset="rlmrec-amazon-book",
                      semantic={"users": "u", "items": "i"})
    assert align_model_overrides(cfg, "lightgcn") == {"layers": 3, "reg_weight": 1e-7}
    # every preset's model keys exist on the registered backbones' parameter models
    from recalign.models.registry import get_backbone
    for method, by_b in ALIGN_PRESETS.items():
        for b, by_p in by_b.items():
            if b not in known_backbones():
                continue
            fields = set(get_backbone(b).Params.model_fields)
            for p, entry in by_p.items():
                assert set(entry["model"]) <= fields, (method, b, p)
                get_backbone(b).Params(**entry["model"])


def test_align_config_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs align.semantic.users"):
        AlignConfig(method="darec")
    with pytest.raises(ValueError):
        AlignConfig(method="rlmrec-cn", semantic={"users": "u", "items": "i"})
    rng = np.random.default_rng(0)
    paths = _write_semantic(tmp_path, rng)
    cfg = AlignConfig(method="rlmrec-con", params={"kd_wieght": 1.0},
                      semantic={"users": paths["users"], "items": paths["items"]})
    model = build_backbone("lightgcn", _train_matrix())
    with pytest.raises(ConfigError, match="align.params.kd_wieght: unknown key"):
        build_from_config(cfg, model, user_map=IdMap(_keys("u", N_USERS)),
                          item_map=IdMap(_keys("i", N_ITEMS)))


def test_con_dedupe_equals_naive_rows_value_and_gradient() -> None:
    """Weighted unique rows give the reference's B x B value and gradients exactly."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([3, 1, 3, 3, 0, 1])
    table = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    naive = infonce_sum(table[ids], proj[ids], proj[ids], 0.3)
    from recalign.align.rlmrec_con import dedupe
    uniq, first, counts = dedupe(ids)
    assert uniq.tolist() == [0, 1, 3] and first.tolist() == [4, 1, 0] and counts.tolist() == [1, 2, 3]
    fast = infonce_sum(table[ids][first], proj[uniq], proj[uniq], 0.3, counts, counts)
    assert float(fast) == pytest.approx(float(naive), rel=1e-12)
    g1 = torch.autograd.grad(naive, [table, proj])
    g2 = torch.autograd.grad(fast, [table, proj])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_semantic_only_ranker_learns_from_vectors_alone() -> None:
    """Users like items whose vector matches theirs: the ranker beats chance clearly."""
    from recalign.models.semantic_only import SemanticOnly
    from recalign.eval.metrics import evaluate

    rng = np.random.default_rng(0)
    topics = rng.standard_normal((4, 16))
    ut, it = rng.integers(0, 4, 80), rng.integers(0, 4, 60)
    users = topics[ut] + 0.1 * rng.standard_normal((80, 16))
    items = topics[it] + 0.1 * rng.standard_normal((60, 16))
    like = (ut[:, None] == it[None, :]) & (rng.random((80, 60)) < 0.6)
    like[np.arange(80), np.array([np.flatnonzero(it == t)[0] for t in ut])] = True
    m = sp.csr_matrix(like.astype(np.float32))
    coo = m.tocoo()
    split = rng.random(coo.nnz) < 0.7
    tr = sp.csr_matrix((coo.data[split], (coo.row[split], coo.col[split])), shape=m.shape)
    te = sp.csr_matrix((coo.data[~split], (coo.row[~split], coo.col[~split])), shape=m.shape)
    torch.manual_seed(0)
    model = SemanticOnly(from_arrays(users, items), dim=8)
    opt = ModelOptimizer([model], TableOptimizerSpec(lr=1e-2))
    for _ in range(30):
        bpr_epoch(model, opt, BPRSampler(tr), rng, 256)
    model.eval()
    r = evaluate(model.scorer(), te, tr, protocol="rlmrec")["recall@5"]
    assert r > 0.25  # chance: 5 of ~45 unseen items ~ 0.11


# ------------------------------------------------------------------ sampled propagation
@pytest.mark.parametrize("backbone", ["lightgcn", "gccf", "sgl"])
@pytest.mark.parametrize("method", ["rlmrec-con", "rlmrec-gen", "darec"])
def test_alignment_under_sampled_propagation(tmp_path, backbone: str, method: str) -> None:
    """Every alignment on every sampled-mode backbone through the train job: the alignment's
    term is logged, the total loss falls, and the run beats popularity."""
    import json as _json

    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.jobs import train as train_job

    over = ["data.source=synthetic", "data.synthetic.users=300", "data.synthetic.items=200",
            "data.synthetic.interactions=6000", "data.synthetic.seed=3",
            f"model.backbone={backbone}", "model.params={dim: 8, layers: 2}",
            "train.batch_size=512", "train.eval_every=2", "train.max_epochs=12",
            "train.optimizer={name: adam, lr: 0.02}",
            "train.propagation={mode: sampled, fanout: [6, 6]}", f"align.method={method}",
            f"align.semantic.users={tmp_path}/users.npy",
            f"align.semantic.items={tmp_path}/items.npy", f"output.root={tmp_path}"]
    if method == "darec":
        over.append("align.params={n_sample: 64, k: 4, width: 8, weight: 1e-4}")
    cfg = load_config(None, over)
    ds = load_dataset(cfg.data)
    rng = np.random.default_rng(0)
    for side, m in (("users", ds.user_map), ("items", ds.item_map)):
        keep = np.arange(7 if side == "items" else 0, len(m))  # 7 items without a vector
        np.save(tmp_path / f"{side}.npy", rng.standard_normal((len(keep), 12)).astype(np.float32))
        (tmp_path / f"{side}.keys.txt").write_text(
            "\n".join(m.key_of(keep).to_pylist()) + "\n")
    out = train_job.run(cfg, None)
    assert out["propagation"] == "sampled"
    # the run summary counts the entities without a vector and names the precision in force
    from recalign.align.precision import native_bf16

    sem = out["align"]["semantic"]
    assert out["align"]["method"] == method and sem["dim"] == 12
    assert sem["items"]["without_vector"] == 7 and sem["users"]["without_vector"] == 0
    assert sem["items"]["with_vector"] == len(ds.item_map) - 7
    assert out["align"]["precision"] == ("bf16" if method == "darec" and native_bf16()
                                         else "fp32")
    curves = _json.loads((Path(out["run_dir"]) / "curves.json").read_text())
    term = {"rlmrec-con": "align_con", "rlmrec-gen": "align_gen", "darec": "align_darec_glo"}
    assert all(v > 0 for v in curves["loss"][term[method]]), curves["loss"].keys()
    assert curves["loss"]["loss"][-1] < curves["loss"]["loss"][0]
    from test_backbones import popularity_recall
    from recalign.train.data import CFData as _CFData

    # random vectors: the alignment must not stop CF learning (popularity ≈ .24 here)
    assert out["test"]["recall@20"] > popularity_recall(_CFData.from_dataset(ds)) + 0.05, \
        out["test"]
