"""Sequence augmentations for contrastive sequential models (CL4SRec; Xie et al., 2022).

Each works on one history (1-D array of model ids, oldest first) with a caller's generator, so
the views are a function of (epoch seed, sample) and not of how samples are spread over ranks:

* ``crop``: a random contiguous run of ``max(1, ⌊η·n⌋)`` items;
* ``mask``: ``⌊γ·n⌋`` random positions replaced by the mask token;
* ``reorder``: a random contiguous run of ``⌊β·n⌋`` items shuffled in place.

``two_views`` applies two *different* operators, one per view, as CL4SRec pairs them.
Histories of one item are returned unchanged (nothing to crop, mask or reorder).
"""

from __future__ import annotations

import numpy as np

OPERATORS = ("crop", "mask", "reorder")


def crop(seq: np.ndarray, rng: np.random.Generator, eta: float) -> np.ndarray:
    n = seq.size
    k = max(1, int(eta * n))
    start = int(rng.integers(n - k + 1))
    return seq[start:start + k].copy()


def mask(seq: np.ndarray, rng: np.random.Generator, gamma: float, mask_id: int) -> np.ndarray:
    out = seq.copy()
    k = int(gamma * seq.size)
    if k:
        out[rng.choice(seq.size, k, replace=False)] = mask_id
    return out


def reorder(seq: np.ndarray, rng: np.random.Generator, beta: float) -> np.ndarray:
    out = seq.copy()
    k = int(beta * seq.size)
    if k > 1:
        start = int(rng.integers(seq.size - k + 1))
        out[start:start + k] = rng.permutation(out[start:start + k])
    return out


def augment(seq: np.ndarray, op: str, rng: np.random.Generator, eta: float, gamma: float,
            beta: float, mask_id: int) -> np.ndarray:
    if seq.size <= 1:
        return seq.copy()
    if op == "crop":
        return crop(seq, rng, eta)
    if op == "mask":
        return mask(seq, rng, gamma, mask_id)
    if op == "reorder":
        return reorder(seq, rng, beta)
    raise ValueError(f"augmentation {op!r}: expected one of {OPERATORS}")


def two_views(seq: np.ndarray, rng: np.random.Generator, eta: float, gamma: float,
              beta: float, mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Two views of ``seq`` by two different randomly chosen operators."""
    a, b = rng.choice(len(OPERATORS), 2, replace=False)
    return (augment(seq, OPERATORS[a], rng, eta, gamma, beta, mask_id),
            augment(seq, OPERATORS[b], rng, eta, gamma, beta, mask_id))


__all__ = ["OPERATORS", "augment", "crop", "mask", "reorder", "two_views"]
