"""Sources ``parquet`` and ``csv``: a folder of generic interaction / item / user tables.

Layout (``data.path`` is the folder, or the interactions file itself)::

    interactions.<ext>  user_id, item_id, [rating], [timestamp], [review], [split]
    items.<ext>         item_id, [title], [description], [attributes]     (optional)
    users.<ext>         user_id, [attributes]                             (optional)

``<ext>`` is ``parquet`` or ``csv`` after the source. Keys are read as strings (integer keys
become their decimal text). ``rating`` is a finite number; ``timestamp`` an integer (epoch
seconds or any increasing integer; a Parquet timestamp/date column becomes epoch seconds);
``split`` is exactly ``train``, ``valid`` or ``test``; ``attributes`` a JSON object string.
Columns not listed are ignored and named in ``RawData.report["ignored_columns"]``. Empty CSV
fields are nulls, except that a present ``rating`` column needs a value in every row (an empty
or null rating is an error: the README counts NaN ratings as errors).

Errors are :class:`DataError` naming the file, the row and the column. Rows are counted from 0
at the first data row (a CSV header is not a row).

The interactions file is streamed in batches (bounded memory); its header is checked when the
loader is called, each batch's values while the batches are consumed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS, SPLIT_NAMES, conform
from recalign.data.sources.base import RawData, register
from recalign.errors import DataError

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "review", "split")
ITEM_COLUMNS = ("item_id", "title", "description", "attributes")
USER_COLUMNS = ("user_id", "attributes")
RENAMES = {"user_id": "user_key", "item_id": "item_key"}
BATCH_ROWS = 1 << 20
CSV_BLOCK_BYTES = 64 << 20


# --------------------------------------------------------------------------------------------
# column parsing helpers (shared with the other sources)
# --------------------------------------------------------------------------------------------

def _as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _first_uncastable(arr: pa.Array, to_type: pa.DataType) -> int:
    """Index of the first value that fails ``cast`` (bisection: O(log n) casts, error path)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            arr.slice(lo, mid - lo).cast(to_type)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def parse_column(col: pa.Array | pa.ChunkedArray, to_type: pa.DataType, *, path: str,
                 column: str, what: str, row_offset: int = 0) -> pa.Array:
    """Cast ``col`` to ``to_type``; a value that does not parse is a DataError naming its row.

    Strings are stripped of surrounding whitespace first; floats must be finite.
    """
    arr = _as_array(col)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.utf8_trim_whitespace(arr)
    if pa.types.is_integer(to_type) and pa.types.is_timestamp(arr.type):
        arr = pc.cast(arr, pa.timestamp("s", tz=arr.type.tz), safe=False).cast(pa.int64())
    elif pa.types.is_integer(to_type) and pa.types.is_date(arr.type):
        arr = arr.cast(pa.date32()).cast(pa.int32()).cast(pa.int64())
        arr = pc.multiply(arr, 86_400)
    try:
        out = arr.cast(to_type)
    except pa.ArrowNotImplementedError:
        raise DataError(f"column of type {arr.type} cannot be read as {what}",
                        path=path, column=column) from None
    except pa.ArrowInvalid:
        idx = _first_uncastable(arr, to_type)
        raise DataError(f"cannot read {arr[idx].as_py()!r} as {what}",
                        path=path, row=row_offset + idx, column=column) from None
    if pa.types.is_floating(to_type) and out.null_count < len(out):
        finite = pc.is_finite(out)
        if not pc.all(finite).as_py():
            idx = pc.index(pc.fill_null(finite, True), False).as_py()
            raise DataError(f"cannot read {arr[idx].as_py()!r} as {what} (not a finite "
                            f"number)", path=path, row=row_offset + idx, column=column)
    return out


def key_column(col: pa.Array | pa.ChunkedArray, *, path: str, column: str,
               row_offset: int = 0) -> pa.Array:
    """Keys as strings: integers become their decimal text; empty keys are an error."""
    arr = _as_array(col)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_integer(arr.type) or pa.types.is_string(arr.type)
            or pa.types.is_large_string(arr.type) or pa.types.is_null(arr.type)):
        raise DataError(f"expected string or integer keys, got {arr.type}",
                        path=path, column=column)
    arr = arr.cast(pa.string())
    if arr.null_count:
        idx = pc.index(pc.is_null(arr), True).as_py()
        raise DataError("empty key", path=path, row=row_offset + idx, column=column)
    return arr


def check_json_objects(col: pa.Array | pa.ChunkedArray, *, path: str, column: str,
                       row_offset: int = 0) -> pa.Array:
    """Every non-null value must be a JSON object string (a Python loop: side tables only)."""
    arr = _as_array(col)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
            or pa.types.is_null(arr.type)):
        raise DataError(f"expected JSON object strings, got a column of type {arr.type}",
                        path=path, column=column)
    arr = arr.cast(pa.string())
    for idx, text in enumerate(arr.to_pylist()):
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise DataError(f"not valid JSON ({exc}): {_short(text)!r}",
                            path=path, row=row_offset + idx, column=column) from None
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object, got {type(value).__name__}: "
                            f"{_short(text)!r}", path=path, row=row_offset + idx,
                            column=column)
    return arr


def check_split(col: pa.Array | pa.ChunkedArray, *, path: str, column: str = "split",
                row_offset: int = 0) -> pa.Array:
    arr = _as_array(col)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    arr = arr.cast(pa.string())
    ok = pc.fill_null(pc.is_in(arr, value_set=pa.array(list(SPLIT_NAMES))), False)
    if not pc.all(ok).as_py():
        idx = pc.index(ok, False).as_py()
        raise DataError(f"split value {arr[idx].as_py()!r} is not one of "
                        f"{', '.join(SPLIT_NAMES)}", path=path, row=row_offset + idx,
                        column=column)
    return arr


def require_columns(found: list[str], required: tuple[str, ...], expected: tuple[str, ...], *,
                    path: str) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise DataError(f"missing required column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(c) for c in missing)} (expected columns: "
                        f"{', '.join(expected)}; required: {', '.join(required)}; "
                        f"found: {', '.join(found) or 'none'})", path=path)


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------

def csv_convert(columns: tuple[str, ...], include: list[str] | None = None
                ) -> pacsv.ConvertOptions:
    """Known columns read as strings (we parse them, for row-precise errors); "" is null.

    ``null_values`` is only "" so that keys such as ``NA`` or ``null`` stay keys.
    """
    return pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                strings_can_be_null=True, quoted_strings_can_be_null=True,
                                null_values=[""], include_columns=include or [])


def _read_side_table(path: Path, fmt: str, expected: tuple[str, ...]) -> pa.Table:
    try:
        if fmt == "csv":
            return pacsv.read_csv(path, convert_options=csv_convert(expected))
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {fmt}: {exc}", path=str(path)) from None


def _finish_interactions(batch: pa.Table, *, path: str, offset: int, fmt: str) -> pa.Table:
    cols: dict[str, Any] = {}
    for name in batch.column_names:
        col = batch.column(name)
        if name in RENAMES:
            cols[RENAMES[name]] = key_column(col, path=path, column=name, row_offset=offset)
        elif name == "rating":
            cols[name] = _ratings(col, path=path, offset=offset, fmt=fmt)
        elif name == "timestamp":
            cols[name] = parse_column(col, pa.int64(), path=path, column=name,
                                      what="a timestamp (an integer)", row_offset=offset)
        elif name == "split":
            cols[name] = check_split(col, path=path, row_offset=offset)
        else:
            cols[name] = col
    return conform(pa.table(cols), RAW_INTERACTIONS, source=path)


def _ratings(col: pa.Array | pa.ChunkedArray, *, path: str, offset: int, fmt: str) -> pa.Array:
    """The rating column: every row needs one once the column is there (an empty CSV field
    or a Parquet null / pandas NaN would otherwise pass as "no rating", uncounted)."""
    out = parse_column(col, pa.float32(), path=path, column="rating",
                       what="a rating (a finite number)", row_offset=offset)
    if out.null_count:
        idx = pc.index(pc.is_null(out), True).as_py()
        kind = "empty rating field" if fmt == "csv" else "null rating"
        raise DataError(f"{kind} (expected a finite number >= 0; rows count from 0 at the "
                        f"first data row; leave the rating column out for data without "
                        f"ratings)", path=path, row=offset + idx, column="rating")
    return out


def _iter_interactions(path: Path, fmt: str, columns: list[str]) -> Iterator[pa.Table]:
    offset = 0
    src = str(path)
    try:
        if fmt == "parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns)
        else:
            batches = pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=csv_convert(INTERACTION_COLUMNS, include=columns))
        for batch in batches:
            if batch.num_rows == 0:
                continue
            yield _finish_interactions(pa.Table.from_batches([batch]), path=src, offset=offset,
                                       fmt=fmt)
            offset += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {fmt} (after row {offset}): {exc}", path=src) from None


def _header(path: Path, fmt: str) -> list[str]:
    try:
        if fmt == "parquet":
            return list(pq.read_schema(path).names)
        with pacsv.open_csv(path, convert_options=csv_convert(INTERACTION_COLUMNS)) as reader:
            return list(reader.schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {fmt}: {exc}", path=str(path)) from None


def _locate(root: Path, fmt: str) -> tuple[Path, Path]:
    """(folder, interactions file) for ``data.path`` = folder or interactions file."""
    if root.is_file():
        return root.parent, root
    inter = root / f"interactions.{fmt}"
    if not inter.is_file():
        other = "csv" if fmt == "parquet" else "parquet"
        hint = (f"; found interactions.{other}: use source {other!r}"
                if (root / f"interactions.{other}").is_file() else "")
        raise DataError(f"missing interactions file interactions.{fmt} (expected a folder with "
                        f"interactions.{fmt} and optional items.{fmt}, users.{fmt}{hint})",
                        path=str(inter))
    return root, inter


def load_tabular(cfg: Any, fmt: str) -> RawData:
    """Open the folder, check headers now, stream the interactions later."""
    root = Path(str(cfg.path)).expanduser()
    if not root.exists():
        raise DataError(f"missing interactions file (data.path does not exist; expected a "
                        f"folder with interactions.{fmt})", path=str(root))
    folder, inter = _locate(root, fmt)
    files = [str(inter.resolve())]
    ignored: dict[str, list[str]] = {}

    header = _header(inter, fmt)
    require_columns(header, ("user_id", "item_id"), INTERACTION_COLUMNS, path=str(inter))
    columns = [c for c in INTERACTION_COLUMNS if c in header]
    if extra := [c for c in header if c not in INTERACTION_COLUMNS]:
        ignored[inter.name] = extra

    items = users = None
    item_path, user_path = folder / f"items.{fmt}", folder / f"users.{fmt}"
    if item_path.is_file():
        items = _side_table(item_path, fmt, "item_id", ITEM_COLUMNS, RAW_ITEMS, ignored)
        files.append(str(item_path.resolve()))
    if user_path.is_file():
        users = _side_table(user_path, fmt, "user_id", USER_COLUMNS, RAW_USERS, ignored)
        files.append(str(user_path.resolve()))

    report: dict[str, Any] = {"ignored_columns": ignored} if ignored else {}
    return RawData(interactions=_iter_interactions(inter, fmt, columns), items=items,
                   users=users, user_grouped=False, files=files, report=report)


def _side_table(path: Path, fmt: str, key: str, expected: tuple[str, ...], schema: pa.Schema,
                ignored: dict[str, list[str]]) -> pa.Table:
    table = _read_side_table(path, fmt, expected)
    require_columns(table.column_names, (key,), expected, path=str(path))
    if extra := [c for c in table.column_names if c not in expected]:
        ignored[path.name] = extra
    src = str(path)
    cols: dict[str, Any] = {}
    for name in expected:
        if name not in table.column_names:
            continue
        col = table.column(name)
        if name == key:
            cols[RENAMES[key]] = key_column(col, path=src, column=name)
        elif name == "attributes":
            cols[name] = check_json_objects(col, path=src, column=name)
        else:
            cols[name] = col
    out = conform(pa.table(cols), schema, source=src)
    keys = out.column(schema.names[0])
    if len(pc.unique(keys)) != len(keys):
        counts = pc.value_counts(keys)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        idx = int(np.flatnonzero(keys.to_numpy(zero_copy_only=False) == dup)[1])
        raise DataError(f"duplicate key {dup!r}", path=src, row=idx, column=key)
    return out


@register("parquet")
def load_parquet(cfg: Any) -> RawData:
    """``interactions.parquet`` (+ optional ``items.parquet``, ``users.parquet``)."""
    return load_tabular(cfg, "parquet")


@register("csv")
def load_csv(cfg: Any) -> RawData:
    """``interactions.csv`` (+ optional ``items.csv``, ``users.csv``)."""
    return load_tabular(cfg, "csv")
