"""recalign query: a user's top-k items from the LATEST index snapshot (a smoke test for people).

The user's vector comes from the embeddings version the index was built from, found by key.
The table (rank, key, title when known, score) is printed before the summary JSON line; the
user's training items are left out unless ``--include-train`` (or ``export.exclude_train``).
"""

from __future__ import annotations

import argparse
from typing import Any

from recalign.config import Config
from recalign.jobs.common import standalone

DESCRIPTION = "Print a user's top-k items from the latest retrieval index."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", "-u", required=True, metavar="KEY",
                        help="the user's original key (as in the data set)")
    parser.add_argument("-k", type=int, default=10, help="items to show (default 10)")
    parser.add_argument("--include-train", action="store_true",
                        help="keep the user's training items in the list")


def format_table(rows: list[dict[str, Any]], width: int = 60) -> str:
    has_title = any("title" in r for r in rows)
    key_w = max([3] + [len(str(r["key"])) for r in rows])
    head = f"{'rank':>4}  {'key':<{key_w}}  {'score':>10}" + ("  title" if has_title else "")
    lines = [head]
    for r in rows:
        line = f"{r['rank']:>4}  {str(r['key']):<{key_w}}  {r['score']:>10.4f}"
        if has_title:
            title = r.get("title") or ""
            line += "  " + (title if len(title) <= width else title[:width - 1] + "…")
        lines.append(line)
    return "\n".join(lines)


def run(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from recalign.errors import ConfigError
    from recalign.index.retrieval import load_index, top_items, training_item_ids, user_vector
    from recalign.storage.snapshot import SnapshotStore

    if args.k < 1:
        raise ConfigError(f"-k must be at least 1 (got {args.k})")
    store = SnapshotStore(cfg.output.root)
    dataset = cfg.data.dataset_name()
    loaded = load_index(store, dataset, cfg.export.artifact)
    vector = user_vector(store, dataset, loaded, args.user)
    exclude = cfg.export.exclude_train and not args.include_train
    excluded = training_item_ids(store, dataset, loaded, args.user) if exclude else None
    rows = top_items(loaded, vector, args.k, excluded)
    print(format_table(rows))
    return {"job": "query", "dataset": dataset, "user": args.user, "k": args.k,
            "index": loaded.snapshot.uri, "kind": loaded.info["kind"],
            "excluded_train": 0 if excluded is None else int(len(excluded)), "items": rows}


def main(argv: list[str] | None = None) -> int:
    return standalone(DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
