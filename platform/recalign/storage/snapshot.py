"""Versioned snapshots on any filesystem (local folder or S3), safe against a crash anywhere.

Layout (ARCHITECTURE.md)::

    <root>/<dataset>/<artifact>/v=<YYYYMMDDTHHMMSS>-<run_id>/<table>/part-00000.parquet
                                                           /manifest.json
                                                           /_SUCCESS
    <root>/<dataset>/<artifact>/LATEST

Commit order is parts -> manifest.json -> _SUCCESS -> LATEST. A reader trusts only a version
with ``_SUCCESS`` that LATEST names (or that is asked for by name), so a writer killed at any
point leaves an unreferenced folder and never a half-visible snapshot. LATEST is one small
object: an atomic rename locally, a single PUT on S3 (atomic there).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recalign import __version__
from recalign.errors import SnapshotError
from recalign.storage.uri import (arrow_filesystem, fsspec_filesystem, join, split_uri,
                                  storage_error, storage_exceptions)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^v=\d{8}T\d{6}-[A-Za-z0-9_-]+$")
MANIFEST, SUCCESS, LATEST = "manifest.json", "_SUCCESS", "LATEST"


@contextmanager
def _storage(uri: str, what: str) -> Iterator[None]:
    """Storage failures inside (no credentials, dead endpoint, access denied, disk full or
    read-only, the object store went away) as a StorageError naming ``uri``."""
    try:
        yield
    except storage_exceptions() as exc:
        raise storage_error(uri, what, exc) from exc


def _check_name(kind: str, name: str) -> str:
    # names become path segments: refuse anything that could escape the root
    if not _NAME.match(name) or name in (".", ".."):
        raise SnapshotError(f"invalid {kind} name {name!r}: expected letters, digits, '.', '_' "
                            f"or '-' (at most 128 characters, not starting with a symbol)")
    return name


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _schema_json(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


@dataclass
class VersionInfo:
    version: str
    committed: bool
    latest: bool
    created_at: float | None


class Snapshot:
    """A committed, readable snapshot version."""

    def __init__(self, uri: str, manifest: dict[str, Any]) -> None:
        self.uri = uri
        self.manifest = manifest

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        return self.manifest["tables"]

    def part_uris(self, table: str) -> list[str]:
        if table not in self.tables:
            raise SnapshotError(f"{self.uri}: no table {table!r} in this snapshot "
                                f"(it has: {', '.join(sorted(self.tables)) or 'none'})")
        return [join(self.uri, table, p) for p in self.tables[table]["parts"]]

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        fs, _ = arrow_filesystem(self.uri)
        paths = [split_uri(u)[1] for u in self.part_uris(table)]
        if not paths:
            return pa.schema([]).empty_table()
        with _storage(join(self.uri, table), "reading this table"):
            tables = [pq.read_table(p, filesystem=fs, columns=columns) for p in paths]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def iter_batches(self, table: str, batch_size: int = 65536,
                     columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        fs, _ = arrow_filesystem(self.uri)
        for uri in self.part_uris(table):
            with _storage(uri, "reading this part"), fs.open_input_file(split_uri(uri)[1]) as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)

    def rows(self, table: str) -> int:
        return int(self.tables[table]["rows"])


class SnapshotWriter:
    """Writes the parts of one new version, then commits it.

    Several processes may write parts of the same version (e.g. each Ray Train worker its own
    rows): each opens a writer with :meth:`SnapshotStore.attach` and a distinct ``part_prefix``;
    the committing process passes their part lists to :meth:`commit` via ``extra_parts``.
    """

    def __init__(self, store: "SnapshotStore", dataset: str, artifact: str, version: str,
                 part_prefix: str = "part") -> None:
        self.store, self.dataset, self.artifact, self.version = store, dataset, artifact, version
        self.uri = join(store.artifact_uri(dataset, artifact), version)
        self.part_prefix = part_prefix
        self._parts: dict[str, list[str]] = {}
        self._rows: dict[str, int] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self.committed = False

    def write_table(self, table_name: str, table: pa.Table | pa.RecordBatch) -> str:
        """Write one more part of ``table_name``; returns the part's URI."""
        _check_name("table", table_name)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        parts = self._parts.setdefault(table_name, [])
        name = f"{self.part_prefix}-{len(parts):05d}.parquet"
        uri = join(self.uri, table_name, name)
        with _storage(uri, "writing this part"):
            fs, path = arrow_filesystem(uri)
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pq.write_table(table, path, filesystem=fs)
        parts.append(name)
        self._rows[table_name] = self._rows.get(table_name, 0) + table.num_rows
        prev = self._schemas.get(table_name)
        if prev is not None and not prev.equals(table.schema):
            raise SnapshotError(f"{uri}: part schema differs from earlier parts of "
                                f"{table_name!r}:\n{table.schema}\nvs\n{prev}")
        self._schemas[table_name] = table.schema
        return uri

    def parts_written(self) -> dict[str, dict[str, Any]]:
        """Part lists, row counts and schemas: what another process's commit needs."""
        return {t: {"parts": list(p), "rows": self._rows[t], "schema": _schema_json(self._schemas[t])}
                for t, p in self._parts.items()}

    def write_json(self, name: str, obj: Any) -> None:
        """A small side file in the version folder (e.g. curves); listed in the manifest."""
        _check_name("file", name)
        uri = join(self.uri, name)
        with _storage(uri, "writing this file"):
            fs, path = fsspec_filesystem(uri)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(path, "w") as f:
                json.dump(obj, f, indent=1)

    def write_bytes(self, name: str, data: bytes) -> None:
        _check_name("file", name)
        uri = join(self.uri, name)
        with _storage(uri, "writing this file"):
            fs, path = fsspec_filesystem(uri)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(data)

    def commit(self, *, inputs: dict[str, str] | None = None, config_hash: str | None = None,
               fingerprint: str | None = None, extra: dict[str, Any] | None = None,
               extra_parts: list[dict[str, dict[str, Any]]] | None = None,
               move_latest: bool = True) -> Snapshot:
        """manifest.json -> _SUCCESS -> LATEST. Parts from other writers come in ``extra_parts``."""
        with _storage(self.uri, "committing this version"):
            return self._commit(inputs=inputs, config_hash=config_hash, fingerprint=fingerprint,
                                extra=extra, extra_parts=extra_parts, move_latest=move_latest)

    def _commit(self, *, inputs: dict[str, str] | None, config_hash: str | None,
                fingerprint: str | None, extra: dict[str, Any] | None,
                extra_parts: list[dict[str, dict[str, Any]]] | None,
                move_latest: bool) -> Snapshot:
        if self.committed:
            raise SnapshotError(f"{self.uri}: already committed")
        tables = self.parts_written()
        for other in extra_parts or []:
            for t, info in other.items():
                mine = tables.setdefault(t, {"parts": [], "rows": 0, "schema": info["schema"]})
                mine["parts"] = sorted(mine["parts"] + info["parts"])
                mine["rows"] += info["rows"]
        fs, base = fsspec_filesystem(self.uri)
        for t, info in tables.items():  # every listed part must exist before we publish
            for p in info["parts"]:
                if not fs.exists(f"{base}/{t}/{p}"):
                    raise SnapshotError(f"{self.uri}: part {t}/{p} is missing; not committing")
        manifest = {
            "format": 1,
            "dataset": self.dataset,
            "artifact": self.artifact,
            "version": self.version,
            "created_at": time.time(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tables": tables,
            "inputs": inputs or {},
            "config_hash": config_hash,
            "fingerprint": fingerprint,
            "code_version": code_version(),
            **(extra or {}),
        }
        fs.makedirs(base, exist_ok=True)
        with fs.open(f"{base}/{MANIFEST}", "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        with fs.open(f"{base}/{SUCCESS}", "w") as f:
            f.write("")
        if move_latest:
            self.store.set_latest(self.dataset, self.artifact, self.version)
        self.committed = True
        return Snapshot(self.uri, manifest)


class SnapshotStore:
    """Snapshots under one root URI (a local folder, ``file://`` or ``s3://bucket/prefix``)."""

    def __init__(self, root: str) -> None:
        # a plain relative path is made absolute so that URIs in summaries and manifests
        # stay valid from any working directory
        self.root = (root if "://" in root else str(Path(root).expanduser().absolute())).rstrip("/") or "/"

    def artifact_uri(self, dataset: str, artifact: str) -> str:
        return join(self.root, _check_name("dataset", dataset), _check_name("artifact", artifact))

    def begin(self, dataset: str, artifact: str, run_id: str | None = None) -> SnapshotWriter:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        run_id = run_id or secrets.token_hex(4)
        return SnapshotWriter(self, dataset, artifact, f"v={stamp}-{_check_name('run id', run_id)}")

    def attach(self, dataset: str, artifact: str, version: str, part_prefix: str) -> SnapshotWriter:
        """A writer for more parts of a version another process began (and will commit)."""
        if not _VERSION.match(version):
            raise SnapshotError(f"invalid version name {version!r}")
        return SnapshotWriter(self, dataset, artifact, version, part_prefix=part_prefix)

    def set_latest(self, dataset: str, artifact: str, version: str) -> None:
        uri = self.artifact_uri(dataset, artifact)
        with _storage(join(uri, LATEST), f"pointing LATEST at {version}"):
            self._set_latest(uri, version)

    def _set_latest(self, artifact_uri: str, version: str) -> None:
        fs, base = fsspec_filesystem(artifact_uri)
        if not fs.exists(f"{base}/{version}/{SUCCESS}"):
            raise SnapshotError(f"refusing to point LATEST at {version}: it has no {SUCCESS}")
        scheme, _ = split_uri(self.root)
        if scheme == "file":
            tmp = Path(base) / f".{LATEST}.{uuid.uuid4().hex}"
            tmp.write_text(version + "\n")
            os.replace(tmp, Path(base) / LATEST)
        else:
            with fs.open(f"{base}/{LATEST}", "w") as f:
                f.write(version + "\n")

    def latest_version(self, dataset: str, artifact: str) -> str | None:
        uri = join(self.artifact_uri(dataset, artifact), LATEST)
        fs, base = fsspec_filesystem(self.artifact_uri(dataset, artifact))
        with _storage(uri, "reading"):
            try:
                with fs.open(f"{base}/{LATEST}", "r") as f:
                    version = f.read().strip()
            except FileNotFoundError:
                return None
        if not _VERSION.match(version):
            raise SnapshotError(f"{base}/{LATEST} names an invalid version {version!r}")
        return version

    def open(self, dataset: str, artifact: str, version: str | None = None) -> Snapshot:
        """The version named by LATEST (default) or by ``version``; refuses one without _SUCCESS."""
        art = self.artifact_uri(dataset, artifact)
        if version is None:
            version = self.latest_version(dataset, artifact)
            if version is None:
                raise SnapshotError(f"{art}: no committed snapshot yet (no {LATEST})")
        elif not _VERSION.match(version):
            raise SnapshotError(f"invalid version name {version!r} (expected v=YYYYMMDDTHHMMSS-ID)")
        uri = join(art, version)
        fs, base = fsspec_filesystem(uri)
        with _storage(uri, "opening this snapshot"):
            if not fs.exists(f"{base}/{SUCCESS}"):
                raise SnapshotError(f"{uri}: incomplete snapshot (no {SUCCESS}); refusing to "
                                    f"read it")
            with fs.open(f"{base}/{MANIFEST}", "r") as f:
                manifest = json.load(f)
        return Snapshot(uri, manifest)

    def try_open(self, dataset: str, artifact: str) -> Snapshot | None:
        if self.latest_version(dataset, artifact) is None:
            return None
        return self.open(dataset, artifact)

    def list_versions(self, dataset: str, artifact: str) -> list[VersionInfo]:
        """Every version folder, oldest first (committed ones by their manifest time)."""
        art = self.artifact_uri(dataset, artifact)
        fs, base = fsspec_filesystem(art)
        with _storage(art, "listing versions"):
            try:
                entries = fs.ls(base, detail=False)
            except FileNotFoundError:
                return []
        latest = self.latest_version(dataset, artifact)
        out = []
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not _VERSION.match(name):
                continue
            with _storage(join(art, name), "reading"):
                committed = fs.exists(f"{base}/{name}/{SUCCESS}")
                created = None
                if committed:
                    with fs.open(f"{base}/{name}/{MANIFEST}", "r") as f:
                        created = json.load(f).get("created_at")
            out.append(VersionInfo(name, committed, name == latest, created))
        out.sort(key=lambda v: (v.created_at if v.created_at is not None else float("inf"), v.version))
        return out

    def gc(self, dataset: str, artifact: str, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` committed versions (never LATEST's), and the
        uncommitted leftovers of dead runs older than LATEST. Returns removed versions."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        versions = self.list_versions(dataset, artifact)
        committed = [v for v in versions if v.committed]
        latest = next((v for v in versions if v.latest), None)
        doomed = [v for v in committed[:-keep] if not v.latest]
        if latest is not None:
            # a version folder without _SUCCESS that is older than LATEST belongs to a run
            # that died (a live writer's version is newer than the LATEST it started from)
            doomed += [v for v in versions if not v.committed and v.version < latest.version]
        art = self.artifact_uri(dataset, artifact)
        fs, base = fsspec_filesystem(art)
        for v in doomed:
            with _storage(join(art, v.version), "removing this old version"):
                fs.rm(f"{base}/{v.version}", recursive=True)
        return [v.version for v in doomed]

    def artifacts(self, dataset: str) -> list[str]:
        uri = join(self.root, _check_name("dataset", dataset))
        fs, base = fsspec_filesystem(uri)
        with _storage(uri, "listing artifacts"):
            try:
                return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(base, detail=False))
            except FileNotFoundError:
                return []
