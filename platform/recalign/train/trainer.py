"""One trainer for every model family, in one process or as a rank of a Ray Train run.

The trainer is the loop and nothing else; what varies by family is the task
(:mod:`recalign.train.tasks`): ``Trainer(inputs, dist, hooks).run()``

1. seeds (the same seed on every rank, so that every rank draws the same global epoch), builds
   the task's model and tables on the rank's device and its optimizers;
2. resumes from the latest checkpoint the hooks hand it, if any;
3. per epoch: the task's batches (this rank's slice of each global batch) — zero_grad, loss,
   backward, dense gradients averaged over ranks, step; the loss terms averaged over ranks;
4. after epoch ``e`` with ``e % eval_every == 0``: validation on the protocol's selection
   metric, early stopping (:class:`~recalign.train.stopping.EarlyStopping`), the best weights
   saved, a checkpoint every ``checkpoint_every`` validations;
5. at the end: the best weights read back from their own checkpoint (written on each
   improvement, :class:`~recalign.train.checkpoint.BestWeights`), the test split evaluated,
   the task's export, and a summary with curves written to the run folder (rank 0 returns it).

It never imports Ray: the process group arrives as a :class:`~recalign.train.dist.Dist` and the
checkpoint storage as :class:`Hooks` (Ray Train's in a worker, a run folder in-process).
"""

from __future__ import annotations

import logging
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import torch

from recalign.config import Config
from recalign.errors import ConfigError
from recalign.progress import progress
from recalign.train import checkpoint as ckpt
from recalign.train.curves import curves, plot_png
from recalign.train.data import seed_everything
from recalign.train.dist import Dist
from recalign.train.export import ExportTarget
from recalign.train.stopping import EarlyStopping
from recalign.train.tasks.base import Task, task_of

log = logging.getLogger(__name__)


@dataclass
class RunInputs:
    """Everything a rank needs (picklable: shipped to Ray Train workers)."""

    config: dict[str, Any]
    data: Any  # the task's prepared data (Task.prepare)
    user_keys: pa.Array
    item_keys: pa.Array
    run_dir: str
    export: ExportTarget | None = None
    manifest: dict[str, Any] = field(default_factory=dict)  # inputs, config_hash
    # {"root", "dataset", "artifact", "version"} of an embedding snapshot with layer-0 rows
    warm_start: dict[str, str] | None = None
    # semantic vectors already in memory (a benchmark's cached vectors), used instead of
    # reading align.semantic.users/items
    semantic: Any = None


@dataclass
class Hooks:
    """Checkpoint storage, provided by the caller (Ray or in-process).

    ``load`` returns a temporary local copy of the latest checkpoint or None; the copy must
    be this caller's alone (:func:`recalign.train.checkpoint.private_copy_dir`), because the
    trainer deletes it after loading. ``save(folder, epoch, metrics)`` persists a local
    checkpoint folder."""

    load: Callable[[], str | None] = lambda: None
    save: Callable[[str, int, dict[str, Any]], None] | None = None


def _torch_rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_torch_rng_state(state: Any, device: torch.device) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints written before CUDA state was kept
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    def __init__(self, inp: RunInputs, d: Dist, hooks: Hooks | None = None, *,
                 temp_run_dir: tempfile.TemporaryDirectory[str] | None = None) -> None:
        self.inp, self.d, self.hooks = inp, d, hooks or Hooks()
        #: the run folder when the caller gave none (:func:`recalign.train.api.make_trainer`):
        #: removed with the trainer
        self.temp_run_dir = temp_run_dir
        self.cfg = Config.model_validate(inp.config)
        self.task_cls: type[Task] = task_of(self.cfg)
        t = self.cfg.train
        if t.threads is not None:
            torch.set_num_threads(t.threads)
        self.rng = seed_everything(t.seed)
        self.task: Task = self.task_cls(self.cfg, inp, d, self.rng)
        self.optim = self.task.build()
        if t.lr_decay.every and self.optim.fused is not None:
            raise ConfigError("train.lr_decay: the decay applies to torch (dense) optimizers; "
                              "this run's table rows update in a fused fbgemm optimizer with "
                              "its own lr (use dense tables, or train.lr_decay.every: 0)")
        self.stop = EarlyStopping(t.patience, t.min_epochs)
        self.best = ckpt.BestWeights(inp.run_dir, d.distributed, d.rank, d.barrier)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.train_s = self.eval_s = 0.0
        self.examples = 0
        self.done = False
        self.resumed_from: int | None = None
        self.resumed_ranks: int | None = None  # ranks that wrote the checkpoint resumed
        self.bar: Any = None
        self._status = ""

    # ------------------------------------------------------------------ checkpoints
    def _loop_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "history": self.history, "stop": self.stop.state_dict(),
                "train_s": self.train_s, "eval_s": self.eval_s, "examples": self.examples,
                "done": self.done}

    def _sharded(self) -> dict[str, Any]:
        return self.task.sharded_state()

    def save_checkpoint(self, metrics: dict[str, Any]) -> None:
        if self.hooks.save is None:
            return
        d = self.d
        local = tempfile.mkdtemp(prefix=f"recalign-ckpt-r{d.rank}-")
        try:
            rank_state = {"loop": self._loop_state(), "rng": self.rng.bit_generator.state,
                          "torch_rng": _torch_rng_state(d.device),
                          "dense_optim": (self.optim.dense.state_dict()
                                          if self.optim.dense is not None else None),
                          "task": self.task.rank_state()}
            ckpt.save_local(local, d.rank, self._sharded(), rank_state,
                            self.task_cls.meta(self.cfg, self.inp.data), d.distributed, d.world)
            self.hooks.save(local, self.epoch, metrics)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def resume(self) -> None:
        folder = self.hooks.load()
        if folder is None:
            return
        try:
            self._load_checkpoint(folder)
        finally:  # a temporary local copy (Hooks.load), also when it does not fit this run
            shutil.rmtree(folder, ignore_errors=True)
        log.info("rank %d resumed at epoch %d (checkpoint of %s ranks, now %d)", self.d.rank,
                 self.epoch, self.resumed_ranks, self.d.world)

    def _load_checkpoint(self, folder: str) -> None:
        """Model, optimiser, random and loop state from a local checkpoint folder."""
        d = self.d
        self.resumed_ranks = ckpt.check_meta(folder, self.task_cls.meta(self.cfg, self.inp.data))
        sd = self._sharded()
        rs = ckpt.load_local(folder, d.rank, sd, d.distributed)
        self.task.load_sharded_state(sd)
        if self.optim.dense is not None and rs.get("dense_optim") is not None:
            self.optim.dense.load_state_dict(rs["dense_optim"])
        self.task.load_rank_state(rs["task"])
        self.rng.bit_generator.state = rs["rng"]
        _set_torch_rng_state(rs["torch_rng"], d.device)
        loop = rs["loop"]
        self.epoch, self.history = loop["epoch"], loop["history"]
        self.stop.load_state_dict(loop["stop"])
        self.done = loop["done"]
        self.train_s, self.eval_s, self.examples = loop["train_s"], loop["eval_s"], loop["examples"]
        self.resumed_from = self.epoch

    # ------------------------------------------------------------------ the loop
    def train_epoch(self) -> dict[str, float]:
        """One pass over this rank's batches; the mean of each loss term over ranks."""
        task, opt, d = self.task, self.optim, self.d
        task.train_mode(True)
        totals: dict[str, float] = {}
        seen: dict[str, int] = {}  # a term's batches (a task may mix batch kinds in an epoch)
        n = 0
        task.epoch = self.epoch
        for batch in task.batches():
            if self.bar is not None and n % 20 == 0:  # shown by the log heartbeat in long epochs
                self.bar.set_postfix_str(f"{self._status} | epoch {self.epoch} step {n}",
                                         refresh=False)
            opt.zero_grad()
            losses = task.loss(batch)
            loss = losses["loss"]
            loss.backward()
            opt.average_gradients(d)
            opt.step()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
                seen[k] = seen.get(k, 0) + 1
            self.examples += int(getattr(batch, "global_size", 0) or len(batch))
            n += 1
        out = {k: v / seen[k] for k, v in totals.items()}
        if d.distributed:
            keys = sorted(out)
            vec = d.all_reduce(torch.tensor([out[k] for k in keys], dtype=torch.float64,
                                            device=d.device))
            out = {k: float(v) / d.world for k, v in zip(keys, vec.tolist())}
        return out

    def select_metric(self) -> str:
        from recalign.eval.metrics import get_protocol

        return self.cfg.eval.select_metric or get_protocol(self.cfg.eval.protocol).select

    def run(self) -> dict[str, Any] | None:
        t, d, task = self.cfg.train, self.d, self.task
        select = self.select_metric()
        self.resume()
        t_start = time.perf_counter()
        # rank 0 reports epochs, loss and the last validation (a bar, or a log line every ~15 s)
        self.bar = (progress("train", "epochs", total=t.max_epochs, initial=self.epoch)
                    if d.rank == 0 else None)
        self._status = "starting"
        try:  # the bar's heartbeat thread stops however the loop ends
            while not self.done and self.epoch < t.max_epochs:
                epoch = self.epoch
                lr = self.optim.decay_lr(epoch, t.lr_decay.every, t.lr_decay.factor)
                t0 = time.perf_counter()
                losses = self.train_epoch()
                t1 = time.perf_counter()
                self.train_s += t1 - t0
                rec: dict[str, Any] = {"epoch": epoch, **losses, "train_s": t1 - t0}
                if t.lr_decay.every:
                    rec["lr"] = lr
                self.epoch = epoch + 1
                if epoch % t.eval_every == 0:
                    valid = task.evaluate("valid")
                    t2 = time.perf_counter()
                    self.eval_s += t2 - t1
                    rec["valid"], rec["eval_s"] = valid, t2 - t1
                    if self.stop.update(valid[select], epoch, valid):
                        self.best.save(task.weights_state(), epoch)
                    self.done = self.stop.should_stop(epoch)
                    log.debug("epoch %d loss %.4f valid %s %.4f (best %.4f @ %d)", epoch,
                             losses.get("loss", float("nan")), select, valid[select], self.stop.best,
                             self.stop.best_epoch)
                if t.max_seconds is not None:  # every rank takes part: they must agree to stop
                    late = time.perf_counter() - t_start > t.max_seconds
                    self.done = self.done or d.max_int(int(late)) > 0
                self.history.append(rec)
                if self.bar is not None:
                    self._status = self._epoch_status(rec, select)
                    self.bar.set_postfix_str(self._status, refresh=False)
                    self.bar.update(1)
                # no per-epoch report to Ray Train: each ray.train.report is a barrier through its
                # sync actor (~2 s here, 40x a demo epoch); the progress lines carry the epochs
                if "valid" in rec and t.checkpoint_every and self.stop.evals % t.checkpoint_every == 0:
                    self.save_checkpoint({"epoch": epoch, select: rec["valid"][select]})
        finally:
            if self.bar is not None:
                self.bar.close()
        return self.finish(select)

    def _epoch_status(self, rec: dict[str, Any], select: str) -> str:
        parts = [f"loss {rec.get('loss', float('nan')):.4f}"]
        if self.stop.best_epoch >= 0:
            last = next((h["valid"] for h in reversed(self.history) if "valid" in h), None)
            if last is not None:
                parts.append(f"valid {select} {last[select]:.4f}")
            parts.append(f"best {self.stop.best:.4f} @ {self.stop.best_epoch}")
            t = self.cfg.train
            ends = self.stop.last_epoch(rec["epoch"], t.eval_every, t.max_epochs)
            if not self.done and ends + 1 < t.max_epochs:
                parts.append(f"ends after epoch {ends} unless it improves")
        return ", ".join(parts)

    def _test_and_export(self, select: str, bar: Any) -> tuple[dict[str, float], Any, Any]:
        """The test split evaluated and the export committed: (test, snapshot URI, seconds)."""
        d, task = self.d, self.task
        t3 = time.perf_counter()
        test = task.evaluate("test")
        self.eval_s += time.perf_counter() - t3
        if bar is not None:
            bar.set_postfix_str(", ".join(f"test {k} {v:.4f}" for k, v in test.items()
                                          if k == select), refresh=False)
            bar.update(1)
        snapshot_uri = export_s = None
        if self.inp.export is not None:
            from recalign.train.export import commit_export

            t4 = time.perf_counter()
            all_parts = d.gather_objects(task.export())
            if d.rank == 0:
                extra = {"metrics": {"valid": self.stop.best_metrics, "test": test},
                         "best_epoch": self.stop.best_epoch, "epochs": self.epoch,
                         "workers": d.world, **task.export_extra()}
                snapshot_uri = commit_export(self.inp.export, all_parts, extra=extra,
                                             inputs=self.inp.manifest.get("inputs", {}),
                                             config_hash=self.inp.manifest.get("config_hash", ""))
            export_s = time.perf_counter() - t4
            if bar is not None:
                bar.update(1)
        return test, snapshot_uri, export_s

    def finish(self, select: str) -> dict[str, Any] | None:
        d, task = self.d, self.task
        if self.stop.best_epoch >= 0:
            state = task.weights_state()
            self.best.load(state, self.stop.best_epoch)
            task.load_weights_state(state)
        steps = 2 if self.inp.export is not None else 1
        bar = progress("train: test, export", "steps", total=steps) if d.rank == 0 else None
        try:  # closed however test or export ends: its heartbeat thread must not outlive it
            test, snapshot_uri, export_s = self._test_and_export(select, bar)
        finally:
            if bar is not None:
                bar.close()
        rss = d.gather_objects(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        if d.rank != 0:
            return None
        c = curves(self.history, select)
        units = task.units
        summary = {"task": self.task_cls.name, "valid": self.stop.best_metrics, "test": test,
                   "best_epoch": self.stop.best_epoch, "epochs": self.epoch,
                   "snapshot": snapshot_uri, "select_metric": select,
                   "train_seconds": round(self.train_s, 3), "eval_seconds": round(self.eval_s, 3),
                   "export_seconds": None if export_s is None else round(export_s, 3),
                   "workers": d.world, "device": str(d.device),
                   "resumed_from_epoch": self.resumed_from,
                   "resumed_from_ranks": self.resumed_ranks, "run_dir": self.inp.run_dir,
                   f"{units}_trained": self.examples,
                   f"{units}_per_s": (round(self.examples / self.train_s, 1)
                                      if self.train_s else None),
                   **task.summary(),
                   "peak_rss_mb": [round(x, 1) for x in rss]}
        for k, v in list(summary.items()):  # a task's own counts (tokens_trained) get a rate
            if k.endswith("_trained") and k != f"{units}_trained" and isinstance(v, int):
                summary[k.replace("_trained", "_per_s")] = (round(v / self.train_s, 1)
                                                            if self.train_s else None)
        write_run_files(self.inp.run_dir, c, summary)
        return summary


def run_training(inp: RunInputs, d: Dist, hooks: Hooks | None = None) -> dict[str, Any] | None:
    """Train, evaluate, early-stop, checkpoint and export; rank 0 returns the summary."""
    return Trainer(inp, d, hooks).run()


def write_run_files(run_dir: str, c: dict[str, Any], summary: dict[str, Any]) -> None:
    """curves.json, curves.png and result.json in the run folder (local or s3)."""
    import json

    from recalign.storage.uri import fsspec_filesystem

    fs, base = fsspec_filesystem(run_dir)
    fs.makedirs(base, exist_ok=True)
    with fs.open(f"{base}/curves.json", "w") as f:
        json.dump(c, f, indent=1)
    with fs.open(f"{base}/curves.png", "wb") as f:
        f.write(plot_png(c))
    with fs.open(f"{base}/result.json", "w") as f:
        json.dump(summary, f, indent=1, default=str)


__all__ = ["Hooks", "RunInputs", "Trainer", "run_training", "write_run_files"]
