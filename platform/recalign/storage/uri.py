"""One place that turns a URI into filesystems.

Plain paths and ``file://`` map to the local filesystem; ``s3://`` maps to s3fs (Python IO)
and pyarrow's S3 filesystem (Arrow / Ray IO). Credentials come only from the standard AWS
environment (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ...), including ``AWS_ENDPOINT_URL`` for
S3-compatible stores, which a bare ``pyarrow.fs.S3FileSystem()`` would ignore.

Storage failures (no credentials, an endpoint that does not answer, access denied, a full or
read-only disk, a path through a file) become :class:`StorageError` through
:func:`storage_error`: one paragraph naming the URI and what to check, never a credential.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

from recalign.errors import SnapshotError

# s3fs clients fail in seconds on an endpoint that does not answer (botocore's own defaults:
# 60 s connect timeout, 5 attempts); AWS_MAX_ATTEMPTS / AWS_RETRY_MODE still win when set
S3_CONNECT_TIMEOUT_S = 5
S3_MAX_ATTEMPTS = 3
# credential values that must never reach a message
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_ACCESS_KEY_ID")
_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a "
                     "profile in ~/.aws or in AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE), "
                     "or run with an instance or pod role")


class StorageError(SnapshotError):
    """The storage under a URI failed or refused (credentials, endpoint, access, disk).

    A :class:`SnapshotError` so that callers that handled the earlier I/O errors keep doing so.
    """


def split_uri(uri: str) -> tuple[str, str]:
    """(scheme, path-without-scheme). A plain path gets scheme ``file`` and is made absolute."""
    if "://" not in uri:
        return "file", str(Path(uri).expanduser().absolute())
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        return "file", str(Path(parsed.path).absolute())
    if scheme in ("s3", "s3a"):
        return "s3", f"{parsed.netloc}{parsed.path}".rstrip("/")
    raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r} (expected a path, file:// or s3://)")


def absolute_local(uri: str | None) -> str | None:
    """``uri`` with a relative local path made absolute against this process's working
    directory (``s3://`` and None unchanged). For a process that ships paths to another one
    that runs elsewhere (a Ray Train worker's working directory is its run's artifact folder)."""
    if uri is None or ("://" in uri and not uri.lower().startswith("file://")):
        return uri
    if uri.lower().startswith("file://"):
        return "file://" + str(Path(urlparse(uri).path).absolute())
    return str(Path(uri).expanduser().absolute())


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def fsspec_filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """An fsspec filesystem and the path inside it for ``uri``."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        return fsspec.filesystem("file"), path
    kwargs: dict = {"config_kwargs": _botocore_config()}
    endpoint = _endpoint()
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    # a fresh instance: cached s3fs instances keep connections to servers that may be gone
    return fsspec.filesystem("s3", skip_instance_cache=True, **kwargs), path


def _botocore_config() -> dict:
    config: dict = {"connect_timeout": S3_CONNECT_TIMEOUT_S}
    if not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
        config["retries"] = {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}
    return config


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for ``uri``."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        return pafs.LocalFileSystem(), path
    endpoint = _endpoint()
    kwargs: dict = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), path


# --------------------------------------------------------------------------------------------
# storage failures -> one-paragraph errors
# --------------------------------------------------------------------------------------------

def storage_exceptions() -> tuple[type[BaseException], ...]:
    """What storage I/O raises: OSError (pyarrow, fsspec, s3fs) and botocore's own errors."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError)


def redact(text: str) -> str:
    """``text`` on one line, without URL user info or any credential value of the environment."""
    text = re.sub(r"(?<=://)[^/@\s\"']+@", "***@", text)
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return " ".join(text.split())


def _endpoint_of(exc: BaseException) -> str:
    """scheme://host[:port] the client tried (from the error, else the environment)."""
    url = str(getattr(exc, "kwargs", {}).get("endpoint_url") or _endpoint() or "")
    parsed = urlparse(url)
    if parsed.scheme and parsed.hostname:
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{parsed.hostname}{port}"
    return "the default AWS S3 endpoint"


def _endpoint_hint(endpoint: str) -> str:
    where = ("AWS_ENDPOINT_URL" if _endpoint() else
             "AWS_ENDPOINT_URL (unset: the AWS default) and the network")
    return (f"the S3 endpoint {endpoint} did not answer; check {where}, and that the server "
            f"is running and reachable from here")


def _reason(uri: str | None, exc: BaseException) -> str | None:
    """What went wrong and what to check, for a storage failure we recognise; else None."""
    text = redact(str(exc))
    try:
        import botocore.exceptions as bx
    except ImportError:
        bx = None
    # s3fs raises S3 error responses as OSErrors caused by botocore's ClientError
    s3 = (uri or "").lower().startswith(("s3://", "s3a://")) or (
        bx is not None and isinstance(exc.__cause__, bx.ClientError))
    if bx is not None:
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError,
                            bx.CredentialRetrievalError, bx.ProfileNotFound)):
            return f"no usable AWS credentials ({text}); {_CREDENTIALS_HINT}"
        if isinstance(exc, (bx.ConnectionError, bx.ReadTimeoutError, bx.ConnectionClosedError)):
            return f"{_endpoint_hint(_endpoint_of(exc))} ({type(exc).__name__})"
        if isinstance(exc, bx.NoRegionError):
            return "no AWS region configured; set AWS_REGION or AWS_DEFAULT_REGION"
    if not isinstance(exc, OSError):
        return None
    # the file it failed on: OSError.filename (Python, fsspec) or the message (pyarrow's)
    name = str(exc.filename) if exc.filename else None
    on = "" if name == uri else f" ({redact(name)})" if name else f" ({text})" if text else ""
    code = exc.errno
    if code == errno.ENOSPC:
        return f"no space left on the device{on}; free space or write somewhere else"
    if code == getattr(errno, "EDQUOT", -1):
        return f"disk quota exceeded{on}; free space or write somewhere else"
    if code == errno.EROFS:
        return f"read-only file system{on}; write somewhere writable"
    if s3:
        # s3fs turns S3 error codes into OSError subclasses; pyarrow's S3 errors are plain
        # OSErrors that name the AWS error
        if isinstance(exc, PermissionError) or "ACCESS_DENIED" in text or "HTTP status 403" in text:
            return (f"access denied by the S3 store ({text}); check that the credentials "
                    f"(AWS_PROFILE or AWS_ACCESS_KEY_ID) may read and write this bucket and "
                    f"prefix")
        if "NETWORK_CONNECTION" in text or "curlCode" in text:
            return f"{_endpoint_hint(_endpoint_of(exc))} ({text})"
        if (isinstance(exc, FileNotFoundError) or "NO_SUCH_BUCKET" in text
                or re.search(r"bucket '[^']*' not found", text, re.IGNORECASE)):
            return f"not found ({text}); check that the bucket exists"
        return None
    if isinstance(exc, PermissionError):
        return (f"permission denied{on}; check that this user may read and write there "
                f"(owner and mode of the folder), or use another folder")
    if isinstance(exc, NotADirectoryError):
        return f"a part of this path is a file, not a folder{on}"
    if isinstance(exc, FileExistsError):
        return f"a file is in the way where a folder is needed{on}"
    if isinstance(exc, FileNotFoundError):
        return f"not found{on}"
    return None


def explain_failure(uri: str | None, exc: BaseException) -> str | None:
    """``uri: what went wrong; what to check`` for a storage failure we recognise, else None
    (without ``uri``: the message names the path when the error does)."""
    reason = _reason(uri, exc)
    if reason is None or uri is None:
        return reason
    return f"{uri}: {reason}"


def storage_error(uri: str, what: str, exc: BaseException) -> StorageError:
    """A storage failure while doing ``what`` on ``uri`` as a one-paragraph StorageError."""
    reason = _reason(uri, exc)
    if reason is not None:
        return StorageError(f"{uri}: {what} failed: {reason}")
    return StorageError(f"{uri}: {what} failed ({type(exc).__name__}: {redact(str(exc))})")
