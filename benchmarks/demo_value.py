"""What the LLM adds on the demo data (issue: "A new user's first hour"): base LightGCN, RLMRec-Con
on the profiles the local model wrote, the same with those vectors shuffled among entities (a
control: it must not beat the base), and RLMRec-Con on MiniLM vectors of the raw text (what the
text holds before a 135M model summarises it). Each with the same seeds.

    .venv/bin/recalign demo --root /tmp/demo              # first: the demo itself
    .venv/bin/python benchmarks/demo_value.py --root /tmp/demo

Base and profile rows are read from the demo's own train marker (its ``nightly.compare_seeds``
runs). The control and raw-text rows run ``recalign train`` (and ``recalign embed`` with
``embed.source: raw``) on the demo's committed snapshots with the demo's config, one seed at a
time, each into its own artifact, so the demo's outputs are untouched. Prints a table and writes
JSON (default ``benchmarks/out/demo_value.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@20", "ndcg@20")


def _train(cfg: Any, seed: int, artifact: str, **align: Any) -> dict[str, Any]:
    """One ``recalign train`` run of the demo's train stage with ``align`` changes."""
    from recalign.config import Config
    from recalign.jobs import nightly
    from recalign.jobs import train as train_job

    tree = nightly.train_config(cfg).model_dump(mode="json")
    tree["train"].update(seed=seed, artifact=artifact, warm_start=False)
    tree["align"].update(align)
    c = Config.model_validate(tree)
    return train_job.run(c, nightly._default_args(train_job))


def _stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": [r.get("seed") for r in runs]}
    for m in METRICS:
        xs = [float(r["test"][m]) for r in runs]
        out[m] = {"mean": statistics.fmean(xs),
                  "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "values": xs}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="the demo's --root (after a finished demo)")
    ap.add_argument("--rows", nargs="+", default=["shuffled", "raw"],
                    choices=["shuffled", "raw"], help="rows to train besides the demo's own")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "demo_value.json")
    args = ap.parse_args()

    from recalign.jobs import demo, nightly
    from recalign.jobs import embed as embed_job
    from recalign.pipeline.stages import MarkerStore
    from recalign.storage.uri import join

    cfg = demo.demo_cfg(argparse.Namespace(root=args.root, overrides=[], config=None))
    name = cfg.data.dataset_name()
    marker = MarkerStore(cfg.output.root, name).get("train")
    if marker is None or "seeds" not in marker.summary:
        print(f"error: no finished demo with seeds under {args.root} (run `recalign demo "
              f"--root {args.root}` first)", file=sys.stderr)
        return 2
    seeds_of = marker.summary["seeds"]
    seeds = [int(r["seed"]) for r in seeds_of["base"]]
    rows: dict[str, dict[str, Any]] = {"base": _stats(seeds_of["base"]),
                                       "RLMRec-Con, local LLM profiles": _stats(
                                           seeds_of["aligned"])}
    t0 = time.perf_counter()
    if "shuffled" in args.rows:
        runs = [{**_train(cfg, s, f"value-shuffled-s{s}", semantic_shuffle=True), "seed": s}
                for s in seeds]
        rows["RLMRec-Con, profiles shuffled (control)"] = _stats(runs)
    if "raw" in args.rows:
        tree = cfg.model_dump(mode="json")
        tree["embed"].update(source="raw", artifact="semantic-raw")
        from recalign.config import Config

        raw_cfg = Config.model_validate(tree)
        embed_job.run(raw_cfg, nightly._default_args(embed_job, no_progress=True))
        sem = join(cfg.output.root, name, "semantic-raw")
        runs = [{**_train(cfg, s, f"value-raw-s{s}", semantic={"users": sem, "items": sem}),
                 "seed": s} for s in seeds]
        rows["RLMRec-Con, MiniLM of the raw text"] = _stats(runs)
    base = rows["base"]["recall@20"]["mean"]
    print(f"\n{'variant':44s} {'test R@20 (mean ± std)':>24s} {'vs base':>8s} "
          f"{'test N@20':>18s}  per seed R@20")
    for label, r in rows.items():
        rec, ndcg = r["recall@20"], r["ndcg@20"]
        gain = (rec["mean"] / base - 1) * 100 if base else float("nan")
        print(f"{label:44s} {rec['mean']:>14.4f} ± {rec['std']:.4f} {gain:>+7.1f}% "
              f"{ndcg['mean']:>9.4f} ± {ndcg['std']:.4f}  "
              + " / ".join(f"{x:.4f}" for x in rec["values"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"root": args.root, "dataset": name, "seeds": seeds,
                                    "rows": rows, "seconds": time.perf_counter() - t0},
                                   indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
