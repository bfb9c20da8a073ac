"""The ``graphs`` snapshot (LLMRG reasoning graphs): what ``recalign graphs`` writes and the
fusion model reads. One module so that the writer and the reader cannot drift.

**Steps (no look-ahead).** Positions ``p = 0..n-1`` index a user's time-ordered *training*
sequence (absolute positions in the whole training sequence, also when generation saw only its
last ``llmrg.max_len`` items). Everything in a graph carries the ``step`` at which it was made,
and was made from items at positions ``<= step`` only:

* an item node: the position of the item's first occurrence in the walk;
* the link ``item_a -> reason -> item_p`` that explains the step to position ``p``: step ``p``;
* the divergent (imagined next) interests proposed after position ``p``: step ``p``; likewise
  the ``direct`` next-item guesses of the direct ablation.

A training sample whose history is positions ``[0, end)`` may therefore use the nodes and edges
with ``step < end``; validation and test (whose histories hold the whole training sequence) use
all of them. Validation and test items never reach a prompt.

**Table ``users``** — one row per user that was sent to generation (others have no row: the
model falls back to the plain sequence graph for them and counts them).
**Table ``texts``** — one row per distinct reason / interest text, with its embedding; nodes
refer to texts by ``text`` = the text's sha256 hex, so rows reused from an older snapshot stay
valid without renumbering.

Chains carry their self-verification ``score`` (0-100, NaN when not verified) and are all
stored, so the "without verification" ablation is a load-time filter (``score >= tau`` or
not), not a second generation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import pyarrow as pa

from recalign.errors import DataError

ARTIFACT = "graphs"
PROMPT_VERSION = "llmrg-1"

#: node kinds
ITEM, REASON, DIVERGENT, DIRECT = "item", "reason", "divergent", "direct"
NODE_KINDS = (ITEM, REASON, DIVERGENT, DIRECT)
#: edge kinds: item -> reason, reason -> item (a chain link), item -> divergent (an imagined
#: next interest of the item's chain), item -> direct (the direct ablation's guess)
EDGE_KINDS = ("item_reason", "reason_item", "divergent", "direct")

NODE = pa.struct([
    pa.field("kind", pa.string(), nullable=False),
    pa.field("item", pa.int64(), nullable=False),    # dataset item id; -1: none (a reason, an
    #                                                  interest that matched no item)
    pa.field("text", pa.string()),                   # sha256 of the node's text (texts table)
    pa.field("step", pa.int32(), nullable=False),
])
EDGE = pa.struct([
    pa.field("src", pa.int32(), nullable=False),     # index into the row's nodes
    pa.field("dst", pa.int32(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("step", pa.int32(), nullable=False),
    pa.field("chain", pa.int32(), nullable=False),   # index into the row's chains; -1: none
])
CHAIN = pa.struct([
    pa.field("chain", pa.int32(), nullable=False),
    pa.field("score", pa.float32()),                 # 0-100; NaN: not verified
    pa.field("from_kb", pa.bool_(), nullable=False),  # reused from the knowledge base
])

USERS_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),          # dataset user id
    pa.field("key", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),     # ok | failed
    pa.field("reason", pa.string()),                     # why it failed / what was repaired
    pa.field("n_train", pa.int32(), nullable=False),     # training sequence length seen
    pa.field("nodes", pa.list_(NODE), nullable=False),
    pa.field("edges", pa.list_(EDGE), nullable=False),
    pa.field("chains", pa.list_(CHAIN), nullable=False),
    pa.field("llm_calls", pa.int32(), nullable=False),
    pa.field("kb_hits", pa.int32(), nullable=False),
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("completion_tokens", pa.int64(), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("generated_in", pa.string(), nullable=False),
])

TEXTS_SCHEMA = pa.schema([
    pa.field("text", pa.string(), nullable=False),       # sha256 hex of value
    pa.field("value", pa.string(), nullable=False),
    pa.field("vector", pa.list_(pa.float32()), nullable=False),
])


def text_key(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class Link(NamedTuple):
    """One chain link ``item -> reason -> item`` of a stored graph: it explains the step to
    position ``step``; ``reason`` is the reason node's text key."""

    step: int
    src_item: int
    dst_item: int
    chain: int
    reason: str | None


def row_links(row: Mapping[str, Any]) -> list[Link]:
    """The chain links of one ``users`` row (a dict, as ``Table.to_pylist`` gives it), in edge
    order. A ``reason_item`` edge whose reason has no ``item_reason`` edge of the same step and
    chain is a malformed row: :class:`DataError` naming the user."""
    nodes = row["nodes"]
    into = {e["dst"]: e for e in row["edges"] if e["kind"] == "item_reason"}
    out = []
    for e in row["edges"]:
        if e["kind"] != "reason_item":
            continue
        src = into.get(e["src"])
        if src is None or (src["step"], src["chain"]) != (e["step"], e["chain"]):
            raise DataError(f"graphs row of user {row.get('key')!r}: reason node {e['src']} "
                            f"has no item_reason edge of step {e['step']}, chain {e['chain']}")
        out.append(Link(e["step"], nodes[src["src"]]["item"], nodes[e["dst"]]["item"],
                        e["chain"], nodes[e["src"]]["text"]))
    return out


def row_items(row: Mapping[str, Any]) -> list[int]:
    """The row's walked items (its item nodes) in step order."""
    return [i for _, i in sorted((n["step"], n["item"]) for n in row["nodes"]
                                 if n["kind"] == ITEM)]


__all__ = ["ARTIFACT", "CHAIN", "DIRECT", "DIVERGENT", "EDGE", "EDGE_KINDS", "ITEM", "NODE",
           "NODE_KINDS", "PROMPT_VERSION", "REASON", "TEXTS_SCHEMA", "USERS_SCHEMA", "Link",
           "row_items", "row_links", "text_key"]
