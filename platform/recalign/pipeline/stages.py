"""The nightly pipeline's bookkeeping: stage order, stage keys, completion markers, the plan.

A stage's *key* hashes everything its output depends on: the versions of its input snapshots
(or the raw input fingerprint for ingest) and the config sections it reads. After a stage
finishes, a marker ``<root>/<dataset>/nightly/<stage>.json`` records its key and the snapshot
versions it left as LATEST. The next night skips the stage when the key is the same and those
versions are still LATEST (anything else — new data, changed config, a version written by hand
in between — reruns it). Markers are written after the stage's own snapshots are committed, so
a crash between the two only costs a rerun of that stage, never a wrong skip.

Stages run in order; a stage whose upstream ran this night is re-keyed after the upstream
finished (its inputs may or may not have changed: profiles and embed write no new version when
nothing changed, and then downstream stages are skipped too).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recalign.errors import ConfigError
from recalign.storage.uri import fsspec_filesystem, join, split_uri

#: pipeline order (``--from`` / ``--only`` take these names); ``graphs`` (LLMRG reasoning
#: graphs) is enabled by ``llmrg.enabled`` rather than listed in ``nightly.stages``
STAGES: tuple[str, ...] = ("ingest", "profiles", "embed", "graphs", "train", "export")
MARKERS = "nightly"


def stage_key(parts: dict[str, Any]) -> str:
    """Hash of a stage's inputs (versions, fingerprints, config hashes)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def select_stages(enabled: list[str], start: str | None = None,
                  only: list[str] | None = None) -> list[str]:
    """The stages to consider tonight, in pipeline order."""
    for name in [*enabled, *([start] if start else []), *(only or [])]:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r} (expected one of: {', '.join(STAGES)})")
    chosen = [s for s in STAGES if s in enabled]
    if start is not None:
        chosen = chosen[chosen.index(start):] if start in chosen else []
    if only:
        chosen = [s for s in chosen if s in only]
    return chosen


@dataclass
class Marker:
    stage: str
    key: str
    outputs: dict[str, str]  # artifact -> version left as LATEST
    finished_at: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


class MarkerStore:
    """Completion markers of one dataset's pipeline (local folder or s3, like snapshots)."""

    def __init__(self, root: str, dataset: str) -> None:
        self.uri = join(root, dataset, MARKERS)

    def _path(self, stage: str) -> str:
        if stage not in STAGES:  # names are fixed: nothing from data becomes a path
            raise ValueError(f"unknown stage {stage!r}")
        return f"{split_uri(self.uri)[1]}/{stage}.json"

    def get(self, stage: str) -> Marker | None:
        fs, _ = fsspec_filesystem(self.uri)
        try:
            with fs.open(self._path(stage), "r") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # not ours or damaged: rerun the stage rather than trust it
            return None
        try:
            return Marker(**raw)
        except TypeError:  # other fields (another version's marker): rerun rather than trust it
            return None

    def put(self, marker: Marker) -> None:
        """Atomic: a temp file renamed into place (local) or one PUT (s3)."""
        fs, base = fsspec_filesystem(self.uri)
        body = json.dumps(marker.__dict__, indent=1, sort_keys=True, default=str)
        path = self._path(marker.stage)
        if split_uri(self.uri)[0] == "file":
            Path(base).mkdir(parents=True, exist_ok=True)
            tmp = Path(base) / f".{marker.stage}.{uuid.uuid4().hex}"
            tmp.write_text(body)
            os.replace(tmp, path)
        else:
            with fs.open(path, "w") as f:
                f.write(body)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Decision:
    stage: str
    action: str  # run | skip
    reason: str
    key: str | None = None


def decide(stage: str, key: str | None, marker: Marker | None, latest: dict[str, str | None],
           *, force: bool = False, upstream_ran: list[str] | None = None) -> Decision:
    """Run or skip ``stage``. ``key`` None: unknown until an upstream stage has run.
    ``latest``: current LATEST version of each artifact the marker recorded."""
    if force:
        return Decision(stage, "run", "forced (--force)", key)
    if key is None:
        return Decision(stage, "run", f"its inputs come from {', '.join(upstream_ran or [])}, "
                        "which runs first", key)
    if marker is None:
        return Decision(stage, "run", "never completed for this dataset", key)
    if marker.key != key:
        return Decision(stage, "run", "inputs or config changed since " + marker.finished_at, key)
    moved = [a for a, v in marker.outputs.items() if latest.get(a) != v]
    if moved:
        return Decision(stage, "run", f"its output {', '.join(moved)} is no longer the version "
                        "it wrote", key)
    return Decision(stage, "skip", f"unchanged since {marker.finished_at}", key)
