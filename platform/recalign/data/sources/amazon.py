"""Amazon review data: sources ``amazon-sequences`` and ``amazon-reviews``.

``amazon-sequences``: one user per line, ``user item item ...`` in time order, separated by
white space (e.g. ``Beauty_user_sequence.txt``; ``data.path`` is the file or a folder holding
exactly one ``*.txt``). ``timestamp`` is the position in the line (0, 1, ...): it gives the
order only. A user on two lines is an error (its order would be ambiguous).

``amazon-reviews``: JSON lines in the Amazon 2014 / 2018 review format (``reviewerID``,
``asin``, ``overall``, ``unixReviewTime``, ``reviewText``, ``summary``) or the Amazon Reviews
2023 format (``user_id``, ``parent_asin``, ``rating``, ``timestamp`` in milliseconds, ``text``,
``title``); other fields ignored, optionally gzip-compressed. The file's fields tell the format
(a file mixing both is an error). ``data.path`` is the review file, or a folder holding exactly
one review file (``*.json``, ``*.jsonl``, optionally ``.gz``, not starting with ``meta``).
``review`` is the review text, or its summary / title where the text is missing. 2023 items are
keyed by ``parent_asin``, as its metadata and published splits are (an ``asin`` is one variant
of a product). An optional metadata file ``meta*.json(l)(.gz)`` next to it (``asin`` or, 2023,
``parent_asin``; ``title``, ``description``, ``categories`` (2014, 2023) / ``category`` (2018),
``brand`` (2023: ``store``), 2023 ``features`` and ``main_category``) gives the items;
metadata lines may be strict JSON (2018, 2023) or Python literals (the 2014 metadata dump),
both are read. Only items that occur in the reviews are kept: metadata dumps cover the whole
category, and every item of the items table joins the dataset's key space.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ReviewFormat:
    """Which fields of a review line hold what, per release of the Amazon data."""

    name: str
    user: str
    item: str
    rating: str
    time: str
    text: str
    summary: str
    time_divisor: int  # to epoch seconds
    meta_key: str

    @property
    def schema(self) -> pa.Schema:
        """The fields this release's lines are read with (pyarrow's explicit schema)."""
        return pa.schema([(self.user, pa.string()), (self.item, pa.string()),
                          (self.rating, pa.float64()), (self.time, pa.int64()),
                          (self.text, pa.string()), (self.summary, pa.string())])


FORMATS = (
    ReviewFormat("2014/2018", "reviewerID", "asin", "overall", "unixReviewTime", "reviewText",
                 "summary", 1, "asin"),
    ReviewFormat("2023", "user_id", "parent_asin", "rating", "timestamp", "text", "title",
                 1000, "parent_asin"),
)
# one read of a file whatever its release: the union of the releases' fields
REVIEW_FIELDS = pa.unify_schemas([f.schema for f in FORMATS])
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
    """``user item item ...`` lines → interactions ordered by position.

    ``data.path`` is the file, or a folder with one ``*.txt`` file — or, as the S3-Rec release
    ships it, a raw-ASIN ``*_user_sequence.txt`` beside its integer-id copy (``Beauty.txt``):
    then the raw-ASIN file is read (its keys are the catalogue's); name the other file to
    read it instead."""
    path = Path(str(cfg.path)).expanduser()
    raw = sorted(path.glob("*_user_sequence.txt")) if path.is_dir() else []
    path = raw[0] if len(raw) == 1 else _single_file(path, "sequence file (*.txt)",
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
            explicit_schema=REVIEW_FIELDS,
            unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        lineno, reason = _first_bad_json_line(path)
        if lineno:
            raise DataError(f"line {lineno}: {reason}", path=str(path)) from None
        raise DataError(f"cannot read JSON lines: {exc} (expected one review object per "
                        f"line with {_format_fields()})", path=str(path)) from None


def _format_fields() -> str:
    return "; or ".join(f"{f.user}, {f.item}, {f.rating}, {f.time} ({f.name})" for f in FORMATS)


def _review_format(t: pa.Table, path: str) -> ReviewFormat:
    """The release whose user field the lines carry; both, or neither, is an error."""
    present = [f for f in FORMATS if t.num_rows and t[f.user].null_count < t.num_rows]
    if len(present) == 1:
        return present[0]
    if present:
        raise DataError(f"the lines mix the {present[0].name} format ({present[0].user}) and "
                        f"the {present[1].name} format ({present[1].user}); one file holds "
                        "one release", path=path)
    raise DataError(f"no review line has a user field (expected review objects with "
                    f"{_format_fields()})", path=path)


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


def _read_meta(path: Path, wanted: set[str], key: str) -> tuple[pa.Table, int]:
    keys, titles, descs, attrs = [], [], [], []
    seen: set[str] = set()
    duplicates = 0
    for lineno, rec in _meta_records(path):
        asin = rec.get(key)
        if not asin:
            raise DataError(f"line {lineno}: missing {key!r}", path=str(path))
        asin = str(asin)
        if asin not in wanted:
            continue
        if asin in seen:
            duplicates += 1
            continue
        seen.add(asin)
        keys.append(asin)
        titles.append(_text(rec.get("title")))
        # 2023 lists often leave description empty and put the product text in features
        descs.append(_text([x for x in (_text(rec.get("description")),
                                        _text(rec.get("features"))) if x]))
        attr: dict[str, Any] = {"categories": _categories(rec)}
        if rec.get("main_category"):
            attr["main_category"] = str(rec["main_category"]).strip()
        brand = rec.get("brand") or rec.get("store")
        if brand and str(brand).strip():
            attr["brand"] = str(brand).strip()
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
    f = _review_format(t, src)
    if t[f.item].null_count == t.num_rows:
        raise DataError(f"missing required field {f.item!r} (the {f.name} format has "
                        f"{f.user}, {f.item}, {f.rating}, {f.time})", path=src)
    text = pc.coalesce(pc.if_else(pc.equal(t[f.text], ""), None, t[f.text]), t[f.summary])
    time = t[f.time] if f.time_divisor == 1 else pc.divide(t[f.time], f.time_divisor)
    interactions = conform(pa.table({
        "user_key": key_column(t[f.user], path=src, column=f.user),
        "item_key": key_column(t[f.item], path=src, column=f.item),
        "rating": parse_column(t[f.rating], pa.float32(), path=src, column=f.rating,
                               what="a rating (a finite number)"),
        "timestamp": time,
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
        items, dups = _read_meta(metas[0], wanted, f.meta_key)
        files.append(str(metas[0].resolve()))
        report["items_without_meta"] = len(wanted) - items.num_rows
        if dups:
            report["duplicate_meta_lines_skipped"] = dups
    return RawData(interactions=interactions, items=items, user_grouped=False, files=files,
                   report=report)
