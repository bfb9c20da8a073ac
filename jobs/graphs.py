"""recalign graphs: LLMRG reasoning graphs of users' training sequences through the configured
engine (``llm``), grounded and verified with the embedding engine (``embed``).

Reads the LATEST dataset snapshot of ``data``; writes a ``graphs`` snapshot (``llmrg.artifact``)
in the schema of :mod:`recalign.data.graph_schema`: tables ``users`` (nodes, typed edges, chains
with verification scores, status, LLM calls, KB hits), ``texts`` (reason / interest texts with
their vectors) and ``kb`` (the knowledge base, loaded again by the next run). Incremental per user
fingerprint and resumable after a kill (:mod:`recalign.llm.graphs`). ``llm.engine: vllm`` runs on
a persistent Ray actor pool (engines started once for all the walk's steps); ``transformers`` and
``openai`` run in this process unless ``llm.executor: ray``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recalign.config import Config, config_hash
from recalign.jobs.common import latest_dataset, standalone
from recalign.jobs.profiles import (executor_for, make_runner_factory as profiles_runner_factory,
                                    resolve_engine_model, text_bounder)
from recalign.llm.engine import build_embedding_engine
from recalign.llm.graph_prompts import validate_output
from recalign.llm.graphs import generate_graphs
from recalign.llm.profiles import LocalRunner
from recalign.progress import progress

DESCRIPTION = "Generate LLMRG reasoning graphs (chains, divergent interests, verification, " \
              "knowledge base) into a graphs snapshot."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_runner_factory(cfg: Config, model_path: str | None) -> Any:
    llm = cfg.llm
    if executor_for(cfg) == "ray":
        def ray_runner() -> Any:
            from recalign.operators.llm_pool import RayActorPoolRunner
            return RayActorPoolRunner(llm, model_path=model_path, validator="llmrg")
        return ray_runner

    def local() -> LocalRunner:
        # the profiles job's local runner knows how to build each engine; only the validator
        # differs (item references), so its engine factory is reused (nothing starts here)
        base = profiles_runner_factory(cfg, model_path)()
        return LocalRunner(base.engine_factory, max_attempts=llm.max_attempts,
                           batch_size=llm.batch_size, validate=validate_output)

    return local


def embed_label(cfg: Config) -> str:
    """The embedding model's label for fingerprints, without loading it."""
    e = cfg.embed
    if e.engine in ("sentence-transformers", "vllm"):
        from recalign.llm.engines.st_embed import default_embed_model, embed_label as label
        return label(e.model, e.model or default_embed_model())
    return f"{e.engine}:{e.model}"


def run(cfg: Config, args: argparse.Namespace, *, runner_factory: Any = None,
        embedder_factory: Any = None) -> dict[str, Any]:
    """``runner_factory`` / ``embedder_factory``: caller-provided engines (tests share one)."""
    store, dsnap, ds = latest_dataset(cfg, "graphs")
    name = cfg.data.dataset_name()
    model_path, label = resolve_engine_model(cfg)
    print(f"graphs: {name} ({ds.n_items} items, {ds.n_users} users), mode {cfg.llmrg.mode}, "
          f"engine {cfg.llm.engine} via {executor_for(cfg)}, model {label}", file=sys.stderr)
    with progress("graphs", "users", disable=getattr(args, "no_progress", False)) as bar:
        summary = generate_graphs(
            ds, cfg.llm, cfg.llmrg, store,
            runner_factory or make_runner_factory(cfg, model_path),
            embedder_factory or (lambda: build_embedding_engine(cfg.embed)),
            model=label, embed_model=embed_label(cfg), bound=text_bounder(model_path),
            data_source=cfg.data.source, dataset_version=dsnap.version,
            config_hash=config_hash(cfg, sections=("data", "llm", "llmrg", "embed")),
            progress=bar, log=lambda m: print(m, file=sys.stderr))
    summary["engine"] = cfg.llm.engine
    summary["executor"] = executor_for(cfg)
    if not summary.get("skipped"):
        summary["gc_removed"] = store.gc(name, cfg.llmrg.artifact, cfg.output.keep_versions)
    return summary


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
