"""RLMRec's CF backbones on its Amazon-book split with the paper presets, beside the paper.

    .venv/bin/python benchmarks/reproduce_rlmrec.py                         # 6 backbones x 3 seeds
    .venv/bin/python benchmarks/reproduce_rlmrec.py --backbones sgl --seeds 2023 --max-epochs 60
    .venv/bin/python benchmarks/reproduce_rlmrec.py --timing-only --epochs 3   # epoch times only

Single process, 1 torch thread by default (the machine is shared). Each run:
``recalign.train.api.train`` (the trainer ``recalign train`` runs) with ``model.preset: rlmrec-amazon-book`` — Adam 1e-3, batch 4096, validate every
3 epochs, stop after 5 validations without a better val Recall@20 (or ``--max-epochs``), test
once with the best weights (training items masked). Results are *merged* into
``benchmarks/out/reproduce_rlmrec.json`` keyed by (backbone, seed), so backbones can be run in
separate invocations; the table printed (and written to ``reproduce_rlmrec.md``) covers every
run recorded there: mean test Recall@20 / NDCG@20 over the recorded seeds, the paper's value,
the target (paper − 2% relative), the median training-epoch time (negative sampling included,
evaluation excluded) and the epochs run / best epoch / whether ``--max-epochs`` cut the run.

``--timing-only``: no validation or test; each backbone (in one process, one after another,
same seed) trains ``--epochs`` epochs and the per-epoch training times (negative sampling
included) and their median are printed and written to ``reproduce_rlmrec_timing.json`` with the
load average before and after, so backbones are compared under the same machine load.
"""

from __future__ import annotations

import argparse
import logging
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recalign.config import Config, DataConfig  # noqa: E402
from recalign.data.ingest import load_dataset  # noqa: E402
from recalign.train.api import make_trainer, train  # noqa: E402
from recalign.train.data import CFData  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rlmrec-amazon-book"
PRESET = "rlmrec-amazon-book"
#: RLMRec paper, Amazon-book, test Recall@20 / NDCG@20 (REFERENCE.md)
PAPER = {"lightgcn": (.1411, .0856), "gccf": (.1343, .0807), "sgl": (.1473, .0913),
         "simgcl": (.1512, .0919), "dccf": (.1517, .0943), "autocf": (.1536, .0984)}
ORDER = ["lightgcn", "gccf", "sgl", "simgcl", "dccf", "autocf"]
TOLERANCE = 0.02  # relative


def load(path: Path) -> CFData:
    ds = load_dataset(DataConfig(source="rlmrec", path=str(path), split={"method": "given"}))
    return CFData.from_dataset(ds)


def table(runs: dict[str, dict]) -> str:
    lines = ["| backbone | seeds | R@20 mean ± sd | paper | target | N@20 mean ± sd | paper | "
             "target | status | median epoch s | per seed: test R@20, epochs (best) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for bb in ORDER:
        rs = [r for r in runs.values() if r["backbone"] == bb]
        if not rs:
            continue
        rs.sort(key=lambda r: r["seed"])
        recs = [r["test"]["recall@20"] for r in rs]
        ndcgs = [r["test"]["ndcg@20"] for r in rs]
        rec, ndcg = float(np.mean(recs)), float(np.mean(ndcgs))
        sd = (lambda v: f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else "")
        pr, pn = PAPER[bb]
        tr, tn = pr * (1 - TOLERANCE), pn * (1 - TOLERANCE)
        ok = rec >= tr and ndcg >= tn
        status = "ok" if ok else f"short: R {100 * (rec / pr - 1):+.1f}%, N {100 * (ndcg / pn - 1):+.1f}%"
        if any(r["capped"] for r in rs):
            status += f" (capped at {max(r['max_epochs'] for r in rs)} epochs, not converged)"
        ep = statistics.median([t for r in rs for t in r["epoch_times"]])
        per = " / ".join(f"{r['seed']}: {r['test']['recall@20']:.4f}, {r['epochs']} "
                         f"({r['best_epoch']}){'*' if r['capped'] else ''}" for r in rs)
        lines.append(f"| {bb} | {len(rs)} | {rec:.4f}{sd(recs)} | {pr:.4f} | {tr:.4f} | "
                     f"{ndcg:.4f}{sd(ndcgs)} | {pn:.4f} | {tn:.4f} | {status} | {ep:.2f} | {per} |")
    return "\n".join(lines)


def merged(paths: list[Path], keys: list[str] | None = None) -> dict[str, dict]:
    """Runs of several ``--out`` files (backbones run as separate processes write separate
    files); a later file wins for the same backbone/seed; ``keys`` keeps only those runs."""
    runs: dict[str, dict] = {}
    for path in paths:
        runs.update(json.loads(path.read_text())["runs"])
    return {k: v for k, v in runs.items() if keys is None or k in keys}


def config(backbone: str, seed: int, threads: int, max_epochs: int = 3000) -> Config:
    """The paper preset; min_epochs 0: the reference schedule its recorded runs used."""
    return Config.model_validate({
        "model": {"backbone": backbone, "preset": PRESET},
        "train": {"seed": seed, "threads": threads, "max_epochs": max_epochs, "min_epochs": 0}})


def timing(data: CFData, backbones: list[str], epochs: int, seed: int, threads: int,
           out: Path) -> dict:
    """Median training-epoch time of each backbone (paper preset), one after another."""
    torch.set_num_threads(threads)
    res: dict = {"epochs": epochs, "threads": threads, "seed": seed, "torch": torch.__version__,
                 "cpus": os.cpu_count(), "backbones": {}}
    for bb in backbones:
        trainer = make_trainer(config(bb, seed, threads), data)  # what recalign train runs
        load0 = os.getloadavg()[0]
        times = []
        for _ in range(epochs):
            t = time.perf_counter()
            losses = trainer.train_epoch()
            times.append(time.perf_counter() - t)
        load1 = os.getloadavg()[0]
        med = statistics.median(times)
        res["backbones"][bb] = {"epoch_times": times, "median_s": med, "load_before": load0,
                                "load_after": load1, "last_loss": losses.get("loss")}
        print(f"{bb:9s} median epoch {med:7.2f} s  epochs {', '.join(f'{t:.2f}' for t in times)}"
              f"  (load {load0:.1f} -> {load1:.1f})", flush=True)
    base = res["backbones"].get("lightgcn", {}).get("median_s")
    lines = ["| backbone | median epoch s | × LightGCN | load avg (1 min) before → after |",
             "|---|---:|---:|---|"]
    for bb, r in res["backbones"].items():
        ratio = f"{r['median_s'] / base:.1f}" if base else "—"
        lines.append(f"| {bb} | {r['median_s']:.2f} | {ratio} | {r['load_before']:.1f} → "
                     f"{r['load_after']:.1f} |")
    res["table"] = "\n".join(lines)
    print(res["table"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbones", nargs="+", default=ORDER, choices=ORDER)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2023, 2024, 2025])
    ap.add_argument("--max-epochs", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "reproduce_rlmrec.json")
    ap.add_argument("--timing-only", action="store_true",
                    help="only time --epochs training epochs per backbone (no eval)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per backbone (--timing-only)")
    ap.add_argument("--table", type=Path, nargs="+", default=None, metavar="JSON",
                    help="no training: print the table of these --out files' runs (merged)")
    ap.add_argument("--runs", nargs="+", default=None, metavar="BACKBONE/SEED",
                    help="--table: only these runs")
    args = ap.parse_args(argv)
    if args.table:
        print(table(merged(args.table, args.runs)))
        return 0
    if not args.data.is_dir():
        print(f"skip: data folder {args.data} not found", file=sys.stderr)
        return 0
    data = load(args.data)
    print(f"data: {data.n_users} users x {data.n_items} items, train {data.train.nnz}", flush=True)
    if args.timing_only:
        timing(data, args.backbones, args.epochs, args.seeds[0], args.threads,
               args.out.with_name("reproduce_rlmrec_timing.json"))
        return 0
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="  %(message)s")
    store = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for bb in args.backbones:
        for seed in args.seeds:
            t = time.perf_counter()

            # the trainer logs every validation (recalign.train.trainer, INFO)
            res = train(config(bb, seed, args.threads, args.max_epochs), data)
            wall = time.perf_counter() - t
            run = {"backbone": bb, "seed": seed, "preset": PRESET, "test": res["test"],
                   "valid": res["valid"], "best_epoch": res["best_epoch"],
                   "epochs": res["epochs"], "max_epochs": args.max_epochs,
                   "capped": res["epochs"] >= args.max_epochs,
                   "epoch_times": [h["train_s"] for h in res["history"]],
                   "train_seconds": res["train_seconds"], "eval_seconds": res["eval_seconds"],
                   "wall_seconds": wall, "threads": args.threads, "cpus": os.cpu_count(),
                   "torch": torch.__version__,
                   "valid_curve": [(h["epoch"], h["valid"]["recall@20"])
                                   for h in res["history"] if "valid" in h]}
            store["runs"][f"{bb}/{seed}"] = run
            args.out.write_text(json.dumps(store, indent=2))
            print(f"{bb} seed {seed}: best epoch {res['best_epoch']} of {res['epochs']}, test "
                  f"R@20 {res['test']['recall@20']:.4f} N@20 {res['test']['ndcg@20']:.4f} "
                  f"({wall:.0f} s)", flush=True)
    md = table(store["runs"])
    print(md)
    args.out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
