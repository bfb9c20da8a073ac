"""DaRec through the real job path: ``run_training`` on 2 gloo ranks (no Ray) with
``align.method: darec``. The runner must hand DaRec the workers' all-reduce, so the k-means
centres of both sides are the same on both ranks and their counts include both ranks' rows."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gloo_ranks import spawn_ranks

warnings.filterwarnings("ignore")

N_SAMPLE, K, DECAY, BATCH = 48, 4, 0.9, 512
BASE = ["data.source=synthetic", "data.synthetic.users=300", "data.synthetic.items=200",
        "data.synthetic.interactions=4000", "data.synthetic.seed=5",
        "model.params={dim: 16, layers: 2}", f"train.batch_size={BATCH}", "train.eval_every=1",
        "train.optimizer={name: adagrad, lr: 0.05}", "train.max_epochs=2",
        "train.checkpoint_every=1", "align.method=darec",
        f"align.params={{n_sample: {N_SAMPLE}, k: {K}, width: 8, decay: {DECAY}, "
        "weight: 0.5, seed: 3}"]


def _config(root: str, mode: str) -> list[str]:
    return [*BASE, f"align.semantic.users={root}/users.npy",
            f"align.semantic.items={root}/items.npy",
            f"train.propagation={{mode: {mode}, fanout: [6, 6]}}", "train.workers=2",
            f"output.root={root}"]


def _write_vectors(root: str, mode: str) -> int:
    """Random 12-d vectors keyed by the dataset's keys; returns the training pairs."""
    from recalign.config import load_config
    from recalign.data.ingest import load_dataset

    ds = load_dataset(load_config(None, _config(root, mode)).data)
    rng = np.random.default_rng(0)
    for side, m in (("users", ds.user_map), ("items", ds.item_map)):
        np.save(f"{root}/{side}.npy", rng.standard_normal((len(m), 12)).astype(np.float32))
        keys = m.key_of(np.arange(len(m))).to_pylist()
        Path(f"{root}/{side}.keys.txt").write_text("\n".join(keys) + "\n")
    return int(ds.matrix("train").nnz)


def _worker(rank: int, root: str, mode: str) -> None:
    from recalign.config import load_config
    from recalign.data.ingest import load_dataset
    from recalign.train.dist import Dist
    from recalign.train.data import CFData
    from recalign.train.trainer import Hooks, RunInputs, run_training

    cfg = load_config(None, _config(root, mode))
    ds = load_dataset(cfg.data)
    inp = RunInputs(cfg.model_dump(mode="json"), CFData.from_dataset(ds), ds.user_map.keys,
                    ds.item_map.keys, f"{root}/run")

    def save(local: str, epoch: int, metrics: dict) -> None:  # keep each rank's state
        shutil.copy(os.path.join(local, f"rank-{rank}.pt"),
                    os.path.join(root, f"e{epoch}-rank{rank}.pt"))

    run_training(inp, Dist(rank, 2), Hooks(save=save))


@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_run_training_two_ranks_share_darec_centres(tmp_path: Path, mode: str) -> None:
    root = str(tmp_path)
    n_train = _write_vectors(root, mode)
    spawn_ranks(_worker, 2, root, mode)
    steps_per_epoch = -(-n_train // BATCH)
    for epoch in (1, 2):  # checkpoints after each epoch's validation
        a = torch.load(f"{root}/e{epoch}-rank0.pt", weights_only=False)["task"]["align"]
        b = torch.load(f"{root}/e{epoch}-rank1.pt", weights_only=False)["task"]["align"]
        for key in ("km_c.centres", "km_l.centres", "km_c.counts", "km_l.counts"):
            assert torch.equal(a[key], b[key]), key  # bitwise identical on both ranks
        assert a["km_c.centres"].std() > 0 and bool(a["km_c.initialised"])
        # the heads are data-parallel parameters: averaged gradients keep them identical
        assert torch.equal(a["c_sh.0.weight"], b["c_sh.0.weight"])
        counts = a["km_c.counts"].sum().item()
        one_rank = N_SAMPLE * sum(DECAY ** j for j in range(epoch * steps_per_epoch))
        if mode == "full":
            # every step adds both ranks' N-hat rows (decayed): twice one rank's rows
            assert counts == pytest.approx(2 * one_rank, rel=1e-4)
        else:  # each rank samples from its own subgraph (at most N-hat rows): more than one
            assert one_rank < counts <= 2 * one_rank + 1e-3
