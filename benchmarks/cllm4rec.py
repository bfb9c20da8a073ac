"""CLLM4Rec against its baselines on MovieLens-small and Amazon-Scientific (issue "CLLM4Rec").

Rows, each with the same data, split and seeds, each through the job users run:

* ``multivae`` — Multi-VAE, ``recalign train`` with ``model.backbone: multivae``;
* ``cllm4rec`` — ``recalign cllm4rec`` (pretrain: content warm-up + L/C rounds; finetune);
* ``lam0`` — the same with ``lam: 0`` (no mutual regularisation);
* ``llm-cf`` — the same with ``content: none`` (no content LM).

Data (REFERENCE.md, ``cllm4rec`` protocol): ratings > 3 (MovieLens), 5-core, per-user
80/10/10 with at least one validation and one test item; Recall@20, Recall@40, NDCG@100;
model selection on R@20 + R@40 + N@100. Content: MovieLens — the user's own tags on the movie
where they exist, else the movie's title, genres and top tags; Scientific — the item's text.

``--schedule cpu`` (default) is what fits two CPU cores: SmolLM2-135M (all 30 layers) in bf16,
documents of at most ``--max-tokens`` positions, a sample of ``--content-per-epoch`` content
documents per C-step epoch, ``--warmup`` + ``--rounds`` pretraining epochs and ``--finetune``
fine-tuning epochs — far from the authors' schedule, so far from converged;
``--schedule paper`` is the authors' (10 + 100 rounds, 150 fine-tuning epochs, whole LM, every
document), for a cluster. The validation curves of every run are in the JSON.

    .venv/bin/python benchmarks/cllm4rec.py --data movielens --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METRICS = ("recall@20", "recall@40", "ndcg@100")
DATA = {
    "movielens": {"source": "movielens", "path": str(SHARED / "movielens-latest-small"),
                  "min_rating": 3, "rating_op": ">", "kcore": 5},
    # every interaction of the given files, re-split per user
    "scientific": {"source": "unisrec", "path": str(SHARED / "amazon-scientific"), "kcore": 5},
}
ROWS = ("multivae", "llm-cf", "cllm4rec", "lam0")


def base_tree(data: str, seed: int, root: str, eval_users: int | None) -> dict[str, Any]:
    return {"data": {**DATA[data], "name": f"{data}-cllm4rec",
                     "split": {"method": "user", "ratios": [0.8, 0.1, 0.1]}},
            "train": {"seed": seed, "threads": 2},
            "eval": {"protocol": "cllm4rec", "select_metric": "cllm4rec_sum",
                     **({"max_users": eval_users} if eval_users else {})},
            "output": {"root": root}}


def lm_params(args: argparse.Namespace, row: str) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if args.schedule == "cpu":
        p.update(dtype="bfloat16", warmup_epochs=args.warmup,
                 rounds=args.rounds, finetune_epochs=args.finetune,
                 content_per_epoch=args.content_per_epoch, max_tokens=args.max_tokens,
                 max_text_tokens=64)
    if row == "lam0":
        p["lam"] = 0.0
    if row == "llm-cf":
        p.update(lam=0.0, content="none")
    return p


def curve(run_dir: str) -> dict[str, Any]:
    with open(Path(run_dir) / "curves.json") as f:
        c = json.load(f)
    return {"epoch": c["valid_epoch"], "cllm4rec_sum": [
        round(sum(c["valid"][m][i] for m in METRICS), 4) for i in range(len(c["valid_epoch"]))],
        "loss": {k: [None if v is None else round(v, 4) for v in vs]
                 for k, vs in c["loss"].items()}}


def run_row(args: argparse.Namespace, row: str, seed: int, root: str) -> dict[str, Any]:
    from recalign.config import Config
    from recalign.jobs import cllm4rec as cl_job
    from recalign.jobs import train as train_job

    tree = base_tree(args.data, seed, root, args.eval_users)
    t0 = time.perf_counter()
    if row == "multivae":
        tree["model"] = {"backbone": "multivae"}
        tree["train"]["max_epochs"] = args.vae_epochs
        s = train_job.run(Config.model_validate(tree), argparse.Namespace(verbose=False))
        out = {"test": s["test"], "valid": s["valid"], "best_epoch": s["best_epoch"],
               "epochs": s["epochs"], "train_seconds": s["train_seconds"],
               "curves": {"multivae": curve(s["run_dir"])}}
    else:
        tree["model"] = {"backbone": "cllm4rec", "params": lm_params(args, row)}
        ns = argparse.Namespace(phase="all", from_run=None, top=20, verbose=False)
        ns.phase = "finetune"  # pretrain then finetune (no predictions needed here)
        pre = cl_job.phase_config(Config.model_validate(tree), "pretrain")
        sp = train_job.run(pre, ns)
        ft = cl_job.phase_config(Config.model_validate(tree), "finetune", sp["run_dir"])
        sf = train_job.run(ft, ns)
        out = {"test": sf["test"], "valid": sf["valid"], "best_epoch": sf["best_epoch"],
               "epochs": sf["epochs"], "pretrain_test": sp["test"],
               "pretrain_best_epoch": sp["best_epoch"],
               "train_seconds": {"pretrain": sp["train_seconds"], "finetune": sf["train_seconds"]},
               "tokens_per_s": {ph: round(s["tokens_trained"] / s["train_seconds"], 1)
                                for ph, s in (("pretrain", sp), ("finetune", sf))},
               "documents": sp["documents"],
               "curves": {"pretrain": curve(sp["run_dir"]), "finetune": curve(sf["run_dir"])}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{row} seed {seed}: " + ", ".join(f"{m} {out['test'][m]:.4f}" for m in METRICS)
          + f" ({out['seconds']} s)", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(DATA), required=True)
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--schedule", choices=["cpu", "paper"], default="cpu")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--finetune", type=int, default=3)
    ap.add_argument("--content-per-epoch", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--vae-epochs", type=int, default=200)
    ap.add_argument("--eval-users", type=int, default=None,
                    help="a seeded sample of users per evaluation (default: all)")
    ap.add_argument("--root", default=None, help="output root (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out_path = args.out or ROOT / "benchmarks" / "out" / f"cllm4rec-{args.data}.json"
    root = args.root or tempfile.mkdtemp(prefix="recalign-cllm4rec-")
    results: dict[str, Any] = {"data": args.data, "schedule": vars(args) | {"out": str(out_path)},
                               "rows": {}}
    for row in args.rows:
        runs = [run_row(args, row, s, root) for s in args.seeds]
        summary = {}
        for m in METRICS:
            xs = [r["test"][m] for r in runs]
            summary[m] = {"mean": statistics.fmean(xs),
                          "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}
        results["rows"][row] = {"summary": summary, "runs": runs}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1, default=str))
    print(f"\n{args.data}, seeds {args.seeds}, schedule {args.schedule}")
    print(f"{'row':<10}" + "".join(f"{m:>18}" for m in METRICS))
    for row, r in results["rows"].items():
        print(f"{row:<10}" + "".join(
            f"{r['summary'][m]['mean']:>11.4f} ± {r['summary'][m]['std']:.3f}" for m in METRICS))
    print(f"JSON: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
