"""recalign profiles: RLMRec item profiles, then user profiles, through the configured engine.

Reads the LATEST dataset snapshot of ``data``; writes a ``profiles`` snapshot with tables
``items`` and ``users`` (one row per entity: key, summarization, reasoning, status and reason,
attempts, prompt fingerprint, model, token counts). Incremental (unchanged prompts are not sent
again) and resumable (a killed run's completed batches are reused). ``llm.engine: vllm`` runs
as a Ray Data actor pool; ``transformers`` and ``openai`` run in this process unless
``llm.executor: ray``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


from recalign.config import Config, config_hash
from recalign.jobs.common import latest_dataset, standalone
from recalign.llm.engine import build_generation_engine
from recalign.llm.models import model_label, resolve_model
from recalign.llm.profiles import ARTIFACT, LocalRunner, generate_profiles
from recalign.llm.prompts import TextBounder
from recalign.progress import progress

DESCRIPTION = "Generate RLMRec item and user profiles with an LLM into a profiles snapshot."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class _HFTokenizer:
    """The model's own tokenizer (``tokenizers``, light) for bounding untrusted text."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(str(path))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def text_bounder(model_path: str | None) -> TextBounder:
    if model_path and (Path(model_path) / "tokenizer.json").is_file():
        return TextBounder(_HFTokenizer(Path(model_path) / "tokenizer.json"))
    return TextBounder()  # ~4 characters per token


def resolve_engine_model(cfg: Config) -> tuple[str | None, str]:
    """(local model path or None, model label for fingerprints) without starting an engine."""
    llm = cfg.llm
    if llm.engine == "openai":
        if llm.model:
            local = Path(llm.model).expanduser()
            return (str(local) if local.is_dir() else None), llm.model
        from recalign.llm.engines.openai_engine import OpenAIEngine
        return None, OpenAIEngine(llm).model
    path = resolve_model(llm.model, llm.cache_dir)
    return path, model_label(llm.model, path)


def executor_for(cfg: Config) -> str:
    if cfg.llm.executor != "auto":
        return cfg.llm.executor
    return "ray" if cfg.llm.engine == "vllm" else "local"


def make_runner_factory(cfg: Config, model_path: str | None) -> Any:
    llm = cfg.llm
    if executor_for(cfg) == "ray":
        def ray_runner() -> Any:
            from recalign.operators.llm_pool import RayPoolRunner
            return RayPoolRunner(llm, model_path=model_path)
        return ray_runner

    def local_engine() -> Any:
        if llm.engine == "vllm":
            from recalign.llm.engines.vllm_engine import VLLMEngine
            return VLLMEngine(llm, model_path=model_path)
        if llm.engine == "transformers":
            from recalign.llm.engines.transformers_engine import TransformersEngine
            return TransformersEngine(llm, model_path=model_path)
        return build_generation_engine(llm)

    return lambda: LocalRunner(local_engine, max_attempts=llm.max_attempts,
                               batch_size=llm.batch_size)


def run(cfg: Config, args: argparse.Namespace, *, runner_factory: Any = None) -> dict[str, Any]:
    """``runner_factory``: a caller-provided engine runner (the nightly's tests share one engine)."""
    store, dsnap, ds = latest_dataset(cfg, "profiles")
    name = cfg.data.dataset_name()
    model_path, label = resolve_engine_model(cfg)
    print(f"profiles: {name} ({ds.n_items} items, {ds.n_users} users), engine "
          f"{cfg.llm.engine} via {executor_for(cfg)}, model {label}", file=sys.stderr)
    with progress("profiles", "profiles", disable=getattr(args, "no_progress", False)) as bar:
        summary = generate_profiles(
            ds, cfg.llm, store, runner_factory or make_runner_factory(cfg, model_path), model=label,
            bound=text_bounder(model_path), data_source=cfg.data.source,
            dataset_version=dsnap.version, progress=bar,
            config_hash=config_hash(cfg, sections=("data", "llm")),
            log=lambda m: print(m, file=sys.stderr))
    summary["engine"] = cfg.llm.engine
    summary["executor"] = executor_for(cfg)
    if not summary.get("skipped"):
        summary["gc_removed"] = store.gc(name, ARTIFACT, cfg.output.keep_versions)
    return summary


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
