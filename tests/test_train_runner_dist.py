"""The runner on 2 gloo processes (no Ray) against 1 process: identical training for both
hand-built sharding plans (losses to ~1e-6), close metrics in sampled mode, and the export
written by both ranks covering every row once."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from gloo_ranks import spawn_ranks

warnings.filterwarnings("ignore")

BASE = ["data.source=synthetic", "data.synthetic.users=400", "data.synthetic.items=250",
        "data.synthetic.interactions=10000", "data.synthetic.seed=5",
        "model.params={dim: 16, layers: 2}", "train.batch_size=512", "train.eval_every=1",
        "train.optimizer={name: rowwise_adagrad, lr: 0.05}", "train.max_epochs=3"]


def _inputs(root: str, world: int, extra: list[str]):
    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.train.export import ExportTarget
    from recalign.train.data import CFData
    from recalign.train.trainer import RunInputs

    cfg = load_config(None, [*BASE, *extra, f"train.workers={world}", f"output.root={root}"])
    ds = load_dataset(cfg.data)
    # the same version name on every rank (ranks attach to it; rank 0 commits)
    version = f"v=20260101T000000-w{world}"
    return RunInputs(cfg.model_dump(mode="json"), CFData.from_dataset(ds), ds.user_map.keys,
                     ds.item_map.keys, f"{root}/run{world}",
                     ExportTarget(root, ds.name, version))


def _worker(rank: int, root: str, extra: list[str], out: dict) -> None:
    from recalign.train.dist import Dist
    from recalign.train.trainer import run_training

    r = run_training(_inputs(root, 2, extra), Dist(rank, 2))
    if rank == 0:
        out["two"] = r


def _one_vs_two(tmp_path: Path, extra: list[str], mode: str, loss_rel: float = 1e-5,
                metric_abs: float = 2e-3) -> None:
    """Train with 1 process and with 2 gloo ranks on sharded tables; compare."""
    from recalign.storage.snapshot import SnapshotStore
    from recalign.train.dist import Dist
    from recalign.train.trainer import run_training

    one = run_training(_inputs(str(tmp_path), 1, extra), Dist())
    with mp.Manager() as m:
        out = m.dict()
        spawn_ranks(_worker, 2, str(tmp_path), extra, out)
        two = dict(out)["two"]
    c1 = json.loads((tmp_path / "run1" / "curves.json").read_text())
    c2 = json.loads((tmp_path / "run2" / "curves.json").read_text())
    if mode == "full":
        # same rows, batches, dropout masks; gradients averaged over ranks = global batch mean
        assert c2["loss"]["loss"] == pytest.approx(c1["loss"]["loss"], rel=loss_rel)
        for m_ in ("recall@20", "ndcg@20"):
            assert two["test"][m_] == pytest.approx(one["test"][m_], abs=metric_abs)
    else:  # each rank samples its own neighbourhoods: close, not equal
        assert abs(two["test"]["recall@20"] - one["test"]["recall@20"]) < 0.04
        assert c2["loss"]["loss"][-1] < c2["loss"]["loss"][0]
    assert two["test"]["users_evaluated"] == one["test"]["users_evaluated"]
    snap = SnapshotStore(str(tmp_path)).open("synthetic-u400-i250-n10000-s5", "embeddings",
                                             "v=20260101T000000-w2")
    assert sorted(snap.read_table("users")["id"].to_pylist()) == list(range(400))
    assert sorted(snap.read_table("items")["id"].to_pylist()) == list(range(250))
    owners = {p.split("-")[0] for t in ("users", "items") for p in snap.tables[t]["parts"]}
    assert owners == {"rank0000", "rank0001"}


@pytest.mark.parametrize("sharding,mode", [("row-wise", "full"), ("table-wise", "full"),
                                           ("row-wise", "sampled")])
def test_two_ranks_train_like_one(tmp_path: Path, sharding: str, mode: str) -> None:
    _one_vs_two(tmp_path, [f"train.sharding={sharding}",
                           f"train.propagation={{mode: {mode}, fanout: [8, 8]}}"], mode)


ZOO_PARAMS = {"gccf": "{dim: 16, layers: 2}", "sgl": "{dim: 16, layers: 2}",
              "simgcl": "{dim: 16, layers: 2}", "dccf": "{dim: 16, layers: 2, intents: 8}",
              "autocf": "{dim: 16, gcn_layers: 2, seed_num: 20, heads: 2}"}


#: losses that are not sums over the batch's rows make each rank's share a slightly different
#: objective: AutoCF's self-contrast terms are means over the *distinct* users/items of the
#: batch (distinct per rank), DCCF's InfoNCE takes its candidates from the batch (each rank's
#: own half). Everything else decomposes exactly over ranks.
ZOO_TOLERANCE = {"autocf": (1e-3, 1.5e-2), "dccf": (5e-2, 3e-2)}


@pytest.mark.parametrize("backbone,mode", [*((b, "full") for b in ZOO_PARAMS),
                                           ("gccf", "sampled"), ("sgl", "sampled")])
def test_zoo_two_ranks_train_like_one(tmp_path: Path, backbone: str, mode: str) -> None:
    """Every backbone of the zoo on row-wise sharded tables over 2 ranks trains as on one
    (full mode: the views' dropout masks, noise and AutoCF's seeds are drawn from the same
    seeded RNG on every rank), and in sampled mode where the backbone has it."""
    loss_rel, metric_abs = ZOO_TOLERANCE.get(backbone, (1e-5, 2e-3))
    _one_vs_two(tmp_path, [f"model.backbone={backbone}", f"model.params={ZOO_PARAMS[backbone]}",
                           "train.max_epochs=2", "train.sharding=row-wise",
                           f"train.propagation={{mode: {mode}, fanout: [8, 8]}}"], mode,
                loss_rel, metric_abs)


def _folder_hooks(root: str, load: bool):
    """Checkpoints gathered into ``<root>/ckpt`` (as Ray Train merges the ranks' folders),
    each rank loading from its own temporary copy when ``load``."""
    import shutil
    import tempfile

    from recalign.train.trainer import Hooks

    ck = Path(root, "ckpt")

    def save(local: str, epoch: int, metrics: dict) -> None:
        ck.mkdir(exist_ok=True)
        for f in Path(local).iterdir():
            shutil.copy(f, ck / f.name)

    def load_copy() -> str | None:
        if not load:
            return None
        tmp = tempfile.mkdtemp()
        shutil.copytree(ck, tmp, dirs_exist_ok=True)
        return tmp

    return Hooks(load=load_copy, save=save)


def _resume_worker(rank: int, root: str, max_epochs: int, load: bool, out: dict) -> None:
    """2 ranks (see :func:`_folder_hooks`)."""
    from recalign.train.dist import Dist
    from recalign.train.trainer import run_training

    inp = _inputs(root, 2, [f"train.max_epochs={max_epochs}", "train.eval_every=1"])
    r = run_training(inp, Dist(rank, 2), _folder_hooks(root, load))
    if rank == 0:
        out["r"] = r


def test_two_ranks_resume_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """Interrupted after 2 of 4 epochs on 2 ranks, resumed on 2 ranks from the sharded
    checkpoint (tables and fused optimizer state through torch.distributed.checkpoint, loop
    state, RNG, best weights): the same losses and test metrics as the uninterrupted run."""
    runs = {}
    for name, steps in (("straight", [(4, False)]), ("resumed", [(2, False), (4, True)])):
        root = tmp_path / name
        root.mkdir()
        for max_epochs, load in steps:
            with mp.Manager() as m:
                out = m.dict()
                spawn_ranks(_resume_worker, 2, str(root), max_epochs, load, out)
                runs[name] = dict(out)["r"]
    a, b = runs["straight"], runs["resumed"]
    assert b["resumed_from_epoch"] == 2 and a["resumed_from_epoch"] is None
    ca = json.loads((tmp_path / "straight" / "run2" / "curves.json").read_text())
    cb = json.loads((tmp_path / "resumed" / "run2" / "curves.json").read_text())
    assert cb["loss"]["loss"] == ca["loss"]["loss"]
    assert b["test"] == a["test"] and b["best_epoch"] == a["best_epoch"]


def _reshard_run(rank: int, root: str, world: int, max_epochs: int, load: bool,
                 out: dict) -> None:
    """One leg of a run in ``<root>/run`` on ``world`` ranks (1: in process), checkpointing
    into ``<root>/ckpt`` and, with ``load``, resuming from it."""
    import dataclasses

    from recalign.train.dist import Dist
    from recalign.train.trainer import run_training

    inp = dataclasses.replace(_inputs(root, world, [f"train.max_epochs={max_epochs}"]),
                              run_dir=f"{root}/run")
    r = run_training(inp, Dist(rank, world) if world > 1 else Dist(), _folder_hooks(root, load))
    if rank == 0:
        out["r"] = r


def _leg(root: Path, world: int, max_epochs: int, load: bool) -> dict:
    if world == 1:
        out: dict = {}
        _reshard_run(0, str(root), 1, max_epochs, load, out)
        return out["r"]
    with mp.Manager() as m:
        shared = m.dict()
        spawn_ranks(_reshard_run, world, str(root), world, max_epochs, load, shared)
        return dict(shared)["r"]


def test_resume_on_another_number_of_ranks_reshards(tmp_path: Path) -> None:
    """Interrupted after 2 of 4 epochs on 2 ranks and resumed in one process, and the reverse:
    the row-wise shards and the fused optimizer's row state (keyed by table, not by shard)
    are resharded by torch.distributed.checkpoint, so both give the uninterrupted run (1 and 2
    ranks train alike)."""
    straight = _leg(tmp_path / "straight", 1, 4, False)
    curve = json.loads((tmp_path / "straight" / "run" / "curves.json").read_text())
    for first, then in ((2, 1), (1, 2)):
        root = tmp_path / f"{first}to{then}"
        _leg(root, first, 2, False)
        r = _leg(root, then, 4, True)
        assert r["resumed_from_epoch"] == 2 and r["resumed_from_ranks"] == first
        assert r["workers"] == then
        c = json.loads((root / "run" / "curves.json").read_text())
        assert c["loss"]["loss"] == pytest.approx(curve["loss"]["loss"], rel=1e-5)
        assert r["test"] == pytest.approx(straight["test"], abs=1e-6)
        assert r["best_epoch"] == straight["best_epoch"]
