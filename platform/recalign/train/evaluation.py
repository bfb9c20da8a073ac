"""Distributed full-ranking evaluation: users split over ranks, additive sums all-reduced.

Every task scores its users with its own ``score(user_ids) -> [c, n_items]`` (from which
history is the task's business) and hands it here; the metrics are the protocol's
(:mod:`recalign.eval.metrics`), identical for any world size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recalign.eval.metrics import Protocol, RankingSums, ScoreFn, finalize, ranking_sums
from recalign.train.dist import Dist


def eval_users(heldout: Any, max_users: int | None, seed: int, d: Dist) -> np.ndarray:
    """This rank's share of the users to evaluate (a seeded sample when ``max_users``)."""
    users = np.arange(heldout.shape[0], dtype=np.int64)
    if max_users is not None and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users[d.rank::d.world]


def ranking_metrics(score: ScoreFn, heldout: Any, exclude: Any, users: np.ndarray,
                    proto: Protocol, chunk_size: int | None, d: Dist) -> dict[str, float]:
    sums = ranking_sums(score, heldout, exclude, users=users, protocol=proto.name,
                        chunk_size=chunk_size)
    # the sums stay on the CPU (float64 bookkeeping); gloo reduces CPU tensors, and a CUDA
    # process group gets them moved to its device
    vec = sums.to_tensor().to(d.device)
    total = RankingSums.from_tensor(proto, d.all_reduce(vec))
    return finalize(total)
