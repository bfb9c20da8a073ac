"""Retrieval index benchmark: flat (exact) vs HNSW vs IVF on clustered synthetic vectors.

For each catalogue size: build seconds, queries/s (batch of user-like queries, k=100),
recall@100 against exact search, and serialised index bytes. Uses the same build code as
``recalign export`` (recalign.index.faiss_index) with its default parameters unless overridden.

    nice .venv/bin/python benchmarks/export_index.py --sizes 100000 1000000

Prints a table and writes benchmarks/out/export_index.json (``--out``); each row is also
appended to export_index.jsonl as soon as it is measured, so a long run that is stopped keeps
what it finished.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from recalign.config import ExportConfig
from recalign.index.faiss_index import (build_index, exact_kth_scores, index_params,
                                        recall_by_score, set_threads)

OUT = Path(__file__).resolve().parent / "out"


def clustered(n: int, d: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # generated in blocks: a 1M x 64 float64 temporary would double peak memory
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 200_000):
        e = min(n, s + 200_000)
        c = centres[rng.integers(0, len(centres), e - s)]
        out[s:e] = c + 0.35 * rng.standard_normal((e - s, d))
    return out


def bench(n: int, d: int, kinds: list[str], queries: int, cfg: ExportConfig, seed: int,
          log: Path) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = (2.0 * rng.standard_normal((max(64, n // 1000), d))).astype(np.float32)
    items = clustered(n, d, centres, rng)
    q = clustered(queries, d, centres, rng)
    ids = np.arange(n, dtype=np.int64)
    k = cfg.recall_k
    t0 = time.perf_counter()
    kth = exact_kth_scores(items, q, k)
    exact_s = time.perf_counter() - t0
    rows = []
    for kind in kinds:
        params = index_params(cfg, kind, n)
        built = build_index(items, ids, kind, params, seed=seed)
        t1 = time.perf_counter()
        _, found = built.search(q, k)
        search_s = time.perf_counter() - t1
        row = {"items": n, "d": d, "kind": kind, "params": params,
               "build_s": round(built.build_seconds, 2),
               "queries_per_s": round(queries / search_s, 1),
               f"recall@{k}": round(recall_by_score(found, items, ids, q, kth), 4),
               "index_bytes": len(built.to_bytes()), "queries": queries,
               "exact_ground_truth_s": round(exact_s, 2)}
        print(json.dumps(row), flush=True)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        del built
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="export_index.json", help="file name under benchmarks/out")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="field=value", help="ExportConfig field, e.g. hnsw_ef_construction=100")
    args = ap.parse_args()
    cfg = ExportConfig(**dict(kv.split("=", 1) for kv in args.overrides))
    set_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    rows = []
    for n in args.sizes:
        rows += bench(n, args.d, args.kinds, args.queries, cfg, args.seed,
                      OUT / "export_index.jsonl")
    k = cfg.recall_k
    print(f"\n| items | kind | params | build s | queries/s | recall@{k} | index MB |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        params = ", ".join(f"{a}={b}" for a, b in r["params"].items()) or "exact"
        print(f"| {r['items']:,} | {r['kind']} | {params} | {r['build_s']} | "
              f"{r['queries_per_s']:,} | {r[f'recall@{k}']} | {r['index_bytes'] / 2**20:.1f} |")
    meta = {"faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
            "machine": platform.machine(), "config": cfg.model_dump(mode="json")}
    (OUT / args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
