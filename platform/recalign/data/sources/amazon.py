"""Amazon review data: sources ``amazon-sequences`` and ``amazon-reviews``.

``amazon-sequences``: one user per line, ``user item item ...`` in time order, separated by
white space (e.g. ``Beauty_user_sequence.txt``; ``data.path`` is the file or a folder holding
exactly one ``*.txt``). ``timestamp`` is the position in the line (0, 1, ...): it gives the
order only. A user on two lines is an error (its order would be ambiguous).

``amazon-reviews``: JSON lines in the Amazon 2014 / 2018 review format (``reviewerID``,
``asin``, ``overall``, ``unixReviewTime``, ``reviewText``, ``summary``; other fields ignored),
optionally gzip-compressed. ``data.path`` is the review file, or a folder holding exactly one
review file (``*.json``, ``*.jsonl``, optionally ``.gz``, not starting with ``meta``).
``review`` is ``reviewText``, or ``summary`` where the text is missing. An optional metadata
file ``meta*.json(l)(.gz)`` next to it (``asin``, ``title``, ``description``, ``categories``
(2014) / ``category`` (2018), ``brand``) gives the items; metadata lines may be strict JSON
(2018) or Python literals (the 2014 metadata dump), both are read. Only items that occur in the
reviews are kept: metadata dumps cover the whole category, and every item of the items table
joins the dataset's key space.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, conform
from recalign.data.sources.base import RawData, register
from recalign.data.sources.tabular import key_column, parse_column
from recalign.errors import DataError

REVIEW_FIELDS = pa.schema([
    pa.field("reviewerID", pa.string()),
    pa.field("asin", pa.string()),
    pa.field("overall", pa.float64()),
    pa.field("unixReviewTime", pa.int64()),
    pa.field("reviewText", pa.string()),
    pa.field("summary", pa.string()),
])
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


# --------------------------------------------------------------------------------------------
# amazon-sequences
# --------------------------------------------------------------------------------------------

def _single_file(path: Path, what: str, match: Any) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"does not exist (expected {what} or a folder holding one)",
                        path=str(path))
    found = sorted(p for p in path.iterdir() if p.is_file() and match(p.name))
    if len(found) != 1:
        raise DataError(f"expected exactly one {what} in the folder, found {len(found)}"
                        f"{': ' + ', '.join(p.name for p in found) if found else ''}",
                        path=str(path))
    return found[0]


@register("amazon-sequences")
def load_amazon_sequences(cfg: Any) -> RawData:
    """``user item item ...`` lines → interactions ordered by position."""
    path = _single_file(Path(str(cfg.path)).expanduser(), "sequence file (*.txt)",
                        lambda n: n.endswith(".txt"))
    try:
        lines = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(column_names=["line"]),
            parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}))["line"]
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read sequence file: {exc}", path=str(path)) from None
    tokens = pc.utf8_split_whitespace(lines.combine_chunks())
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    if (lengths == 0).any():
        raise DataError("empty line (expected: user item item ...)", path=str(path),
                        row=int(np.flatnonzero(lengths == 0)[0]))
    users = pc.list_element(tokens, 0)
    uniq = pc.unique(users)
    if len(uniq) != len(users):
        counts = pc.value_counts(users)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        rows = np.flatnonzero(users.to_numpy(zero_copy_only=False) == dup)
        raise DataError(f"user {dup!r} has a second line (first at row {rows[0]}); expected "
                        f"one line per user", path=str(path), row=int(rows[1]))
    items = pc.list_slice(tokens, 1)
    n_items = lengths - 1
    parent = np.repeat(np.arange(len(lengths)), n_items)
    starts = np.concatenate([[0], np.cumsum(n_items)[:-1]])
    position = np.arange(int(n_items.sum()), dtype=np.int64) - np.repeat(starts, n_items)
    interactions = conform(pa.table({
        "user_key": users.take(pa.array(parent)),
        "item_key": pc.list_flatten(items),
        "timestamp": pa.array(position),
    }), RAW_INTERACTIONS, source=str(path))
    report = {"users_without_items": int((n_items == 0).sum())} if (n_items == 0).any() else {}
    return RawData(interactions=interactions, user_grouped=True, files=[str(path.resolve())],
                   report=report)


# --------------------------------------------------------------------------------------------
# amazon-reviews
# --------------------------------------------------------------------------------------------

def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open(encoding="utf-8")


def _first_bad_json_line(path: Path) -> tuple[int, str]:
    """(1-based line number, reason) of the first line that is not a JSON object (error path)."""
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                return lineno, f"not valid JSON ({exc})"
            if not isinstance(value, dict):
                return lineno, f"expected a JSON object, got {type(value).__name__}"
    return 0, ""


def _read_reviews(path: Path) -> pa.Table:
    """Fast path: pyarrow's JSON reader with the fields we need; precise errors on failure."""
    try:
        return pajson.read_json(path, parse_options=pajson.ParseOptions(
            explicit_schema=REVIEW_FIELDS, unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        lineno, reason = _first_bad_json_line(path)
        if lineno:
            raise DataError(f"line {lineno}: {reason}", path=str(path)) from None
        raise DataError(f"cannot read JSON lines: {exc} (expected one review object per "
                        f"line with reviewerID, asin, overall, unixReviewTime)",
                        path=str(path)) from None


def _meta_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record); 2014 metadata lines are Python literals, not JSON."""
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
                    raise DataError(f"line {lineno}: neither JSON nor a Python literal "
                                    f"({type(exc).__name__}: {exc})", path=str(path)) from None
            if not isinstance(rec, dict):
                raise DataError(f"line {lineno}: expected an object, got "
                                f"{type(rec).__name__}", path=str(path))
            yield lineno, rec


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        value = " ".join(str(v) for v in value if v)
    value = str(value).strip()
    return value or None


def _categories(rec: dict[str, Any]) -> list[str]:
    cats = rec.get("categories", rec.get("category"))
    if not cats:
        return []
    if isinstance(cats, list) and cats and isinstance(cats[0], list):  # 2014: list of paths
        flat: list[str] = []
        for path in cats:
            flat.extend(str(c) for c in path if str(c) not in flat)
        return flat
    return [str(c) for c in cats] if isinstance(cats, list) else [str(cats)]


def _read_meta(path: Path, wanted: set[str]) -> tuple[pa.Table, int]:
    keys, titles, descs, attrs = [], [], [], []
    seen: set[str] = set()
    duplicates = 0
    for lineno, rec in _meta_records(path):
        asin = rec.get("asin")
        if not asin:
            raise DataError(f"line {lineno}: missing 'asin'", path=str(path))
        asin = str(asin)
        if asin not in wanted:
            continue
        if asin in seen:
            duplicates += 1
            continue
        seen.add(asin)
        keys.append(asin)
        titles.append(_text(rec.get("title")))
        descs.append(_text(rec.get("description")))
        attr: dict[str, Any] = {"categories": _categories(rec)}
        if rec.get("brand"):
            attr["brand"] = str(rec["brand"]).strip()
        attrs.append(json.dumps(attr, ensure_ascii=False))
    table = conform(pa.table({"item_key": pa.array(keys, pa.string()),
                              "title": pa.array(titles, pa.string()),
                              "description": pa.array(descs, pa.string()),
                              "attributes": pa.array(attrs, pa.string())}),
                    RAW_ITEMS, source=str(path))
    return table, duplicates


@register("amazon-reviews")
def load_amazon_reviews(cfg: Any) -> RawData:
    """Reviews as rated, timestamped interactions with text; metadata (if any) as items."""
    root = Path(str(cfg.path)).expanduser()
    path = _single_file(root, "review file (*.json, *.jsonl, optionally .gz)",
                        lambda n: n.endswith(JSON_SUFFIXES) and not n.startswith("meta"))
    src = str(path)
    t = _read_reviews(path)
    for name in ("reviewerID", "asin"):
        if t.num_rows and t[name].null_count == t.num_rows:
            raise DataError(f"missing required field {name!r} (expected review objects with "
                            f"{', '.join(REVIEW_FIELDS.names)})", path=src)
    text = pc.coalesce(pc.if_else(pc.equal(t["reviewText"], ""), None, t["reviewText"]),
                       t["summary"])
    interactions = conform(pa.table({
        "user_key": key_column(t["reviewerID"], path=src, column="reviewerID"),
        "item_key": key_column(t["asin"], path=src, column="asin"),
        "rating": parse_column(t["overall"], pa.float32(), path=src, column="overall",
                               what="a rating (a finite number)"),
        "timestamp": t["unixReviewTime"],
        "review": text,
    }), RAW_INTERACTIONS, source=src)

    files = [str(path.resolve())]
    items = None
    report: dict[str, Any] = {}
    metas = sorted(p for p in path.parent.iterdir()
                   if p.is_file() and p.name.startswith("meta") and p.name.endswith(JSON_SUFFIXES))
    if len(metas) > 1:
        raise DataError(f"expected at most one metadata file, found "
                        f"{', '.join(p.name for p in metas)}", path=str(path.parent))
    if metas:
        wanted = set(pc.unique(interactions["item_key"]).to_pylist())
        items, dups = _read_meta(metas[0], wanted)
        files.append(str(metas[0].resolve()))
        report["items_without_meta"] = len(wanted) - items.num_rows
        if dups:
            report["duplicate_meta_lines_skipped"] = dups
    return RawData(interactions=interactions, items=items, user_grouped=False, files=files,
                   report=report)
