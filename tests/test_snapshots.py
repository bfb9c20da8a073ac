"""Versioned snapshots: commit protocol, readers, gc, crash safety — on a local folder and on
a real S3-compatible server on loopback (the `snapshot_root` fixture runs every test twice)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from recalign.errors import SnapshotError
from recalign.storage.snapshot import SnapshotStore
from recalign.storage.uri import StorageError, fsspec_filesystem, join, storage_error


def _table(n: int, offset: int = 0) -> pa.Table:
    return pa.table({"id": pa.array(range(offset, offset + n), pa.int64()),
                     "x": pa.array([float(i) * 0.5 for i in range(offset, offset + n)])})


def test_write_commit_read_roundtrip(snapshot_root: str) -> None:
    store = SnapshotStore(snapshot_root)
    w = store.begin("ds", "emb")
    w.write_table("items", _table(3))
    w.write_table("items", _table(2, offset=3))
    w.write_table("users", _table(4))
    snap = w.commit(inputs={"dataset": "v=x"}, config_hash="abc", extra={"metrics": {"r": 0.5}})
    assert store.latest_version("ds", "emb") == snap.version
    got = store.open("ds", "emb")
    assert got.version == snap.version
    assert got.read_table("items")["id"].to_pylist() == [0, 1, 2, 3, 4]
    assert got.read_table("items")["x"].to_pylist()[4] == 2.0
    assert got.rows("users") == 4 and got.rows("items") == 5
    m = got.manifest
    assert m["inputs"] == {"dataset": "v=x"} and m["config_hash"] == "abc"
    assert m["metrics"] == {"r": 0.5} and m["code_version"].startswith("0.1.0")
    assert m["tables"]["items"]["parts"] == ["part-00000.parquet", "part-00001.parquet"]
    assert [f["name"] for f in m["tables"]["items"]["schema"]] == ["id", "x"]
    assert sum(b.num_rows for b in got.iter_batches("items", batch_size=2)) == 5
    with pytest.raises(SnapshotError, match="no table 'nope'"):
        got.read_table("nope")


def test_reader_refuses_version_without_success(snapshot_root: str) -> None:
    store = SnapshotStore(snapshot_root)
    first = store.begin("ds", "a")
    first.write_table("t", _table(1))
    first.commit()
    w = store.begin("ds", "a", run_id="dead")
    w.write_table("t", _table(2))  # never committed
    with pytest.raises(SnapshotError, match="incomplete snapshot"):
        store.open("ds", "a", w.version)
    with pytest.raises(SnapshotError, match="no _SUCCESS"):
        store.set_latest("ds", "a", w.version)
    assert store.open("ds", "a").version == first.version


def test_no_snapshot_yet_is_a_clear_error(snapshot_root: str) -> None:
    with pytest.raises(SnapshotError, match="no committed snapshot yet"):
        SnapshotStore(snapshot_root).open("ds", "none")


def test_names_cannot_escape_the_root(snapshot_root: str) -> None:
    store = SnapshotStore(snapshot_root)
    for bad in ["../x", "a/b", "", ".."]:
        with pytest.raises(SnapshotError, match="invalid"):
            store.begin(bad, "a")
    with pytest.raises(SnapshotError, match="invalid version"):
        store.open("ds", "a", "../../etc")


def test_list_and_gc_keep_last_n(snapshot_root: str) -> None:
    store = SnapshotStore(snapshot_root)
    versions = []
    for i in range(4):
        w = store.begin("ds", "g", run_id=f"r{i}")
        w.write_table("t", _table(i + 1))
        versions.append(w.commit().version)
    dead = store.begin("ds", "g", run_id="zzdead")  # a crashed run: folder without _SUCCESS
    dead.write_table("t", _table(1))
    listed = store.list_versions("ds", "g")
    assert [v.version for v in listed if v.committed] == versions
    assert [v.latest for v in listed if v.committed] == [False, False, False, True]
    removed = store.gc("ds", "g", keep=2)
    assert sorted(removed) == sorted(versions[:2])  # the dead run is newer than LATEST: kept
    remaining = [v.version for v in store.list_versions("ds", "g")]
    assert versions[2] in remaining and versions[3] in remaining and dead.version in remaining
    assert store.open("ds", "g").read_table("t").num_rows == 4


def test_parts_from_several_writers_commit_together(snapshot_root: str) -> None:
    store = SnapshotStore(snapshot_root)
    lead = store.begin("ds", "multi")
    other = store.attach("ds", "multi", lead.version, part_prefix="rank1")
    lead_rank0 = store.attach("ds", "multi", lead.version, part_prefix="rank0")
    lead_rank0.write_table("rows", _table(3))
    other.write_table("rows", _table(2, offset=3))
    snap = lead.commit(extra_parts=[lead_rank0.parts_written(), other.parts_written()])
    assert snap.rows("rows") == 5
    assert sorted(store.open("ds", "multi").read_table("rows")["id"].to_pylist()) == [0, 1, 2, 3, 4]


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import pyarrow as pa
    from recalign.storage.snapshot import SnapshotStore
    root, point = sys.argv[1], sys.argv[2]
    store = SnapshotStore(root)
    w = store.begin("ds", "crash", run_id="crash")
    w.write_table("t", pa.table({"id": pa.array([10, 11], pa.int64())}))
    if point == "between_parts":
        os.kill(os.getpid(), signal.SIGKILL)
    w.write_table("t", pa.table({"id": pa.array([12], pa.int64())}))
    if point == "before_latest":
        # everything but the pointer: parts, manifest and _SUCCESS are written, LATEST is not
        w.commit(move_latest=False)
        os.kill(os.getpid(), signal.SIGKILL)
    w.commit()
""")


@pytest.mark.parametrize("point", ["between_parts", "before_latest"])
def test_writer_killed_leaves_previous_version_visible(snapshot_root: str, point: str) -> None:
    store = SnapshotStore(snapshot_root)
    w = store.begin("ds", "crash", run_id="good")
    w.write_table("t", pa.table({"id": pa.array([1, 2, 3], pa.int64())}))
    good = w.commit().version
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, snapshot_root, point],
                          env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr  # really killed, not a clean exit
    snap = store.open("ds", "crash")
    assert snap.version == good
    assert snap.read_table("t")["id"].to_pylist() == [1, 2, 3]
    crashed = [v for v in store.list_versions("ds", "crash") if v.version != good]
    assert len(crashed) == 1 and not crashed[0].latest
    assert crashed[0].committed == (point == "before_latest")
    # a rerun completes and moves the pointer
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, snapshot_root, "none"],
                          env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert store.open("ds", "crash").read_table("t")["id"].to_pylist() == [10, 11, 12]


def test_latest_pointer_is_one_small_object(snapshot_root: str) -> None:
    store = SnapshotStore(snapshot_root)
    w = store.begin("ds", "p")
    w.write_table("t", _table(1))
    v = w.commit().version
    fs, path = fsspec_filesystem(join(store.artifact_uri("ds", "p"), "LATEST"))
    with fs.open(path, "r") as f:
        assert f.read().strip() == v
    leftovers = [p for p in fs.ls(path.rsplit("/", 1)[0], detail=False) if ".LATEST." in p]
    assert leftovers == []


# --------------------------------------------------------------------------------------------
# storage failures: a StorageError naming the URI and what to check, never a credential
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, expect", [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
])
def test_disk_failures_name_the_uri(tmp_path, monkeypatch: pytest.MonkeyPatch, code: int,
                                    expect: str) -> None:
    import recalign.storage.snapshot as snapshot_mod

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    store = SnapshotStore(str(tmp_path / "root"))
    w = store.begin("ds", "a")
    monkeypatch.setattr(snapshot_mod.pq, "write_table", fail)
    with pytest.raises(StorageError) as exc:
        w.write_table("t", _table(2))
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'root'}/ds/a/v=") and "writing this part failed" in msg
    assert expect in msg and "\n" not in msg
    assert isinstance(exc.value, SnapshotError)  # callers that caught SnapshotError still do


def test_root_under_a_file_is_a_storage_error(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    store = SnapshotStore(str(tmp_path / "f" / "root"))
    with pytest.raises(StorageError, match=r"f/root/ds/a/LATEST: reading failed: a part of "
                                           r"this path is a file, not a folder"):
        store.latest_version("ds", "a")
    with pytest.raises(StorageError, match="a part of this path is a file"):
        store.begin("ds", "a").write_table("t", _table(1))


def test_s3_failures_say_what_to_check_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    secret = "s3cr3t-VALUE-never-printed"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://user:{secret}@127.0.0.1:9")
    uri = "s3://bucket/x/ds/a/LATEST"
    msg = str(storage_error(uri, "reading", NoCredentialsError()))
    assert msg.startswith(f"{uri}: reading failed: no usable AWS credentials")
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_PROFILE" in msg
    msg = str(storage_error(uri, "reading", EndpointConnectionError(
        endpoint_url=f"http://user:{secret}@127.0.0.1:9/bucket/x")))
    assert "the S3 endpoint http://127.0.0.1:9 did not answer" in msg and secret not in msg
    # s3fs raises an S3 AccessDenied response as a PermissionError caused by the ClientError
    denied = PermissionError(f"Access Denied for key {secret}")
    denied.__cause__ = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}},
                                   "PutObject")
    msg = str(storage_error("s3://bucket/x", "writing", denied))
    assert "access denied by the S3 store" in msg and secret not in msg
    assert "may read and write this bucket" in msg
