"""Sequential recommenders on Amazon Beauty through ``recalign train``: leave-one-out by time,
full ranking over all 12,101 items, HR@5/10/20 and NDCG@5/10/20, median epoch time.

    .venv/bin/python benchmarks/reproduce_sequential.py                  # all 7, seeds 2023-2025
    .venv/bin/python benchmarks/reproduce_sequential.py --backbones gru4rec srgnn --seeds 2023
    .venv/bin/python benchmarks/reproduce_sequential.py --backbones duorec --set train.max_epochs=2

Each run is the train job in-process (``recalign.jobs.train.run``) with the config a user
writes — ``data: {source: amazon-sequences, path: Beauty.txt, split: {method: loo}}``,
``model: {backbone: NAME}`` (FDSA also ``data.item_attributes: Beauty_item2attributes.json``) —
and the published defaults (REFERENCE.md). Every finished run is appended to
``benchmarks/out/sequential.jsonl`` at once (a long series survives an interruption); the table
is printed from all records with the same overrides, next to the published values.
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
ATTRIBUTES = "Beauty_item2attributes.json"
METRICS = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20")
BACKBONES = ("gru4rec", "sasrec", "bert4rec", "fdsa", "cl4srec", "duorec", "srgnn")
# REFERENCE.md, "Sequential recommenders": HR@5, HR@10, NDCG@5, NDCG@10 (SR-GNN: none verified)
PUBLISHED = {"gru4rec": (.0164, .0283, .0099, .0137), "sasrec": (.0387, .0605, .0249, .0318),
             "bert4rec": (.0203, .0347, .0124, .0170), "fdsa": (.0267, .0407, .0163, .0208),
             "cl4srec": (.0398, .0664, .0221, .0322), "duorec": (.0552, .0839, .0350, .0447)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_one(data: Path, backbone: str, seed: int, threads: int, extra: list[str],
            stop: tuple[str, int] | None = None) -> dict:
    """One run of the train job; ``stop = (run folder, epochs)``: end a run that was cut off at
    its last checkpoint instead (``train.resume`` with ``max_epochs`` = the epochs it did: the
    best weights so far are tested and exported)."""
    from recalign.config import load_config
    from recalign.jobs import train as train_job

    user_set = list(extra)
    root = tempfile.mkdtemp(prefix="recalign-seq-")
    if stop is not None:
        run = Path(stop[0])
        root = str(run.parents[2])
        extra = [*extra, f"train.run_name={run.name}", "train.resume=true",
                 f"train.max_epochs={stop[1]}"]
    attrs = data.parent / ATTRIBUTES
    side = [f"data.item_attributes={attrs}"] if backbone == "fdsa" and attrs.exists() else []
    cfg = load_config(None, ["data.source=amazon-sequences", f"data.path={data}",
                             "data.split.method=loo", f"model.backbone={backbone}",
                             f"train.seed={seed}", f"train.threads={threads}",
                             f"output.root={root}", *side, *extra])
    t = time.perf_counter()
    res = train_job.run(cfg, None)
    c = json.loads(Path(res["run_dir"], "curves.json").read_text())
    return {"backbone": backbone, "seed": seed, "threads": threads, "set": user_set,
            "test": {m: res["test"][m] for m in METRICS},
            "valid": {m: res["valid"][m] for m in METRICS},
            "best_epoch": res["best_epoch"], "epochs": res["epochs"],
            "train_seconds": res["train_seconds"], "eval_seconds": res["eval_seconds"],
            "sec_per_epoch": round(res["train_seconds"] / max(1, res["epochs"]), 2),
            "median_epoch_s": round(statistics.median(c["train_s"]), 2),
            "sequences_per_s": res.get("sequences_per_s"),
            "precision": res.get("precision"),
            "valid_curve": list(zip(c.get("valid_epoch", []),
                                    c.get("valid", {}).get("ndcg@10", []))),
            "wall_seconds": round(time.perf_counter() - t, 1), "cpu": cpu_model()}


def table(recs: list[dict], backbones: list[str]) -> list[str]:
    lines = ["| model | runs | " + " | ".join(METRICS) + " | published HR@10 / NDCG@10 | "
             "median epoch (s) |", "|---|---|" + "---|" * len(METRICS) + "---|---|"]
    for bb in backbones:
        rs = [r for r in recs if r["backbone"] == bb]
        if not rs:
            continue

        def cell(m: str) -> str:
            v = [r["test"][m] for r in rs]
            sd = f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else ""
            return f"{statistics.mean(v):.4f}{sd}"

        pub = PUBLISHED.get(bb)
        pubs = f"{pub[1]:.4f} / {pub[3]:.4f}" if pub else "none verified"
        ep = statistics.median(r.get("median_epoch_s", r["sec_per_epoch"]) for r in rs)
        lines.append(f"| {bb} | {len(rs)} | " + " | ".join(cell(m) for m in METRICS)
                     + f" | {pubs} | {ep:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbones", nargs="*", default=list(BACKBONES), choices=BACKBONES)
    ap.add_argument("--seeds", type=int, nargs="*", default=[2023, 2024, 2025])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config overrides (as recalign train --set)")
    ap.add_argument("--stop", nargs=2, metavar=("RUN_DIR", "EPOCHS"), default=None,
                    help="end a run that was cut off (one backbone and seed): test and export "
                    "the best weights of its first EPOCHS epochs, from its checkpoints")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "sequential.jsonl")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"skip: {args.data} not found", file=sys.stderr)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for bb in args.backbones:
        for seed in args.seeds:
            stop = (args.stop[0], int(args.stop[1])) if args.stop else None
            rec = run_one(args.data, bb, seed, args.threads, args.set, stop)
            rec["stopped_at"] = stop[1] if stop else None
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{bb} seed {seed}: test " + " ".join(f"{m} {rec['test'][m]:.4f}"
                                                         for m in METRICS)
                  + f" | best epoch {rec['best_epoch']} of {rec['epochs']}, "
                  f"{rec['median_epoch_s']} s/epoch (median)", file=sys.stderr, flush=True)
    recs = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()]
    recs = [r for r in recs if r["set"] == args.set and r["threads"] == args.threads]
    print("\n".join(table(recs, args.backbones)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
