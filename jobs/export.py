"""recalign export: the LATEST embedding snapshot -> a FAISS retrieval index snapshot.

Exact search (``IndexFlatIP``) for small catalogues, HNSW or IVF for large ones
(``export.kind: auto``); the ANN index's recall@k against exact search on a seeded sample of
user vectors must reach ``export.min_recall`` or nothing is written. Rerunning with the same
embeddings version and export config does nothing (``skipped: true``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recalign.config import Config
from recalign.jobs.common import standalone

DESCRIPTION = "Build a FAISS retrieval index snapshot from the latest embedding snapshot."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything is in the config's `export` section


def run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from recalign.index.retrieval import export_index
    from recalign.storage.snapshot import SnapshotStore

    summary = export_index(cfg.export, SnapshotStore(cfg.output.root), cfg.data.dataset_name(),
                           keep_versions=cfg.output.keep_versions,
                           log=lambda msg: print(msg, file=sys.stderr))
    if summary["skipped"]:
        print(f"export: skipped: {summary['reason']}", file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
