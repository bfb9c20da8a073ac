"""Arrow schemas of the canonical dataset and of the raw tables sources produce.

Raw tables (what a source yields) carry original string keys; canonical tables carry dense
int64 indexes assigned by :mod:`recalign.data.idmap`.
"""

from __future__ import annotations

import pyarrow as pa

from recalign.errors import DataError

# split codes in the canonical interactions table
TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}

RAW_INTERACTIONS = pa.schema([
    pa.field("user_key", pa.string(), nullable=False),
    pa.field("item_key", pa.string(), nullable=False),
    pa.field("rating", pa.float32()),
    pa.field("timestamp", pa.int64()),
    pa.field("review", pa.string()),
    pa.field("split", pa.string()),  # train / valid / test, only for split: given
])

RAW_ITEMS = pa.schema([
    pa.field("item_key", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("description", pa.string()),
    pa.field("attributes", pa.string()),  # JSON object string
])

RAW_USERS = pa.schema([
    pa.field("user_key", pa.string(), nullable=False),
    pa.field("attributes", pa.string()),  # JSON object string
])

INTERACTIONS = pa.schema([
    pa.field("user", pa.int64(), nullable=False),
    pa.field("item", pa.int64(), nullable=False),
    pa.field("rating", pa.float32()),
    pa.field("timestamp", pa.int64()),
    pa.field("review", pa.string()),
    pa.field("split", pa.int8(), nullable=False),
])

ITEMS = pa.schema([
    pa.field("item", pa.int64(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("description", pa.string()),
    pa.field("attributes", pa.string()),
])

USERS = pa.schema([
    pa.field("user", pa.int64(), nullable=False),
    pa.field("attributes", pa.string()),
])

ID_MAP = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
])


def embedding_schema(dim: int) -> pa.Schema:
    """Interchange format of embedding snapshots (ARCHITECTURE.md)."""
    return pa.schema([
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
    ])


def conform(table: pa.Table, schema: pa.Schema, *, source: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order, cast to its types.

    Missing nullable columns are filled with nulls; a missing required column or a value that
    cannot be cast is a :class:`DataError` naming ``source`` and the column.
    """
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise DataError(f"missing required column {field.name!r} "
                                f"(expected columns: {', '.join(schema.names)}; "
                                f"found: {', '.join(table.column_names)})", path=source)
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(f"cannot read values as {field.type}: {exc}",
                                path=source, column=field.name) from None
        if not field.nullable and col.null_count:
            row = _first_null(col)
            raise DataError(f"empty value in required column (expected {field.type})",
                            path=source, row=row, column=field.name)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _first_null(col: pa.ChunkedArray) -> int:
    import pyarrow.compute as pc
    idx = pc.index(pc.is_null(col), True).as_py()
    return int(idx)
