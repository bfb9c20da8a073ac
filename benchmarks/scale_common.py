"""What the scale benchmarks share: one training run on 2 Ray Train workers with an export."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recalign.config import Config
from recalign.storage.snapshot import SnapshotStore
from recalign.train.export import ARTIFACT, ExportTarget
from recalign.train.trainer import RunInputs


def train_on_ray(cfg: Config, data: Any, n_users: int, n_items: int, root: str,
                 name: str) -> tuple[dict[str, Any], Any, float]:
    """Train ``data`` with ``cfg`` on 2 Ray Train workers (what ``recalign train`` runs on a
    cluster), exporting an embedding snapshot ``name``; returns (result.json, the snapshot,
    wall seconds of the trainer)."""
    from recalign.operators.ray_env import ensure_ray
    from recalign.operators.train_worker import run_trainer

    version = SnapshotStore(root).begin(name, ARTIFACT).version
    user_keys = pa.array(np.arange(n_users).astype(str))
    item_keys = pa.array(np.arange(n_items).astype(str))
    run_dir = f"{root}/{name}/runs/bench"
    inp = RunInputs(cfg.model_dump(mode="json"), data, user_keys, item_keys, run_dir,
                    ExportTarget(root, name, version), {"inputs": {"synthetic": name}})
    ensure_ray(2, object_store_gib=3.0)
    t = time.perf_counter()
    res = run_trainer(inp, workers=2, use_gpu=False, run_name="bench",
                      storage=f"{root}/{name}/runs", max_failures=0)
    wall = time.perf_counter() - t
    if res.error is not None:
        raise RuntimeError(res.error)
    out = json.loads(Path(run_dir, "result.json").read_text())
    return out, SnapshotStore(root).open(name, ARTIFACT), wall
