"""Benchmark: the same item-profile prompts through the vLLM engine and the transformers engine.

Builds N RLMRec item prompts (real MovieLens titles, genres and tags when ../shared/data is
present, else the synthetic data set) with the profiles job's own planner, then runs them through
each engine in turn in this one process with validated generation (parse, validate, retry with a
new seed up to --max-attempts). Reports per engine: start-up, profiles/s, completion tokens/s,
share of schema-valid outputs on the first attempt and after retries. Prints a table, writes
JSON (default benchmarks/out/llm_profiles.json).

On this 2-core CPU machine (recorded in docs/results.md)::

    VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 \\
      .venv/bin/python benchmarks/llm_profiles.py --n 200

On a GPU machine, unchanged except the settings, e.g.::

    python benchmarks/llm_profiles.py --n 200 --num-gpus 1 --dtype bfloat16 \\
      --max-num-seqs 256 --transformers-batch 64 [--model /models/Llama-3.1-8B-Instruct --tp 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def build_requests(args: argparse.Namespace, llm) -> tuple[list, str]:
    import numpy as np

    from recalign.config import DataConfig
    from recalign.data.ingest import load_dataset
    from recalign.jobs.profiles import text_bounder
    from recalign.llm.models import model_label, resolve_model
    from recalign.llm.profiles import Planner, ProfileSettings, mix64
    from recalign.llm.prompts import domain_for

    ml = SHARED / "movielens-latest-small"
    if args.data == "movielens" and ml.is_dir():
        dcfg = DataConfig(source="movielens", path=str(ml), min_rating=3.0)
    else:
        dcfg = DataConfig(source="synthetic", synthetic={"users": 500, "items": max(args.n, 200),
                                                         "interactions": 10000, "seed": 7})
    ds = load_dataset(dcfg)
    path = resolve_model(llm.model, llm.cache_dir)
    settings = ProfileSettings.from_config(
        llm, domain=domain_for("auto", dcfg.source, dcfg.dataset_name()),
        model=model_label(llm.model, path))
    planner = Planner(ds, settings, text_bounder(path))
    items = np.arange(ds.n_items)
    items = np.sort(items[np.argsort(mix64(args.seed, items))[:args.n]])
    tasks = planner.item_tasks(items)
    return [planner.request(t) for t in tasks], f"{dcfg.source}:{dcfg.dataset_name()}"


def run_engine(name: str, engine_factory, requests: list, batch: int, max_attempts: int) -> dict:
    from recalign.llm.engine import generate_validated
    from recalign.llm.schemas import parse_and_validate

    t0 = time.perf_counter()
    engine = engine_factory()
    startup = time.perf_counter() - t0
    # warm-up (not timed): first-call costs such as grammar compilation
    generate_validated(engine, requests[:2], parse_and_validate, 1)
    engine.requests_made = 0
    t1 = time.perf_counter()
    outcomes = []
    for start in range(0, len(requests), batch):
        outcomes += generate_validated(engine, requests[start:start + batch], parse_and_validate,
                                       max_attempts)
        print(f"  {name}: {len(outcomes)}/{len(requests)} "
              f"({time.perf_counter() - t1:.0f} s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t1
    engine.close()
    n = len(outcomes)
    first_ok = sum(o.status == "ok" and o.attempts == 1 for o in outcomes)
    ok = sum(o.status == "ok" for o in outcomes)
    comp = sum(o.completion_tokens for o in outcomes)
    prompt = sum(o.prompt_tokens for o in outcomes)
    reasons: dict[str, int] = {}
    for o in outcomes:
        for r in o.reasons:
            k = r.split(" (")[0][:60]
            reasons[k] = reasons.get(k, 0) + 1
    return {"engine": name, "profiles": n, "startup_s": round(startup, 1),
            "wall_s": round(wall, 1), "profiles_per_s": round(n / wall, 3),
            "completion_tokens": comp, "prompt_tokens": prompt,
            "completion_tokens_per_s": round(comp / wall, 1),
            "requests": engine.requests_made,
            "valid_first_attempt": round(first_ok / n, 4), "valid_after_retries": round(ok / n, 4),
            "invalid_reasons": reasons}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="item prompts")
    p.add_argument("--data", choices=["movielens", "synthetic"], default="movielens")
    p.add_argument("--engines", default="vllm,transformers")
    p.add_argument("--model", default=None, help="model folder or hub id (default SmolLM2)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--item-words", type=int, default=60)
    p.add_argument("--reasoning-words", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--vllm-batch", type=int, default=200, help="requests per vLLM generate call")
    p.add_argument("--transformers-batch", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--num-gpus", type=float, default=0.0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kv-cache-gib", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=2023)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "llm_profiles.json"))
    args = p.parse_args()

    from recalign.config import LLMConfig

    llm = LLMConfig(model=args.model, cache_dir=args.cache_dir, item_words=args.item_words,
                    reasoning_words=args.reasoning_words, temperature=args.temperature,
                    max_attempts=args.max_attempts, max_num_seqs=args.max_num_seqs,
                    max_model_len=args.max_model_len, tensor_parallel_size=args.tp,
                    pipeline_parallel_size=args.pp, num_gpus=args.num_gpus, dtype=args.dtype,
                    kv_cache_gib=args.kv_cache_gib, threads=args.threads, seed=args.seed)
    requests, source = build_requests(args, llm)
    print(f"{len(requests)} item prompts from {source}", file=sys.stderr)
    results = []
    for name in args.engines.split(","):
        if name == "vllm":
            from recalign.llm.engines.vllm_engine import VLLMEngine
            factory, batch = (lambda: VLLMEngine(llm.model_copy(update={"engine": "vllm"}))), args.vllm_batch
        elif name == "transformers":
            from recalign.llm.engines.transformers_engine import TransformersEngine
            factory, batch = (lambda: TransformersEngine(llm.model_copy(update={"engine": "transformers"}))), args.transformers_batch
        else:
            raise SystemExit(f"unknown engine {name}")
        print(f"engine {name} ...", file=sys.stderr, flush=True)
        results.append(run_engine(name, factory, requests, batch, args.max_attempts))
    by = {r["engine"]: r for r in results}
    speedup = None
    if "vllm" in by and "transformers" in by:
        speedup = round(by["vllm"]["profiles_per_s"] / by["transformers"]["profiles_per_s"], 2)
    out = {"prompts": len(requests), "source": source, "settings": vars(args),
           "cpu_count": os.cpu_count(), "results": results, "vllm_speedup": speedup}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\n| engine | start-up s | profiles/s | completion tok/s | valid 1st try | valid after retries | requests |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['engine']} | {r['startup_s']} | {r['profiles_per_s']} | "
              f"{r['completion_tokens_per_s']} | {r['valid_first_attempt']:.1%} | "
              f"{r['valid_after_retries']:.1%} | {r['requests']} |")
    if speedup:
        print(f"\nvLLM / transformers throughput: {speedup}x")


if __name__ == "__main__":
    main()
