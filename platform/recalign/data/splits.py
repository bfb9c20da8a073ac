"""Train/valid/test splits on integer-indexed interactions, vectorised and reproducible.

Randomness comes from a keyed hash of (user id, item id, seed) rather than from a stateful
RNG: the split of an interaction then depends only on its ids, so it is the same whether the
data arrive in one piece or in streamed chunks, and an interaction keeps its split when the data
set grows (id maps are stable across re-ingests).
"""

from __future__ import annotations

import numpy as np

from recalign.data.schema import TEST, TRAIN, VALID
from recalign.errors import DataError


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def pair_uniform(users: np.ndarray, items: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per (user, item), fixed by the ids and the seed."""
    with np.errstate(over="ignore"):
        h = _splitmix64(users.astype(np.uint64) * np.uint64(0x100000001B3)
                        ^ _splitmix64(items.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF)))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def random_split(users: np.ndarray, items: np.ndarray, ratios: tuple[float, float, float],
                 seed: int) -> np.ndarray:
    """Per interaction: train/valid/test with probabilities ``ratios`` (RLMRec's 3:1:1)."""
    u = pair_uniform(users, items, seed)
    out = np.full(len(users), TRAIN, dtype=np.int8)
    out[u >= ratios[0]] = VALID
    out[u >= ratios[0] + ratios[1]] = TEST
    return out


def _rank_within_user(users: np.ndarray, order_key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (user, key); return the permutation, each row's rank inside its user, and
    each row's user size (both in sorted order)."""
    perm = np.lexsort((order_key, users))
    su = users[perm]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    sizes = np.diff(np.r_[starts, len(su)])
    rank = np.arange(len(su)) - np.repeat(starts, sizes)
    return perm, rank, np.repeat(sizes, sizes)


def user_split(users: np.ndarray, items: np.ndarray, ratios: tuple[float, float, float],
               seed: int) -> tuple[np.ndarray, int]:
    """Per user, shuffled: ~ratios of each user's items, at least one in valid and one in test
    (CLLM4Rec's 80/10/10). Users with fewer than 3 interactions stay entirely in train; their
    count is returned so the caller can report it."""
    key = pair_uniform(users, items, seed)
    perm, rank, size = _rank_within_user(users, key)
    n_test = np.maximum(1, np.rint(size * ratios[2])).astype(np.int64)
    n_valid = np.maximum(1, np.rint(size * ratios[1])).astype(np.int64)
    sorted_split = np.full(len(users), TRAIN, dtype=np.int8)
    ok = size >= 3
    # ranks [0, n_test) -> test, [n_test, n_test + n_valid) -> valid; keep >= 1 train item
    n_valid = np.minimum(n_valid, size - n_test - 1)
    sorted_split[ok & (rank < n_test)] = TEST
    sorted_split[ok & (rank >= n_test) & (rank < n_test + n_valid)] = VALID
    out = np.empty_like(sorted_split)
    out[perm] = sorted_split
    short_users = int(len(np.unique(users[perm][~ok])))
    return out, short_users


def loo_split(users: np.ndarray, timestamps: np.ndarray | None, items: np.ndarray,
              seed: int) -> tuple[np.ndarray, int]:
    """Leave-one-out by time: last interaction test, second-to-last valid, the rest train.
    Ties in time are broken by a fixed hash so the result does not depend on row order.
    Users with fewer than 3 interactions stay in train (counted)."""
    if timestamps is None:
        raise DataError("split.method 'loo' needs timestamps, but the source has none")
    tiebreak = pair_uniform(users, items, seed)
    perm = np.lexsort((tiebreak, timestamps, users))
    su = users[perm]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    sizes = np.diff(np.r_[starts, len(su)])
    ends = starts + sizes
    sorted_split = np.full(len(users), TRAIN, dtype=np.int8)
    ok = sizes >= 3
    sorted_split[ends[ok] - 1] = TEST
    sorted_split[ends[ok] - 2] = VALID
    out = np.empty_like(sorted_split)
    out[perm] = sorted_split
    return out, int((~ok).sum())
