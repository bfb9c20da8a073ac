"""Jobs at the edges of their environment: an output root on an S3 endpoint that does not
answer, S3 without credentials, a local root that cannot be written. Each must end in the
one-paragraph ``error: ...`` naming the URI and exit code 2 that every bad input gets, never a
traceback, and never print a credential."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recalign.jobs.common import run_job

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"  # must never reach stderr
KEY_ID = "AKIAEXAMPLEKEYID0001"


def _data(tmp_path: Path) -> Path:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "interactions.csv").write_text(
        "user_id,item_id,rating\n" + "".join(f"u{u},i{i},4\n" for u in range(6) for i in range(5)))
    return folder


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without any AWS setting (the S3 fixture sets some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra)
    return env


def _ingest(tmp_path: Path, root: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "recalign.jobs.ingest", "--set", "data.source=csv",
            "--set", f"data.path={_data(tmp_path)}", "--set", f"output.root={root}"]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def _one_paragraph_error(p: subprocess.CompletedProcess, names: str) -> str:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], p.stderr
    assert names in errors[0], errors[0]
    assert SECRET not in p.stderr and KEY_ID not in p.stderr
    return errors[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def test_s3_endpoint_that_does_not_answer(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    env = _env(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=KEY_ID,
               AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
    t0 = time.monotonic()
    p = _ingest(tmp_path, "s3://bucket/x", env)
    msg = _one_paragraph_error(p, "s3://bucket/x")
    assert f"endpoint {endpoint} did not answer" in msg and "AWS_ENDPOINT_URL" in msg
    assert time.monotonic() - t0 < 60  # seconds, not minutes of retries


def test_s3_without_credentials(tmp_path: Path, s3_bucket: str, s3_endpoint: str) -> None:
    env = _env(AWS_ENDPOINT_URL=s3_endpoint, AWS_DEFAULT_REGION="us-east-1",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
               AWS_CONFIG_FILE=str(tmp_path / "no-config"), AWS_EC2_METADATA_DISABLED="true")
    p = _ingest(tmp_path, f"{s3_bucket}/x", env)
    msg = _one_paragraph_error(p, f"{s3_bucket}/x")
    assert "no usable AWS credentials" in msg and "AWS_PROFILE" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root, which ignores permission bits: "
                    "test_local_root_under_a_file covers an unwritable root instead")
def test_local_root_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        p = _ingest(tmp_path, str(locked / "root"), _env())
    finally:
        locked.chmod(0o700)
    msg = _one_paragraph_error(p, str(locked / "root"))
    assert "permission denied" in msg


def test_local_root_under_a_file(tmp_path: Path) -> None:
    """A root whose parent is a regular file cannot be created, whoever runs the job."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    p = _ingest(tmp_path, str(blocker / "sub"), _env())
    msg = _one_paragraph_error(p, str(blocker / "sub"))
    assert "a part of this path is a file, not a folder" in msg


# --------------------------------------------------------------------------------------------
# run_job: the last line of defence for OS errors a job did not translate
# --------------------------------------------------------------------------------------------

def _run_raising(exc: BaseException, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    def run(cfg, args):  # noqa: ANN001, ANN202 - a job's run function
        raise exc

    rc = run_job(argparse.Namespace(config=None, overrides=[]), run)
    out = capsys.readouterr()
    assert out.out == ""
    return rc, out.err


@pytest.mark.parametrize("exc, expect", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out/x.parquet"),
     "permission denied"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.parquet"), "no space left"),
    (OSError(errno.EROFS, "Read-only file system", "/data/out/x.parquet"), "read-only file system"),
])
def test_run_job_turns_escaped_os_errors_into_exit_2(exc: OSError, expect: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    rc, err = _run_raising(exc, capsys)
    assert rc == 2 and err.startswith("error: /data/out/x.parquet: ") and expect in err
    assert len(err.strip().splitlines()) == 1


def test_run_job_never_prints_credentials(capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import EndpointConnectionError

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{KEY_ID}:{SECRET}@127.0.0.1:1")
    rc, err = _run_raising(EndpointConnectionError(
        endpoint_url=f"http://{KEY_ID}:{SECRET}@127.0.0.1:1/b/k"), capsys)
    assert rc == 2 and "http://127.0.0.1:1 did not answer" in err
    assert SECRET not in err and KEY_ID not in err
    rc, err = _run_raising(OSError(errno.ENOSPC, f"disk full, token {SECRET}"), capsys)
    assert rc == 2 and SECRET not in err and "no space left" in err


def test_run_job_keeps_the_traceback_of_other_errors() -> None:
    def run(cfg, args):  # noqa: ANN001, ANN202
        raise ZeroDivisionError("a bug, not an input problem")

    with pytest.raises(ZeroDivisionError):
        run_job(argparse.Namespace(config=None, overrides=[]), run)
