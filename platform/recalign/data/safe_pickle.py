"""Loading pickles without running the code they name.

Unpickling calls whatever callables a pickle names (``os.system`` included), so a data file
from elsewhere must never reach :func:`pickle.load`. :class:`RestrictedUnpickler` resolves only
the ``(module, name)`` pairs of an explicit allow-list and refuses everything else with
:class:`~recalign.errors.UnsafePickleError`, before anything is called.

:data:`SPARSE_MATRIX_GLOBALS` is exactly what a pickled ``scipy.sparse.coo_matrix`` (the RLMRec
``*_mat.pkl`` files) needs, found by tracing ``find_class`` on the real files: the matrix class
and numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``). Aliases of the
same objects under other module paths (numpy 2's ``numpy._core``, scipy < 1.8's
``scipy.sparse.coo``) are admitted so files pickled by other versions load too; they widen
nothing.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recalign.errors import DataError, UnsafePickleError

SPARSE_MATRIX_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("scipy.sparse._coo", "coo_matrix"),
    ("scipy.sparse.coo", "coo_matrix"),          # files pickled by scipy < 1.8
    ("numpy.core.multiarray", "_reconstruct"),   # files pickled by numpy < 2
    ("numpy._core.multiarray", "_reconstruct"),  # files pickled by numpy >= 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals.

    ``source`` names the file in error messages. Persistent ids are refused by the base class.
    """

    def __init__(self, file: io.BufferedIOBase, *, allowed: Iterable[tuple[str, str]],
                 source: str) -> None:
        super().__init__(file)
        self.allowed = frozenset(allowed)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise UnsafePickleError(
                f"refused to load global {module}.{name}: the restricted unpickler admits "
                f"only {', '.join(sorted(f'{m}.{n}' for m, n in self.allowed))} "
                f"(the file may be malicious, or was not written by the expected tool)",
                path=self.source)
        return super().find_class(module, name)


def restricted_load(path: str | Path, allowed: Iterable[tuple[str, str]]) -> Any:
    """Unpickle ``path`` admitting only the ``allowed`` globals.

    A refused global is an :class:`UnsafePickleError`; a truncated or corrupt file is a
    :class:`DataError`; both name the file.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return RestrictedUnpickler(fh, allowed=allowed, source=str(p)).load()
    except FileNotFoundError:
        raise DataError("file does not exist", path=str(p)) from None
    except DataError:
        raise
    except Exception as exc:  # corrupt pickles raise many types (EOFError, ValueError, ...)
        raise DataError(f"not a readable pickle: {type(exc).__name__}: {exc}",
                        path=str(p)) from None


def load_sparse_matrix(path: str | Path) -> Any:
    """A pickled ``scipy.sparse.coo_matrix``, loaded with :data:`SPARSE_MATRIX_GLOBALS` only."""
    import numpy as np
    import scipy.sparse as sp

    mat = restricted_load(path, SPARSE_MATRIX_GLOBALS)
    if not isinstance(mat, sp.coo_matrix):
        raise DataError(f"expected a pickled scipy.sparse.coo_matrix, got "
                        f"{type(mat).__module__}.{type(mat).__qualname__}", path=str(path))
    try:
        row, col, data = (np.asarray(a) for a in (mat.row, mat.col, mat.data))
        shape = tuple(int(s) for s in mat.shape)
    except Exception as exc:
        raise DataError(f"pickled coo_matrix is inconsistent: {exc}", path=str(path)) from None
    if (row.dtype.kind not in "iu" or col.dtype.kind not in "iu"
            or data.dtype.kind not in "biuf" or len(shape) != 2
            or not len(row) == len(col) == len(data)):
        raise DataError(f"pickled coo_matrix is inconsistent: row {row.dtype}[{len(row)}], "
                        f"col {col.dtype}[{len(col)}], data {data.dtype}[{len(data)}], "
                        f"shape {shape}", path=str(path))
    if len(row) and (row.min() < 0 or col.min() < 0
                     or row.max() >= shape[0] or col.max() >= shape[1]):
        raise DataError(f"pickled coo_matrix has indexes outside its shape {shape}",
                        path=str(path))
    return mat
