"""Sequential recommenders on Amazon Beauty through ``recalign train``: leave-one-out by time,
full ranking over all 12,101 items, HR@5/10/20 and NDCG@5/10/20, sequences/s.

    .venv/bin/python benchmarks/sequential.py                       # SASRec, seeds 2023-2025
    .venv/bin/python benchmarks/sequential.py --seeds 2023 --threads 2 --set model.params.bf16=true

Each run is the train job in-process (``recalign.jobs.train.run``) with the config a user
writes — ``data: {source: amazon-sequences, path: Beauty.txt, split: {method: loo}}``,
``model: {backbone: sasrec}`` — and the task's published defaults (REFERENCE.md: CE over all
items, 2 layers, 2 heads, hidden 64, max length 50, dropout 0.5, Adam 1e-3, batch 256,
validation every epoch on NDCG@10, patience 10). Every finished run is appended to
``benchmarks/out/sequential.jsonl`` at once (a long series survives an interruption); the
table is printed from all records of the chosen backbone.

Published full-ranking SASRec (BCE, S3-Rec all-rank table): HR@10 .0605, NDCG@10 .0318.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "amazon-beauty-sequences" / "Beauty.txt"
METRICS = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_one(data: Path, backbone: str, seed: int, threads: int, extra: list[str]) -> dict:
    from recalign.config import load_config
    from recalign.jobs import train as train_job

    root = tempfile.mkdtemp(prefix="recalign-seq-")
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={data}",
                             "data.split.method=loo", f"model.backbone={backbone}",
                             f"train.seed={seed}", f"train.threads={threads}",
                             f"output.root={root}", *extra])
    t = time.perf_counter()
    res = train_job.run(cfg, None)
    c = json.loads(Path(res["run_dir"], "curves.json").read_text())
    return {"backbone": backbone, "seed": seed, "threads": threads, "set": extra,
            "test": {m: res["test"][m] for m in METRICS},
            "valid": {m: res["valid"][m] for m in METRICS},
            "best_epoch": res["best_epoch"], "epochs": res["epochs"],
            "train_seconds": res["train_seconds"], "eval_seconds": res["eval_seconds"],
            "sec_per_epoch": round(res["train_seconds"] / max(1, res["epochs"]), 2),
            "sequences_per_s": res.get("sequences_per_s"),
            "precision": res.get("precision"),
            "valid_curve": list(zip(c.get("valid_epoch", []),
                                    c.get("valid", {}).get("ndcg@10", []))),
            "wall_seconds": round(time.perf_counter() - t, 1), "cpu": cpu_model()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="sasrec")
    ap.add_argument("--seeds", type=int, nargs="*", default=[2023, 2024, 2025])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config overrides (as recalign train --set)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "sequential.jsonl")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"skip: {args.data} not found", file=sys.stderr)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        rec = run_one(args.data, args.backbone, seed, args.threads, args.set)
        with args.out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"seed {seed}: test " + " ".join(f"{m} {rec['test'][m]:.4f}" for m in METRICS)
              + f" | best epoch {rec['best_epoch']} of {rec['epochs']}, "
              f"{rec['sec_per_epoch']} s/epoch", file=sys.stderr)
    recs = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()]
    recs = [r for r in recs if r["backbone"] == args.backbone and r["set"] == args.set]
    print(f"| {args.backbone} ({len(recs)} runs) | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for r in recs:
        print(f"| seed {r['seed']} | " + " | ".join(f"{r['test'][m]:.4f}" for m in METRICS) + " |")
    if len(recs) > 1:
        print("| mean ± sd | " + " | ".join(
            f"{statistics.mean(r['test'][m] for r in recs):.4f} ± "
            f"{statistics.stdev(r['test'][m] for r in recs):.4f}" for m in METRICS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
