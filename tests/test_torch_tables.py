"""The plain-torch table backend (``nn.Embedding``, no TorchRec) against the TorchRec dense one.

Same seed -> bitwise-identical initial rows and RNG state; the same lookups, rows and gradients;
the same LightGCN loss curve under the dense Adam optimizer; building and running a backbone on
it imports neither torchrec nor fbgemm_gpu (checked in a fresh interpreter where both are made
unimportable).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recalign.data.sampler import BPRSampler
from recalign.errors import ConfigError
from recalign.models import build_backbone
from recalign.models.lightgcn import LightGCN
from recalign.tables import (TABLE_BACKENDS, IdTables, ModelOptimizer, TableOptimizerSpec,
                             TorchIdTables, init_bound, make_id_tables)
from recalign.tables.optim import dense_optimizer

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")

ROOT = Path(__file__).resolve().parents[1]
DENSE = TableOptimizerSpec(kernel="dense")


def random_train(seed: int = 0, n_users: int = 30, n_items: int = 22, p: float = 0.2
                 ) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    m = (rng.random((n_users, n_items)) < p).astype(np.float32)
    m[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1  # every user has a positive
    m[:, -1] = 0  # and every user a negative
    return sp.csr_matrix(m)


def both(seed: int, *args, **kwargs) -> tuple[IdTables, TorchIdTables, torch.Tensor, torch.Tensor]:
    """Both backends from the same seed, with a draw from the generator after each."""
    torch.manual_seed(seed)
    rec = make_id_tables(*args, backend="torchrec", **kwargs)
    after_rec = torch.rand(8)
    torch.manual_seed(seed)
    plain = make_id_tables(*args, backend="torch", **kwargs)
    after_plain = torch.rand(8)
    return rec, plain, after_rec, after_plain


@pytest.mark.parametrize("init", ["xavier_uniform", "torchrec_default"])
def test_initial_rows_bitwise_identical_to_torchrec_dense(init):
    rec, plain, after_rec, after_plain = both(7, 53, 29, 12, optimizer=DENSE, init=init)
    assert type(rec) is IdTables and type(plain) is TorchIdTables
    assert rec.kernel == plain.kernel == "dense"
    for a, b in zip(rec.weights(), plain.weights()):
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
        assert torch.equal(a, b)
    u, i = plain.weights()
    assert u.shape == (53, 12) and i.shape == (29, 12)
    assert 0.8 * init_bound(53, 12, init) < u.abs().max() <= init_bound(53, 12, init)
    assert i.abs().max() <= init_bound(29, 12, init)
    # the generator is left in the same state: whatever draws next sees the same numbers
    assert torch.equal(after_rec, after_plain)
    # a different seed gives different rows
    torch.manual_seed(8)
    assert not torch.equal(make_id_tables(53, 29, 12, backend="torch").weights()[0], u)
    # the specs are the TorchRec configs' fields, without TorchRec
    for c_rec, c_plain in zip(rec.configs, plain.configs):
        for f in ("name", "num_embeddings", "embedding_dim", "feature_names",
                  "weight_init_min", "weight_init_max"):
            assert getattr(c_rec, f) == getattr(c_plain, f), f


def test_interface_without_torchrec_parts():
    spec = TableOptimizerSpec()  # adam, kernel auto
    t = make_id_tables(6, 4, 3, optimizer=spec, backend="torch")
    assert (t.n_users, t.n_items, t.dim) == (6, 4, 3)
    assert t.kernel == "dense" and t.fused is False
    assert t.fused_parameter_ids() == set() and t.fused_optimizer() is None
    assert t.optimizer_spec == spec and t.device == torch.device("cpu")
    assert not hasattr(t, "ebc")
    # weights() share storage with the parameters (warm starts write rows through them)
    u, _ = t.weights()
    with torch.no_grad():
        u[2] = 5.0
    assert torch.all(t.all_rows()[0][2] == 5.0)
    # every table row goes to the one torch optimizer
    opt = ModelOptimizer([t], spec)
    assert opt.fused == [] and isinstance(opt.dense, torch.optim.Adam)
    assert {id(p) for g in opt.dense.param_groups for p in g["params"]} == \
        {id(p) for p in t.parameters()} and len(list(t.parameters())) == 2
    # no fused kernel to ask for
    with pytest.raises(ConfigError, match="no fused"):
        make_id_tables(6, 4, 3, optimizer=TableOptimizerSpec(name="sgd", kernel="fused"),
                       backend="torch")
    # sizes are checked as for TorchRec tables
    with pytest.raises(ValueError, match="rows and dim must be >= 1"):
        make_id_tables(0, 4, 3, backend="torch")


def test_bad_backend_is_a_clear_value_error():
    assert TABLE_BACKENDS == ("torchrec", "torch")
    with pytest.raises(ValueError, match=r"unknown table backend 'fbgemm'; accepted: "
                                         r"'torchrec', 'torch'") as e:
        make_id_tables(3, 3, 2, backend="fbgemm")
    assert isinstance(e.value, ConfigError)  # the CLI reports it as a clean config error
    with pytest.raises(ValueError, match="accepted: 'torchrec', 'torch'"):
        LightGCN.build(random_train(), {"dim": 4}, table_backend="Torch")


def test_lookup_and_all_rows_values_and_gradients_match_torchrec():
    rec, plain, _, _ = both(3, 17, 11, 5, optimizer=DENSE)
    rec_u, rec_i = rec.ebc.embedding_bags["user"].weight, rec.ebc.embedding_bags["item"].weight
    pl_u, pl_i = plain.embeddings["user"].weight, plain.embeddings["item"].weight
    g = torch.Generator().manual_seed(0)
    cases = [
        (torch.tensor([3, 1, 16, 3, 0, 3]), torch.tensor([[0, 10], [5, 5]])),  # duplicates, 2-d
        (torch.tensor([4]), torch.tensor([], dtype=torch.int64)),             # an empty side
        (torch.arange(17), torch.arange(11)),                                 # every row
    ]
    for k, (uid, iid) in enumerate(cases):
        for p in (rec_u, rec_i, pl_u, pl_i):
            p.grad = None
        ru, ri = rec.lookup(uid, iid, batch_size=9 if k == 0 else None)
        pu, pi = plain.lookup(uid, iid, batch_size=9 if k == 0 else None)
        assert pu.shape == ru.shape == (uid.numel(), 5) and pi.shape == ri.shape == (iid.numel(), 5)
        assert torch.equal(pu, ru) and torch.equal(pi, ri)
        assert torch.equal(pu, pl_u.detach()[uid.reshape(-1)])
        wu = torch.randn(pu.shape, generator=g)
        wi = torch.randn(pi.shape, generator=g)
        ((ru * wu).sum() + (ri * wi).sum()).backward()
        ((pu * wu).sum() + (pi * wi).sum()).backward()
        for a, b in ((rec_u, pl_u), (rec_i, pl_i)):
            if a.grad is None:  # the torch side must also have nothing but zeros then
                assert b.grad is None or not b.grad.any()
                continue
            torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6)
        # duplicated ids accumulate: row 3 of the user table got three rows of wu
        if k == 0:
            torch.testing.assert_close(pl_u.grad[3], wu[[0, 3, 5]].sum(0), rtol=0, atol=1e-6)
    # all_rows: the same values and gradients
    for p in (rec_u, rec_i, pl_u, pl_i):
        p.grad = None
    (ru, ri), (pu, pi) = rec.all_rows(), plain.all_rows()
    assert torch.equal(ru, pu) and torch.equal(ri, pi)
    assert pu.requires_grad and pi.requires_grad
    wu, wi = torch.randn(pu.shape, generator=g), torch.randn(pi.shape, generator=g)
    ((ru * wu).sum() + (ri ** 2 * wi).sum()).backward()
    ((pu * wu).sum() + (pi ** 2 * wi).sum()).backward()
    assert torch.equal(pl_u.grad, rec_u.grad) and torch.equal(pl_i.grad, rec_i.grad)


def _lightgcn_curve(backend: str, train: sp.csr_matrix, epochs: int = 3) -> tuple[list[float], tuple]:
    spec = TableOptimizerSpec(name="adam", lr=0.01, kernel="dense")
    torch.manual_seed(11)
    model = LightGCN.build(train, {"dim": 8, "layers": 2, "keep_rate": 0.8, "reg_weight": 1e-4},
                           optimizer=spec, table_backend=backend)
    opt = dense_optimizer(model.parameters(), spec)
    assert opt is not None
    sampler = BPRSampler(train)
    rng = np.random.default_rng(5)
    model.train()
    losses = []
    for _ in range(epochs):
        for batch in sampler.epoch(rng, 32):
            opt.zero_grad(set_to_none=True)
            loss = model.rec_loss(batch)["loss"]  # edge dropout draws from torch's RNG
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        reps = model()
    return losses, tuple(w.clone() for w in model.tables.weights()) + tuple(reps)


def test_lightgcn_loss_curve_matches_torchrec_dense():
    train = random_train(1)
    rec_losses, rec_state = _lightgcn_curve("torchrec", train)
    pl_losses, pl_state = _lightgcn_curve("torch", train)
    assert len(pl_losses) == len(rec_losses) >= 10
    np.testing.assert_allclose(pl_losses, rec_losses, rtol=0, atol=1e-5)
    for a, b in zip(rec_state, pl_state):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    # it did train: later losses are lower than the first ones
    assert np.mean(pl_losses[-5:]) < np.mean(pl_losses[:5])


@pytest.mark.parametrize("name", ["gccf", "sgl", "simgcl", "dccf", "autocf"])
def test_every_cf_backbone_builds_on_the_torch_backend(name):
    train = random_train(2, 20, 15)
    reps = {}
    for backend in TABLE_BACKENDS:
        torch.manual_seed(4)
        model = build_backbone(name, train, {"dim": 8}, optimizer=DENSE, table_backend=backend)
        assert type(model.tables) is (TorchIdTables if backend == "torch" else IdTables)
        after = torch.rand(4)  # parameters built after the tables draw the same numbers
        model.eval()
        with torch.no_grad():
            reps[backend] = [*model(), *model.tables.weights(), after]
    for a, b in zip(reps["torchrec"], reps["torch"]):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_sampled_mode_builds_torch_tables():
    train = random_train(3)
    torch.manual_seed(0)
    m = LightGCN.build(train, {"dim": 4}, full_graph=False, table_backend="torch")
    assert m.graph is None and isinstance(m.tables, TorchIdTables)
    assert (m.tables.n_users, m.tables.n_items) == train.shape


_NO_TORCHREC = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    # a machine without fbgemm/torchrec: importing either fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torchrec", "fbgemm_gpu"):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())

import numpy as np, scipy.sparse as sp, torch
from recalign.data.sampler import BPRSampler
from recalign.models.lightgcn import LightGCN
from recalign.tables.optim import dense_optimizer

rng = np.random.default_rng(0)
m = (rng.random((12, 9)) < 0.3).astype(np.float32); m[:, 0] = 1; m[:, -1] = 0
train = sp.csr_matrix(m)
torch.manual_seed(0)
model = LightGCN.build(train, {"dim": 4, "layers": 2}, table_backend="torch")
u, i = model()
batch = next(BPRSampler(train).epoch(rng, 8))
opt = dense_optimizer(model.parameters(), model.tables.optimizer_spec)
loss = model.rec_loss(batch)["loss"]
loss.backward()
opt.step()
print(json.dumps({
    "tables": type(model.tables).__name__,
    "shapes": [list(u.shape), list(i.shape)],
    "loss": float(loss),
    "leaked": sorted(k for k in sys.modules
                     if k.split(".")[0] in ("torchrec", "fbgemm_gpu")),
}))
"""


def test_torch_backend_imports_neither_torchrec_nor_fbgemm():
    out = subprocess.run([sys.executable, "-c", _NO_TORCHREC], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["leaked"] == []
    assert res["tables"] == "TorchIdTables"
    assert res["shapes"] == [[12, 4], [9, 4]]
    assert np.isfinite(res["loss"]) and res["loss"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_tables_on_cuda_match_cpu_rows():
    torch.manual_seed(0)
    t = make_id_tables(10, 7, 4, device="cuda", backend="torch")
    assert t.device.type == "cuda"
    u, i = t.lookup(torch.tensor([1, 9]), torch.tensor([6]))  # CPU ids are moved over
    assert u.device.type == "cuda"
    torch.testing.assert_close(u.cpu(), t.weights()[0][[1, 9]].cpu())
    assert t.weights()[0].abs().max().item() <= init_bound(10, 4)
