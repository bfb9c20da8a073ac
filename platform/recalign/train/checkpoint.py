"""Checkpoints: sharded table/optimizer state via torch.distributed.checkpoint, plus per-rank
loop state; stored by Ray Train (``ray.train.report(checkpoint=...)``) or, in-process, in the
run folder.

Layout of one checkpoint folder (every rank writes into its own local folder; Ray Train
uploads them into one checkpoint directory, the in-process store copies it)::

    .metadata, __<rank>_0.distcp   torch.distributed.checkpoint of {"model": state_dict,
                                   "optim": fused optimizer state} (sharded tensors per rank)
    rank-<r>.pt                    loop state: epoch, history, early-stopping state, RNG
                                   states (CPU and CUDA), dense optimizer, the task's own
                                   state; plain types and tensors, loaded with weights_only
    meta.json                      dims and ids counts, to refuse a mismatching resume
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from recalign.errors import ConfigError
from recalign.storage.uri import fsspec_filesystem, join


def save_local(folder: str, rank: int, sharded: dict[str, Any], rank_state: dict[str, Any],
               meta: dict[str, Any], distributed: bool) -> None:
    import torch.distributed.checkpoint as dcp

    os.makedirs(folder, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sharded, checkpoint_id=folder, no_dist=not distributed)
    torch.save(rank_state, os.path.join(folder, f"rank-{rank}.pt"))
    if rank == 0:
        Path(folder, "meta.json").write_text(json.dumps(meta, sort_keys=True))


def check_meta(folder: str, meta: dict[str, Any]) -> None:
    """A checkpoint written for another model shape is a clear error, not a crash in load."""
    p = Path(folder, "meta.json")
    if not p.exists():
        return
    old = json.loads(p.read_text())
    diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"train.resume: the checkpoint in {folder} does not match this run "
                          f"({what}); start a new run (train.resume: false or another "
                          f"train.run_name)")


def load_local(folder: str, rank: int, sharded: dict[str, Any],
               distributed: bool) -> dict[str, Any]:
    """Load in place into ``sharded`` (the same structure that was saved); return rank state."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sharded, checkpoint_id=folder, no_dist=not distributed)
    # plain types and tensors only (numpy RNG states are dicts of ints): nothing is unpickled
    return torch.load(os.path.join(folder, f"rank-{rank}.pt"), weights_only=True)


class FolderCheckpoints:
    """In-process checkpoint store: ``<run_dir>/checkpoints/epoch-<e>/`` and a ``LATEST``
    file written last (so a crash mid-copy leaves the previous checkpoint in charge)."""

    def __init__(self, run_dir: str, keep: int = 2) -> None:
        self.base = join(run_dir, "checkpoints")
        self.keep = keep

    def save(self, local: str, epoch: int) -> None:
        fs, base = fsspec_filesystem(self.base)
        name = f"epoch-{epoch:06d}"
        fs.makedirs(f"{base}/{name}", exist_ok=True)
        for f in sorted(os.listdir(local)):
            fs.put_file(os.path.join(local, f), f"{base}/{name}/{f}")
        with fs.open(f"{base}/LATEST", "w") as fh:
            fh.write(name)
        old = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)
                     if p.rsplit("/", 1)[-1].startswith("epoch-"))
        for stale in old[:-self.keep]:
            if stale != name:
                fs.rm(f"{base}/{stale}", recursive=True)

    def latest(self) -> str | None:
        """Download the latest checkpoint into a temp folder; None if there is none."""
        fs, base = fsspec_filesystem(self.base)
        try:
            with fs.open(f"{base}/LATEST", "r") as fh:
                name = fh.read().strip()
        except FileNotFoundError:
            return None
        local = tempfile.mkdtemp(prefix="recalign-ckpt-")
        for p in fs.ls(f"{base}/{name}", detail=False):
            fs.get_file(p, os.path.join(local, p.rsplit("/", 1)[-1]))
        return local


class BestWeights:
    """The best validation's weights as their own torch.distributed.checkpoint, written when
    validation improves and read once after training — not a second copy of every table held in
    memory or pickled into the loop state.

    ``<run_dir>/best/epoch-<e>/``: every rank writes its own shards (replicated tensors once)
    into a local folder, or — for object storage (``s3://``) — into a temporary folder whose
    files it then uploads (and downloads before loading). On a multi-node
    cluster ``output.root`` must be shared storage (s3, a shared filesystem), as for the run
    files. Older epochs are deleted after a newer one is complete; a resumed run that reaches
    the same improvement again rewrites it."""

    def __init__(self, run_dir: str, distributed: bool, rank: int, barrier: Any) -> None:
        self.base = join(run_dir, "best")
        self.distributed, self.rank, self.barrier = distributed, rank, barrier

    def _path(self, epoch: int) -> str:
        return f"{self.base}/epoch-{epoch:06d}"

    @staticmethod
    def _local(path: str) -> str | None:
        return path.split("://", 1)[-1] if "://" not in path or path.startswith("file://") \
            else None

    def save(self, state: dict[str, Any], epoch: int) -> None:
        import torch.distributed.checkpoint as dcp

        path = self._path(epoch)
        local = self._local(path)
        folder = local or tempfile.mkdtemp(prefix="recalign-best-")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcp.save(state, checkpoint_id=folder, no_dist=not self.distributed)
            if local is None:  # object storage: each rank uploads the files it wrote
                fs, base = fsspec_filesystem(path)
                for f in sorted(os.listdir(folder)):
                    fs.put_file(os.path.join(folder, f), f"{base}/{f}")
        finally:
            if local is None:
                shutil.rmtree(folder, ignore_errors=True)
        self.barrier()
        if self.rank == 0:  # the new one is complete on every rank: drop the older ones
            fs, base = fsspec_filesystem(self.base)
            for p in fs.ls(base, detail=False):
                name = p.rstrip("/").rsplit("/", 1)[-1]
                if name.startswith("epoch-") and name != f"epoch-{epoch:06d}":
                    fs.rm(p, recursive=True)

    def load(self, state: dict[str, Any], epoch: int) -> None:
        """In place into ``state`` (the same structure that was saved)."""
        import torch.distributed.checkpoint as dcp

        path = self._path(epoch)
        fs, base = fsspec_filesystem(path)
        if not fs.exists(base):
            raise ConfigError(f"the best weights of epoch {epoch} are missing from {path}: the "
                              "run folder lost them; start a new run")
        local = self._local(path)
        folder = local or tempfile.mkdtemp(prefix="recalign-best-")
        try:
            if local is None:
                for p in fs.ls(base, detail=False):
                    fs.get_file(p, os.path.join(folder, p.rsplit("/", 1)[-1]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcp.load(state, checkpoint_id=folder, no_dist=not self.distributed)
        finally:
            if local is None:
                shutil.rmtree(folder, ignore_errors=True)
