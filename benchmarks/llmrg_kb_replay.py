"""LLMRG knowledge base, replayed: how many reasoning steps a KB would have served with exact
``(previous item, item)`` keys and with ``llmrg.kb_similarity`` thresholds, on a graphs
snapshot that was already generated — no LLM call.

    .venv/bin/python benchmarks/llmrg_kb_replay.py --root /tmp/llmrg/root --dataset ml-small-loo \
        --thresholds 0.95 0.9 0.85 0.8

Users are replayed in the snapshot's order in waves of ``--wave-size`` (as ``recalign graphs``
walks them); a step is a transition between consecutive walked items. Before each wave the KB
holds the links of the earlier waves' chains scoring >= ``--tau``, except links of steps the
replay served from the KB (a served step makes no new link in a real run). Lookups are the
library's (:meth:`recalign.llm.graphs.KnowledgeBase.lookup` / ``nearest``) over the item text
vectors the generator embeds (:class:`recalign.llm.graphs.Catalog`, the configured embedding
engine). It estimates step calls saved; in a real run served chains also skip verification,
and the links the LLM would have written for served steps are unknown, so the KB of a real run
with a threshold differs. Prints a table and a few served pairs beside the pair whose reason
they borrow; writes ``benchmarks/out/llmrg_kb_replay.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def verified_links(row: dict, tau: float) -> list[tuple[int, int, str | None]]:
    """(source item, destination item, reason key) of the links of chains scoring >= tau."""
    from recalign.data.graph_schema import row_links

    score = {c["chain"]: c["score"] for c in row["chains"]}
    out = []
    for lk in row_links(row):
        sc = score.get(lk.chain, float("nan"))
        if not math.isnan(sc) and sc >= tau:
            out.append((lk.src_item, lk.dst_item, lk.reason))
    return out


def replay(rows: list[dict], vectors: np.ndarray, pair_text, threshold: float | None,
           wave_size: int, tau: float) -> dict:
    from recalign.data.graph_schema import row_items
    from recalign.llm.graphs import KBEntry, KnowledgeBase

    kb = KnowledgeBase("replay")
    steps = hits = similar = 0
    examples: list[tuple[int, int, int, int, float]] = []
    for w0 in range(0, len(rows), wave_size):
        learn: list[tuple[int, int, str, int]] = []
        for row in rows[w0:w0 + wave_size]:
            items = row_items(row)
            served = set()
            for p in range(1, len(items)):
                a, b = items[p - 1], items[p]
                steps += 1
                e = kb.lookup(a, b, pair_text(a, b))
                if e is None and threshold is not None:
                    near = kb.nearest(a, b, vectors, threshold, pair_text)
                    if near is not None:
                        e, sim, pair = near
                        similar += 1
                        if len(examples) < 6:
                            examples.append((a, b, *pair, round(sim, 3)))
                if e is not None:
                    hits += 1
                    served.add((a, b))
            learn += [(a, b, r, row["id"]) for a, b, r in verified_links(row, tau)
                      if (a, b) not in served]
        for a, b, reason, user in learn:
            kb.add(a, b, KBEntry(reason, [], tau, user, pair_text=pair_text(a, b)))
    return {"threshold": threshold, "users": len(rows), "steps": steps, "hits": hits,
            "similar_hits": similar, "hit_rate": round(hits / steps, 4) if steps else None,
            "step_calls_saved_per_user": round(hits / len(rows), 3) if rows else None,
            "kb_size": len(kb.entries), "examples": examples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/tmp/llmrg/root")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--artifact", default="graphs")
    ap.add_argument("--version", default=None)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.95, 0.9, 0.85, 0.8])
    ap.add_argument("--wave-size", type=int, default=64)
    ap.add_argument("--tau", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" /
                    "llmrg_kb_replay.json")
    args = ap.parse_args(argv)

    from recalign.config import EmbedConfig, LLMConfig, LLMRGConfig
    from recalign.data.snapshot_io import read_dataset
    from recalign.llm.engine import build_embedding_engine
    from recalign.llm.graphs import Catalog, GraphSettings, unit_rows
    from recalign.llm.prompts import TextBounder
    from recalign.storage.snapshot import SnapshotStore

    store = SnapshotStore(args.root)
    if store.try_open(args.dataset, args.artifact) is None:
        print(f"skip: no {args.artifact} snapshot of {args.dataset} under {args.root}",
              file=sys.stderr)
        return 0
    snap = store.open(args.dataset, args.artifact, args.version)
    rows = [r for r in snap.read_table("users").to_pylist() if r["status"] == "ok"]
    ds = read_dataset(store.open(args.dataset, "dataset"))
    settings = GraphSettings.from_config(LLMConfig(), LLMRGConfig(), domain="items", model="",
                                         embed_model="")
    catalog = Catalog(ds, TextBounder(), settings)
    t0 = time.perf_counter()
    engine = build_embedding_engine(EmbedConfig())
    try:
        vectors = unit_rows(engine.embed([catalog.text(i) for i in range(ds.n_items)]))
    finally:
        engine.close()
    embed_s = time.perf_counter() - t0
    runs = [replay(rows, vectors, catalog.pair_text, t, args.wave_size, args.tau)
            for t in [None, *args.thresholds]]
    print(f"{args.dataset} {snap.version}: {len(rows)} users, {ds.n_items} items "
          f"(item texts embedded in {embed_s:.0f} s), waves of {args.wave_size}, tau {args.tau}")
    print(f"{'key':>14} {'steps':>6} {'hits':>5} {'similar':>7} {'hit rate':>8} "
          f"{'saved/user':>10} {'KB size':>7}")
    for r in runs:
        key = "exact" if r["threshold"] is None else f"cos >= {r['threshold']}"
        print(f"{key:>14} {r['steps']:>6} {r['hits']:>5} {r['similar_hits']:>7} "
              f"{r['hit_rate']:>8} {r['step_calls_saved_per_user']:>10} {r['kb_size']:>7}")
    for r in runs[1:]:
        for a, b, x, y, sim in r["examples"][:3]:
            print(f"  cos >= {r['threshold']}: {catalog.text(a)[:45]!r} -> "
                  f"{catalog.text(b)[:45]!r} took the reason of {catalog.text(x)[:45]!r} -> "
                  f"{catalog.text(y)[:45]!r} ({sim})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dataset": args.dataset, "version": snap.version,
                                    "runs": runs, "embed_s": round(embed_s, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
