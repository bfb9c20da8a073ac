"""recalign snapshots: list the versions of an artifact, or garbage-collect old ones."""

from __future__ import annotations

import argparse
from typing import Any

from recalign.config import Config
from recalign.jobs.common import standalone
from recalign.storage.snapshot import SnapshotStore

DESCRIPTION = "List or garbage-collect snapshot versions under output.root."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="dataset name (default: from the data config)")
    parser.add_argument("--artifact", default="dataset", help="artifact name (default: dataset)")
    parser.add_argument("--gc", type=int, metavar="N", default=None,
                        help="keep the newest N committed versions, delete the rest")


def run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    store = SnapshotStore(cfg.output.root)
    dataset = args.dataset or cfg.data.dataset_name()
    removed = store.gc(dataset, args.artifact, args.gc) if args.gc is not None else []
    versions = store.list_versions(dataset, args.artifact)
    for v in versions:
        flag = "LATEST" if v.latest else ("committed" if v.committed else "incomplete")
        print(f"{v.version}\t{flag}")
    return {"job": "snapshots", "dataset": dataset, "artifact": args.artifact,
            "versions": [v.version for v in versions], "removed": removed,
            "latest": next((v.version for v in versions if v.latest), None)}


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
