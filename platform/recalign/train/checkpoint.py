"""Checkpoints: sharded table/optimizer state via torch.distributed.checkpoint, plus per-rank
loop state; stored by Ray Train (``ray.train.report(checkpoint=...)``) or, in-process, in the
run folder.

Layout of one checkpoint folder (every rank writes into its own local folder; Ray Train
uploads them into one checkpoint directory, the in-process store copies it)::

    .metadata, __<rank>_0.distcp   torch.distributed.checkpoint of {"model": state_dict,
                                   "optim": fused optimizer state} (sharded tensors per rank)
    rank-<r>.pt                    loop state: epoch, history, early-stopping state, best
                                   weights of this rank's shards, RNG states, dense optimizer
    meta.json                      dims and ids counts, to refuse a mismatching resume
"""

from __future__ import annotations

import json
import os
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
    return torch.load(os.path.join(folder, f"rank-{rank}.pt"), weights_only=False)


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
