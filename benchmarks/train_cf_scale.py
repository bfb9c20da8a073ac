"""CF training at scale: sampled propagation, 2 Ray Train workers, row-wise sharded tables.

    .venv/bin/python benchmarks/train_cf_scale.py                       # 100k, 10M, 20M
    .venv/bin/python benchmarks/train_cf_scale.py --interactions 100000  # one size

Synthetic data: 1M users and 1M items; interactions drawn with uniform users and
power-law item popularity (item = floor(n_items · r^2.5)), duplicates removed, split
80/10/10 at random with every user's first interaction in train (so no user lacks training
items). Per size: LightGCN (dim 32, 2 layers, edge keep 0.8), ``train.propagation: sampled``
with fan-outs [10, 5], batch 4096 (2048 per worker), row-wise Adagrad (fused fbgemm kernel),
``--steps`` training steps; one validation over a seeded sample of ``--eval-users`` users
(full ranking over all 1M items); the final representations (layer-wise exact propagation)
of all 2M rows exported by the two workers as an embedding snapshot.

Reported: training pairs/s (steps × batch / training time, neighbour sampling and lookups
included), peak RSS per worker (ru_maxrss), export time (writing 2M rows; the layer-wise
representation pass is reported separately as part of evaluation), and the driver's data
generation time. Writes ``benchmarks/out/train_cf_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from recalign.config import load_config  # noqa: E402
from recalign.train.data import CFData  # noqa: E402
from scale_common import train_on_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n_users: int, n_items: int, n: int, seed: int = 0) -> CFData:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n, dtype=np.int64)
    i = np.minimum((n_items * rng.random(n) ** 2.5).astype(np.int64), n_items - 1)
    keys = np.unique(u * n_items + i)
    u, i = keys // n_items, keys % n_items
    split = rng.choice(3, size=keys.size, p=[0.8, 0.1, 0.1])
    first = np.ones(keys.size, dtype=bool)
    first[1:] = u[1:] != u[:-1]  # keys sorted: first interaction of each user
    split[first] = 0
    mats = [sp.csr_matrix((np.ones(int((split == s).sum()), np.float32),
                           (u[split == s], i[split == s])), shape=(n_users, n_items))
            for s in range(3)]
    return CFData(*mats)


def run(n: int, args: argparse.Namespace, root: str) -> dict:
    t0 = time.perf_counter()
    data = synthetic(args.users, args.items, n)
    gen_s = time.perf_counter() - t0
    name = f"scale-{n}"
    cfg = load_config(None, [
        "model.params={dim: 32, layers: 2, reg_weight: 1e-6, keep_rate: 0.8}",
        "train.workers=2", "train.sharding=row-wise", "train.batch_size=4096",
        "train.optimizer={name: rowwise_adagrad, lr: 0.05}",
        "train.propagation={mode: sampled, fanout: [10, 5], infer_chunk: 65536}",
        f"train.steps_per_epoch={args.steps}", "train.max_epochs=1", "train.checkpoint_every=0",
        f"eval.max_users={args.eval_users}", f"output.root={root}"])
    out, snap, wall = train_on_ray(cfg, data, args.users, args.items, root, name)
    return {"interactions": int(data.train.nnz + data.valid.nnz + data.test.nnz),
            "train_pairs": int(data.train.nnz), "users": args.users, "items": args.items,
            "steps": args.steps, "pairs_trained": out["pairs_trained"],
            "pairs_per_s": out["pairs_per_s"], "train_s": out["train_seconds"],
            "eval_s": out["eval_seconds"], "export_s": out["export_seconds"],
            "rows_exported": snap.rows("users") + snap.rows("items"),
            "peak_rss_gb": [round(x / 1024, 2) for x in out["peak_rss_mb"]],
            "valid_recall@20": out["valid"]["recall@20"], "gen_s": round(gen_s, 1),
            "trainer_wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interactions", type=int, nargs="+",
                    default=[100_000, 10_000_000, 20_000_000])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-users", type=int, default=256)
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = args.root or tempfile.mkdtemp(prefix="recalign-scale-")
    rows = []
    for n in args.interactions:
        r = run(n, args, root)
        rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"{'interactions':>12} {'pairs/s':>9} {'RSS w0/w1 GB':>14} {'export s':>9} "
          f"{'eval s':>7} {'train s':>8}")
    for r in rows:
        print(f"{r['interactions']:>12} {r['pairs_per_s']:>9.0f} "
              f"{r['peak_rss_gb'][0]:>6.2f}/{r['peak_rss_gb'][1]:<6.2f} {r['export_s']:>9.1f} "
              f"{r['eval_s']:>7.1f} {r['train_s']:>8.1f}")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_cf_scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
