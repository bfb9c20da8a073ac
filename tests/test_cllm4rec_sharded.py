"""CLLM4Rec with ``tables: sharded``: the token tables row-wise sharded over gloo ranks (fused
row-wise Adagrad) follow the one-process run of the same tables, each rank holds about half of
the rows, and fine-tuning starts from a sharded pretraining run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from gloo_ranks import spawn_ranks  # noqa: E402
from test_cllm4rec import assert_same_curves, cfg_of, clustered, lm  # noqa: E402,F401 (lm: fixture)

from recalign.data.ingest import load_dataset  # noqa: E402
from recalign.train.api import make_trainer, train  # noqa: E402

# curves of the 2-rank run against 1 process: the same rows and fused optimizer, only the
# reduction order of the row gradients differs (float32; measured ~3e-8)
REL = 1e-5
# 11 users, 5 per LM forward when scoring: rank 0 scores 6 users in 2 chunks, rank 1 5 in 1,
# so rank 1 makes the idle lookup that keeps the sharded lookups in lockstep
SHARDED = {"warmup_epochs": 1, "tables": "sharded", "eval_batch": 5}


def _rank(rank: int, folder: str, lm: str, out: dict) -> None:
    from recalign.tables.sharding import local_rows
    from recalign.train.dist import Dist
    from recalign.train.export import ExportTarget
    from recalign.train.tasks import task_of, with_task_defaults
    from recalign.train.trainer import RunInputs, Trainer

    cfg = with_task_defaults(cfg_of(Path(folder), lm, **SHARDED))
    ds = load_dataset(cfg.data)
    data = task_of(cfg).prepare(cfg, ds)
    inp = RunInputs(config=cfg.model_dump(mode="json"), data=data, user_keys=ds.user_map.keys,
                    item_keys=ds.item_map.keys, run_dir=f"{folder}/run2",
                    export=ExportTarget(f"{folder}/snap", ds.name, "v=20240101T000000-sharded"))
    tr = Trainer(inp, Dist(rank, 2))
    r = tr.run()
    rows: dict[str, int] = {}
    for table, _, _, shard in local_rows(tr.task.dmp):
        rows[table] = rows.get(table, 0) + int(shard.shape[0])
    out[f"rows{rank}"] = rows
    if rank == 0:
        out["summary"] = {"test": r["test"], "valid": r["valid"]}
        out["curves"] = json.loads(Path(f"{folder}/run2/curves.json").read_text())


def test_two_sharded_ranks_follow_the_one_process_run(tmp_path: Path, lm: str) -> None:
    folder = clustered(tmp_path / "c", users=11)
    ds = load_dataset(cfg_of(folder, lm).data)
    one = train(cfg_of(folder, lm, **SHARDED), ds, keep_model=True)
    with mp.Manager() as mgr:
        shared = mgr.dict()
        spawn_ranks(_rank, 2, str(folder), lm, shared)
        out = dict(shared)
    assert_same_curves(one["history"], out["curves"], rel=REL)
    for m in ("recall@20", "recall@40", "ndcg@100"):
        assert out["summary"]["test"][m] == pytest.approx(one["test"][m], abs=1e-6)
    # the export (each rank its block of users, looked up in lockstep): the 1-process rows
    from recalign.index.retrieval import embedding_arrays
    from recalign.storage.snapshot import SnapshotStore
    from recalign.train.export import ARTIFACT

    snap = SnapshotStore(str(folder / "snap")).open(ds.name, ARTIFACT)
    _, ukeys, uvec = embedding_arrays(snap.read_table("users"))
    _, ikeys, ivec = embedding_arrays(snap.read_table("items"))
    users_1, items_1 = (t.detach().numpy() for t in one["task"].model.collab.all_rows())
    keys = ds.user_map.keys.to_pylist()
    assert sorted(ukeys.to_pylist()) == sorted(keys)
    order = [keys.index(k) for k in ukeys.to_pylist()]
    assert uvec == pytest.approx(users_1[order], abs=1e-6)
    ik = ds.item_map.keys.to_pylist()
    assert ivec == pytest.approx(items_1[[ik.index(k) for k in ikeys.to_pylist()]], abs=1e-6)
    # row-wise: each rank holds half of the rows of each table (both sides of its ids)
    n_users, n_items = ds.n_users, ds.n_items
    for rank in (0, 1):
        rows = out[f"rows{rank}"]
        assert abs(rows["user"] - n_users) <= 1 and abs(rows["item"] - n_items) <= 1, rows
    assert out["rows0"]["user"] + out["rows1"]["user"] == 2 * n_users
    assert out["rows0"]["item"] + out["rows1"]["item"] == 2 * n_items


def test_sharded_tables_learn_and_finetune_from_a_sharded_pretraining(tmp_path: Path,
                                                                    lm: str) -> None:
    folder = clustered(tmp_path / "c", users=8)
    ds = load_dataset(cfg_of(folder, lm).data)
    pre = train(cfg_of(folder, lm, warmup_epochs=0, tables="sharded"), ds,
                run_dir=str(tmp_path / "pre"), keep_model=True)
    h = pre["history"]
    assert h[-1]["collab_ce"] < h[0]["collab_ce"]  # the fused optimizer trains the rows
    assert pre["test"]["users_evaluated"] == 8
    rows = pre["task"].model.item_rows().detach()
    # fine-tuning starts from the pretraining run's best rows
    cfg = cfg_of(folder, lm, phase="finetune", tables="sharded", init_from=pre["run_dir"])
    tr = make_trainer(cfg, ds)
    assert torch.equal(tr.task.model.item_rows().detach(), rows)
    assert tr.optim.dense is None and tr.optim.fused is not None
    ft = train(cfg, ds)
    assert all(x["rec_nll"] > 0 for x in ft["history"])
    assert ft["test"]["users_evaluated"] == 8


def _finetune_leg(rank: int, root: str, folder: str, lm: str, pre: str, world: int,
                  epochs: int, load: bool, out: dict) -> None:
    """A sharded fine-tuning run in ``<root>/run`` on ``world`` ranks (1: in process),
    checkpointing every epoch into ``<root>/ckpt`` and, with ``load``, resuming from it."""
    from test_train_runner_dist import _folder_hooks

    from recalign.train.dist import Dist
    from recalign.train.tasks import task_of, with_task_defaults
    from recalign.train.trainer import RunInputs, Trainer

    cfg = with_task_defaults(cfg_of(Path(folder), lm, phase="finetune", tables="sharded",
                                    init_from=pre, eval_batch=5))
    cfg.train.max_epochs, cfg.train.checkpoint_every = epochs, 1
    ds = load_dataset(cfg.data)
    inp = RunInputs(config=cfg.model_dump(mode="json"), data=task_of(cfg).prepare(cfg, ds),
                    user_keys=ds.user_map.keys, item_keys=ds.item_map.keys,
                    run_dir=f"{root}/run")
    r = Trainer(inp, Dist(rank, world) if world > 1 else Dist(), _folder_hooks(root, load)).run()
    if rank == 0:
        out["r"] = r
        out["curves"] = json.loads(Path(f"{root}/run/curves.json").read_text())


def _finetune(root: Path, world: int, *args) -> dict:
    if world == 1:
        out: dict = {}
        _finetune_leg(0, str(root), *args[:3], 1, *args[3:], out)
        return out
    with mp.Manager() as mgr:
        shared = mgr.dict()
        spawn_ranks(_finetune_leg, world, str(root), *args[:3], world, *args[3:], shared)
        return dict(shared)


def test_sharded_finetuning_resumes_on_two_ranks_and_on_one(tmp_path: Path, lm: str) -> None:
    """RecLLM fine-tuning with sharded token tables on 2 ranks, stopped after 2 of 3 epochs:
    resumed on the same 2 ranks, and resharded onto 1 process (tables and the fused
    optimizer's row state by offsets), it ends as the uninterrupted 1-process run — same
    losses per epoch, same test metrics, same best epoch."""
    import shutil

    folder = clustered(tmp_path / "c", users=11)
    ds = load_dataset(cfg_of(folder, lm).data)
    pre = train(cfg_of(folder, lm, warmup_epochs=0, tables="sharded"), ds,
                run_dir=str(tmp_path / "pre"))["run_dir"]
    args = (str(folder), lm, pre)
    straight = _finetune(tmp_path / "straight", 1, *args, 3, False)
    want = straight["curves"]["loss"]["loss"]
    assert len(want) == 3 and want[-1] < want[0]
    _finetune(tmp_path / "two", 2, *args, 2, False)
    shutil.copytree(tmp_path / "two", tmp_path / "two-to-one")
    for name, world in (("two", 2), ("two-to-one", 1)):
        got = _finetune(tmp_path / name, world, *args, 3, True)
        r = got["r"]
        assert r["resumed_from_epoch"] == 2 and r["resumed_from_ranks"] == 2, name
        assert got["curves"]["loss"]["loss"] == pytest.approx(want, rel=REL), name
        assert r["best_epoch"] == straight["r"]["best_epoch"], name
        for m in ("recall@20", "recall@40", "ndcg@100"):
            assert r["test"][m] == pytest.approx(straight["r"]["test"][m], abs=1e-6), (name, m)


@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
def test_fused_tables_take_one_step_per_batch_like_the_torch_tables(tmp_path: Path, lm: str,
                                                                    phase: str) -> None:
    """A step reads a row several times (its input token, the item head over every item, the
    regulariser): the fused optimizer, which updates in each lookup's backward, must still
    take one row-wise Adagrad step on the summed gradient — the same run as the torch tables
    with torch's row-wise Adagrad from the same rows (an update per lookup, as before, moved
    the losses by 0.05-3% here)."""
    folder = clustered(tmp_path / "c", users=8)
    ds = load_dataset(cfg_of(folder, lm).data)
    opt = {"name": "rowwise_adagrad", "lr": 0.05}

    def extra(tables: str) -> dict:
        if phase == "pretrain":
            return {"phase": phase, "warmup_epochs": 1}
        # fine-tuning starts from a pretraining run of its kind (its rows are replaced below)
        pre = train(cfg_of(folder, lm, tables=tables), ds, run_dir=str(tmp_path / tables))
        return {"phase": phase, "init_from": pre["run_dir"]}

    fused = make_trainer(cfg_of(folder, lm, tables="sharded", table_optimizer=opt,
                                **extra("sharded")), ds)
    c = cfg_of(folder, lm, tables="torch", lr=opt["lr"], **extra("torch"))
    c.train.optimizer.name = opt["name"]
    plain = make_trainer(c, ds)
    m = plain.task.model
    u, i = fused.task.model.tables.weights()  # rows 2 id + side: both sides interleaved
    with torch.no_grad():
        for side, t in ((0, m.collab), (1, m.content)):
            tu, ti = t.weights()
            tu.copy_(u[side::2])
            ti.copy_(i[side::2])
    a, b = fused.run(), plain.run()
    keys = ("collab_ce", "content_ce", "mutual", "rec_nll", "loss")
    for k in keys:
        fa, fb = ([h.get(k) for h in t.history] for t in (fused, plain))
        assert [x is None for x in fa] == [x is None for x in fb], k
        assert [x for x in fa if x is not None] == pytest.approx(
            [x for x in fb if x is not None], rel=1e-5), k
    assert a["test"] == pytest.approx(b["test"], abs=1e-6)
