"""What every job shares: --config/--set parsing, clean errors, the summary JSON line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from recalign.config import Config, load_config
from recalign.errors import RecalignError

RunFn = Callable[[Config, argparse.Namespace], dict[str, Any]]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE.yaml",
                        help="YAML config (sections: data, model, align, llm, embed, train, "
                             "eval, output); defaults are used where absent")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                        metavar="dotted.key=value",
                        help="override one config value, e.g. --set data.kcore=5 (repeatable)")


def emit_summary(summary: dict[str, Any]) -> None:
    """The last line of stdout is one JSON object summarising the run."""
    sys.stdout.flush()
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)


def _storage_failure(exc: BaseException) -> str | None:
    """A one-paragraph message for an OS / S3 client error that escaped a job (permission
    denied, disk full, read-only file system, no credentials, ...), or None for anything else,
    which keeps its traceback."""
    from recalign.storage.uri import explain_failure  # fsspec / pyarrow: only on this path

    where = getattr(exc, "filename", None)
    return explain_failure(str(where) if where else None, exc)


def run_job(args: argparse.Namespace, run: RunFn) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        summary = run(cfg, args)
    except RecalignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # last line of defence: storage the job did not translate is still an input problem
        msg = _storage_failure(exc)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    emit_summary(summary)
    return 0


def standalone(description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
               run: RunFn, argv: list[str] | None = None) -> int:
    """``python -m recalign.jobs.NAME`` entry."""
    parser = argparse.ArgumentParser(description=description)
    add_config_arguments(parser)
    add_arguments(parser)
    return run_job(parser.parse_args(argv), run)


def latest_dataset(cfg: Config, job: str) -> tuple[Any, Any, Any]:
    """``(store, dataset snapshot, Dataset)``: the LATEST dataset snapshot of ``cfg.data`` (a
    clear error naming ``job`` when there is none: ingest first)."""
    from recalign.data.snapshot_io import ARTIFACT, read_dataset
    from recalign.errors import ConfigError
    from recalign.storage.snapshot import SnapshotStore

    store = SnapshotStore(cfg.output.root)
    name = cfg.data.dataset_name()
    dsnap = store.try_open(name, ARTIFACT)
    if dsnap is None:
        raise ConfigError(f"{job}: no dataset snapshot for {name!r} under {cfg.output.root}: "
                          "run `recalign ingest` with this config first")
    return store, dsnap, read_dataset(dsnap)
