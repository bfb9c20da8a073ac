"""Ranking metrics and evaluation protocols (full ranking, leave-one-out), computed in user chunks."""

from recalign.eval.metrics import (PROTOCOLS, Protocol, RankingSums, evaluate, finalize,
                                   get_protocol, ranking_sums)

__all__ = ["PROTOCOLS", "Protocol", "RankingSums", "evaluate", "finalize", "get_protocol",
           "ranking_sums"]
