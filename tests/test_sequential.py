"""The next-item task and SASRec through the one trainer: sequences from a leave-one-out
split, windows, padding, losses against brute force, learning order (and not without it),
1 vs 2 gloo ranks, checkpoint resume, the train job with its published defaults, bad input."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEVICES
from gloo_ranks import spawn_ranks
from recalign.config import Config, load_config
from recalign.data.sequences import SequenceData, left_pad, window_batch
from recalign.errors import ConfigError
from recalign.models.item_softmax import (NegativeSampler, full_softmax_loss,
                                          sampled_softmax_loss)
from recalign.models.sasrec import SASRec
from recalign.train.api import train


def write_sequences(path: Path, seqs: dict[str, list[str]]) -> Path:
    path.write_text("".join(f"{u} {' '.join(s)}\n" for u, s in seqs.items()))
    return path


def markov_sequences(n_users: int, n_items: int, length: int, seed: int,
                     shuffle: bool = False) -> SequenceData:
    """Each user walks i -> i+1 (mod n) from a random start with prob .9 (else a random item):
    the next item is predictable from the last one, not from the bag of items."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        s = [int(rng.integers(n_items))]
        for _ in range(length - 1):
            s.append((s[-1] + 1) % n_items if rng.random() < 0.9 else int(rng.integers(n_items)))
        s = np.array(s)
        if shuffle:  # the training part loses its order; the held-out tail stays
            s[:-2] = rng.permutation(s[:-2])
        seqs.append(s)
    indptr = np.concatenate([[0], np.cumsum([len(s) - 2 for s in seqs])])
    return SequenceData(indptr.astype(np.int64), np.concatenate([s[:-2] for s in seqs]),
                        np.array([s[-2] for s in seqs]), np.array([s[-1] for s in seqs]),
                        n_items)


def seq_config(**train_settings) -> Config:
    return Config.model_validate({
        "model": {"backbone": "sasrec", "params": {"dim": 32, "inner": 64}},
        "train": {"max_epochs": 8, "threads": 1, "seed": 3, "device": "cpu", **train_settings}})


# ------------------------------------------------------------------ data
def test_sequence_data_from_a_loo_split(tmp_path: Path) -> None:
    from recalign.data.ingest import load_dataset

    f = write_sequences(tmp_path / "seq.txt", {"u1": ["a", "b", "c", "d", "e"],
                                               "u2": ["c", "a", "d"], "u3": ["b", "e"]})
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={f}",
                             "data.split.method=loo"])
    ds = load_dataset(cfg.data)
    sd = SequenceData.from_dataset(ds)
    key = {k: i for i, k in enumerate(ds.item_map.keys.to_pylist())}
    user = {k: i for i, k in enumerate(ds.user_map.keys.to_pylist())}
    u1, u2, u3 = user["u1"], user["u2"], user["u3"]
    ids = lambda *ks: [key[k] for k in ks]  # noqa: E731
    assert sd.history(u1, "valid").tolist() == ids("a", "b", "c")
    assert sd.history(u1, "test").tolist() == ids("a", "b", "c", "d")
    assert sd.history(u1, "all").tolist() == ids("a", "b", "c", "d", "e")
    assert (sd.valid[u1], sd.test[u1]) == tuple(ids("d", "e"))
    assert sd.history(u2, "valid").tolist() == ids("c")
    # fewer than 3 interactions: all training, nothing held out (counted at ingest)
    assert (sd.valid[u3], sd.test[u3]) == (-1, -1)
    assert sd.history(u3, "test").tolist() == ids("b", "e")
    assert sd.heldout("test").nnz == 2
    hm = sd.history_matrix("test")
    assert sorted(hm[u1].indices.tolist()) == sorted(ids("a", "b", "c", "d"))


def test_windows_predict_every_training_target_once() -> None:
    items = np.arange(12)  # one user, 12 training items, max_len 5
    sd = SequenceData(np.array([0, 12]), items, np.array([-1]), np.array([-1]), 20)
    users, ends = sd.training_windows(5)
    assert ends.tolist() == [12, 7, 2]  # windows [6,12), [1,7), [0,2)
    b = window_batch(sd, users, ends, 5)
    assert b.inputs.tolist() == [[7, 8, 9, 10, 11], [2, 3, 4, 5, 6], [0, 0, 0, 0, 1]]
    assert b.targets.tolist() == [[8, 9, 10, 11, 12], [3, 4, 5, 6, 7], [0, 0, 0, 0, 2]]
    targets = b.targets[b.targets > 0] - 1
    assert sorted(targets.tolist()) == list(range(1, 12))  # every item but the first, once
    # prefixes: one sample per target, the last position the only target
    users, ends = sd.training_prefixes()
    assert ends.tolist() == list(range(2, 13))
    p = window_batch(sd, users[[0, 10]], ends[[0, 10]], 5, last_only=True)
    assert p.last_only and p.inputs.tolist() == [[0, 0, 0, 0, 1], [7, 8, 9, 10, 11]]
    assert p.targets.tolist() == [[0, 0, 0, 0, 2], [0, 0, 0, 0, 12]]
    # histories keep their end and are trimmed to the longest kept
    assert left_pad([np.array([4, 5]), np.arange(9)], 6).tolist() == [
        [0, 0, 0, 0, 5, 6], [4, 5, 6, 7, 8, 9]]


# ------------------------------------------------------------------ model and losses
def test_left_padding_changes_no_output() -> None:
    torch.manual_seed(0)
    m = SASRec.build(30, {"dim": 16, "heads": 2, "inner": 32, "max_len": 8})
    m.eval()
    short = torch.tensor([[3, 4, 5], [0, 7, 9]])
    long = torch.cat([torch.zeros(2, 5, dtype=torch.long), short], 1)
    torch.testing.assert_close(m.hidden(short)[0], m.hidden(long)[0, 5:])
    torch.testing.assert_close(m.user_repr(short), m.user_repr(long))
    # causal: the state at position t does not depend on later items
    other = torch.tensor([[3, 4, 6]])
    torch.testing.assert_close(m.hidden(short[:1])[0, :2], m.hidden(other)[0, :2])
    assert not torch.allclose(m.hidden(short[:1])[0, 2], m.hidden(other)[0, 2])
    with pytest.raises(ValueError, match="allows 8"):
        m.hidden(torch.ones(1, 9, dtype=torch.long))


def test_softmax_losses_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    h, items = torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    targets = torch.tensor([1, 4, 9, 2, 2])
    logits = (h @ items.T).double()
    want = float(np.mean([-(logits[r, t - 1] - torch.logsumexp(logits[r], 0))
                          for r, t in enumerate(targets.tolist())]))
    assert float(full_softmax_loss(h, targets, items)) == pytest.approx(want, rel=1e-5)
    assert float(full_softmax_loss(h, targets, items, bf16=True)) == pytest.approx(want, rel=2e-2)
    # sampled, logQ-corrected, the row's own target masked among the negatives
    counts = np.array([5, 1, 0, 2, 9, 1, 1, 3, 0])
    s = NegativeSampler(9, "popularity", counts, alpha=0.75)
    q = (counts + 1.0) ** 0.75
    q /= q.sum()
    neg = torch.tensor([4, 7, 2, 4])
    got = float(sampled_softmax_loss(h, targets, items[targets - 1], neg, items[neg - 1],
                                     s.log_q))
    rows = []
    for r, t in enumerate(targets.tolist()):
        pos = float(logits[r, t - 1]) - math.log(q[t - 1])
        negs = [float(logits[r, j - 1]) - math.log(q[j - 1]) for j in neg.tolist() if j != t]
        z = np.logaddexp.reduce([pos, *negs])
        rows.append(z - pos)
    assert got == pytest.approx(float(np.mean(rows)), rel=1e-5)
    assert set(s.sample(2000, torch.Generator().manual_seed(1)).tolist()) <= set(range(1, 10))


# ------------------------------------------------------------------ learning
def _brute_force_hr10(model: SASRec, data: SequenceData, reverse: bool = False) -> float:
    """Test HR@10 user by user: history = training items + validation item, its items
    masked, the rank of the test item among all items."""
    model.eval()
    hits = []
    items = model.item_weights().detach().cpu()
    with torch.no_grad():
        for u in range(data.n_users):
            h = data.history(u, "test")
            seq = torch.from_numpy((h[::-1] if reverse else h).copy() + 1).unsqueeze(0)
            dev = next(model.parameters()).device
            s = (model.user_repr(seq.to(dev)).cpu() @ items.T)[0]
            s[torch.from_numpy(h)] = -math.inf
            rank = int((s > s[data.test[u]]).sum())
            hits.append(rank < 10)
    return float(np.mean(hits))


@pytest.mark.parametrize("device", DEVICES)
def test_sasrec_learns_order_and_evaluation_matches_brute_force(device: str) -> None:
    """Walks i -> i+1: the next item follows the last one, so SASRec ranks it near the top,
    while popularity (near uniform here) cannot; the trainer's HR@10 equals a user-by-user
    computation, and the model reads the order: the same histories reversed lose most of it."""
    data = markov_sequences(300, 40, 12, seed=0)
    res = train(seq_config(device=device), data, keep_model=True)
    assert res["device"].startswith(device)
    pop = np.bincount(data.items, minlength=40)
    pop_hr10 = float(np.mean([t in np.argsort(-pop, kind="stable")[:10] for t in data.test]))
    assert res["test"]["hr@10"] > 0.75 > pop_hr10 + 0.4, (res["test"], pop_hr10)
    assert res["test"]["ndcg@10"] > 0.5
    model = res["task"].model
    assert res["test"]["hr@10"] == pytest.approx(_brute_force_hr10(model, data), abs=1e-9)
    assert _brute_force_hr10(model, data, reverse=True) < res["test"]["hr@10"] - 0.4
    assert set(res["test"]) >= {"hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20"}
    # every training window of every epoch counted once
    assert res["sequences_trained"] == res["epochs"] * data.training_windows(50)[0].size
    assert res["training_samples"] == {"kind": "windows",
                                       "count": data.training_windows(50)[0].size}


def test_sampled_softmax_trains_too() -> None:
    data = markov_sequences(300, 40, 12, seed=0)
    cfg = seq_config()
    cfg.model.params = {**cfg.model.params, "loss": "sampled", "negatives": 16,
                        "negative_sampler": "popularity"}
    res = train(cfg, data)
    assert res["test"]["hr@10"] > 0.6, res["test"]


# ------------------------------------------------------------------ ranks and resume
def _rank(rank: int, root: str, out: dict) -> None:
    from recalign.train.dist import Dist
    from recalign.train.trainer import RunInputs, Trainer
    from recalign.train.tasks import with_task_defaults

    cfg = with_task_defaults(seq_config(max_epochs=3, batch_size=64))
    cfg.model.params = {**cfg.model.params, "dropout": 0.0, "attn_dropout": 0.0}
    data = markov_sequences(200, 30, 10, seed=1)
    inp = RunInputs(cfg.model_dump(mode="json"), data, None, None, f"{root}/run")
    r = Trainer(inp, Dist(rank, 2)).run()
    if rank == 0:
        out["two"] = r


def test_two_ranks_follow_the_one_rank_loss_curve(tmp_path: Path) -> None:
    """Data parallel: each rank's mean is rescaled to its share of the global batch, so the
    averaged gradient is the global batch's; without dropout the runs agree (float tolerance)."""
    cfg = seq_config(max_epochs=3, batch_size=64)
    cfg.model.params = {**cfg.model.params, "dropout": 0.0, "attn_dropout": 0.0}
    one = train(cfg, markov_sequences(200, 30, 10, seed=1))
    with mp.Manager() as m:
        out = m.dict()
        spawn_ranks(_rank, 2, str(tmp_path), out)
        two = dict(out)["two"]
    c1 = [h["loss"] for h in one["history"]]
    c2 = json.loads((tmp_path / "run" / "curves.json").read_text())["loss"]["loss"]
    np.testing.assert_allclose(c2, c1, rtol=1e-4)
    for k in ("hr@10", "ndcg@10", "hr@20"):
        assert two["test"][k] == pytest.approx(one["test"][k], abs=2e-3), k
    assert two["workers"] == 2 and two["sequences_trained"] == one["sequences_trained"]


@pytest.mark.parametrize("device", DEVICES)
def test_resume_from_a_checkpoint_reproduces_the_run(tmp_path: Path, device: str) -> None:
    """Interrupted after 2 epochs and resumed: the same losses and metrics (the torch RNG —
    on CUDA the device's too — is part of the checkpoint, so dropout masks continue)."""
    from recalign.train.checkpoint import FolderCheckpoints, latest_checkpoint
    from recalign.train.trainer import Hooks

    data = markov_sequences(150, 30, 10, seed=2)
    straight = train(seq_config(max_epochs=4, device=device), data)
    store = FolderCheckpoints(str(tmp_path / "run"))
    save = lambda local, epoch, metrics: store.save(local, epoch)  # noqa: E731
    train(seq_config(max_epochs=2, device=device), data, hooks=Hooks(save=save))
    resumed = train(seq_config(max_epochs=4, device=device), data,
                    hooks=Hooks(load=lambda: latest_checkpoint(str(tmp_path / "run")), save=save))
    assert resumed["resumed_from_epoch"] == 2
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["test"] == straight["test"]


# ------------------------------------------------------------------ the job
def test_train_job_with_nothing_but_source_split_and_backbone(tmp_path: Path) -> None:
    from recalign.jobs import train as train_job
    from recalign.storage.snapshot import SnapshotStore

    rng = np.random.default_rng(0)
    seqs = {}
    for u in range(120):
        s = [int(rng.integers(25))]
        for _ in range(int(rng.integers(4, 9))):
            s.append((s[-1] + 1) % 25)
        seqs[f"U{u}"] = [f"I{i}" for i in s]
    seqs["short"] = ["I1", "I2"]
    f = write_sequences(tmp_path / "seq.txt", seqs)
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={f}",
                             "data.split.method=loo", "model.backbone=sasrec",
                             f"output.root={tmp_path}", "train.max_epochs=3"])
    out = train_job.run(cfg, None)
    assert out["task"] == "next-item" and out["select_metric"] == "ndcg@10"
    assert set(out["test"]) >= {"hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20"}
    assert out["test"]["users_evaluated"] == 120 and out["test"]["users_excluded"] == 1
    assert out["users_without_heldout"] == 1
    # the published defaults filled the keys the config left out: validation every epoch
    curves = json.loads(Path(out["run_dir"], "curves.json").read_text())
    assert curves["valid_epoch"] == [0, 1, 2]
    assert out["epochs"] == 3 and out["best_epoch"] >= 0
    snap = SnapshotStore(str(tmp_path)).open(out["snapshot"].split("/")[-3], "embeddings")
    assert snap.read_table("users").num_rows == 121 and snap.read_table("items").num_rows == 25


@pytest.mark.parametrize("over,match", [
    (["eval.protocol=rlmrec"], "evaluated leave-one-out"),
    (["data.split.method=random"], "more than one validation"),
    (["train.device=cuda"], "train.device 'cuda'"),
    (["align.method=rlmrec-con", "align.semantic.users=SEQ", "align.semantic.items=SEQ"],
     "alignments apply to CF backbones"),
])
def test_bad_input_is_a_clear_error(tmp_path: Path, over: list[str], match: str) -> None:
    from recalign.errors import DataError
    from recalign.jobs import train as train_job

    if "cuda" in over[0] and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: train.device cuda is valid here")
    f = write_sequences(tmp_path / "seq.txt", {f"U{u}": [f"I{(u + k) % 9}" for k in range(6)]
                                               for u in range(30)})
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={f}",
                             "data.split.method=loo", "model.backbone=sasrec",
                             f"output.root={tmp_path}", "train.max_epochs=1",
                             *(o.replace("SEQ", str(f)) for o in over)])
    with pytest.raises((ConfigError, DataError), match=match):
        train_job.run(cfg, None)
