"""Generation speed and peak memory of the synthetic source.

    .venv/bin/python benchmarks/synthetic_gen.py [N] [--users U] [--items I] [--chunk-users C]

Streams N interactions (default 10M; users and items default to N/10, capped at 1M) chunk by
chunk without keeping them, prints rows/s and peak RSS, and writes
``benchmarks/out/synthetic_gen.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import psutil

from recalign.config import DataConfig, SyntheticConfig
from recalign.data.sources.base import get_source


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("interactions", nargs="?", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--chunk-users", type=int, default=50_000)
    ap.add_argument("--topics", type=int, default=12)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "synthetic_gen.json"))
    args = ap.parse_args(argv)
    n = args.interactions
    users = args.users or min(1_000_000, max(1000, n // 10))
    items = args.items or min(1_000_000, max(1000, n // 10))
    s = SyntheticConfig(users=users, items=items, interactions=n, topics=args.topics,
                        chunk_users=args.chunk_users)
    rss0 = _rss_mb()

    t0 = time.perf_counter()
    raw = get_source("synthetic")(DataConfig(source="synthetic", synthetic=s))
    t_setup = time.perf_counter() - t0  # latents + item and user tables (O(items + users))
    rss_setup = _rss_mb()

    rows = chunks = max_chunk_rows = 0
    max_rss_stream = rss_setup
    t1 = time.perf_counter()
    for chunk in raw.chunks():
        rows += chunk.num_rows
        chunks += 1
        max_chunk_rows = max(max_chunk_rows, chunk.num_rows)
        max_rss_stream = max(max_rss_stream, _rss_mb())
        del chunk
    t_stream = time.perf_counter() - t1

    result: dict[str, object] = {
        "interactions_target": n, "interactions": rows, "users": users, "items": items,
        "topics": args.topics, "chunk_users": args.chunk_users, "chunks": chunks,
        "max_chunk_rows": max_chunk_rows,
        "setup_s": round(t_setup, 3), "stream_s": round(t_stream, 3),
        "stream_rows_per_s": round(rows / t_stream),
        "total_rows_per_s": round(rows / (t_setup + t_stream)),
        "rss_start_mb": round(rss0, 1), "rss_after_setup_mb": round(rss_setup, 1),
        "rss_max_while_streaming_mb": round(max_rss_stream, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "items_table_mb": round(raw.items.nbytes / 2**20, 1),
        "users_table_mb": round(raw.users.nbytes / 2**20, 1),
        "cpu_count": psutil.cpu_count(), "python": platform.python_version(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{rows:,} interactions ({users:,} users x {items:,} items) in "
          f"{t_setup:.2f} s setup + {t_stream:.2f} s streaming: "
          f"{rows / t_stream:,.0f} rows/s streaming, {rows / (t_setup + t_stream):,.0f} rows/s "
          f"overall; peak RSS {_peak_rss_mb():,.0f} MB (wrote {out})")
    return result


if __name__ == "__main__":
    main()
