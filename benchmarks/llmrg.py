"""LLMRG on Amazon-Scientific or MovieLens: reasoning graphs from the local LLM, then the base
sequential model vs +LLMRG vs each ablation, all through ``recalign graphs`` and
``recalign train`` (the jobs users run, in-process).

    .venv/bin/python benchmarks/llmrg.py --source scientific --users 200 --seeds 2023
    .venv/bin/python benchmarks/llmrg.py --source movielens --bases duorec sasrec \\
        --llm-set llm.engine=vllm --llm-set llm.model=/models/Qwen2.5-7B-Instruct \\
        --llm-set llm.num_gpus=1                               # unchanged on a GPU cluster

Steps: ingest (leave-one-out by time); ``recalign graphs`` with ``llmrg.mode: graph`` on a
seeded sample of ``--users`` users (``llmrg.max_users``; the rest fall back to their sequence
graph, counted), then ``llmrg.mode: direct`` when the ``direct`` variant is asked for; then one
training run per (base, variant, seed). Variants (``model.backbone: llmrg``):

* ``base``      — ``graph: none``: the base model alone (same trainer, same seed);
* ``sequence``  — SR-GNN on the plain session graph fused with the base;
* ``no-div``    — the reasoning graph, verified, without the divergent graph;
* ``no-verify`` — reasoning + divergent graphs, every chain kept (no τ filter);
* ``full``      — reasoning + divergent graphs, chains with score ≥ τ;
* ``direct``    — the LLM's direct next-item guesses (grounded) as the graph.

Metrics: test HR/NDCG@5/10/20 over all users and over the users that got an LLM graph
(``test_graph_users`` in the train summary). Generation: users, LLM calls, tokens, knowledge
base hits per wave, wall time. Every finished run is appended to ``--out`` (JSON lines) at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SOURCES = {
    "scientific": ["data.source=unisrec", f"data.path={DATA / 'amazon-scientific'}",
                   "data.name=scientific-loo"],
    "movielens": ["data.source=movielens", f"data.path={DATA / 'movielens-latest-small'}",
                  "data.name=ml-small-loo"],
}
ARTIFACTS = {"graph": "graphs", "direct": "graphs-direct"}
METRICS = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20")
VARIANTS = {
    "base": {"graph": "none"},
    "sequence": {"graph": "sequence"},
    "no-div": {"graph": "reasoning", "divergent": False, "verify": True},
    "no-verify": {"graph": "reasoning", "divergent": True, "verify": False},
    "full": {"graph": "reasoning", "divergent": True, "verify": True},
    "direct": {"graph": "reasoning", "direct": True},
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def cfg_of(sets: list[str]) -> Any:
    from recalign.config import load_config
    return load_config(None, sets)


def generate(common: list[str], llm_sets: list[str], mode: str, users: int) -> dict[str, Any]:
    """One ``recalign graphs`` run; the direct ablation writes its own artifact, so that each
    mode's next run finds its own LATEST (and reuses every unchanged user)."""
    from recalign.jobs import graphs as graphs_job

    cfg = cfg_of([*common, *llm_sets, f"llmrg.mode={mode}", f"llmrg.max_users={users}",
                  f"llmrg.artifact={ARTIFACTS[mode]}"])
    t = time.perf_counter()
    res = graphs_job.run(cfg, SimpleNamespace(no_progress=True))
    res["bench_wall_s"] = round(time.perf_counter() - t, 1)
    res["uri"] = res["snapshot"]
    return res


def train(common: list[str], base: str, variant: str, seed: int, graphs_uri: str,
          extra: list[str]) -> dict[str, Any]:
    """One ``recalign train`` run of the fusion model; every variant reads the graph-mode
    snapshot's users (the base and sequence variants only to report metrics over them)."""
    from recalign.jobs import train as train_job

    params = {"base": base, **VARIANTS[variant], "graphs": graphs_uri}
    sets = [*common, "model.backbone=llmrg", f"model.params={json.dumps(params)}",
            f"train.seed={seed}", *extra]
    t = time.perf_counter()
    res = train_job.run(cfg_of(sets), None)
    out = {"test": {m: res["test"][m] for m in METRICS},
           "valid": {m: res["valid"][m] for m in METRICS},
           "best_epoch": res["best_epoch"], "epochs": res["epochs"],
           "wall_s": round(time.perf_counter() - t, 1)}
    sub = res.get("test_graph_users")
    if sub:
        out["test_graph_users"] = {m: sub[m] for m in METRICS if m in sub}
        out["graph_users"] = sub.get("users")
    out["graphs"] = res.get("reasoning_graphs")
    return out


def table(recs: list[dict[str, Any]], key: str) -> list[str]:
    lines = ["| base | variant | runs | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    seen: list[tuple[str, str]] = []
    for r in recs:
        if (r["base"], r["variant"]) not in seen:
            seen.append((r["base"], r["variant"]))
    for base, variant in seen:
        rs = [r for r in recs if r["base"] == base and r["variant"] == variant and key in r]
        if not rs:
            continue

        def cell(m: str) -> str:
            v = [r[key][m] for r in rs]
            sd = f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else ""
            return f"{statistics.mean(v):.4f}{sd}"
        lines.append(f"| {base} | {variant} | {len(rs)} | " + " | ".join(map(cell, METRICS))
                     + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", choices=sorted(SOURCES), default="scientific")
    ap.add_argument("--root", default=str(ROOT / "benchmarks" / "out" / "llmrg-root"))
    ap.add_argument("--users", type=int, default=200, help="users that get LLM graphs "
                    "(a seeded sample, llmrg.max_users)")
    ap.add_argument("--bases", nargs="*", default=["duorec", "sasrec"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="*", default=[2023, 2024, 2025])
    ap.add_argument("--llm-set", action="append", default=[], metavar="KEY=VALUE",
                    help="llm/embed/llmrg overrides for generation (engine, model, resources)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="training overrides (as recalign train --set)")
    ap.add_argument("--graphs", default=None, metavar="URI", help="train on this graphs "
                    "snapshot (<root>/<dataset>/<artifact>/v=...) instead of generating")
    ap.add_argument("--direct-graphs", default=None, metavar="URI", help="the same, for the "
                    "direct ablation's snapshot")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "llmrg.jsonl")
    args = ap.parse_args(argv)
    src = SOURCES[args.source]
    if not Path(src[1].split("=", 1)[1]).exists():
        print(f"skip: {src[1]} not found", file=sys.stderr)
        return 0
    common = [*src, "data.split.method=loo", f"output.root={args.root}"]
    from recalign.jobs import ingest as ingest_job

    ingest_job.run(cfg_of(common), SimpleNamespace(force=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    uris: dict[str, str] = {}
    given = {"graph": args.graphs, "direct": args.direct_graphs}
    modes = ["graph"] + (["direct"] if "direct" in args.variants else [])
    for mode in modes:
        if given[mode]:
            uris[mode] = given[mode]
            continue
        res = generate(common, args.llm_set, mode, args.users)
        uris[mode] = res["uri"]
        rec = {"kind": "graphs", "source": args.source, "mode": mode, "users": args.users,
               "llm_set": args.llm_set, "cpu": cpu_model(), **res}
        with args.out.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        print(f"graphs ({mode}): " + json.dumps({k: res.get(k) for k in (
            "users", "llm_calls", "kb_hits", "kb_hit_rate", "prompt_tokens",
            "completion_tokens", "bench_wall_s", "uri")}, default=str), file=sys.stderr)
    recs = []
    for base in args.bases:
        for variant in args.variants:
            for seed in args.seeds:
                v = uris["direct" if variant == "direct" else "graph"]
                r = train(common, base, variant, seed, v, args.set)
                rec = {"kind": "train", "source": args.source, "base": base, "variant": variant,
                       "seed": seed, "users": args.users, "set": args.set, "cpu": cpu_model(),
                       "graphs_uri": v, **r}
                recs.append(rec)
                with args.out.open("a") as f:
                    f.write(json.dumps(rec, default=str) + "\n")
                print(f"{base} {variant} seed {seed}: test " + " ".join(
                    f"{m} {r['test'][m]:.4f}" for m in METRICS), file=sys.stderr, flush=True)
    print("all users (test)")
    print("\n".join(table(recs, "test")))
    print("users with an LLM graph (test)")
    print("\n".join(table(recs, "test_graph_users")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
