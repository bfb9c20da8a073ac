"""Pieces of the trainer on their own: seeded table rows, device resolution, early stopping,
and a checkpoint of another task refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recalign.errors import ConfigError
from recalign.tables import seeded_init
from recalign.tables.seeded_init import BLOCK, fill_rows, seeded_rows, uniform_rows
from recalign.train.placement import resolve_device
from recalign.train.stopping import EarlyStopping


def test_seeded_rows_do_not_depend_on_the_range_asked_for() -> None:
    full = seeded_rows("item", 0, 2 * BLOCK + 17, 6, -0.5, 0.5, seed=11)
    for lo, hi in [(0, 1), (BLOCK - 2, BLOCK + 3), (7, 2 * BLOCK + 17), (2 * BLOCK, 2 * BLOCK + 1)]:
        assert torch.equal(seeded_rows("item", lo, hi, 6, -0.5, 0.5, seed=11), full[lo:hi])
    assert torch.equal(seeded_rows("item", 3, 9, 6, -0.5, 0.5, seed=11, cols=(2, 5)),
                       full[3:9, 2:5])
    assert -0.5 <= float(full.min()) and float(full.max()) < 0.5
    assert abs(float(full.mean())) < 0.01 and abs(float(full.std()) - 1 / math.sqrt(12)) < 0.01
    # another seed or table gives other rows
    assert not torch.equal(seeded_rows("item", 0, 5, 6, -0.5, 0.5, seed=12), full[:5])
    assert not torch.equal(seeded_rows("user", 0, 5, 6, -0.5, 0.5, seed=11), full[:5])
    assert seeded_rows("item", 4, 4, 6, -0.5, 0.5, seed=11).shape == (0, 6)


def test_fill_rows_fills_tables_and_shards_in_bounded_chunks(monkeypatch) -> None:
    """A whole table and the column/row shards of another split give the same rows, however
    small the chunks (7 values: one 6-wide row per chunk)."""
    monkeypatch.setattr(seeded_init, "FILL_VALUES", 7)
    rows_of = uniform_rows({"item": (40, 6, -0.5, 0.5)}, seed=11)
    whole = torch.full((40, 6), float("nan"))
    fill_rows([("item", 0, 0, whole)], rows_of)
    assert torch.equal(whole, seeded_rows("item", 0, 40, 6, -0.5, 0.5, seed=11))
    shards = [("item", 0, 0, torch.empty(25, 4)), ("item", 0, 4, torch.empty(25, 2)),
              ("item", 25, 0, torch.empty(15, 6))]
    fill_rows(shards, rows_of)
    top = torch.cat([shards[0][3], shards[1][3]], 1)
    assert torch.equal(torch.cat([top, shards[2][3]]), whole)


def test_device_resolution_names_the_key() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto", ("cpu",)) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device 'cuda'.*cpu in this version"):
        resolve_device("cuda", ("cpu",))
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA device is visible"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(ConfigError, match="CUDA devices are visible"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_early_stopping_counts_patience_and_respects_the_floor() -> None:
    s = EarlyStopping(patience=2, min_epochs=6)
    assert s.update(0.1, 0, {"m": 0.1}) and not s.should_stop(0)
    assert not s.update(0.1, 1, {"m": 0.1})  # equal is no improvement
    assert not s.update(0.05, 2, {"m": 0.05})
    assert s.bad == 2 and not s.should_stop(2)  # patience spent, floor not reached
    assert s.should_stop(5)
    state = s.state_dict()
    t = EarlyStopping(patience=9)
    t.load_state_dict(state)
    assert (t.best, t.best_epoch, t.bad, t.evals, t.best_metrics) == (0.1, 0, 2, 3, {"m": 0.1})


def test_last_epoch_predicts_where_a_run_without_gains_stops() -> None:
    """What the log says ("ends after epoch N unless it improves") = where the trainer's rule
    (validate when epoch % eval_every == 0, stop on ``should_stop``) really stops a run whose
    validations no longer improve: hand-computed cases, then a simulation over settings."""
    s = EarlyStopping(patience=10)
    s.update(0.5, 23, {})
    assert s.last_epoch(23, 1, 300) == 33
    assert s.last_epoch(23, 1, 30) == 29  # the cap
    s = EarlyStopping(patience=3, min_epochs=20)
    s.update(0.5, 3, {})
    assert s.last_epoch(4, 3, 300) == 21  # evals 6, 9, 12 spend patience; 21 is the floor's
    rng = np.random.default_rng(0)
    for _ in range(300):
        patience, every = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        floor, cap = int(rng.integers(0, 30)), int(rng.integers(5, 60))
        s = EarlyStopping(patience=patience, min_epochs=floor)
        best_at = int(rng.integers(0, cap)) // every * every  # a validated epoch
        s.update(1.0, best_at, {})
        for _ in range(int(rng.integers(0, patience + 3))):  # validations without a gain
            if best_at + every * (s.bad + 1) < cap:
                s.update(0.0, best_at + every * (s.bad + 1), {})
        now = best_at + every * s.bad
        if now >= cap:
            continue
        want = s.last_epoch(now, every, cap)
        sim = EarlyStopping(**s.state_dict())
        e = now  # the trainer's loop from here on: it asks should_stop after a validation
        while not sim.should_stop(e) and e + 1 < cap:
            e += 1
            while e % every and e + 1 < cap:
                e += 1
            if e % every == 0:
                sim.update(0.0, e, {})
        assert want == e, (patience, every, floor, cap, best_at, now)


def test_a_checkpoint_of_another_task_is_refused(tmp_path) -> None:
    """The same run name resumed with a sequential model where a CF model trained."""
    from recalign.config import load_config
    from recalign.jobs import train as train_job

    seq = tmp_path / "seq.txt"
    seq.write_text("".join(f"U{u} " + " ".join(f"I{(u + k) % 12}" for k in range(6)) + "\n"
                           for u in range(40)))
    base = ["data.source=amazon-sequences", f"data.path={seq}", "data.split.method=loo",
            f"output.root={tmp_path}", "train.max_epochs=1", "train.run_name=r",
            "eval.protocol=loo"]
    train_job.run(load_config(None, [*base, "model.params={dim: 8, layers: 1}"]), None)
    with pytest.raises(ConfigError, match="does not match this config.*task"):
        train_job.run(load_config(None, [*base, "model.backbone=sasrec", "train.resume=true"]),
                      None)


def test_a_refused_checkpoint_names_its_run_and_leaves_no_temporary_copy(
        tmp_path, monkeypatch) -> None:
    """run.json lost (the job's own check cannot refuse): the trainer's check refuses the
    checkpoint of another model, naming the checkpoint in the run folder rather than the
    temporary copy it read, and the copy is removed all the same."""
    import tempfile
    from pathlib import Path

    from recalign.config import load_config
    from recalign.jobs import train as train_job

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    seq = tmp_path / "seq.txt"
    seq.write_text("".join(f"U{u} " + " ".join(f"I{(u + k) % 12}" for k in range(6)) + "\n"
                           for u in range(40)))
    base = ["data.source=amazon-sequences", f"data.path={seq}", "data.split.method=loo",
            f"output.root={tmp_path / 'out'}", "train.max_epochs=1", "train.run_name=r",
            "eval.protocol=loo", "model.params={dim: 8, layers: 1}"]
    first = train_job.run(load_config(None, [*base, "model.backbone=gru4rec"]), None)
    Path(first["run_dir"], "run.json").unlink()
    with pytest.raises(ConfigError, match="backbone: checkpoint 'gru4rec' vs config 'sasrec'"
                       ) as e:
        train_job.run(load_config(None, [*base, "model.backbone=sasrec", "train.resume=true"]),
                      None)
    assert f"{first['run_dir']}/checkpoints/epoch-000001 does not match" in str(e.value)
    # ours only: torch may put its inductor cache in the temp dir when this test runs alone
    assert [p.name for p in tmp.iterdir() if p.name.startswith("recalign-")] == []


def test_make_trainer_removes_its_temporary_run_folder(tmp_path, monkeypatch) -> None:
    """Without run_dir the run folder is temporary: kept while the trainer is, removed with
    it, and removed at once when the config fails while the trainer is built."""
    import gc
    import tempfile

    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.train.api import make_trainer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = ["data.source=synthetic", "data.synthetic.users=30", "data.synthetic.items=20",
            "data.synthetic.interactions=300", "model.params={dim: 8, layers: 1}"]
    cfg = load_config(None, base)
    data = load_dataset(cfg.data)
    tr = make_trainer(cfg, data)
    folder = tr.inp.run_dir
    assert [p.name for p in tmp_path.iterdir()] == [folder.rsplit("/", 1)[-1]]
    del tr
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    bad = load_config(None, [*base, "train.lr_decay={every: 1, factor: 0.5}",
                             "train.optimizer={name: rowwise_adagrad, lr: 0.05}"])
    with pytest.raises(ConfigError, match="train.lr_decay"):
        make_trainer(bad, data)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_does_not_fit_the_run_is_a_clear_error(tmp_path) -> None:
    """A checkpoint without a key this run's state has (e.g. the fused optimizer state of an
    older layout) names the key and what to do; one that fits loads."""
    from recalign.train.checkpoint import load_local, save_local

    folder = str(tmp_path / "c")
    save_local(folder, 0, {"model": {"w": torch.arange(3.0)}}, {"loop": 1}, {"task": "t"}, False)
    target = {"model": {"w": torch.ones(3)}, "optim": {"user": {"momentum1": torch.ones(2)}}}
    with pytest.raises(ConfigError, match=r"does not fit this run's state .*optim\.user\."
                       r"momentum1.*start a new run"):
        load_local(folder, 0, target, False)
    fits = {"model": {"w": torch.ones(3)}}
    assert load_local(folder, 0, fits, False) == {"loop": 1}
    assert torch.equal(fits["model"]["w"], torch.arange(3.0))


def test_latest_checkpoint_takes_the_newest_complete_one_of_either_store(
        tmp_path, monkeypatch) -> None:
    """The in-process store (``checkpoints/LATEST``) and Ray Train's merged folders
    (``checkpoint_epoch-<e>``) of one run: the newest complete one wins; a Ray folder missing a
    rank's loop state (an upload cut off) is passed over."""
    import json
    import tempfile
    from pathlib import Path

    from recalign.train.checkpoint import latest_checkpoint

    # the copies it returns are the caller's to remove (the trainer does): keep them in tmp_path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "copies"))
    (tmp_path / "copies").mkdir()

    def folder(path: Path, ranks: int, tag: str, missing: str | None = None) -> None:
        path.mkdir(parents=True)
        (path / "meta.json").write_text(json.dumps({"ranks": ranks}))
        for f in [".metadata", *(f"rank-{r}.pt" for r in range(ranks))]:
            if f != missing:
                (path / f).write_text(tag)

    run = tmp_path / "run"
    assert latest_checkpoint(str(run)) is None
    folder(run / "checkpoints" / "epoch-000002", 1, "in-process 2")
    (run / "checkpoints" / "LATEST").write_text("epoch-000002")
    assert Path(latest_checkpoint(str(run)), "rank-0.pt").read_text() == "in-process 2"
    folder(run / "checkpoint_epoch-000003", 2, "ray 3")
    folder(run / "checkpoint_epoch-000004", 2, "ray 4", missing="rank-1.pt")
    got = Path(latest_checkpoint(str(run)))
    assert (got / "rank-1.pt").read_text() == "ray 3" and got != run / "checkpoint_epoch-000003"
    assert (got / "copied_from.txt").read_text() == str(run / "checkpoint_epoch-000003")
    folder(run / "checkpoints" / "epoch-000005", 1, "in-process 5")
    (run / "checkpoints" / "LATEST").write_text("epoch-000005")
    assert Path(latest_checkpoint(str(run)), "rank-0.pt").read_text() == "in-process 5"


def test_a_failed_checkpoint_copy_leaves_no_folder_behind(tmp_path, monkeypatch) -> None:
    """A copy that fails half-way (fault injected: the download raises after one file) is
    removed; a good one is the filled folder, under the given prefix."""
    import tempfile
    from pathlib import Path

    from recalign.train.checkpoint import private_copy_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(local: str) -> None:
        Path(local, "rank-0.pt").write_text("half")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        private_copy_dir(broken)
    assert list(tmp_path.iterdir()) == []
    good = Path(private_copy_dir(lambda d: Path(d, "rank-0.pt").write_text("whole"), prefix="x-"))
    assert good.parent == tmp_path and good.name.startswith("x-")
    assert [f.read_text() for f in good.iterdir()] == ["whole"]


def test_each_ray_train_rank_loads_its_own_copy_of_the_checkpoint(tmp_path) -> None:
    """Two ranks on one node restoring the same Ray Train checkpoint get separate folders, so
    the first to finish deleting its copy cannot pull the files from under the other (CI
    failure: ``Checkpoint.to_directory()`` hands both the same ``checkpoint_tmp_<id>``)."""
    import shutil
    from pathlib import Path

    from ray.train import Checkpoint

    from recalign.operators.train_worker import private_copy

    src = tmp_path / "checkpoint_epoch-000001"
    src.mkdir()
    (src / "rank-0.pt").write_text("state 0")
    ck = Checkpoint.from_directory(str(src))
    assert ck.to_directory() == ck.to_directory()  # Ray's shared default: the hazard
    shutil.rmtree(ck.to_directory())
    r0, r1 = Path(private_copy(ck, 0)), Path(private_copy(ck, 1))
    try:
        assert r0 != r1 and r0.name.startswith("recalign-ckpt-r0-")
        shutil.rmtree(r0)
        assert (r1 / "rank-0.pt").read_text() == "state 0" and (src / "rank-0.pt").exists()
    finally:  # the copies live in the system temp folder, not tmp_path
        shutil.rmtree(r0, ignore_errors=True)
        shutil.rmtree(r1, ignore_errors=True)


def test_a_one_worker_checkpoint_resumes_on_two_ray_train_workers(tmp_path) -> None:
    """``recalign train`` stopped after 1 epoch in one process, resumed with ``train.workers:
    2`` (Ray Train): the row-wise shards are filled from the one-process checkpoint and the
    run continues from epoch 1 (equality with an uninterrupted run: test_train_runner_dist)."""
    from recalign.config import load_config
    from recalign.jobs import train as train_job

    base = ["data.source=synthetic", "data.synthetic.users=60", "data.synthetic.items=40",
            "data.synthetic.interactions=900", f"output.root={tmp_path}", "train.run_name=w",
            "model.params={dim: 8, layers: 1}", "train.eval_every=1",
            "train.optimizer={name: rowwise_adagrad, lr: 0.05}"]
    import json
    from pathlib import Path

    first = train_job.run(load_config(None, [*base, "train.max_epochs=1"]), None)
    loss = json.loads(Path(first["run_dir"], "curves.json").read_text())["loss"]["loss"]
    out = train_job.run(load_config(None, [*base, "train.max_epochs=2", "train.workers=2",
                                           "train.resume=true"]), None)
    assert out["resumed_from_epoch"] == 1 and out["resumed_from_ranks"] == 1
    assert out["workers"] == 2 and out["epochs"] == 2 and out["run_dir"] == first["run_dir"]
    both = json.loads(Path(out["run_dir"], "curves.json").read_text())["loss"]["loss"]
    assert len(both) == 2 and both[0] == loss[0]  # epoch 0 is the one-process run's


def test_backbone_train_defaults_fill_only_unset_keys() -> None:
    """GCCF's slow rise: its default patience is 10 (docs/results.md); a user's value wins,
    and other backbones keep the task's."""
    from recalign.config import Config
    from recalign.train.tasks import with_task_defaults

    gccf = with_task_defaults(Config.model_validate({"model": {"backbone": "gccf"}}))
    assert gccf.train.patience == 10
    mine = with_task_defaults(Config.model_validate({"model": {"backbone": "gccf"},
                                                     "train": {"patience": 5}}))
    assert mine.train.patience == 5
    light = with_task_defaults(Config.model_validate({"model": {"backbone": "lightgcn"}}))
    assert light.train.patience == Config().train.patience == 5
