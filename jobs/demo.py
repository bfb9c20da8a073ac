"""recalign demo: the whole nightly pipeline on the embedded default, then a results table and
a report with plots.

Local Ray, snapshots under ``./recalign-data/`` (``--root``), a synthetic data set with text and
reviews, real vLLM on CPU with SmolLM2 for profiles (transformers if vLLM is not installed),
MiniLM embeddings, LightGCN + RLMRec-Con on 2 Ray Train workers beside a base LightGCN, FAISS
export. A second run finds every stage unchanged and only re-prints the results.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from recalign.config import Config, load_config
from recalign.jobs.common import standalone
from recalign.storage.uri import join

DESCRIPTION = "Run the nightly pipeline on the built-in demo data and print/report the results."


def demo_config_path() -> Path:
    from importlib.resources import files

    packaged = files("recalign.pipeline") / "demo.yaml"
    return Path(str(packaged))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=None, help="snapshot root (default ./recalign-data)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def demo_cfg(args: argparse.Namespace) -> Config:
    """The packaged demo config (or --config), --set overrides, root and semantic paths."""
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "root", None):
        overrides.append(f"output.root={args.root}")
    cfg = load_config(getattr(args, "config", None) or demo_config_path(), overrides)
    tree = cfg.model_dump(mode="json")
    name = cfg.data.dataset_name()
    from recalign.jobs.nightly import embed_artifact

    sem = join(cfg.output.root, name, embed_artifact(cfg))
    if tree["align"]["method"] != "none":
        tree["align"]["semantic"] = {"users": sem, "items": sem}
    if cfg.llm.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        print("demo: vLLM is not installed: profiles use the transformers engine",
              file=sys.stderr)
        tree["llm"]["engine"] = "transformers"
    return Config.model_validate(tree)


def run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from recalign.jobs import nightly
    from recalign.pipeline.report import gather, table_rows, write_reports

    cfg = demo_cfg(args)
    # the demo prints a table at the end: keep vLLM's and Ray's per-worker INFO logs out of it
    # (local Ray workers inherit this process's environment)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    night = nightly.run(cfg, argparse.Namespace(dry_run=getattr(args, "dry_run", False),
                                                start=None, only=None, force=False,
                                                no_progress=getattr(args, "no_progress", False)))
    if night["dry_run"]:
        return night
    fig = gather(cfg.output.root, night["dataset"], night)
    uris = write_reports(cfg.output.root, night["dataset"], fig)
    report = uris["markdown"]
    rows = table_rows(fig)
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="recalign demo")
        t.add_column("figure")
        t.add_column("value")
        for k, v in rows:
            t.add_row(k, v)
        Console(file=sys.stderr).print(t)
    except ImportError:  # rich is a dependency; plain text if it is ever missing
        for k, v in rows:
            print(f"{k:40s} {v}", file=sys.stderr)
    print(f"demo: report {uris['html']} (Markdown: {report})", file=sys.stderr)
    return {**night, "job": "demo", "report": report, "report_html": uris["html"],
            "results": dict(rows)}


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
