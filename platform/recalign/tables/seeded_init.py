"""Table rows that depend on the seed and the row index only — not on the world size.

A rank materialises only the rows it owns; for a run on N ranks to start from the same rows as
a run on one, a row's initial value cannot depend on how the table is split. Torch's global
generator draws a table as one stream (row r's values depend on every row before it), so rows
are drawn here in fixed blocks of ``BLOCK`` rows, each from its own generator seeded by
(seed, table, block): any range of rows is produced by generating only the blocks it touches.
Values are uniform over the table's init range (:class:`recalign.tables.specs.TableSpec`),
the same distribution as TorchRec's ``init_fn``. Written by hand: TorchRec initialises each
shard from the global generator, which ties the values to the sharding.
"""

from __future__ import annotations

import zlib
from typing import Callable, Iterable

import torch

BLOCK = 1 << 16
#: float32 values drawn at once when filling a table (bounded scratch memory for huge tables)
FILL_VALUES = 1 << 24
#: ``rows_of(table, lo, hi, (c0, c1))``: rows lo..hi, columns c0..c1 of a table's initial value
RowsFn = Callable[[str, int, int, tuple[int, int]], torch.Tensor]


def _block_seed(seed: int, table: str, block: int) -> int:
    # a stable mix (Python's hash() of a str changes per process)
    key = f"{seed}:{table}:{block}".encode()
    return (zlib.crc32(key) << 32 | zlib.adler32(key)) & ((1 << 63) - 1)


def seeded_rows(table: str, lo: int, hi: int, dim: int, low: float, high: float,
                seed: int, *, cols: tuple[int, int] | None = None) -> torch.Tensor:
    """Rows ``lo..hi`` (columns ``cols`` = (c0, c1), default all) of table ``table``: float32
    uniform in [low, high), identical whatever range they are asked for in."""
    c0, c1 = cols or (0, dim)
    out = torch.empty(max(0, hi - lo), c1 - c0)
    if hi <= lo:
        return out
    g = torch.Generator()
    for b in range(lo // BLOCK, (hi - 1) // BLOCK + 1):
        b0 = b * BLOCK
        g.manual_seed(_block_seed(seed, table, b))
        s, e = max(lo, b0), min(hi, b0 + BLOCK)
        # the block's rows are one stream: its first e - b0 rows are a prefix of the block
        block = torch.empty(e - b0, dim).uniform_(low, high, generator=g)
        out[s - lo:e - lo] = block[s - b0:e - b0, c0:c1]
    return out


def uniform_rows(bounds: dict[str, tuple[int, int, float, float]], seed: int) -> RowsFn:
    """:func:`seeded_rows` of tables ``{name: (rows, dim, low, high)}``."""
    def rows_of(table: str, lo: int, hi: int, cols: tuple[int, int]) -> torch.Tensor:
        _, dim, low, high = bounds[table]
        return seeded_rows(table, lo, hi, dim, low, high, seed, cols=cols)

    return rows_of


@torch.no_grad()
def fill_rows(parts: Iterable[tuple[str, int, int, torch.Tensor]], rows_of: RowsFn) -> None:
    """Fill each ``(table, global row offset, column offset, tensor)`` — a whole table, or a
    rank's shard (:func:`recalign.tables.sharding.local_rows`) — with ``rows_of``'s rows, in
    chunks of at most :data:`FILL_VALUES` values."""
    for table, r0, c0, w in parts:
        rows, cols = w.shape
        step = max(1, FILL_VALUES // max(1, cols))
        for s in range(0, rows, step):
            e = min(rows, s + step)
            w[s:e].copy_(rows_of(table, r0 + s, r0 + e, (c0, c0 + cols)).to(w.device, w.dtype))
