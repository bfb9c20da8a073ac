"""The train job on Ray Train: 2 workers with DMP-sharded tables against 1 worker, and a
worker killed mid-training that Ray Train restarts from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest

from recalign.config import load_config
from recalign.jobs import train as train_job
from recalign.storage.snapshot import SnapshotStore

warnings.filterwarnings("ignore")

BASE = ["data.source=synthetic", "data.synthetic.users=400", "data.synthetic.items=250",
        "data.synthetic.interactions=10000", "data.synthetic.seed=5",
        "model.params={dim: 16, layers: 2}", "train.batch_size=512", "train.eval_every=1",
        "train.optimizer={name: rowwise_adagrad, lr: 0.05}"]
#: full mode, 1 vs 2 workers: same initial rows, same global batches and dropout masks, row
#: gradients averaged over the world; only float summation order differs (losses agree to
#: ~1e-8), so metrics agree up to rare rank flips. Sampled mode: each rank samples its own
#: neighbourhoods, so the runs differ by sampling noise.
TOLERANCE = {"full": 0.002, "sampled": 0.04}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20,
                 log_to_driver=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def _run(root: Path, *extra: str) -> dict:
    return train_job.run(load_config(None, [*BASE, f"output.root={root}", *extra]), None)


# table-wise and sampled variants run without Ray in test_train_runner_dist.py (same runner)
@pytest.mark.parametrize("sharding,mode", [("row-wise", "full")])
def test_two_workers_match_one_worker(tmp_path: Path, ray_local, sharding: str,
                                      mode: str) -> None:
    prop = f"train.propagation={{mode: {mode}, fanout: [8, 8]}}"
    one = _run(tmp_path, "train.max_epochs=4", "train.run_name=one", prop)
    two = _run(tmp_path, "train.max_epochs=4", "train.run_name=two", "train.workers=2",
               f"train.sharding={sharding}", prop)
    tol = TOLERANCE[mode]
    assert one["workers"] == 1 and two["workers"] == 2
    assert two["epochs"] == one["epochs"] == 4
    for m in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20"):
        assert abs(two["test"][m] - one["test"][m]) <= tol, (m, one["test"], two["test"])
        assert abs(two["valid"][m] - one["valid"][m]) <= tol
    assert two["test"]["users_evaluated"] == one["test"]["users_evaluated"]
    assert one["test"]["recall@20"] > 0.2  # it learned (random ranking: ~0.08)
    # every row exported exactly once, by the worker that owns it
    snap = SnapshotStore(str(tmp_path)).open(two["snapshot"].split("/")[-3], "embeddings",
                                             two["snapshot"].split("/")[-1])
    ids = snap.read_table("users")["id"].to_pylist()
    assert sorted(ids) == list(range(400)) and snap.rows("items") == 250
    parts = snap.tables["users"]["parts"] + snap.tables["items"]["parts"]
    assert {p.split("-")[0] for p in parts} == {"rank0000", "rank0001"}


def test_killed_worker_is_restarted_from_checkpoint(tmp_path: Path, ray_local) -> None:
    run_dir = {}
    finished = threading.Event()

    def killer() -> None:
        # wait for a checkpoint, then SIGKILL worker rank 1 (its pid is in the run folder);
        # no fixed deadline: on a loaded machine Ray's start and the first epochs can take
        # minutes — the killer watches until the run returns
        while not finished.is_set():
            runs = list(tmp_path.glob("*/runs/*"))
            # a checkpoint Ray Train has registered (its snapshot file names it)
            snap = runs[0] / "checkpoint_manager_snapshot.json" if runs else None
            if snap is not None and snap.exists() and "checkpoint_epoch-" in snap.read_text() \
                    and (runs[0] / "workers" / "rank-1.pid").exists():
                pid = int((runs[0] / "workers" / "rank-1.pid").read_text())
                run_dir["path"] = runs[0]
                run_dir["pid"] = pid
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        out = _run(tmp_path, "train.max_epochs=20", "train.patience=100", "train.workers=2",
                   "train.max_failures=2", "train.run_name=ft")
    finally:
        finished.set()
    th.join(5)
    assert "pid" in run_dir, "no checkpoint appeared to kill a worker after"
    # the run finished all epochs, after resuming from a checkpoint, with valid metrics
    assert out["epochs"] == 20
    assert out["resumed_from_epoch"] is not None and 0 < out["resumed_from_epoch"] < 20
    assert 0.2 < out["test"]["recall@20"] <= 1
    new_pid = int((run_dir["path"] / "workers" / "rank-1.pid").read_text())
    assert new_pid != run_dir["pid"]
    curves = json.loads((run_dir["path"] / "curves.json").read_text())
    assert curves["epoch"] == list(range(20))


def test_darec_on_ray_train_shares_centres_across_workers(tmp_path: Path, ray_local) -> None:
    """Distributed sampled-cluster DaRec under Ray Train (TorchTrainer, 2 gloo workers): each
    worker samples its own N-hat rows, the k-means sums and counts are all-reduced, so the
    checkpointed centres of both sides are bitwise identical on both ranks, and their counts
    hold both workers' rows (twice one worker's decayed N-hat per step)."""
    import numpy as np
    import torch

    from recalign.data.ingest import load_dataset

    n_sample, decay, epochs = 48, 0.9, 2
    over = [f"align.semantic.users={tmp_path}/users.npy",
            f"align.semantic.items={tmp_path}/items.npy", "align.method=darec",
            f"align.params={{n_sample: {n_sample}, k: 4, width: 8, decay: {decay}, "
            "weight: 0.5, seed: 3}", f"train.max_epochs={epochs}", "train.workers=2",
            "train.run_name=darec"]
    ds = load_dataset(load_config(None, [*BASE, f"output.root={tmp_path}", *over]).data)
    rng = np.random.default_rng(0)
    for side, m in (("users", ds.user_map), ("items", ds.item_map)):
        np.save(tmp_path / f"{side}.npy", rng.standard_normal((len(m), 12)).astype(np.float32))
        (tmp_path / f"{side}.keys.txt").write_text(
            "\n".join(m.key_of(np.arange(len(m))).to_pylist()) + "\n")
    out = _run(tmp_path, *over)
    assert out["workers"] == 2 and out["epochs"] == epochs
    assert out["align"]["method"] == "darec" and out["align"]["semantic"]["dim"] == 12
    ckpts = sorted(tmp_path.glob("*/runs/darec/checkpoint_epoch-*"))
    assert ckpts, list(tmp_path.rglob("checkpoint_epoch-*"))
    steps = -(-int(ds.matrix("train").nnz) // 512)
    for ck in ckpts:
        # our own checkpoint files, written by this test's run: plain torch.load
        a = torch.load(ck / "rank-0.pt", weights_only=False)["task"]["align"]
        b = torch.load(ck / "rank-1.pt", weights_only=False)["task"]["align"]
        for key in ("km_c.centres", "km_l.centres", "km_c.counts", "km_l.counts"):
            assert torch.equal(a[key], b[key]), (ck.name, key)
        assert a["km_l.centres"].std() > 0 and bool(a["km_c.initialised"])
        epoch = int(ck.name.split("-")[-1])
        one_worker = n_sample * sum(decay ** j for j in range(epoch * steps))
        assert a["km_c.counts"].sum().item() == pytest.approx(2 * one_worker, rel=1e-4)


def test_use_gpu_on_a_cluster_without_gpus_is_refused(tmp_path: Path, ray_local) -> None:
    from recalign.errors import ConfigError

    with pytest.raises(ConfigError, match="train.use_gpu: the Ray cluster has no GPU"):
        _run(tmp_path, "train.workers=2", "train.use_gpu=true", "train.max_epochs=1")


def test_one_worker_on_a_cluster_trains_in_a_ray_train_worker(tmp_path: Path, ray_local,
                                                             monkeypatch) -> None:
    """Attached to a cluster (RAY_ADDRESS), even train.workers 1 runs in a Ray Train worker
    (it writes its pid file), with the CPUs it reserves and torch threads following them."""
    from recalign.jobs import train as job
    from recalign.operators.train_worker import worker_resources

    cfg = load_config(None, [*BASE, f"output.root={tmp_path}",
                             "train.resources_per_worker={CPU: 2, memory: 1000000}"])
    assert job.in_driver(cfg)
    assert worker_resources(cfg) == {"CPU": 2.0, "memory": 1000000}
    assert job.worker_threads(cfg).train.threads == 2
    assert job.worker_threads(load_config(None, [*BASE, "train.threads=1"])).train.threads == 1
    gpu = load_config(None, [*BASE, "train.use_gpu=true"])
    assert worker_resources(gpu) == {"CPU": 1.0, "GPU": 1.0}
    import ray

    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    assert not job.in_driver(cfg)
    out = _run(tmp_path, "train.max_epochs=2", "train.run_name=cluster1")
    assert out["workers"] == 1 and out["epochs"] == 2
    assert (Path(out["run_dir"]) / "workers" / "rank-0.pid").exists()
