"""recalign cllm4rec: CLLM4Rec's phases, each a ``recalign train`` run of ``model.backbone:
cllm4rec`` (the same trainer, run folders, checkpoints, Ray Train workers and exports).

* ``pretrain`` — ``warmup_epochs`` content-only epochs, then ``rounds`` L/C rounds; exports the
  collaborative token rows as the ``cllm4rec-emb`` embedding snapshot (CLLM4Rec-Emb);
* ``finetune`` — RecLLM from the best pretraining tables (``--from-run``, default: the latest
  pretraining run of this config) for ``finetune_epochs``; exports RecLLM user states and item
  rows as the ``cllm4rec`` snapshot (inner products = the model's scores);
* ``predict`` — every user's top ``--top`` items from the latest ``cllm4rec`` snapshot, training
  items masked, committed as a ``cllm4rec-predictions`` snapshot (table ``predictions``:
  user_key, items, scores);
* ``all`` — the three in order.

``recalign export --set export.source_artifact=cllm4rec`` turns either snapshot into a FAISS
index that ``recalign query`` serves. Keys of ``model.params`` other than ``phase``,
``init_from`` and the schedule apply to both phases (``cllm4rec`` parameters:
:class:`recalign.models.cllm4rec.CLLM4RecParams`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from recalign.config import Config
from recalign.errors import ConfigError
from recalign.jobs.common import standalone

DESCRIPTION = ("CLLM4Rec: pretrain user/item tokens through a frozen LM, fine-tune RecLLM, "
               "predict; export embedding snapshots.")
PHASES = ("pretrain", "finetune", "predict", "all")
ARTIFACTS = {"pretrain": "cllm4rec-emb", "finetune": "cllm4rec"}
PREDICTIONS = "cllm4rec-predictions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phase", choices=PHASES, default="all")
    parser.add_argument("--from-run", metavar="RUN_DIR",
                        help="finetune: the pretraining run to start from (default: the latest "
                        "finished pretraining run of this config)")
    parser.add_argument("--top", type=int, default=100, help="predict: items per user")
    parser.add_argument("--verbose", "-v", action="store_true")


def phase_config(cfg: Config, phase: str, init_from: str | None = None) -> Config:
    """``cfg`` for one training phase: backbone cllm4rec, the phase's params, epochs and
    artifact."""
    from recalign.models.cllm4rec import CLLM4RecParams

    tree = cfg.model_dump(mode="json", exclude_unset=True)
    params = dict(cfg.model.params)
    p = CLLM4RecParams(**{**params, "phase": phase})
    params["phase"] = phase
    if phase == "finetune":
        params["init_from"] = init_from
    else:
        params.pop("init_from", None)
    tree["model"] = {"backbone": "cllm4rec", "params": params}
    train = tree.setdefault("train", {})
    train["max_epochs"] = p.warmup_epochs + p.rounds if phase == "pretrain" else p.finetune_epochs
    train["artifact"] = ARTIFACTS[phase]
    return Config.model_validate(tree)


def latest_pretraining(cfg: Config) -> str:
    """The newest finished pretraining run folder of this config."""
    from recalign.jobs.train import run_hash
    from recalign.storage.uri import fsspec_filesystem, join

    pre = phase_config(cfg, "pretrain")
    runs = join(cfg.output.root, cfg.data.dataset_name(), "runs")
    fs, base = fsspec_filesystem(runs)
    stem = f"cllm4rec-none-{run_hash(pre)}-"
    names = sorted(p.rsplit("/", 1)[-1] for p in (fs.ls(base, detail=False)
                                                  if fs.exists(base) else []))
    done = [n for n in names if n.startswith(stem) and fs.exists(f"{base}/{n}/result.json")]
    if not done:
        raise ConfigError(f"cllm4rec --phase finetune: no finished pretraining run of this "
                          f"config under {runs}; run --phase pretrain first or pass --from-run")
    return join(runs, done[-1])


def predict(cfg: Config, top: int) -> dict[str, Any]:
    """Top-``top`` items per user from the latest ``cllm4rec`` snapshot, training items
    masked (the finetune phase's scores: user state · item row)."""
    import numpy as np
    import pyarrow as pa
    import torch

    from recalign.data.schema import TRAIN
    from recalign.index.retrieval import embedding_arrays
    from recalign.jobs.train import load_data
    from recalign.storage.snapshot import SnapshotStore

    if top < 1:
        raise ConfigError(f"--top must be at least 1 (got {top})")
    ds, dataset, _ = load_data(cfg)
    snap = SnapshotStore(cfg.output.root).open(dataset, ARTIFACTS["finetune"])
    uids, ukeys, uvec = embedding_arrays(snap.read_table("users"))
    iids, ikeys, ivec = embedding_arrays(snap.read_table("items"))
    order = np.argsort(iids)
    items = torch.from_numpy(ivec[order])
    item_keys = ikeys.take(pa.array(order))
    train = ds.matrix(TRAIN).tocsr()
    k = min(top, items.shape[0])
    out_keys, out_items, out_scores = [], [], []
    for s in range(0, uids.size, 1024):
        ids = uids[s:s + 1024]
        scores = torch.from_numpy(uvec[s:s + 1024]) @ items.T
        sub = train[ids]
        scores[torch.from_numpy(np.repeat(np.arange(ids.size), np.diff(sub.indptr))),
               torch.from_numpy(sub.indices.astype(np.int64))] = -float("inf")
        val, idx = scores.topk(k, dim=1)
        out_keys += ukeys.slice(s, ids.size).to_pylist()
        out_items += [item_keys.take(pa.array(r)).to_pylist() for r in idx.numpy()]
        out_scores += val.tolist()
    table = pa.table({"user_key": pa.array(out_keys, pa.string()),
                      "items": pa.array(out_items, pa.list_(pa.string())),
                      "scores": pa.array(out_scores, pa.list_(pa.float32()))})
    writer = SnapshotStore(cfg.output.root).begin(dataset, PREDICTIONS)
    writer.write_table("predictions", table)
    pred = writer.commit(inputs={"embeddings": snap.uri})
    return {"predictions": pred.uri, "users": table.num_rows, "top": k,
            "snapshot": snap.uri}


def run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from recalign.jobs import train as train_job

    t0 = time.perf_counter()
    if "backbone" in cfg.model.model_fields_set and cfg.model.backbone != "cllm4rec":
        raise ConfigError(f"model.backbone {cfg.model.backbone!r}: recalign cllm4rec trains "
                          "model.backbone cllm4rec (or leave it out)")
    phases = ("pretrain", "finetune", "predict") if args.phase == "all" else (args.phase,)
    out: dict[str, Any] = {"job": "cllm4rec", "phases": list(phases)}
    init_from = args.from_run
    for phase in phases:
        print(f"cllm4rec: phase {phase}", file=sys.stderr)
        if phase == "predict":
            out["predict"] = predict(cfg, args.top)
            continue
        if phase == "finetune" and init_from is None:
            init_from = latest_pretraining(cfg)
        pc = phase_config(cfg, phase, init_from)
        summary = train_job.run(pc, args)
        out[phase] = summary
        if phase == "pretrain":
            init_from = summary["run_dir"]
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
