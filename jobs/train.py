"""recalign train: a model — a CF backbone (+ alignment) or a sequential recommender — trained
by the one trainer (:mod:`recalign.train.trainer`), evaluated, early-stopped, checkpointed, and
exported as an embedding snapshot.

Data comes from a dataset snapshot (``data.source: snapshot``, ``data.path: <root>/<ds>/dataset``)
or straight from ``data:`` (ingested in this process, nothing written) — the same
:class:`~recalign.data.dataset.Dataset` either way. ``train.workers: 1`` runs in this
process (``train.device``); ``N > 1`` runs the same trainer in a Ray Train ``TorchTrainer``
with N workers.
The run folder is ``<output.root>/<dataset>/runs/<run name>/`` (checkpoints, curves.json,
curves.png, result.json); the representations go to ``<root>/<dataset>/embeddings/v=...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

from recalign.config import Config, config_hash
from recalign.errors import ConfigError, SnapshotError
from recalign.jobs.common import standalone

DESCRIPTION = "Train a CF backbone (+ alignment); evaluate, checkpoint, export embeddings."

# settings that do not change what is trained: a resumed run keeps its name with them changed
_NOT_HASHED = ("resume", "max_failures", "run_name", "workers", "checkpoint_every",
               "resources_per_worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", help="log every validation")


def load_data(cfg: Config) -> tuple[Any, str, dict[str, str]]:
    """(Dataset, dataset name, input versions for the manifest)."""
    from recalign.data.ingest import input_fingerprint, load_dataset
    from recalign.data.snapshot_io import ARTIFACT, read_dataset
    from recalign.storage.snapshot import SnapshotStore

    if cfg.data.source == "snapshot":
        parts = str(cfg.data.path).rstrip("/").split("/")
        version = parts.pop() if parts[-1].startswith("v=") else None
        if len(parts) < 3 or parts[-1] != ARTIFACT:
            raise SnapshotError(f"data.path {cfg.data.path!r}: expected "
                                f"<root>/<dataset>/{ARTIFACT}[/v=...]")
        snap = SnapshotStore("/".join(parts[:-2])).open(parts[-2], ARTIFACT, version)
        ds = read_dataset(snap)
        return ds, ds.name, {"dataset": snap.uri, "dataset_version": snap.version}
    ds = load_dataset(cfg.data)
    return ds, ds.name, {"dataset": f"in-process {cfg.data.source}:{cfg.data.path}",
                         "data_fingerprint": input_fingerprint(cfg.data)}


def run_hash(cfg: Config) -> str:
    c = cfg.model_copy(deep=True)
    data = c.model_dump(mode="json")
    for k in _NOT_HASHED:
        data["train"].pop(k, None)
    import hashlib

    keep = {k: data[k] for k in ("data", "model", "align", "train", "eval")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]


def choose_run_dir(cfg: Config, dataset: str) -> tuple[str, str, bool]:
    """(runs folder, run name, whether it already exists)."""
    from recalign.storage.uri import fsspec_filesystem, join

    runs = join(cfg.output.root, dataset, "runs")
    fs, base = fsspec_filesystem(runs)
    stem = f"{cfg.model.backbone}-{cfg.align.method}-{run_hash(cfg)}"
    existing = sorted(p.rsplit("/", 1)[-1] for p in (fs.ls(base, detail=False)
                                                     if fs.exists(base) else []))
    if cfg.train.run_name:
        name = cfg.train.run_name
        exists = name in existing
        if exists and not cfg.train.resume:
            raise ConfigError(f"train.run_name {name!r}: {join(runs, name)} exists; set "
                              "train.resume: true to continue it, or choose another name")
        return runs, name, exists
    if cfg.train.resume:
        mine = [n for n in existing if n.startswith(stem + "-")]
        if mine:
            return runs, mine[-1], True
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return runs, f"{stem}-{stamp}", False


def check_run_meta(run_dir: str, meta: dict[str, Any], exists: bool) -> None:
    """run.json records what the run trains; a resume with another shape is refused."""
    from recalign.storage.uri import fsspec_filesystem

    fs, base = fsspec_filesystem(run_dir)
    path = f"{base}/run.json"
    if exists and fs.exists(path):
        with fs.open(path, "r") as f:
            old = json.load(f)
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}"
                             for k, (a, b) in diff.items())
            raise ConfigError(f"train.resume: the run in {run_dir} does not match this config "
                              f"({what}); start a new run (train.resume: false)")
    fs.makedirs(base, exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


def run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from recalign.storage.snapshot import SnapshotStore
    from recalign.storage.uri import join
    from recalign.train.api import check_selection
    from recalign.train.export import ExportTarget
    from recalign.train.tasks import task_of, with_task_defaults
    from recalign.train.trainer import RunInputs

    t0 = time.perf_counter()
    cfg.model.check()  # names and params: errors before any data is read
    cfg = with_task_defaults(cfg)
    task = task_of(cfg)
    check_selection(cfg)
    from recalign.align.base import known_alignments

    if cfg.align.method not in known_alignments():
        raise ConfigError(f"align.method: unknown alignment {cfg.align.method!r} (expected "
                          f"one of: {', '.join(known_alignments())})")
    ds, dataset, inputs = load_data(cfg)
    data = task.prepare(cfg, ds)
    task.check(cfg, data)
    runs, name, exists = choose_run_dir(cfg, dataset)
    run_dir = join(runs, name)
    meta = task.meta(cfg, data)
    check_run_meta(run_dir, meta, exists and cfg.train.resume)
    store = SnapshotStore(cfg.output.root)
    artifact = cfg.train.artifact
    warm = None
    if cfg.train.warm_start:
        from recalign.train.warm_start import previous_embeddings

        prev = previous_embeddings(cfg.output.root, dataset, artifact)
        if prev is not None:
            warm = {"root": cfg.output.root, "dataset": dataset, "artifact": artifact,
                    "version": prev.version}
            inputs = {**inputs, "warm_start": prev.uri}
        else:
            print(f"train: warm start requested but no {artifact} snapshot with layer-0 rows "
                  f"exists yet: starting fresh", file=sys.stderr)
    version = store.begin(dataset, artifact).version
    inp = RunInputs(config=cfg.model_dump(mode="json"), data=data,
                    user_keys=ds.user_map.keys, item_keys=ds.item_map.keys, run_dir=run_dir,
                    export=ExportTarget(cfg.output.root, dataset, version, artifact),
                    warm_start=warm,
                    manifest={"inputs": inputs, "config_hash": config_hash(
                        cfg, sections=("data", "model", "align", "train", "eval"))})
    print(f"train: {dataset}: {ds.n_users} users, {ds.n_items} items, "
          f"{ds.counts()['train']} training interactions ({task.name}); run {run_dir}",
          file=sys.stderr)
    if in_driver(cfg):
        summary = _in_process(inp, cfg, resume=cfg.train.resume and exists)
    else:
        summary = _ray(inp, cfg, runs, name)
    summary = {"job": "train", "dataset": dataset, **summary,
               "seconds": round(time.perf_counter() - t0, 3)}
    return summary


def in_driver(cfg: Config) -> bool:
    """One worker trains in this process — unless the job is attached to a Ray cluster
    (``RAY_ADDRESS``): there the driver runs on the head node, which only coordinates, and
    training always goes to Ray Train workers (placed by ``train.resources_per_worker``)."""
    import os

    return cfg.train.workers == 1 and not os.environ.get("RAY_ADDRESS")


def worker_threads(cfg: Config) -> Config:
    """Torch threads follow the CPUs a worker reserves, unless train.threads is set."""
    if "threads" in cfg.train.model_fields_set:
        return cfg
    c = cfg.model_copy(deep=True)
    c.train.threads = max(1, int(cfg.train.resources_per_worker.CPU))
    return c


def _in_process(inp: Any, cfg: Config, resume: bool) -> dict[str, Any]:
    from recalign.train.checkpoint import FolderCheckpoints, latest_checkpoint
    from recalign.train.dist import Dist
    from recalign.train.placement import resolve_device
    from recalign.train.tasks import task_of
    from recalign.train.trainer import Hooks, run_training

    store = FolderCheckpoints(inp.run_dir)
    hooks = Hooks(load=(lambda: latest_checkpoint(inp.run_dir)) if resume else (lambda: None),
                  save=lambda local, epoch, metrics: store.save(local, epoch))
    device = resolve_device(cfg.train.device, task_of(cfg).devices)
    out = run_training(inp, Dist(device=device), hooks)
    assert out is not None
    return out


def for_workers(inp: Any) -> Any:
    """``inp`` with every local path absolute: Ray Train runs a worker in its run's artifact
    folder, where a config's relative ``data.path``, ``align.semantic.*`` or ``output.root``
    (the default ``./recalign-data``) would name another place or nothing. The run's name and
    config hash come from the config as written, so they do not change."""
    import copy
    import dataclasses

    from recalign.storage.uri import absolute_local

    tree = copy.deepcopy(inp.config)
    tree["data"]["path"] = absolute_local(tree["data"].get("path"))
    sem = tree["align"]["semantic"]
    sem["users"], sem["items"] = absolute_local(sem.get("users")), absolute_local(sem.get("items"))
    tree["output"]["root"] = absolute_local(tree["output"]["root"])
    export = (None if inp.export is None
              else dataclasses.replace(inp.export, root=absolute_local(inp.export.root)))
    warm = (None if inp.warm_start is None
            else {**inp.warm_start, "root": absolute_local(inp.warm_start["root"])})
    return dataclasses.replace(inp, config=tree, run_dir=absolute_local(inp.run_dir),
                               export=export, warm_start=warm)


def _ray(inp: Any, cfg: Config, runs: str, name: str) -> dict[str, Any]:
    from recalign.operators.ray_env import ensure_ray, release_ray
    from recalign.operators.train_worker import run_trainer
    from recalign.storage.uri import fsspec_filesystem

    import dataclasses

    from recalign.operators.train_worker import worker_resources

    inp = for_workers(dataclasses.replace(
        inp, config=worker_threads(cfg).model_dump(mode="json")))
    ensure_ray(cfg.train.workers * cfg.train.resources_per_worker.CPU, object_store_gib=1.0)
    if cfg.train.use_gpu:
        import ray

        if ray.cluster_resources().get("GPU", 0) < 1:
            raise ConfigError("train.use_gpu: the Ray cluster has no GPU (ray.cluster_resources()"
                              " lists none); set train.use_gpu false or add GPU nodes")
    try:
        result = run_trainer(inp, workers=cfg.train.workers, use_gpu=cfg.train.use_gpu,
                             run_name=name, storage=runs, max_failures=cfg.train.max_failures,
                             resources=worker_resources(cfg))
    finally:
        release_ray()
    if getattr(result, "error", None) is not None:
        raise RuntimeError(f"Ray Train run failed: {result.error}")
    fs, base = fsspec_filesystem(inp.run_dir)
    with fs.open(f"{base}/result.json", "r") as f:
        out = json.load(f)
    # Ray Train restarts (max_failures) are visible as a resume inside the run
    return out


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
