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
    meta.json                      dims and ids counts, to refuse a mismatching resume; the
                                   number of ranks that wrote it

Another number of ranks may resume it: the tables and the fused optimizer's row state are
keyed by table, not by shard (:func:`recalign.tables.optim.fused_state`), and
torch.distributed.checkpoint reshards them by row offsets; the loop state is the same on every
rank (one seed, replicated dense parameters), so a rank that did not write one reads rank 0's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from recalign.errors import ConfigError
from recalign.storage.uri import fsspec_filesystem, join


def save_local(folder: str, rank: int, sharded: dict[str, Any], rank_state: dict[str, Any],
               meta: dict[str, Any], distributed: bool, world: int = 1) -> None:
    import torch.distributed.checkpoint as dcp

    os.makedirs(folder, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sharded, checkpoint_id=folder, no_dist=not distributed)
    torch.save(rank_state, os.path.join(folder, f"rank-{rank}.pt"))
    if rank == 0:
        Path(folder, "meta.json").write_text(json.dumps({**meta, "ranks": world}, sort_keys=True))


#: in a temporary copy of a checkpoint (:func:`latest_checkpoint`): where it was copied from
COPIED_FROM = "copied_from.txt"


def check_meta(folder: str, meta: dict[str, Any]) -> int | None:
    """A checkpoint written for another model shape is a clear error, not a crash in load.
    Returns how many ranks wrote it (None: not recorded)."""
    p = Path(folder, "meta.json")
    if not p.exists():
        return None
    old = json.loads(p.read_text())
    src = Path(folder, COPIED_FROM)
    where = src.read_text() if src.exists() else folder
    diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"train.resume: the checkpoint in {where} does not match this run "
                          f"({what}); start a new run (train.resume: false or another "
                          f"train.run_name)")
    return old.get("ranks")


def load_local(folder: str, rank: int, sharded: dict[str, Any],
               distributed: bool) -> dict[str, Any]:
    """Load in place into ``sharded`` (the same structure that was saved); return rank state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dcp.load(sharded, checkpoint_id=folder, no_dist=not distributed)
        except (Exception, CheckpointException) as exc:  # DCP names a key deep inside
            raise ConfigError(f"train.resume: the checkpoint in {folder} does not fit this run's "
                              f"state (written by another recalign version or model layout: "
                              f"{str(exc).strip().splitlines()[-1][:300]}); start a new run "
                              "(train.resume: false or another train.run_name)") from exc
    path = os.path.join(folder, f"rank-{rank}.pt")
    if not os.path.exists(path):  # written by fewer ranks: the loop state is every rank's
        path = os.path.join(folder, "rank-0.pt")
    # plain types and tensors only (numpy RNG states are dicts of ints): nothing is unpickled
    return torch.load(path, weights_only=True)


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

    def latest(self) -> tuple[int, str] | None:
        """(epoch, folder) of the checkpoint ``LATEST`` names (it is written last, so it only
        ever names a complete one), or None."""
        fs, base = fsspec_filesystem(self.base)
        try:
            with fs.open(f"{base}/LATEST", "r") as fh:
                name = fh.read().strip()
        except FileNotFoundError:
            return None
        e = _epoch_of(name, "epoch-")
        return None if e is None else (e, f"{base}/{name}")


def _epoch_of(name: str, prefix: str) -> int | None:
    tail = name[len(prefix):] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def _complete(fs: Any, folder: str) -> bool:
    """Every file a checkpoint needs is there: the DCP metadata, meta.json and the loop state
    of every rank it names (Ray Train uploads the ranks' files one by one)."""
    try:
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}
        if not {".metadata", "meta.json"} <= names:
            return False
        with fs.open(f"{folder}/meta.json", "r") as fh:
            ranks = int(json.load(fh).get("ranks", 1))
    except (OSError, ValueError):
        return False
    return all(f"rank-{r}.pt" in names for r in range(ranks))


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint of a run, whichever wrote it — the in-process store
    (``checkpoints/epoch-<e>``, :class:`FolderCheckpoints`) or Ray Train
    (``checkpoint_epoch-<e>``, the ranks' folders merged) — copied into a temporary folder;
    None if there is none. So ``train.resume`` continues a run whether it ran in process or
    on Ray Train workers before, on any number of workers."""
    fs, base = fsspec_filesystem(run_dir)
    own = FolderCheckpoints(run_dir).latest()
    found: list[tuple[int, str]] = [own] if own else []
    if fs.exists(base):
        for p in fs.ls(base, detail=False):
            e = _epoch_of(p.rstrip("/").rsplit("/", 1)[-1], "checkpoint_epoch-")
            if e is not None and _complete(fs, p.rstrip("/")):
                found.append((e, p.rstrip("/")))
    if not found:
        return None
    _, src = max(found)

    def fill(local: str) -> None:
        for p in fs.ls(src, detail=False):
            fs.get_file(p, os.path.join(local, p.rstrip("/").rsplit("/", 1)[-1]))
        # errors about the copy name the checkpoint it came from, not a temporary folder
        Path(local, COPIED_FROM).write_text(fs.unstrip_protocol(src).removeprefix("file://"))

    return private_copy_dir(fill)


def private_copy_dir(fill: Callable[[str], Any], prefix: str = "recalign-ckpt-") -> str:
    """A new temporary folder that the caller alone owns, filled by ``fill(folder)`` — what
    :class:`~recalign.train.trainer.Hooks` ``load`` returns, since the trainer deletes it after
    loading. Removed again if filling fails, so a failed copy leaves nothing behind."""
    local = tempfile.mkdtemp(prefix=prefix)
    try:
        fill(local)
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
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
