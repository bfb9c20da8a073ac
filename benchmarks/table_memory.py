"""Table memory per worker: 10M users + 10M items x 64 dims on 1, 2 and 4 gloo ranks.

    .venv/bin/python benchmarks/table_memory.py                          # 10M + 10M, N = 1 2 4
    .venv/bin/python benchmarks/table_memory.py --rows 1000000 --workers 1 2

Each rank builds the ID tables exactly as the pairwise task does (``recalign.train.tasks.
pairwise``): one rank — ``make_id_tables`` then ``init_full``; N ranks — tables on the meta
device, ``shard_model`` (row-wise, fused row-wise Adagrad: the fbgemm kernel sharded CPU
training uses) then ``init_shards``, which fills only the rows the rank owns from the
world-size-independent seeded init. Reported per rank: bytes of the table rows it holds, the
fused optimizer state, RSS after imports and peak RSS (``ru_maxrss``), and build seconds; then
each N's largest per-rank table bytes against 1/N of the one-rank figure. Also checks that the
rows a rank holds equal the one-rank rows at the same ids (a sample). Writes
``benchmarks/out/table_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rank_main(rank: int, world: int, port: int, rows: int, dim: int, out: dict) -> None:
    import torch
    import torch.distributed as dist

    from recalign.tables import make_id_tables
    from recalign.tables.optim import TableOptimizerSpec
    from recalign.tables.seeded_init import seeded_rows
    from recalign.train.tasks.pairwise import init_full, init_shards, table_bounds

    torch.set_num_threads(1)
    rss0 = _rss_mb()
    spec = TableOptimizerSpec(name="rowwise_adagrad", lr=0.05, kernel="fused")
    t = time.perf_counter()
    if world == 1:
        tables = make_id_tables(rows, rows, dim, optimizer=spec)
        init_full(tables, 2023)
        held = [("user", 0, p) for p in [tables.weights()[0]]] + \
               [("item", 0, tables.weights()[1])]
        opt_state = sum(v.numel() * v.element_size()
                        for st in tables.fused_optimizer().state_dict()["state"].values()
                        for v in st.values() if torch.is_tensor(v))
        bounds = table_bounds(tables)
    else:
        from torch import nn

        from recalign.tables.sharding import local_rows, shard_model

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        holder = nn.Module()
        holder.tables = make_id_tables(rows, rows, dim, optimizer=spec.model_copy(
            update={"kernel": "dense"}), device="meta")
        bounds = table_bounds(holder.tables)
        dmp = shard_model(holder, "tables.ebc", "row-wise", spec)
        init_shards(dmp, bounds, 2023)
        held = [(tb, r0, s) for tb, r0, c0, s in local_rows(dmp)]
        opt_state = 0
        for st in dmp.fused_optimizer.state_dict()["state"].values():
            for v in st.values():
                if hasattr(v, "local_shards"):
                    opt_state += sum(x.tensor.numel() * x.tensor.element_size()
                                     for x in v.local_shards())
                elif torch.is_tensor(v):
                    opt_state += v.numel() * v.element_size()
    build_s = time.perf_counter() - t
    table_bytes = sum(s.numel() * s.element_size() for _, _, s in held)
    # the rows held equal the one-process rows at the same ids (seeded, world-independent)
    same = True
    for tb, r0, s in held:
        n, d, lo, hi = bounds[tb]
        k = min(1000, s.shape[0])
        same &= bool(torch.equal(s[:k], seeded_rows(tb, r0, r0 + k, d, lo, hi, 2023)))
    out[rank] = {"rank": rank, "world": world, "table_bytes": table_bytes,
                 "optimizer_state_bytes": opt_state, "rss_after_imports_mb": round(rss0, 1),
                 "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                 "build_s": round(build_s, 2), "rows_match_one_rank": same}
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    import torch.multiprocessing as mp

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="users and items each")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "table_memory.json")
    args = ap.parse_args(argv)
    results = []
    with mp.Manager() as m:
        for world in args.workers:
            out = m.dict()
            ctx = mp.get_context("spawn")
            port = free_port()
            procs = [ctx.Process(target=rank_main, args=(r, world, port, args.rows, args.dim, out))
                     for r in range(world)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
                if p.exitcode:
                    print(f"rank failed with exit code {p.exitcode}", file=sys.stderr)
                    return 1
            results.extend(out[r] for r in range(world))
    one = max(r["table_bytes"] for r in results if r["world"] == 1) if any(
        r["world"] == 1 for r in results) else None
    print("| workers | rank | table GiB | optimizer MiB | peak RSS GiB | build s | vs 1/N of one rank | rows = 1-rank rows |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        ratio = (r["table_bytes"] / (one / r["world"])) if one else float("nan")
        r["ratio_to_one_over_n"] = round(ratio, 4)
        print(f"| {r['world']} | {r['rank']} | {r['table_bytes'] / 2**30:.3f} | "
              f"{r['optimizer_state_bytes'] / 2**20:.1f} | {r['peak_rss_mb'] / 1024:.2f} | "
              f"{r['build_s']} | {ratio:.3f} | {r['rows_match_one_rank']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": args.rows, "dim": args.dim, "ranks": results},
                                   indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
