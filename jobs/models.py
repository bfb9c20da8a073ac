"""recalign models prepare: convert the packaged SmolLM2 GGUF into a model folder (once).

``prepare`` builds (or finds) ``<cache>/smollm2-135m-instruct-<sha12>/`` with a checksum manifest;
``verify`` re-hashes every file against it. Jobs also prepare it on first use.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from recalign.config import Config
from recalign.jobs.common import standalone
from recalign.llm.models import prepare_default_model, verify_model_dir

DESCRIPTION = "Prepare (convert once, with checksums) or verify the default local LLM."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["prepare", "verify"], default="prepare")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    parser.add_argument("--cache-dir", default=None, help="default: llm.cache_dir or "
                        "$RECALIGN_CACHE/models or ~/.cache/recalign/models")


def run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    cache = args.cache_dir or cfg.llm.cache_dir
    folder = prepare_default_model(cache, force=args.force, deep_verify=args.action == "verify")
    manifest = verify_model_dir(folder, deep=args.action == "verify")
    return {"job": "models", "action": args.action, "path": str(folder),
            "source_sha256": manifest["source_sha256"], "files": len(manifest["files"]),
            "verified": args.action == "verify", "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
