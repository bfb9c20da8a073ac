"""The task interface: what differs between model families, behind one trainer.

A task owns how its data is prepared (on the driver, picklable for Ray Train workers), the
model and its tables on this rank's device, how a rank's batches are drawn each epoch, the loss
of a batch, how users are scored at evaluation (from which history) and the protocol, what a
checkpoint holds beyond the trainer's own state, and the export of its representations. The
trainer (:mod:`recalign.train.trainer`) owns everything else: seeding, the epoch loop,
optimizer steps and gradient averaging, early stopping, checkpoint cadence, time budgets,
run files and the summary.

Tasks: ``pairwise`` (BPR CF backbones and alignments), ``next-item`` (sequential
recommenders, full or sampled softmax, leave-one-out); a third (``lm``, CLLM4Rec) adds a
module here and one registry entry.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np
import torch

from recalign.config import Config
from recalign.errors import ConfigError
from recalign.train.dist import Dist

if TYPE_CHECKING:
    from recalign.train.optimizers import Optimizers
    from recalign.train.trainer import RunInputs


class Task(abc.ABC):
    name: ClassVar[str] = ""
    #: train/eval keys a config leaves unset take these values (the published settings of the
    #: task's family), so that ``model.backbone: sasrec`` alone trains as published
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: device types the task's models run on
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: the prepared data's type: built by its ``from_dataset(Dataset)``
    data_type: ClassVar[type]
    #: what one training example is, for the throughput figure (``pairs``, ``sequences``)
    units: ClassVar[str] = "examples"

    def __init__(self, cfg: Config, inp: "RunInputs", d: Dist, rng: np.random.Generator) -> None:
        self.cfg, self.inp, self.d, self.rng = cfg, inp, d, rng
        #: the epoch :meth:`batches` draws (set by the trainer before each epoch; restored with
        #: the trainer's loop state on resume)
        self.epoch = 0

    # ------------------------------------------------------------------ driver side
    @classmethod
    def prepare(cls, cfg: Config, ds: Any) -> Any:
        """The task's data from a :class:`~recalign.data.dataset.Dataset` (picklable); data
        already of the task's type passes through."""
        return ds if isinstance(ds, cls.data_type) else cls.data_type.from_dataset(ds)

    @classmethod
    def check(cls, cfg: Config, data: Any) -> None:
        """Bad input is a :class:`ConfigError` before training starts."""

    @classmethod
    def meta(cls, cfg: Config, data: Any) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed."""
        return {"task": cls.name, "backbone": cfg.model.backbone}

    # ------------------------------------------------------------------ worker side
    @abc.abstractmethod
    def build(self) -> "Optimizers":
        """Model and tables on ``self.d.device``; return the optimizers of its parameters."""

    @abc.abstractmethod
    def batches(self) -> Iterator[Any]:
        """This rank's batches of one epoch (every rank yields the same number)."""

    @abc.abstractmethod
    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss terms of a batch; ``"loss"`` is the total to minimise."""

    @abc.abstractmethod
    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on ``valid`` or ``test`` (collective: every rank calls it)."""

    @abc.abstractmethod
    def weights_state(self) -> dict[str, Any]:
        """The trained weights for torch.distributed.checkpoint (the best epoch's are saved
        from it and loaded back into it): live tensors, sharded ones as they are."""

    def load_weights_state(self, state: dict[str, Any]) -> None:
        """After ``state`` was loaded in place: anything derived from the weights."""

    @abc.abstractmethod
    def sharded_state(self) -> dict[str, Any]:
        """State for torch.distributed.checkpoint (model and fused optimizer)."""

    def load_sharded_state(self, state: dict[str, Any]) -> None: ...

    def rank_state(self) -> dict[str, Any]:
        """Plain per-rank state beside the DCP state (samplers' RNG, alignment buffers)."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None: ...

    def train_mode(self, on: bool) -> None:
        for m in self.modules():
            m.train(on)

    @abc.abstractmethod
    def modules(self) -> list[torch.nn.Module]: ...

    def export(self) -> dict[str, Any] | None:
        """Write this rank's rows into ``self.inp.export`` (if any); return its parts list."""
        return None

    def export_extra(self) -> dict[str, Any]:
        """Manifest fields of the exported snapshot."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Task-specific fields of the run summary."""
        return {}


def rank_slices(order: np.ndarray, batch_size: int, d: Dist, steps: int | None
                ) -> Iterator[tuple[np.ndarray, int, int]]:
    """Data parallelism over one epoch's ``order``: per global batch of ``batch_size`` (at
    most ``steps`` of them), ``(batch, lo, hi)`` with ``batch[lo:hi]`` this rank's contiguous
    share. A batch smaller than the world is skipped — on every rank alike, so all ranks take
    the same number of steps."""
    for step, s in enumerate(range(0, order.size, batch_size)):
        if steps is not None and step >= steps:
            break
        idx = order[s:s + batch_size]
        n = idx.size
        if n < d.world:
            continue
        yield idx, n * d.rank // d.world, n * (d.rank + 1) // d.world


_TASKS = {"pairwise": "recalign.train.tasks.pairwise:PairwiseTask",
          "next-item": "recalign.train.tasks.next_item:NextItemTask",
          "multinomial": "recalign.train.tasks.multinomial:MultinomialTask",
          "lm": "recalign.train.tasks.lm:LMTask"}


def get_task(name: str) -> type[Task]:
    import importlib

    try:
        mod, cls = _TASKS[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown training task {name!r} (known: {', '.join(_TASKS)})") from None
    return getattr(importlib.import_module(mod), cls)


def task_of(cfg: Config) -> type[Task]:
    """The task a config trains: the backbone's ``task`` (CF backbones: pairwise)."""
    from recalign.models.registry import get_backbone

    return get_task(getattr(get_backbone(cfg.model.backbone), "task", "pairwise"))


def with_task_defaults(cfg: Config) -> Config:
    """``cfg`` with the task's defaults, then the backbone's (``TRAIN_DEFAULTS``), for every
    train/eval key the user did not set."""
    from recalign.models.registry import get_backbone

    task = task_of(cfg)
    defaults = {k: dict(v) for k, v in task.defaults.items()}
    for section, values in getattr(get_backbone(cfg.model.backbone), "TRAIN_DEFAULTS",
                                   {}).items():
        defaults.setdefault(section, {}).update(values)
    if not defaults:
        return cfg
    tree = cfg.model_dump(mode="json")
    for section, values in defaults.items():
        given = getattr(cfg, section).model_fields_set
        for k, v in values.items():
            if k not in given:
                tree[section][k] = v
    return Config.model_validate(tree)
