"""Validation curves of a CF backbone run long without early stopping, and where the stopping
rule would have stopped it (issue: "GCCF stalls where the authors' GCCF keeps learning").

    .venv/bin/python benchmarks/cf_curves.py                                   # GCCF, 300 epochs
    .venv/bin/python benchmarks/cf_curves.py --backbone lightgcn --seeds 2023 --epochs 150

Each run is ``recalign.train.api.train`` (the trainer ``recalign train`` runs) with the paper
preset on RLMRec's Amazon-book split, validation every 3 epochs, ``patience`` so large that
nothing stops it, and ``--epochs`` epochs. Training is deterministic for a seed, so a run with
the paper's rule (5 validations without a better validation Recall@20) is a prefix of this
one: the rule's stopping epoch and best validation value are read off the same curve, for
each patience in ``--patience``. Appends one JSON line per run to
``benchmarks/out/cf_curves.jsonl`` and prints, per run, the curve at a few epochs and the
table of stopping points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

from recalign.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rlmrec-amazon-book"


def stop_point(curve: list[tuple[int, float]], patience: int, min_epochs: int = 0
               ) -> tuple[int, int, float]:
    """(stopping epoch, best epoch, best value) of the rule on a validation curve."""
    best_e, best_v, bad = -1, float("-inf"), 0
    for e, v in curve:
        if v > best_v:
            best_e, best_v, bad = e, v, 0
        else:
            bad += 1
        if bad >= patience and e + 1 >= min_epochs:
            return e, best_e, best_v
    return curve[-1][0], best_e, best_v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="gccf")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2023, 2024, 2025])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--patience", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cf_curves.jsonl")
    args = ap.parse_args()
    if not args.data.exists():
        print(f"skip: {args.data} not found", file=sys.stderr)
        return 0
    from recalign.config import DataConfig
    from recalign.data.ingest import load_dataset
    from recalign.train.api import train

    ds = load_dataset(DataConfig(source="rlmrec", path=str(args.data),
                                 split={"method": "given"}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        cfg = Config.model_validate({
            "model": {"backbone": args.backbone, "preset": "rlmrec-amazon-book"},
            "train": {"seed": seed, "threads": args.threads, "max_epochs": args.epochs,
                      "min_epochs": 0, "eval_every": 3, "patience": 10_000}})
        t = time.perf_counter()
        res = train(cfg, ds)
        curve = [(h["epoch"], h["valid"]["recall@20"]) for h in res["history"] if "valid" in h]
        stops = {p: stop_point(curve, p) for p in args.patience}
        rec = {"backbone": args.backbone, "seed": seed, "epochs": args.epochs,
               "valid_curve": curve, "best_epoch": res["best_epoch"],
               "test": {k: res["test"][k] for k in ("recall@20", "ndcg@20")},
               "stops": {str(p): {"stop_epoch": s[0], "best_epoch": s[1], "best_valid": s[2]}
                         for p, s in stops.items()},
               "wall_s": round(time.perf_counter() - t, 1)}
        with args.out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        marks = [e for e, _ in curve if e in (3, 51, 99, 150, 201, 249, 297) or e == curve[-1][0]]
        print(f"{args.backbone} seed {seed}: valid R@20 " + ", ".join(
            f"{v:.4f} ({e})" for e, v in curve if e in marks)
            + f"; best {max(v for _, v in curve):.4f} at {res['best_epoch']}; test R@20 "
            f"{res['test']['recall@20']:.4f} N@20 {res['test']['ndcg@20']:.4f}", flush=True)
        for p, (se, be, bv) in stops.items():
            print(f"  patience {p:>3}: stops at {se}, best {bv:.4f} at {be}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
