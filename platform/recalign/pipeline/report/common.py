"""Names the report's modules share: what it shows (metrics, variants, how much of each) and
how a failure is worded in its 'missing' notes."""

from __future__ import annotations

METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")
VARIANTS = ("base", "aligned")
#: characters of one profile text shown in the report (longer ones are cut and say so)
TEXT_LIMIT = 400
TITLE_LIMIT = 120
EXAMPLES = 3
REC_USERS = 2
TOP_K = 10
HIT = "✓"


def _why(exc: BaseException) -> str:
    """One line naming what went wrong (for the report's 'missing' notes)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
