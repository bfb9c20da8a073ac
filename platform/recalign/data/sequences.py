"""Time-ordered user sequences for sequential recommenders: what the ``next-item`` task reads.

From a :class:`~recalign.data.dataset.Dataset` split leave-one-out by time
(``data.split.method: loo``): per user the training items in time order, the validation item
(second to last) and the test item (last). Ties in time keep the split's order (the split broke
them by a fixed hash). Users with fewer than 3 interactions have no held-out items under
``loo`` (ingest counts them); they train and are not evaluated (``users_without_heldout``).

Model input ids are the dataset's item ids **plus one**: 0 is padding. Sequences are
right-aligned (left-padded), so the last position is the most recent item. A history longer
than ``max_len`` keeps its last ``max_len`` items (counted, ``histories_truncated``); for
training, a long training sequence is cut into windows of ``max_len + 1`` items from the end
that overlap by one item, so that every training target is predicted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recalign.data.schema import TEST, TRAIN, VALID
from recalign.errors import DataError

PAD = 0


@dataclass
class SequenceData:
    """CSR-style training sequences plus one validation and one test target per user (-1: none)."""

    indptr: np.ndarray      # [n_users + 1] into items
    items: np.ndarray       # training items, time-ordered within each user (dataset ids)
    valid: np.ndarray       # [n_users] validation item or -1
    test: np.ndarray        # [n_users] test item or -1
    n_items: int
    attributes: Any = None  # ItemAttributes, for attribute-aware models (FDSA)
    graphs: Any = None      # ReasoningGraphs, for the LLMRG fusion model

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_dataset(cls, ds: Any) -> "SequenceData":
        t = ds.interactions
        if t["timestamp"].null_count:
            raise DataError(f"dataset {ds.name!r}: {t['timestamp'].null_count} interactions "
                            "without a timestamp; the next-item task orders histories by time "
                            "(a source with timestamps or positions, data.split.method loo)")
        users = t["user"].to_numpy()
        items = t["item"].to_numpy()
        ts = t["timestamp"].to_numpy()
        split = t["split"].to_numpy()
        # within a user: time, then split (train < valid < test settles ties as the split did)
        order = np.lexsort((split, ts, users))
        users, items, split = users[order], items[order], split[order]
        n_users = ds.n_users
        valid = np.full(n_users, -1, dtype=np.int64)
        test = np.full(n_users, -1, dtype=np.int64)
        for code, out, name in ((VALID, valid, "validation"), (TEST, test, "test")):
            sel = split == code
            u = users[sel]
            if np.unique(u).size != u.size:
                raise DataError(f"dataset {ds.name!r}: users with more than one {name} "
                                "interaction; the next-item task needs a leave-one-out split "
                                "(data.split.method: loo)")
            out[u] = items[sel]
        tr = split == TRAIN
        tu, ti = users[tr], items[tr]
        counts = np.bincount(tu, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        late = np.flatnonzero((valid >= 0) & (counts == 0))
        if late.size:
            raise DataError(f"dataset {ds.name!r}: {late.size} users have held-out items but no "
                            f"training history (e.g. ids {late[:5].tolist()})")
        return cls(indptr, ti.astype(np.int64), valid, test, ds.n_items)

    # ------------------------------------------------------------------ derived views
    def train_lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def history(self, user: int, upto: str) -> np.ndarray:
        """The user's history before the ``valid`` or ``test`` target (or all, ``all``)."""
        h = self.items[self.indptr[user]:self.indptr[user + 1]]
        if upto in ("test", "all") and self.valid[user] >= 0:
            h = np.append(h, self.valid[user])
        if upto == "all" and self.test[user] >= 0:
            h = np.append(h, self.test[user])
        return h

    def heldout(self, split: str) -> sp.csr_matrix:
        """Binary users × items matrix of the ``valid`` or ``test`` targets."""
        tgt = self.valid if split == "valid" else self.test
        u = np.flatnonzero(tgt >= 0)
        return sp.csr_matrix((np.ones(u.size, np.float32), (u, tgt[u])),
                             shape=(self.n_users, self.n_items))

    def history_matrix(self, split: str) -> sp.csr_matrix:
        """Binary users × items matrix of each user's history before ``split``'s target."""
        rows = np.repeat(np.arange(self.n_users), self.train_lengths())
        cols = self.items
        if split == "test":
            u = np.flatnonzero(self.valid >= 0)
            rows, cols = np.concatenate([rows, u]), np.concatenate([cols, self.valid[u]])
        m = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)),
                          shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def training_windows(self, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(user, end) of every training window: items ``[end - max_len - 1, end)`` of the
        user's training sequence (clipped at its start); windows from the end of each sequence,
        overlapping by one item so that every target but the first item is predicted once."""
        lens = self.train_lengths()
        n_win = np.where(lens >= 2, -(-(lens - 1) // max_len), 0)
        users = np.repeat(np.arange(self.n_users), n_win)
        k = np.arange(users.size) - np.repeat(np.cumsum(n_win) - n_win, n_win)
        ends = lens[users] - k * max_len
        return users, ends

    def training_prefixes(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, end) of every training prefix: items ``[0, end)`` of the user's training
        sequence, ``end >= 2``, the last item the target (RecBole's sequence augmentation: each
        target one sample, as models with a per-sequence objective need)."""
        lens = self.train_lengths()
        n = np.maximum(lens - 1, 0)
        users = np.repeat(np.arange(self.n_users), n)
        ends = np.arange(users.size) - np.repeat(np.cumsum(n) - n, n) + 2
        return users, ends

    def sample_targets(self, users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Dataset id of the last item (the final target) of each sample."""
        return self.items[self.indptr[users] + ends - 1]

    def sample_items(self, users: np.ndarray, ends: np.ndarray, max_len: int
                     ) -> list[np.ndarray]:
        """Each sample's last ``max_len + 1`` items as model ids, the final target included."""
        starts = self.indptr[users]
        lo = starts + np.maximum(0, ends - max_len - 1)
        hi = starts + ends
        return [self.items[a:b] + 1 for a, b in zip(lo, hi)]


def left_pad(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """[len(seqs), w] of model ids (item + 1), right-aligned, 0-padded, ``w`` the longest
    history kept (at most ``max_len``; longer histories keep their end). Trimming the columns
    that are padding in every row changes no output (padding is masked), and saves most of the
    work on short-sequence data (Beauty: 7 items on average, max_len 50)."""
    w = max(1, min(max_len, max((s.size for s in seqs), default=1)))
    out = np.zeros((len(seqs), w), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-w:]
        if s.size:
            out[r, w - s.size:] = s + 1
    return out


@dataclass
class SequenceBatch:
    """``inputs`` [B, L] model ids; ``targets`` [B, L] model ids (0: no loss at that position).

    ``loss_scale`` turns this rank's mean over its target positions into its share of the
    global batch's mean (``world * local targets / global targets``; 1 in one process), so that
    the trainer's gradient average over ranks is exactly the global batch's gradient."""

    inputs: torch.Tensor
    targets: torch.Tensor
    global_size: int = 0
    loss_scale: float = 1.0
    #: model-specific inputs drawn with the batch (augmented views, masks; see
    #: ``SequentialModel.make_views``)
    views: dict[str, torch.Tensor] = field(default_factory=dict)
    #: prefix samples: only the last position has a target
    last_only: bool = False

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device) -> "SequenceBatch":
        return SequenceBatch(self.inputs.to(device, non_blocking=True),
                             self.targets.to(device, non_blocking=True), self.global_size,
                             self.loss_scale,
                             {k: v.to(device, non_blocking=True) for k, v in self.views.items()},
                             self.last_only)


def window_batch(data: SequenceData, users: np.ndarray, ends: np.ndarray,
                 max_len: int, last_only: bool = False) -> SequenceBatch:
    """Input/target windows: inputs are items ``[e-L-1, e-1)``, targets ``[e-L, e)``, trimmed
    to the batch's longest window (see :func:`left_pad`); ``last_only`` (prefix samples) keeps
    the last target of each row only."""
    b = users.size
    starts = data.indptr[users]
    lo = starts + np.maximum(0, ends - max_len - 1)
    hi = starts + ends
    w = int(max(1, (hi - lo - 1).max(initial=1)))
    inputs = np.zeros((b, w), dtype=np.int64)
    targets = np.zeros((b, w), dtype=np.int64)
    for r in range(b):
        s = data.items[lo[r]:hi[r]]
        n = s.size - 1
        inputs[r, w - n:] = s[:-1] + 1
        targets[r, w - n:] = s[1:] + 1
    if last_only:
        targets[:, :-1] = 0
    return SequenceBatch(torch.from_numpy(inputs), torch.from_numpy(targets),
                         last_only=last_only)


class SameTarget:
    """For each training sample, another sample with the same final target (DuoRec's
    supervised positive): samples grouped by target once; a draw picks uniformly among the
    group's other members (the sample itself when it is alone)."""

    def __init__(self, data: SequenceData, users: np.ndarray, ends: np.ndarray) -> None:
        self.users, self.ends = users, ends
        tgt = data.sample_targets(users, ends)
        self.order = np.argsort(tgt, kind="stable")
        counts = np.bincount(tgt, minlength=data.n_items)
        self.group_start = np.concatenate([[0], np.cumsum(counts)])[tgt]
        self.group_size = counts[tgt]
        # position of each sample inside its group, to skip itself
        self.slot = np.empty(users.size, dtype=np.int64)
        self.slot[self.order] = np.arange(users.size) - np.repeat(
            np.concatenate([[0], np.cumsum(counts)])[:-1], counts)

    def pick(self, sample: int, rng: np.random.Generator) -> int:
        n = int(self.group_size[sample])
        if n == 1:
            return sample
        k = int(rng.integers(n - 1))
        k += k >= self.slot[sample]
        return int(self.order[self.group_start[sample] + k])


def histories_batch(data: SequenceData, users: np.ndarray, upto: str,
                    max_len: int) -> tuple[torch.Tensor, int]:
    """Padded histories of ``users`` before ``upto``'s target, and how many were truncated."""
    hs = [data.history(int(u), upto) for u in users]
    truncated = sum(h.size > max_len for h in hs)
    return torch.from_numpy(left_pad(hs, max_len)), int(truncated)


__all__ = ["PAD", "SameTarget", "SequenceBatch", "SequenceData", "histories_batch",
           "left_pad", "window_batch"]
