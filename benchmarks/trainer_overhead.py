"""No slowdown from the one trainer: LightGCN on Amazon-book, epoch and full-evaluation time at
1 thread, the new trainer side by side with the code of an earlier commit (a git worktree).

    .venv/bin/python benchmarks/trainer_overhead.py                 # against 9a29169 (the last
                                                                    # commit before the trainer)
    .venv/bin/python benchmarks/trainer_overhead.py --ref HEAD~3 --rounds 3 --epochs 5

The earlier commit's loop (``recalign.train.loop.train_epoch`` / ``evaluate_model``, what its
``run_training`` called per epoch) and this tree's ``Trainer.train_epoch`` / the pairwise task's
``evaluate("test")`` each run in their own process (``recalign`` imported from the worktree for
the old side), alternating old, new, old, new, ... for ``--rounds`` rounds, each process: one
warm-up epoch, ``--epochs`` timed epochs, 3 timed evaluations of all 11,000 users. Same preset
(``rlmrec-amazon-book``: dense tables, Adam, batch 4096), 1 torch thread. Reported: medians
over all timed epochs/evaluations and the new/old ratios (target <= 1.05). Writes
``benchmarks/out/trainer_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rlmrec-amazon-book"

OLD = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from recalign.config import DataConfig
from recalign.data.ingest import load_dataset
from recalign.data.sampler import BPRSampler
from recalign.models.registry import build_backbone
from recalign.tables.optim import ModelOptimizer, TableOptimizerSpec
from recalign.train.loop import CFData, evaluate_model, seed_everything, train_epoch
data = CFData.from_dataset(load_dataset(DataConfig(source="rlmrec", path=sys.argv[1],
                                                   split={"method": "given"})))
rng = seed_everything(0)
spec = TableOptimizerSpec()
model = build_backbone("lightgcn", data.train, preset="rlmrec-amazon-book", optimizer=spec)
opt = ModelOptimizer([model], spec)
sampler = BPRSampler(data.train)
train_epoch(model, opt, sampler, rng, 4096)
ep, ev = [], []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); train_epoch(model, opt, sampler, rng, 4096); ep.append(time.perf_counter() - t)
for _ in range(3):
    t = time.perf_counter(); m = evaluate_model(model, data.test, data.train); ev.append(time.perf_counter() - t)
print(json.dumps({"epoch_s": ep, "eval_s": ev, "recall@20": m["recall@20"]}))
'''

NEW = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from recalign.config import Config, DataConfig
from recalign.data.ingest import load_dataset
from recalign.train.api import make_trainer
from recalign.train.data import CFData
data = CFData.from_dataset(load_dataset(DataConfig(source="rlmrec", path=sys.argv[1],
                                                   split={"method": "given"})))
cfg = Config.model_validate({"model": {"backbone": "lightgcn", "preset": "rlmrec-amazon-book"},
                             "train": {"seed": 0, "threads": 1}})
trainer = make_trainer(cfg, data)
trainer.train_epoch()
ep, ev = [], []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); trainer.train_epoch(); ep.append(time.perf_counter() - t)
for _ in range(3):
    t = time.perf_counter(); m = trainer.task.evaluate("test"); ev.append(time.perf_counter() - t)
print(json.dumps({"epoch_s": ep, "eval_s": ev, "recall@20": m["recall@20"]}))
'''


def run(code: str, pythonpath: str | None, epochs: int) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code, str(DATA), str(epochs)], env=env,
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="9a29169")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "trainer_overhead.json")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"skip: {DATA} not found", file=sys.stderr)
        return 0
    wt = Path(tempfile.mkdtemp(prefix="recalign-old-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt / "tree"),
                    args.ref], check=True, capture_output=True)
    try:
        # the old tree's library as "recalign", ahead of the editable install of this tree
        (wt / "path").mkdir()
        os.symlink(wt / "tree" / "platform" / "recalign", wt / "path" / "recalign")
        sides: dict[str, dict[str, list[float]]] = {"old": {"epoch_s": [], "eval_s": []},
                                                    "new": {"epoch_s": [], "eval_s": []}}
        quality = {}
        for r in range(args.rounds):
            for side, code, path in (("old", OLD, str(wt / "path")), ("new", NEW, None)):
                res = run(code, path, args.epochs)
                sides[side]["epoch_s"] += res["epoch_s"]
                sides[side]["eval_s"] += res["eval_s"]
                quality[side] = res["recall@20"]
                print(f"round {r} {side}: epoch {statistics.median(res['epoch_s']):.3f} s, "
                      f"eval {statistics.median(res['eval_s']):.3f} s", file=sys.stderr)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(wt / "tree")], capture_output=True)
    med = {s: {k: statistics.median(v) for k, v in d.items()} for s, d in sides.items()}
    ratio = {k: med["new"][k] / med["old"][k] for k in ("epoch_s", "eval_s")}
    print(f"| code | epoch s (median of {args.rounds * args.epochs}) | full evaluation s |")
    print("|---|---:|---:|")
    print(f"| {args.ref} (loop.train_epoch, evaluate_model) | {med['old']['epoch_s']:.3f} | "
          f"{med['old']['eval_s']:.3f} |")
    print(f"| this tree (Trainer.train_epoch, task.evaluate) | {med['new']['epoch_s']:.3f} | "
          f"{med['new']['eval_s']:.3f} |")
    print(f"| ratio new/old | {ratio['epoch_s']:.3f} | {ratio['eval_s']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"ref": args.ref, "rounds": args.rounds,
                                    "epochs": args.epochs, "sides": sides, "median": med,
                                    "ratio": ratio, "recall@20_after_timing": quality},
                                   indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
