"""In-process training from a config and a dataset: what ``recalign train`` runs with one
worker, callable from benchmarks and tests (the same trainer, no second loop).

``train(cfg, data)`` takes a :class:`~recalign.data.dataset.Dataset` (or a task's prepared data,
e.g. :class:`~recalign.train.data.CFData`), applies the task's defaults, checks the input,
runs :class:`~recalign.train.trainer.Trainer` on the resolved device and returns the summary
with the per-epoch ``"history"``; ``keep_model=True`` adds the trained task under ``"task"``
(its model, tables, alignment). Without ``run_dir`` the run folder is temporary and removed.
"""

from __future__ import annotations

import tempfile
from typing import Any

import pyarrow as pa

from recalign.config import Config
from recalign.train.dist import Dist
from recalign.train.placement import resolve_device
from recalign.train.tasks.base import task_of, with_task_defaults
from recalign.train.trainer import Hooks, RunInputs, Trainer


def keys_of(n: int) -> pa.Array:
    return pa.array([str(i) for i in range(n)], pa.string())


def train(cfg: Config, data: Any, *, run_dir: str | None = None, hooks: Hooks | None = None,
          keep_model: bool = False, user_keys: pa.Array | None = None,
          item_keys: pa.Array | None = None, semantic: Any = None) -> dict[str, Any]:
    trainer = make_trainer(cfg, data, run_dir=run_dir, hooks=hooks, user_keys=user_keys,
                           item_keys=item_keys, semantic=semantic)
    temp = trainer.temp_run_dir
    try:
        out = trainer.run()
    finally:
        if temp is not None:  # best weights, curves: not kept
            temp.cleanup()
    assert out is not None
    out["history"] = trainer.history
    if temp is not None:  # the folder named in the summary is gone
        out["run_dir"] = None
    if keep_model:
        out["task"] = trainer.task
    return out


def make_trainer(cfg: Config, data: Any, *, run_dir: str | None = None,
                 hooks: Hooks | None = None, user_keys: pa.Array | None = None,
                 item_keys: pa.Array | None = None, semantic: Any = None) -> Trainer:
    """The in-process :class:`Trainer` of ``cfg`` on ``data``, built and ready to ``run()``
    (benchmarks time its ``train_epoch`` and its task's ``evaluate``); ``semantic``: vectors
    already in memory instead of ``align.semantic.*``."""
    cfg = with_task_defaults(cfg)
    cfg.model.check()
    task = task_of(cfg)
    prepared = task.prepare(cfg, data)
    check_selection(cfg)
    task.check(cfg, prepared)
    n_users = len(user_keys) if user_keys is not None else getattr(data, "n_users", None)
    n_items = len(item_keys) if item_keys is not None else getattr(data, "n_items", None)
    if user_keys is None:
        m = getattr(data, "user_map", None)
        user_keys = m.keys if m is not None else keys_of(n_users)
    if item_keys is None:
        m = getattr(data, "item_map", None)
        item_keys = m.keys if m is not None else keys_of(n_items)
    # without run_dir: a temporary folder that lives as long as the trainer (and is removed at
    # once when building it fails), so neither callers nor failed configs leave one in /tmp
    tmp = tempfile.TemporaryDirectory(prefix="recalign-run-") if run_dir is None else None
    inp = RunInputs(config=cfg.model_dump(mode="json"), data=prepared, user_keys=user_keys,
                    item_keys=item_keys, run_dir=run_dir or tmp.name, semantic=semantic)
    try:
        return Trainer(inp, Dist(device=resolve_device(cfg.train.device, task.devices)), hooks,
                       temp_run_dir=tmp)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise


def check_selection(cfg: Config) -> None:
    from recalign.errors import ConfigError
    from recalign.eval.metrics import SUMS, get_protocol

    proto = get_protocol(cfg.eval.protocol)
    select = cfg.eval.select_metric or proto.select
    if select not in proto.metric_names and not (
            select in SUMS and set(SUMS[select]) <= set(proto.metric_names)):
        raise ConfigError(f"eval.select_metric {select!r} is not a {proto.name} metric "
                          f"({', '.join(proto.metric_names)})")
