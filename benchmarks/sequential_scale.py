"""Sequential recommenders at scale: 1M items, up to 1M users and 20M interactions, sampled
softmax, the item table row-wise sharded (TorchRec, fused fbgemm optimizer) on 2 Ray Train
workers, then the item and user (final-state) representations exported as an embedding
snapshot and indexed by ``recalign export``.

    .venv/bin/python benchmarks/sequential_scale.py                        # 100k, 10M, 20M
    .venv/bin/python benchmarks/sequential_scale.py --interactions 100000 --steps 20

Synthetic sequences: users of length 3 + Poisson(length - 3) (mean ``--length``, 20 by
default; ``interactions / length`` users, at most 1M), walking item i -> i + 1 (mod n) with
probability 0.8, else jumping to a power-law-popular item (item = ⌊n · r^2.5⌋); each user's
last item is the test target, the one before the validation target (leave-one-out).

Per size: SASRec (dim 64, 2 layers, max length 50) with ``item_table: sharded``,
``loss: sampled`` (1,024 shared uniform negatives, logQ), batch 512 (256 per worker),
``--steps`` steps; one validation on ``--eval-users`` users (full ranking over all items,
from a gathered copy of the table); export of every user's final state and every item row by
the two workers; then ``recalign export``'s index build on the items (exact ``flat``: after a
few dozen steps the vectors are near their random init, where no ANN index reaches
``export.min_recall``). Reported: training
sequences/s, peak RSS per worker (ru_maxrss), export seconds, index build seconds and recall,
data generation seconds. Writes ``benchmarks/out/sequential_scale.json``.
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

from recalign.config import load_config  # noqa: E402
from recalign.data.sequences import SequenceData  # noqa: E402
from recalign.storage.snapshot import SnapshotStore  # noqa: E402
from scale_common import train_on_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n_users: int, n_items: int, length: float, seed: int = 0) -> SequenceData:
    rng = np.random.default_rng(seed)
    lens = 3 + rng.poisson(max(0.0, length - 3), n_users)
    total = int(lens.sum())
    starts = np.cumsum(lens) - lens
    pos = np.arange(total) - np.repeat(starts, lens)
    jump = rng.random(total) < 0.2
    jump[pos == 0] = True
    here = np.arange(total)
    run_start = np.maximum.accumulate(np.where(jump, here, 0))
    first = np.minimum((n_items * rng.random(total) ** 2.5).astype(np.int64), n_items - 1)
    items = (first[run_start] + (here - run_start)) % n_items
    last = starts + lens - 1
    keep = np.ones(total, dtype=bool)
    keep[last] = keep[last - 1] = False
    indptr = np.concatenate([[0], np.cumsum(lens - 2)]).astype(np.int64)
    return SequenceData(indptr, items[keep], items[last - 1], items[last], n_items)


def run(n: int, args: argparse.Namespace, root: str) -> dict:
    from recalign.config import ExportConfig
    from recalign.index.retrieval import export_index

    n_users = min(args.max_users, max(100, int(n / args.length)))
    t0 = time.perf_counter()
    data = synthetic(n_users, args.items, args.length)
    gen_s = time.perf_counter() - t0
    interactions = int(data.items.size + (data.valid >= 0).sum() + (data.test >= 0).sum())
    name = f"seq-scale-{n}"
    cfg = load_config(None, [
        "model.backbone=sasrec",
        "model.params={item_table: sharded, loss: sampled, negatives: 1024, "
        "table_optimizer: {name: rowwise_adagrad, lr: 0.05}}",
        "data.split.method=loo", "eval.protocol=loo",
        "train.workers=2", "train.batch_size=512", "train.threads=1",
        f"train.steps_per_epoch={args.steps}", "train.max_epochs=1",
        "train.checkpoint_every=0", f"eval.max_users={args.eval_users}",
        f"output.root={root}"])
    from recalign.train.tasks import with_task_defaults

    cfg = with_task_defaults(cfg)
    out, snap, wall = train_on_ray(cfg, data, n_users, args.items, root, name)
    t2 = time.perf_counter()
    # exact (flat) index: after a few dozen steps the vectors are close to their random init,
    # where no ANN index reaches export.min_recall; the point here is that the export indexes
    idx = export_index(ExportConfig(kind="flat"), SnapshotStore(root), name)
    index_s = time.perf_counter() - t2
    return {"interactions": interactions, "users": n_users, "items": args.items,
            "steps": args.steps, "sequences_trained": out["sequences_trained"],
            "sequences_per_s": out["sequences_per_s"], "train_s": out["train_seconds"],
            "eval_s": out["eval_seconds"], "export_s": out["export_seconds"],
            "rows_exported": {"users": snap.rows("users"), "items": snap.rows("items")},
            "peak_rss_gb": [round(x / 1024, 2) for x in out["peak_rss_mb"]],
            "valid_hr@10": out["valid"]["hr@10"], "gen_s": round(gen_s, 1),
            "index": {"kind": idx.get("kind"), "recall": idx.get("recall"),
                      "build_s": idx.get("build_seconds"), "total_s": round(index_s, 1)},
            "trainer_wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interactions", type=int, nargs="+",
                    default=[100_000, 10_000_000, 20_000_000])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--max-users", type=int, default=1_000_000)
    ap.add_argument("--length", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-users", type=int, default=512)
    ap.add_argument("--root", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" /
                    "sequential_scale.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = args.root or tempfile.mkdtemp(prefix="recalign-seq-scale-")
    rows = []
    for n in args.interactions:
        r = run(n, args, root)
        rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"{'interactions':>12} {'users':>8} {'seq/s':>7} {'RSS w0/w1 GB':>14} "
          f"{'export s':>9} {'index s':>8} {'train s':>8}")
    for r in rows:
        print(f"{r['interactions']:>12} {r['users']:>8} {r['sequences_per_s']:>7.0f} "
              f"{r['peak_rss_gb'][0]:>6.2f}/{r['peak_rss_gb'][1]:<6.2f} {r['export_s']:>9.1f} "
              f"{r['index']['total_s']:>8.1f} {r['train_s']:>8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
