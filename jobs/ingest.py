"""recalign ingest: read any source, validate, map ids, split, write a dataset snapshot.

A second run on unchanged input and config writes nothing new and says so. The summary's
``split`` says which split method was used and where it came from: ``config`` (the user's),
``files`` (the default for a source whose files carry a split, e.g. rlmrec) or ``default``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


from recalign.config import Config
from recalign.data.snapshot_io import ingest_to_snapshot
from recalign.jobs.common import standalone
from recalign.progress import progress
from recalign.storage.snapshot import SnapshotStore

DESCRIPTION = "Ingest a data source into a versioned dataset snapshot."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="write a new version even if input and config are unchanged")


def run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    store = SnapshotStore(cfg.output.root)
    split = cfg.data.split_origin()
    if split["origin"] == "files":
        print(f"ingest: split.method given: the {cfg.data.source} files carry their own "
              f"train/valid/test split (set data.split.method to re-split)", file=sys.stderr)
    with progress("ingest", "rows") as bar:
        summary = ingest_to_snapshot(cfg, store, force=getattr(args, "force", False), progress=bar)
    if summary["skipped"]:
        print(f"ingest: nothing to do ({summary['reason']})", file=sys.stderr)
    else:
        removed = store.gc(summary["dataset"], "dataset", cfg.output.keep_versions)
        summary["gc_removed"] = removed
    summary["split"] = split
    return summary


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
