"""Ingest throughput and peak memory for synthetic data sets of growing size.

Each size runs in its own process (so its peak RSS is its own): generate N interactions with
the synthetic source, stream them through the ingest pipeline into a local snapshot.

    .venv/bin/python benchmarks/ingest.py --sizes 1000000 10000000 50000000
    .venv/bin/python benchmarks/ingest.py --users 0 --items 0   # catalogue grows with n

Prints a table and writes benchmarks/out/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def one(n: int, root: str, users: int, items: int) -> dict:
    from recalign.config import load_config
    from recalign.data.snapshot_io import ingest_to_snapshot
    from recalign.storage.snapshot import SnapshotStore

    # chunks of ~1M interactions whatever the activity per user: memory follows the chunk
    chunk_users = max(1000, int(users * 1_000_000 / n))
    cfg = load_config(None, ["data.source=synthetic", f"data.synthetic.users={users}",
                             f"data.synthetic.chunk_users={chunk_users}",
                             f"data.synthetic.items={items}", f"data.synthetic.interactions={n}",
                             f"output.root={root}"])
    t0 = time.perf_counter()
    summary = ingest_to_snapshot(cfg, SnapshotStore(root))
    wall = time.perf_counter() - t0
    rows = summary["counts"]["interactions"]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"target": n, "interactions": rows, "users": summary["counts"]["users"],
            "items": summary["counts"]["items"], "seconds": round(wall, 2),
            "rows_per_s": round(rows / wall), "peak_rss_mb": round(peak_kib / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 50_000_000])
    ap.add_argument("--users", type=int, default=200_000,
                    help="catalogue size held fixed across sizes, so that memory vs "
                         "interactions is visible (0: grow users with n, n/20)")
    ap.add_argument("--items", type=int, default=100_000, help="(0: grow with n, n/50)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.root, args.users, args.items)))
        return
    rows = []
    for n in args.sizes:
        users = args.users or max(1000, n // 20)
        items = args.items or max(1000, min(1_000_000, n // 50))
        with tempfile.TemporaryDirectory() as root:
            p = subprocess.run([sys.executable, __file__, "--one", str(n), "--root", root,
                                "--users", str(users), "--items", str(items)],
                               capture_output=True, text=True, check=True)
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['interactions']:>12,} interactions  {r['users']:>10,} users  "
              f"{r['items']:>9,} items  {r['seconds']:>8.1f} s  {r['rows_per_s']:>10,} rows/s  "
              f"peak RSS {r['peak_rss_mb']:>6,} MB", flush=True)
    OUT.mkdir(exist_ok=True)
    name = "ingest.json" if args.users else "ingest_growing_catalogue.json"
    (OUT / name).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
