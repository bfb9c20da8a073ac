"""One place that turns a URI into filesystems.

Plain paths and ``file://`` map to the local filesystem; ``s3://`` maps to s3fs (Python IO)
and pyarrow's S3 filesystem (Arrow / Ray IO). Credentials come only from the standard AWS
environment (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ...), including ``AWS_ENDPOINT_URL`` for
S3-compatible stores, which a bare ``pyarrow.fs.S3FileSystem()`` would ignore.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs


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
    kwargs: dict = {}
    endpoint = _endpoint()
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    # a fresh instance: cached s3fs instances keep connections to servers that may be gone
    return fsspec.filesystem("s3", skip_instance_cache=True, **kwargs), path


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
