"""The train job in-process: end-to-end summary and files, snapshot vs in-process data,
export to local and S3, resume, bad input, and sampled vs full propagation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch

from recalign.config import load_config
from recalign.errors import ConfigError
from recalign.jobs import train as train_job
from recalign.storage.snapshot import SnapshotStore

warnings.filterwarnings("ignore")

SMALL = ["data.source=synthetic", "data.synthetic.users=300", "data.synthetic.items=200",
         "data.synthetic.interactions=6000", "data.synthetic.seed=3",
         "model.params={dim: 16, layers: 2}", "train.batch_size=512", "train.eval_every=1"]
METRICS = ["recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20"]


def _run(root: str, *extra: str) -> dict:
    cfg = load_config(None, [*SMALL, f"output.root={root}", *extra])
    return train_job.run(cfg, None)


def test_train_min_epochs_holds_off_early_stopping(tmp_path: Path) -> None:
    """The runner honours train.min_epochs: a learning rate too small to change a ranking
    stops after patience 1 at epoch 1, or runs to min_epochs."""
    args = ("train.optimizer.lr=1e-12", "train.patience=1", "train.max_epochs=20")
    early = _run(str(tmp_path), *args, "train.min_epochs=0", "train.run_name=early")
    held = _run(str(tmp_path), *args, "train.min_epochs=4", "train.run_name=held")
    assert (early["epochs"], early["best_epoch"]) == (2, 0)
    assert (held["epochs"], held["best_epoch"]) == (4, 0)


def test_train_in_process_summary_files_and_snapshot(tmp_path: Path) -> None:
    out = _run(str(tmp_path), "train.max_epochs=4")
    assert set(METRICS) <= set(out["test"]) and set(METRICS) <= set(out["valid"])
    assert out["epochs"] == 4 and 0 <= out["best_epoch"] < 4
    # users without test items are excluded from the average and counted
    assert out["test"]["users_evaluated"] + out["test"]["users_excluded"] == 300
    assert out["test"]["users_excluded"] > 0
    assert 0 < out["test"]["recall@20"] <= 1
    run_dir = Path(out["run_dir"])
    c = json.loads((run_dir / "curves.json").read_text())
    assert c["epoch"] == [0, 1, 2, 3] and len(c["valid"]["recall@20"]) == 4
    assert all(np.isfinite(c["loss"]["loss"]))
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    snap = SnapshotStore(str(tmp_path)).open("synthetic-u300-i200-n6000-s3", "embeddings")
    assert snap.uri == out["snapshot"]
    users, items = snap.read_table("users"), snap.read_table("items")
    assert users.num_rows == 300 and items.num_rows == 200
    vt = users.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vt) and vt.list_size == 16
    assert vt.value_type == pa.float32()
    assert sorted(users["id"].to_pylist()) == list(range(300))
    m = snap.manifest
    assert m["metrics"]["test"]["recall@20"] == pytest.approx(out["test"]["recall@20"])
    assert m["config_hash"] and "data_fingerprint" in m["inputs"]
    # the exported vectors are the final (propagated) representations: recompute the test
    # metric from them
    from recalign.eval.metrics import evaluate
    from recalign.config import DataConfig
    from recalign.data.ingest import load_dataset

    ds = load_dataset(load_config(None, SMALL).data)
    u = torch.tensor(np.stack(users.sort_by("id")["vector"].to_numpy(zero_copy_only=False)))
    i = torch.tensor(np.stack(items.sort_by("id")["vector"].to_numpy(zero_copy_only=False)))
    res = evaluate(lambda ids: u[ids] @ i.T, ds.matrix("test"), ds.matrix("train"))
    assert res["recall@20"] == pytest.approx(out["test"]["recall@20"], abs=1e-6)


def test_snapshot_input_gives_identical_results(tmp_path: Path) -> None:
    from recalign.data.snapshot_io import ingest_to_snapshot

    cfg = load_config(None, [*SMALL, f"output.root={tmp_path}"])
    ing = ingest_to_snapshot(cfg, SnapshotStore(str(tmp_path)))
    a = _run(str(tmp_path), "train.max_epochs=3")
    b = _run(str(tmp_path), "train.max_epochs=3", "data.source=snapshot",
             f"data.path={tmp_path}/{ing['dataset']}/dataset")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]


def test_export_to_s3(s3_bucket: str) -> None:
    root = s3_bucket + "/root"
    out = _run(root, "train.max_epochs=2")
    assert out["snapshot"].startswith("s3://")
    snap = SnapshotStore(root).open("synthetic-u300-i200-n6000-s3", "embeddings")
    assert snap.rows("users") == 300 and snap.rows("items") == 200
    assert snap.manifest["metrics"]["test"]["recall@20"] == pytest.approx(out["test"]["recall@20"])


def test_resume_continues_exactly(tmp_path: Path) -> None:
    full = _run(str(tmp_path), "train.max_epochs=4", "train.run_name=a")
    _run(str(tmp_path), "train.max_epochs=2", "train.run_name=b")
    resumed = _run(str(tmp_path), "train.max_epochs=4", "train.run_name=b", "train.resume=true")
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs"] == 4
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]
    # a different embedding size cannot resume that run
    with pytest.raises(ConfigError, match="dim"):
        _run(str(tmp_path), "train.max_epochs=4", "train.run_name=b", "train.resume=true",
             "model.params={dim: 8, layers: 2}")
    # an existing run name without resume is refused
    with pytest.raises(ConfigError, match="exists"):
        _run(str(tmp_path), "train.run_name=b")


@pytest.mark.parametrize("override,match", [
    ("model.backbone=nosuch", "unknown backbone 'nosuch'"),
    ("model.preset=nosuch", "model.preset"),
    ("model.params={dimm: 3}", "model.params.dimm"),
    ("eval.select_metric=hr@10", "select_metric"),
    ("align.method=nosuch", "align.method"),
])
def test_bad_config_errors(tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _run(str(tmp_path), override)


def test_bad_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="eval.protocol"):
        load_config(None, ["eval.protocol=nosuch"])


def _parquet_data(folder: Path, valid: bool = True, orphan: bool = False) -> Path:
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        items = rng.choice(30, size=6, replace=False)
        for j, it in enumerate(items):
            split = "train" if j < 4 else ("valid" if j == 4 else "test")
            if not valid and split == "valid":
                split = "train"
            rows.append((f"u{u}", f"i{it}", split))
    if orphan:
        rows.append(("lonely", "i1", "test"))
    folder.mkdir()
    pd.DataFrame(rows, columns=["user_id", "item_id", "split"]).to_parquet(
        folder / "interactions.parquet")
    return folder


def test_empty_validation_split_is_an_error(tmp_path: Path) -> None:
    path = _parquet_data(tmp_path / "d", valid=False)
    with pytest.raises(ConfigError, match="validation split is empty"):
        train_job.run(load_config(None, ["data.source=parquet", f"data.path={path}",
                                         "data.split.method=given",
                                         f"output.root={tmp_path}"]), None)


def test_users_without_training_items_are_an_error(tmp_path: Path) -> None:
    path = _parquet_data(tmp_path / "d", orphan=True)
    with pytest.raises(ConfigError, match="1 users have validation/test interactions but no "
                                          "training items"):
        train_job.run(load_config(None, ["data.source=parquet", f"data.path={path}",
                                         "data.split.method=given",
                                         f"output.root={tmp_path}"]), None)


def test_adam_on_sharded_cpu_tables_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fused optimizer"):
        _run(str(tmp_path), "train.workers=2")


def test_sampled_matches_full_structure_and_trains(tmp_path: Path) -> None:
    """With fan-outs at least the max degree, the sampled subgraph reproduces full
    propagation exactly; with small fan-outs training still learns (metrics close to full)."""
    from recalign.data.subgraph import NeighbourSampler
    from recalign.models.lightgcn import LightGCN

    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((60, 40)) < 0.1).astype(np.float32))
    torch.manual_seed(0)
    model = LightGCN.build(m, {"dim": 8, "layers": 3})
    model.eval()
    u, i = model.forward()
    s = NeighbourSampler(m, [10_000], 3)
    sub = s.sample(np.array([0, 7, 60 + 5]), rng)
    su, si = model.subgraph_forward(sub)
    assert torch.allclose(su[sub.local(np.array([0, 7]))], u[[0, 7]], atol=1e-5)
    assert torch.allclose(si[sub.local(np.array([65])) - su.shape[0]], i[[5]], atol=1e-5)
    # small fan-outs: an unbiased one-layer estimate (mean over many samples)
    model.params.layers = 1
    u1, _ = model.forward()
    s1 = NeighbourSampler(m, [1], 1)
    est = torch.stack([model.subgraph_forward(sb)[0][sb.local(np.array([0]))][0]
                       for sb in (s1.sample(np.array([0]), rng) for _ in range(3000))]).mean(0)
    assert torch.allclose(est, u1[0], atol=0.02)

    full = _run(str(tmp_path), "train.max_epochs=8", "train.run_name=f")
    samp = _run(str(tmp_path), "train.max_epochs=8", "train.run_name=s",
                "train.propagation={mode: sampled, fanout: [5, 5]}")
    assert samp["propagation"] == "sampled"
    assert samp["test"]["recall@20"] > 0.08  # far above random (20/200 items -> ~.1 *.?)
    assert abs(samp["test"]["recall@20"] - full["test"]["recall@20"]) < 0.05
