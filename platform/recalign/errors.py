"""Exception types with messages that name the file, row or key and what was expected."""

from __future__ import annotations


class RecalignError(Exception):
    """Base class: any error the CLI reports as a clean one-line message (exit code 2)."""


class ConfigError(RecalignError):
    """A config key is unknown, has the wrong type, or names a missing file."""


class DataError(RecalignError):
    """Input data does not match what a loader expects.

    The message always names the source file and, where known, the row and column.
    """

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.path, self.row, self.column = path, row, column


class UnsafePickleError(DataError):
    """A pickle asked for a class outside the allow-list of the restricted unpickler."""


class SnapshotError(RecalignError):
    """A snapshot is missing, incomplete (no _SUCCESS) or inconsistent with its manifest."""
