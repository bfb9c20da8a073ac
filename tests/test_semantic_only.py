"""The "semantic vectors only" ablation as a train-job config (``model.backbone: semantic-only``).

The vectors here are the synthetic generator's planted tastes (users) and topic mixtures
(items) plus noise, so a model that ranks by them alone must beat popularity, and the same run
with ``align.semantic_shuffle: true`` (vectors permuted among entities) must lose that edge.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gloo_ranks import spawn_ranks

from recalign.errors import ConfigError

warnings.filterwarnings("ignore")

SYN = ["data.source=synthetic", "data.synthetic.users=400", "data.synthetic.items=300",
       "data.synthetic.interactions=8000", "data.synthetic.topics=8", "data.synthetic.seed=4"]
TRAIN = ["model.backbone=semantic-only", "model.params={dim: 16}", "train.batch_size=512",
         "train.eval_every=2", "train.max_epochs=30", "train.patience=3", "train.min_epochs=0",
         "train.optimizer={name: adam, lr: 0.01}"]
N_MISSING = 5  # items written without a vector


def _overrides(root: Path, *extra: str) -> list[str]:
    return [*SYN, *TRAIN, f"align.semantic.users={root}/users.npy",
            f"align.semantic.items={root}/items.npy", f"output.root={root}", *extra]


def _write_planted_vectors(root: Path) -> None:
    """Planted tastes / topic mixtures (+ noise) keyed by the dataset's keys; the first
    ``N_MISSING`` items have no vector."""
    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.data.sources.synthetic import latent_truth

    cfg = load_config(None, _overrides(root))
    ds = load_dataset(cfg.data)
    truth = latent_truth(cfg.data)
    rng = np.random.default_rng(0)
    sides = {"users": (ds.user_map, truth["user_taste"]),
             "items": (ds.item_map, truth["item_topics"])}
    for side, (m, latent) in sides.items():
        keep = np.arange(N_MISSING if side == "items" else 0, len(m))
        v = latent[keep] + 0.05 * rng.standard_normal((keep.size, latent.shape[1]))
        np.save(root / f"{side}.npy", v.astype(np.float32))
        (root / f"{side}.keys.txt").write_text("\n".join(m.key_of(keep).to_pylist()) + "\n")


def _train(root: Path, *extra: str) -> dict:
    from recalign.config import load_config
    from recalign.jobs import train as train_job

    return train_job.run(load_config(None, _overrides(root, *extra)), None)


def test_semantic_only_train_job_ranks_by_vectors_and_shuffling_breaks_it(tmp_path: Path) -> None:
    from test_backbones import popularity_recall

    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.train.data import CFData

    _write_planted_vectors(tmp_path)
    out = _train(tmp_path)
    ds = load_dataset(load_config(None, _overrides(tmp_path)).data)
    pop = popularity_recall(CFData.from_dataset(ds))
    real = out["test"]["recall@20"]
    assert real > pop + 0.05, (real, pop)
    # the summary counts the entities without a vector, as for an alignment
    sem = out["align"]["semantic"]
    assert out["align"]["method"] == "none" and sem["dim"] == 8
    assert sem["items"]["without_vector"] == N_MISSING and sem["users"]["without_vector"] == 0
    # the export: final representations of every row (width dim), no layer-0 tables
    from recalign.storage.snapshot import SnapshotStore

    snap = SnapshotStore(str(tmp_path)).open(out["dataset"], "embeddings")
    assert snap.uri == out["snapshot"]
    assert set(snap.tables) == {"users", "items"}, snap.tables
    items = snap.read_table("items")
    assert sorted(items.column("id").to_pylist()) == list(range(ds.n_items))
    assert items.schema.field("vector").type.list_size == 16

    shuffled = _train(tmp_path, "align.semantic_shuffle=true")
    assert shuffled["test"]["recall@20"] < real - 0.05, (shuffled["test"], real)


@pytest.mark.parametrize("extra, message", [
    (["align.method=darec"], "has no CF representation to align"),
    (["train.propagation={mode: sampled, fanout: [4]}"], "supports full propagation only"),
    (["model.params={dim: 16, layers: 2}"], "model.params.layers: unknown key"),
    (["train.warm_start=true"], "train.warm_start: model.backbone semantic-only has no ID"),
])
def test_semantic_only_config_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    _write_planted_vectors(tmp_path)
    with pytest.raises(ConfigError, match=message):
        _train(tmp_path, *extra)


def test_semantic_only_needs_vectors(tmp_path: Path) -> None:
    from recalign.config import load_config
    from recalign.jobs import train as train_job

    cfg = load_config(None, [*SYN, *TRAIN, f"output.root={tmp_path}"])
    with pytest.raises(ConfigError, match="set align.semantic.users and align.semantic.items"):
        train_job.run(cfg, None)


def _rank(rank: int, root: str, version: str) -> None:
    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.train.dist import Dist
    from recalign.train.export import ExportTarget
    from recalign.train.data import CFData
    from recalign.train.trainer import RunInputs, Trainer

    cfg = load_config(None, _overrides(Path(root), "train.max_epochs=4", "train.workers=2"))
    ds = load_dataset(cfg.data)
    inp = RunInputs(cfg.model_dump(mode="json"), CFData.from_dataset(ds),
                    ds.user_map.keys, ds.item_map.keys, f"{root}/run",
                    export=ExportTarget(root, ds.name, version, "embeddings"))
    trainer = Trainer(inp, Dist(rank, 2))
    summary = trainer.run()
    # the trained MLP of this rank
    torch.save(trainer.task.net.state_dict(), os.path.join(root, f"mlp-{rank}.pt"))
    if rank == 0:
        Path(root, "summary.json").write_text(json.dumps(summary, default=str))


def test_semantic_only_two_ranks_stay_identical(tmp_path: Path) -> None:
    """Data parallel over 2 gloo ranks: averaged gradients keep the MLP bitwise identical, and
    each rank exports its half of the rows into one snapshot."""
    from recalign.storage.snapshot import SnapshotStore

    _write_planted_vectors(tmp_path)
    name = "synthetic-u400-i300-n8000-s4"
    version = SnapshotStore(str(tmp_path)).begin(name, "embeddings").version
    spawn_ranks(_rank, 2, str(tmp_path), version)
    a = torch.load(tmp_path / "mlp-0.pt")
    b = torch.load(tmp_path / "mlp-1.pt")
    assert set(a) == set(b) and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["workers"] == 2 and s["test"]["recall@20"] > 0
    snap = SnapshotStore(str(tmp_path)).open(name, "embeddings", version)
    users = snap.read_table("users")
    assert sorted(users.column("id").to_pylist()) == list(range(400))


def test_semantic_only_workers_need_no_fused_optimizer(tmp_path: Path) -> None:
    """Adam on CPU is refused for N > 1 workers with sharded ID tables, not for a model
    without tables (plain data parallel)."""
    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.train.data import CFData
    from recalign.train.tasks.pairwise import PairwiseTask

    cfg = load_config(None, _overrides(tmp_path, "train.workers=2"))
    data = CFData.from_dataset(load_dataset(cfg.data))
    PairwiseTask.check(cfg, data)
    cf = load_config(None, _overrides(tmp_path, "train.workers=2", "model.backbone=lightgcn",
                                      "model.params={dim: 16}"))
    with pytest.raises(ConfigError, match="need an fbgemm fused optimizer"):
        PairwiseTask.check(cf, data)


@pytest.fixture()
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20,
                 log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def test_ray_train_two_workers_with_relative_paths(tmp_path: Path, ray_local,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.workers: 2`` on Ray Train with the config's paths relative to the job's
    working directory (as in the default ``output.root: ./recalign-data``): a worker runs in
    its run's artifact folder, so the job must hand it absolute paths. The semantic vectors
    are read in the workers, the snapshot lands under the job's folder."""
    from recalign.config import load_config
    from recalign.jobs import train as train_job
    from recalign.storage.snapshot import SnapshotStore

    _write_planted_vectors(tmp_path)
    monkeypatch.chdir(tmp_path)
    over = [*SYN, *TRAIN, "align.semantic.users=users.npy", "align.semantic.items=items.npy",
            "output.root=./data-root", "train.workers=2", "train.max_epochs=6"]
    out = train_job.run(load_config(None, over), None)
    assert out["workers"] == 2 and out["test"]["recall@20"] > 0
    assert out["align"]["semantic"]["items"]["without_vector"] == N_MISSING
    snap = SnapshotStore(str(tmp_path / "data-root")).open(out["dataset"], "embeddings")
    assert snap.rows("users") == 400 and snap.rows("items") == 300
    assert Path(out["run_dir"], "result.json").is_file()
    assert str(tmp_path / "data-root") in out["run_dir"]
