"""recalign nightly: ingest -> profiles (items, then users) -> embed -> graphs -> train -> export.

``graphs`` (LLMRG reasoning graphs, :mod:`recalign.jobs.graphs`) runs only with
``llmrg.enabled: true``; like every stage it is skipped when its inputs (the dataset version and
the data/llm/llmrg/embed config) are unchanged, and the job itself regenerates only users whose
fingerprint changed.

Each stage reads the LATEST snapshots of its inputs and writes a new version; a stage whose
inputs and config are unchanged since it last completed is skipped and says so
(:mod:`recalign.pipeline.stages`). Incremental by construction: profiles regenerate only the
entities whose prompts changed, embed re-embeds only changed texts, train warm-starts known ids
from the previous night's rows (``nightly.warm_start``), export builds a new index version.
``--dry-run`` prints the plan; ``--from STAGE`` / ``--only STAGE``; ``--force`` reruns the
chosen stages. A failing stage stops the night with a non-zero exit naming the stage; every
stage before it stays committed, so the rerun starts where it failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from recalign.config import Config, config_hash
from recalign.errors import RecalignError
from recalign.jobs.common import standalone
from recalign.pipeline.stages import (STAGES, Decision, Marker, MarkerStore, decide, now,
                                      select_stages, stage_key)
from recalign.storage.snapshot import SnapshotStore
from recalign.storage.uri import fsspec_filesystem, join

DESCRIPTION = "Run the nightly pipeline: ingest, profiles, embed, graphs (llmrg.enabled), " \
              "train, export (skipping unchanged stages)."


class PipelineError(RecalignError):
    """A stage failed; the message names it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--from", dest="start", metavar="STAGE", choices=STAGES,
                        help="start at this stage (earlier ones are not run)")
    parser.add_argument("--only", metavar="STAGE", choices=STAGES, action="append",
                        help="run only this stage (repeatable)")
    parser.add_argument("--force", action="store_true", help="run the chosen stages even if "
                        "unchanged")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


@dataclass
class Hooks:
    """Runner factories a caller may provide (tests share one engine and count its calls)."""

    profiles_runner: Callable[[], Any] | None = None
    embed_runner: Callable[[], Any] | None = None
    graphs_runner: Callable[[], Any] | None = None
    graphs_embedder: Callable[[], Any] | None = None


def choose_stages(cfg: Config, start: str | None, only: list[str] | None) -> list[str]:
    """:func:`select_stages` over ``nightly.stages``, plus graphs when ``llmrg.enabled``."""
    enabled = [*cfg.nightly.stages, *(["graphs"] if cfg.llmrg.enabled else [])]
    return select_stages(enabled, start, only)


# ------------------------------------------------------------------------ stage definitions

def embed_artifact(cfg: Config) -> str:
    return cfg.embed.artifact or ("semantic" if cfg.embed.source == "profiles" else "semantic-raw")


def base_artifact(cfg: Config) -> str:
    return f"{cfg.train.artifact}-base"


def comparing(cfg: Config) -> bool:
    return cfg.nightly.compare_base and cfg.align.method != "none"


def extra_seeds(cfg: Config) -> list[int]:
    """Seeds of the comparison's extra runs (the first seed is the night's own run)."""
    if not comparing(cfg):
        return []
    return [cfg.train.seed + k for k in range(1, cfg.nightly.compare_seeds)]


def seed_config(cfg: Config, seed: int) -> Config:
    """An extra comparison seed: its own artifact, started fresh."""
    tree = cfg.model_dump(mode="json")
    tree["train"].update(seed=seed, artifact=f"{cfg.train.artifact}-seed{seed}")
    tree["nightly"]["warm_start"] = False
    return Config.model_validate(tree)


def outputs_of(stage: str, cfg: Config) -> list[str]:
    if stage == "train":
        configs = [cfg, *(seed_config(cfg, s) for s in extra_seeds(cfg))]
        return [a for c in configs
                for a in [c.train.artifact, *([base_artifact(c)] if comparing(c) else [])]]
    return {"ingest": ["dataset"], "profiles": ["profiles"], "embed": [embed_artifact(cfg)],
            "graphs": [cfg.llmrg.artifact], "export": [cfg.export.artifact]}[stage]


def upstream_of(stage: str, cfg: Config) -> list[str]:
    if stage in ("profiles", "graphs"):
        return ["ingest"]
    if stage == "embed":
        return ["profiles"] if cfg.embed.source == "profiles" else ["ingest"]
    if stage == "train":
        return ["ingest", *(["embed"] if cfg.align.method != "none" else []),
                *(["graphs"] if cfg.llmrg.enabled else [])]
    if stage == "export":
        return ["train"]
    return []


def source_version(uri: str) -> str | None:
    """What identifies the content of a semantic-vector source: a snapshot version, or a file's
    size and modification time."""
    fs, path = fsspec_filesystem(uri)
    if path.endswith((".npy", ".parquet")):
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        return f"{info.get('size')}:{info.get('mtime') or info.get('LastModified')}"
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last.startswith("v="):
        return last
    try:
        with fs.open(f"{path.rstrip('/')}/LATEST", "r") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def stage_inputs(stage: str, cfg: Config, store: SnapshotStore, name: str) -> dict[str, Any]:
    """Everything the stage's output depends on (hashed into its key)."""
    latest = lambda artifact: store.latest_version(name, artifact)  # noqa: E731
    if stage == "ingest":
        from recalign.data.ingest import input_fingerprint
        return {"input": input_fingerprint(cfg.data)}
    if stage == "profiles":
        return {"dataset": latest("dataset"), "config": config_hash(cfg, sections=("data", "llm"))}
    if stage == "graphs":
        return {"dataset": latest("dataset"),
                "config": config_hash(cfg, sections=("data", "llm", "llmrg", "embed"))}
    if stage == "embed":
        src = "profiles" if cfg.embed.source == "profiles" else "dataset"
        return {src: latest(src), "config": config_hash(cfg, sections=("embed",))}
    if stage == "train":
        from recalign.jobs.train import run_hash
        parts: dict[str, Any] = {"dataset": latest("dataset"), "run": run_hash(cfg),
                                 "compare_base": cfg.nightly.compare_base,
                                 "artifact": cfg.train.artifact}
        if cfg.llmrg.enabled:  # only when set, as the seeds below
            parts["graphs"] = latest(cfg.llmrg.artifact)
        if extra_seeds(cfg):  # only when set: the keys of existing nights stay as they were
            parts["seeds"] = [cfg.train.seed, *extra_seeds(cfg)]
        if cfg.align.method != "none":
            parts["semantic"] = {side: source_version(getattr(cfg.align.semantic, side))
                                 for side in ("users", "items")}
        return parts
    return {"embeddings": latest(cfg.export.source_artifact),
            "config": config_hash(cfg, sections=("export",))}


def _job(module: str) -> Any:
    return importlib.import_module(f"recalign.jobs.{module}")


def _default_args(module: Any, **values: Any) -> argparse.Namespace:
    """The job's own argument defaults (its parser), with ``values`` set."""
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    args = p.parse_args([])
    for k, v in values.items():
        setattr(args, k, v)
    return args


def train_config(cfg: Config, base: bool = False) -> Config:
    """The train stage reads the committed dataset snapshot, not the raw input again."""
    name = cfg.data.dataset_name()
    data = {**cfg.data.model_dump(mode="json"), "source": "snapshot",
            "path": join(cfg.output.root, name, "dataset"), "name": name}
    tree = cfg.model_dump(mode="json")
    tree["data"] = data
    tree["train"]["warm_start"] = cfg.nightly.warm_start
    if base:
        tree["align"] = {"method": "none"}
        tree["train"]["artifact"] = base_artifact(cfg)
    return Config.model_validate(tree)


def run_stage(stage: str, cfg: Config, args: argparse.Namespace, hooks: Hooks
              ) -> dict[str, Any]:
    quiet = {"no_progress": True} if getattr(args, "no_progress", False) else {}
    if stage == "ingest":
        mod = _job("ingest")
        return mod.run(cfg, _default_args(mod))
    if stage == "profiles":
        mod = _job("profiles")
        return mod.run(cfg, _default_args(mod, **quiet), runner_factory=hooks.profiles_runner)
    if stage == "embed":
        mod = _job("embed")
        return mod.run(cfg, _default_args(mod, **quiet), runner_factory=hooks.embed_runner)
    if stage == "graphs":
        mod = _job("graphs")
        return mod.run(cfg, _default_args(mod, **quiet), runner_factory=hooks.graphs_runner,
                       embedder_factory=hooks.graphs_embedder)
    if stage == "train":
        mod = _job("train")
        out: dict[str, Any] = {"aligned": mod.run(train_config(cfg), _default_args(mod))}
        if comparing(cfg):
            out["base"] = mod.run(train_config(cfg, base=True), _default_args(mod))
        if extra_seeds(cfg):
            runs = {v: [{**out[v], "seed": cfg.train.seed}] for v in ("aligned", "base")}
            for seed in extra_seeds(cfg):
                sc = seed_config(cfg, seed)
                print(f"nightly: train: comparison seed {seed}", file=sys.stderr)
                for variant, base in (("aligned", False), ("base", True)):
                    runs[variant].append({**mod.run(train_config(sc, base=base),
                                                    _default_args(mod)), "seed": seed})
            out["seeds"] = runs
        return out
    mod = _job("export")
    return mod.run(cfg, _default_args(mod))


# ------------------------------------------------------------------------ the night

def brief(stage: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The figures of a stage's summary worth keeping in the night's summary."""
    if stage == "train":
        def run_brief(v: dict[str, Any]) -> dict[str, Any]:
            keep = ("test", "valid", "epochs", "best_epoch", "snapshot", "run_dir", "warm_start",
                    "seconds")
            return {**{k: v.get(k) for k in keep}, **({"seed": v["seed"]} if "seed" in v else {})}

        out = {k: run_brief(v) for k, v in summary.items() if k != "seeds"}
        if "seeds" in summary:
            out["seeds"] = {k: [run_brief(r) for r in runs]
                            for k, runs in summary["seeds"].items()}
        return out
    keep = ("skipped", "snapshot", "version", "counts", "requests", "ok", "retried", "failed",
            "prompt_tokens", "completion_tokens", "embedded", "reused", "recall", "kind",
            "seconds", "reason", "generation_s", "engine_startup_s", "first_result_s",
            "users", "generated", "llm_calls", "kb_hit_rate", "calls_saved", "chains_below_tau")
    return {k: summary[k] for k in keep if k in summary}


def run(cfg: Config, args: argparse.Namespace, hooks: Hooks | None = None) -> dict[str, Any]:
    hooks = hooks or Hooks()
    t_night = time.perf_counter()
    store = SnapshotStore(cfg.output.root)
    name = cfg.data.dataset_name()
    markers = MarkerStore(cfg.output.root, name)
    chosen = choose_stages(cfg, getattr(args, "start", None), getattr(args, "only", None))
    dry = getattr(args, "dry_run", False)
    force = getattr(args, "force", False)
    planned_runs: list[str] = []
    records: list[dict[str, Any]] = []
    for stage in chosen:
        ups = [u for u in upstream_of(stage, cfg) if u in planned_runs]
        key = None if (dry and ups) else stage_key(stage_inputs(stage, cfg, store, name))
        marker = markers.get(stage)
        latest = {a: store.latest_version(name, a) for a in (marker.outputs if marker else {})}
        d: Decision = decide(stage, key, marker, latest, force=force, upstream_ran=ups)
        if d.action == "run":
            planned_runs.append(stage)
        rec: dict[str, Any] = {"stage": stage, "action": d.action, "reason": d.reason}
        records.append(rec)
        print(f"nightly: {stage}: {d.action} ({d.reason})", file=sys.stderr)
        if dry or d.action == "skip":
            continue
        t0 = time.perf_counter()
        try:
            summary = run_stage(stage, cfg, args, hooks)
        except Exception as exc:  # any failure: name the stage, keep what earlier stages wrote
            rec["action"] = "failed"
            raise PipelineError(f"nightly: stage {stage!r} failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - t0
        rec.update(seconds=round(seconds, 2), summary=brief(stage, summary))
        outputs = {a: store.latest_version(name, a) for a in outputs_of(stage, cfg)}
        markers.put(Marker(stage, d.key or "", {a: v for a, v in outputs.items() if v},
                           now(), round(seconds, 2), rec["summary"]))
    return {"job": "nightly", "dataset": name, "dry_run": dry, "stages": records,
            "ran": [r["stage"] for r in records if r["action"] == "run"],
            "skipped": [r["stage"] for r in records if r["action"] == "skip"],
            "seconds": round(time.perf_counter() - t_night, 2)}


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
