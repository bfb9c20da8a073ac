"""The restricted unpickler refuses code-running pickles and loads the real RLMRec matrices."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from recalign.data.safe_pickle import (SPARSE_MATRIX_GLOBALS, load_sparse_matrix,
                                       restricted_load)
from recalign.errors import DataError, UnsafePickleError


class _RunsShell:
    """Unpickling this with plain pickle runs ``touch <marker>`` through os.system."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    """Unpickling this with plain pickle writes the marker through builtins.eval."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_payload_is_real_with_plain_pickle(tmp_path):
    """Control: the payload really runs code under pickle.loads, so the refusals below mean it."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_RunsShell(str(marker))))
    assert marker.exists()


@pytest.mark.parametrize("payload_cls, refused", [
    (_RunsShell, f"{os.system.__module__}.system"),
    (_RunsEval, "builtins.eval"),
])
def test_malicious_pickle_refused_and_not_run(tmp_path, payload_cls, refused):
    marker = tmp_path / "marker"
    bad = tmp_path / "trn_mat.pkl"
    bad.write_bytes(pickle.dumps(payload_cls(str(marker))))
    with pytest.raises(UnsafePickleError) as exc:
        load_sparse_matrix(bad)
    msg = str(exc.value)
    assert str(bad) in msg
    assert f"refused to load global {refused}" in msg
    assert not marker.exists()


def test_payload_hidden_inside_allowed_array_is_refused(tmp_path):
    """An allowed ndarray (dtype object) whose element is a payload: refused at the payload."""
    marker = tmp_path / "marker"
    arr = np.empty(1, dtype=object)
    arr[0] = _RunsShell(str(marker))
    bad = tmp_path / "m.pkl"
    bad.write_bytes(pickle.dumps(arr))
    with pytest.raises(UnsafePickleError, match=r"(posix|nt)\.system"):
        restricted_load(bad, SPARSE_MATRIX_GLOBALS)
    assert not marker.exists()


def test_other_sparse_formats_are_outside_the_allow_list(tmp_path):
    p = tmp_path / "csr.pkl"
    p.write_bytes(pickle.dumps(sp.random(5, 4, density=0.5, format="csr", random_state=0)))
    with pytest.raises(UnsafePickleError, match=r"scipy\.sparse\._csr\.csr_matrix"):
        load_sparse_matrix(p)


def test_roundtrip_current_scipy(tmp_path):
    m = sp.coo_matrix((np.ones(3), ([0, 1, 2], [2, 0, 1])), shape=(3, 4))
    p = tmp_path / "ok.pkl"
    p.write_bytes(pickle.dumps(m))
    got = load_sparse_matrix(p)
    assert got.shape == (3, 4)
    assert (got.toarray() == m.toarray()).all()


def test_not_a_matrix_or_not_a_pickle(tmp_path):
    p = tmp_path / "list.pkl"
    p.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected a pickled scipy.sparse.coo_matrix, got "
                                        "builtins.list"):
        load_sparse_matrix(p)
    t = tmp_path / "trunc.pkl"
    t.write_bytes(pickle.dumps(sp.coo_matrix(np.eye(3)))[:40])
    with pytest.raises(DataError, match="not a readable pickle") as exc:
        load_sparse_matrix(t)
    assert str(t) in str(exc.value)
    with pytest.raises(DataError, match="file does not exist"):
        restricted_load(tmp_path / "nope.pkl", SPARSE_MATRIX_GLOBALS)


def test_real_rlmrec_pickles_load(shared_data):
    folder = shared_data / "rlmrec-amazon-book"
    nnz = {}
    for name in ("trn_mat.pkl", "val_mat.pkl", "tst_mat.pkl"):
        m = load_sparse_matrix(folder / name)
        assert isinstance(m, sp.coo_matrix)
        assert m.shape == (11000, 9332)
        assert m.dtype == np.float64 and (m.data == 1.0).all()
        nnz[name] = m.nnz
    assert nnz == {"trn_mat.pkl": 120464, "val_mat.pkl": 40290, "tst_mat.pkl": 40106}
