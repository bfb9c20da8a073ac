"""recalign embed: profile summaries (or raw entity text) -> vectors -> embedding snapshot.

``embed.source: profiles`` embeds the ``summarization`` of the LATEST profiles snapshot (artifact
``semantic``); ``raw`` embeds title + description + attributes of items and the titles of a
seeded sample of each user's training items (artifact ``semantic-raw``). Vectors are computed by
the embedding engine on a Ray Data actor pool (``embed.executor: ray``, the default) or in this
process (``local``); rows whose text fingerprint is unchanged are copied, not re-embedded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


from recalign.config import Config
from recalign.data.snapshot_io import ARTIFACT as DATASET, read_dataset
from recalign.errors import ConfigError
from recalign.jobs.common import standalone
from recalign.llm.embedding import LocalEmbedRunner, build_embeddings, profile_texts, raw_texts
from recalign.llm.engine import build_embedding_engine
from recalign.llm.profiles import ARTIFACT as PROFILES
from recalign.progress import progress
from recalign.storage.snapshot import SnapshotStore

DESCRIPTION = "Embed profile summaries or raw entity text into a semantic-vector snapshot."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def embed_model_label(cfg: Config) -> str:
    e = cfg.embed
    if e.engine == "openai":
        if e.model:
            return e.model
        from recalign.llm.engines.openai_engine import _Client
        c = _Client(e.base_url, e.api_key_env, e.timeout_s, e.http_retries, 1.0, e.concurrency)
        return c.get("/models")["data"][0]["id"]
    from recalign.llm.engines.st_embed import default_embed_model, embed_label
    return embed_label(e.model, e.model or default_embed_model())


def run(cfg: Config, args: argparse.Namespace, *, runner_factory: Any = None) -> dict[str, Any]:
    """``runner_factory``: a caller-provided embedding runner (the nightly's tests count calls)."""
    store = SnapshotStore(cfg.output.root)
    name = cfg.data.dataset_name()
    e = cfg.embed
    artifact = e.artifact or ("semantic" if e.source == "profiles" else "semantic-raw")
    if e.source == "profiles":
        if store.latest_version(name, PROFILES) is None:
            raise ConfigError(f"no profiles snapshot for {name!r} under {cfg.output.root}: run "
                              f"`recalign profiles` first, or set embed.source: raw")
        psnap = store.open(name, PROFILES)
        texts = profile_texts(psnap, e.max_chars)
        inputs = {"profiles": psnap.version}
    else:
        if store.latest_version(name, DATASET) is None:
            raise ConfigError(f"no dataset snapshot for {name!r}: run `recalign ingest` first")
        dsnap = store.open(name, DATASET)
        texts = raw_texts(read_dataset(dsnap), seed=e.seed, user_items=e.raw_items,
                          max_chars=e.max_chars)
        inputs = {"dataset": dsnap.version}
    model = embed_model_label(cfg)
    if e.executor == "ray":
        def make_runner() -> Any:
            from recalign.operators.embed_pool import RayEmbedRunner
            return RayEmbedRunner(e)
    else:
        def make_runner() -> Any:
            return LocalEmbedRunner(lambda: build_embedding_engine(e), e.batch_size)
    if runner_factory is not None:
        make_runner = runner_factory
    print(f"embed: {name} source {e.source} -> {artifact}, engine {e.engine} via {e.executor}, "
          f"model {model}", file=sys.stderr)
    with progress("embed", "texts", disable=getattr(args, "no_progress", False)) as bar:
        summary = build_embeddings(texts, store, name, artifact, make_runner, model=model,
                                   normalize=e.normalize, inputs=inputs, progress=bar,
                                   extra={"source": e.source, "engine": e.engine,
                                          "embed_config": e.model_dump(mode="json")})
    summary.update(source=e.source, engine=e.engine)
    if not summary["skipped"]:
        summary["gc_removed"] = store.gc(name, artifact, cfg.output.keep_versions)
    return summary


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
