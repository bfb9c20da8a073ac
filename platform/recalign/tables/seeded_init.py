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

import torch

BLOCK = 1 << 16


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
