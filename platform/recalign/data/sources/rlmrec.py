"""Source ``rlmrec``: RLMRec's ``trn_mat.pkl`` / ``val_mat.pkl`` / ``tst_mat.pkl``.

Each file is a pickled ``scipy.sparse.coo_matrix`` (users × items, value 1.0 per interaction);
the three are the given train / valid / test split. They are loaded with the restricted
unpickler (:mod:`recalign.data.safe_pickle`): a pickle naming anything but the sparse-matrix
and array classes is refused with :class:`~recalign.errors.UnsafePickleError`.

Keys are the row / column indexes as decimal strings (``"0"`` .. ``"n-1"``); ``rating`` is the
stored value, ``timestamp`` is null, ``split`` comes from the file.

Key space: the matrices' shape defines it, but an index may have no interaction at all. So
the loader also returns an ``items`` table listing every item key ``"0"`` .. ``"n_items-1"``
and a ``users`` table listing every user key, in index order (text columns null), so that the
full key space reaches the ingest. For the id maps to cover those keys (and for canonical ids
to equal the original indexes, which keeps results comparable with the paper's code) the
ingest has to seed its maps from these tables in order; an ingest that builds its maps from
the interactions only drops such keys (counted). In the shipped Amazon-book split every index
has at least one interaction, so nothing depends on this there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recalign.data.safe_pickle import load_sparse_matrix
from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS, conform
from recalign.data.sources.base import RawData, register
from recalign.errors import DataError

FILES = {"train": "trn_mat.pkl", "valid": "val_mat.pkl", "test": "tst_mat.pkl"}


def _keys(n: int) -> pa.Array:
    return pa.array(np.arange(n, dtype=np.int64)).cast(pa.string())


@register("rlmrec")
def load_rlmrec(cfg: Any) -> RawData:
    """The three split matrices as one interactions table, plus full user / item key tables."""
    folder = Path(str(cfg.path)).expanduser()
    paths = {split: folder / name for split, name in FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"missing {', '.join(missing)} (expected RLMRec's "
                        f"{', '.join(FILES.values())} in this folder)", path=str(folder))

    mats = {split: load_sparse_matrix(p) for split, p in paths.items()}
    shapes = {split: tuple(int(s) for s in m.shape) for split, m in mats.items()}
    if len(set(shapes.values())) != 1:
        raise DataError("the split matrices disagree in shape: " + ", ".join(
            f"{FILES[s]} {shape[0]}x{shape[1]}" for s, shape in shapes.items()),
            path=str(folder))
    n_users, n_items = shapes["train"]

    tables, pair_codes = [], []
    for split, m in mats.items():
        row = np.asarray(m.row, dtype=np.int64)
        col = np.asarray(m.col, dtype=np.int64)
        tables.append(pa.table({
            "user_key": pa.array(row).cast(pa.string()),
            "item_key": pa.array(col).cast(pa.string()),
            "rating": pa.array(np.asarray(m.data, dtype=np.float32)),
            "split": pa.array(np.full(len(row), split, dtype=object), pa.string()),
        }))
        pair_codes.append(np.unique(row * n_items + col))
    interactions = conform(pa.concat_tables(tables), RAW_INTERACTIONS, source=str(folder))

    # the README says the splits are disjoint; report (not repair) any overlap
    all_codes = np.concatenate(pair_codes)
    overlap = len(all_codes) - len(np.unique(all_codes))
    report: dict[str, Any] = {"pairs_in_several_splits": int(overlap)} if overlap else {}

    items = conform(pa.table({"item_key": _keys(n_items)}), RAW_ITEMS, source=str(folder))
    users = conform(pa.table({"user_key": _keys(n_users)}), RAW_USERS, source=str(folder))
    return RawData(interactions=interactions, items=items, users=users, user_grouped=True,
                   keep_all_entities=True,
                   files=[str(p.resolve()) for p in paths.values()], report=report)
