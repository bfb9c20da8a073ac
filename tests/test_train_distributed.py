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
