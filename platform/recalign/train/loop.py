"""Single-process CF training: epochs of BPR batches, periodic validation, early stopping.

The schedule is the RLMRec/SSLRec reference trainer's: each epoch samples one negative per
training pair and visits all pairs in a fresh random order in batches of 4096 (last one
partial); after epoch ``e`` (0-based) with ``e % eval_every == 0`` the model is validated
(full ranking, training items masked) on ``select_metric`` (val Recall@20); a strictly better
value saves a copy of the state dict, otherwise patience grows; training stops after
``patience`` validations in a row without improvement (or ``max_epochs``). The best weights are
then restored and evaluated once on the test split.

The pieces (:func:`train_epoch`, :func:`evaluate_model`, :class:`EarlyStopping`) are separate
so that a distributed runner can compose them with its own all-reduce.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field

from recalign.data.sampler import BPRBatch, BPRSampler
from recalign.eval.metrics import evaluate, get_protocol
from recalign.models.base import Backbone, RecOutput
from recalign.tables.optim import ModelOptimizer, TableOptimizerSpec

log = logging.getLogger(__name__)

AlignFn = Callable[[RecOutput], dict[str, torch.Tensor]]
"""Extra loss terms from a step's :class:`RecOutput` (each already weighted); summed into the loss."""


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    optimizer: TableOptimizerSpec = TableOptimizerSpec()
    batch_size: int = Field(4096, ge=1)
    max_epochs: int = Field(3000, ge=1)
    eval_every: int = Field(3, ge=1, description="validate after epoch e when e % eval_every == 0")
    patience: int = Field(5, ge=1, description="validations without improvement before stopping")
    min_epochs: int = Field(30, ge=0, description="never stop early before this many epochs "
                            "(an early validation peak — a model that first fits popularity "
                            "— can otherwise end a slower-starting run; docs/results.md); "
                            "0: the reference schedule, which has no floor")
    seed: int = 2023
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads; None: leave")
    protocol: str = "rlmrec"
    select_metric: str | None = Field(None, description="validation metric to maximise; "
                                      "default: the protocol's (recall@20)")
    eval_chunk: int | None = Field(None, ge=1, description="users per evaluation chunk")
    mask_valid_at_test: bool = Field(False, description="also mask validation items at test "
                                     "time (the RLMRec reference does not)")


@dataclass
class CFData:
    """Binary users × items CSR matrices of the three splits."""

    train: sp.csr_matrix
    valid: sp.csr_matrix | None
    test: sp.csr_matrix | None

    def __post_init__(self) -> None:
        self.train = _binary_csr(self.train, "train")
        shape = self.train.shape
        for name in ("valid", "test"):
            m = getattr(self, name)
            if m is not None:
                m = _binary_csr(m, name)
                if m.shape != shape:
                    raise ValueError(f"{name} matrix has shape {m.shape}, train has {shape}")
                setattr(self, name, m)

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    @classmethod
    def from_dataset(cls, ds: Any) -> "CFData":
        """From a :class:`recalign.data.dataset.Dataset` (its train/valid/test splits)."""
        return cls(ds.matrix("train"), ds.matrix("valid"), ds.matrix("test"))


def _binary_csr(m: Any, name: str) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise TypeError(f"{name}: expected a scipy sparse matrix, got {type(m).__name__}")
    m = sp.csr_matrix(m, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch, numpy and random; return the numpy Generator used for sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


class EarlyStopping:
    """Keeps the best value/epoch/state; ``update`` returns True when training should stop."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = -float("inf")
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_metrics: dict[str, float] | None = None
        self.bad = 0

    def update(self, value: float, epoch: int, model: torch.nn.Module,
               metrics: dict[str, float] | None = None) -> bool:
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best_metrics = dict(metrics or {})
        else:
            self.bad += 1
        return self.bad >= self.patience


def train_epoch(model: Backbone, optimizer: ModelOptimizer, sampler: BPRSampler,
                rng: np.random.Generator, batch_size: int,
                align: AlignFn | None = None, *,
                batches: Iterator[BPRBatch] | None = None,
                after_backward: Callable[[], None] | None = None) -> dict[str, float]:
    """One pass over the training pairs; returns the mean of each loss term over batches.

    ``batches`` replaces ``sampler.epoch(rng, batch_size)`` (a distributed runner passes this
    rank's slices, with sampled subgraphs attached); ``after_backward`` runs between backward
    and the optimizer step (e.g. averaging dense gradients over workers)."""
    model.train()
    totals: dict[str, float] = {}
    n = 0
    for batch in (sampler.epoch(rng, batch_size) if batches is None else batches):
        optimizer.zero_grad()
        # an Alignment may rewrite layer 0 (RLMRec-Gen's mask token); plain callables do not
        hook = getattr(align, "layer0_hook", None)
        if hook is not None and not getattr(align, "uses_layer0_hook", True):
            hook = None
        out = model.rec_forward(batch, layer0_hook=hook)
        loss = out.losses["loss"]
        logs = {k: v for k, v in out.losses.items() if k != "loss"}
        if align is not None:
            extra = align(out)
            for k, v in extra.items():
                loss = loss + v
                logs[k] = v.detach()
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        logs["loss"] = loss.detach()
        for k, v in logs.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    return {k: v / max(n, 1) for k, v in totals.items()}


def evaluate_model(model: Backbone, heldout: sp.spmatrix, exclude: sp.spmatrix | None,
                   protocol: str = "rlmrec", users: np.ndarray | None = None,
                   chunk_size: int | None = None) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``heldout`` with ``exclude`` items masked."""
    model.eval()
    score = model.scorer()
    try:
        return evaluate(score, heldout, exclude, users=users, protocol=protocol,
                        chunk_size=chunk_size)
    finally:
        model.invalidate_cache()


def fit(model: Backbone, data: CFData, params: TrainParams | None = None, *,
        rng: np.random.Generator | None = None, align: AlignFn | None = None,
        align_modules: list[torch.nn.Module] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` with early stopping on validation, test with the best weights.

    Returns ``{"valid": metrics at the best epoch, "test": metrics, "best_epoch", "epochs",
    "history": [per-epoch dicts], "train_seconds", "eval_seconds"}``.
    """
    p = params or TrainParams()
    if p.threads is not None:
        torch.set_num_threads(p.threads)
    if rng is None:
        rng = np.random.default_rng(p.seed)
    proto = get_protocol(p.protocol)
    select = p.select_metric or proto.select
    if data.valid is None:
        raise ValueError("fit needs a validation split for model selection")
    if select not in proto.metric_names:
        raise ValueError(f"select_metric {select!r} is not a {proto.name} metric "
                         f"({', '.join(proto.metric_names)})")
    sampler = BPRSampler(data.train)
    if align_modules is None and isinstance(align, torch.nn.Module):
        align_modules = [align]  # an Alignment owns parameters: optimise them with the model
    optimizer = ModelOptimizer([model, *(align_modules or [])], p.optimizer)
    stop = EarlyStopping(p.patience)
    history: list[dict[str, Any]] = []
    train_s = eval_s = 0.0
    epoch = -1
    for epoch in range(p.max_epochs):
        t0 = time.perf_counter()
        losses = train_epoch(model, optimizer, sampler, rng, p.batch_size, align)
        t1 = time.perf_counter()
        train_s += t1 - t0
        rec: dict[str, Any] = {"epoch": epoch, **losses, "train_s": t1 - t0}
        done = False
        if epoch % p.eval_every == 0:
            valid = evaluate_model(model, data.valid, data.train, proto.name,
                                   chunk_size=p.eval_chunk)
            t2 = time.perf_counter()
            eval_s += t2 - t1
            rec["valid"] = valid
            rec["eval_s"] = t2 - t1
            done = stop.update(valid[select], epoch, model, valid)
            log.info("epoch %d loss %.4f valid %s %.4f (best %.4f @ %d)", epoch,
                     losses.get("loss", float("nan")), select, valid[select], stop.best,
                     stop.best_epoch)
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        if done and epoch + 1 >= p.min_epochs:
            break
    if stop.best_state is not None:
        model.load_state_dict(stop.best_state)
    test: dict[str, float] | None = None
    if data.test is not None:
        exclude = data.train
        if p.mask_valid_at_test:
            exclude = (data.train + data.valid).tocsr()
        t3 = time.perf_counter()
        test = evaluate_model(model, data.test, exclude, proto.name, chunk_size=p.eval_chunk)
        eval_s += time.perf_counter() - t3
    return {"valid": stop.best_metrics, "test": test, "best_epoch": stop.best_epoch,
            "epochs": epoch + 1, "history": history, "train_seconds": train_s,
            "eval_seconds": eval_s, "select_metric": select}


def run_cf(data: CFData, backbone: str = "lightgcn", model_params: Any = None, *,
           preset: str | None = None, params: TrainParams | None = None,
           on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Seed, build the backbone from the training matrix, :func:`fit`. Same seed, same result."""
    from recalign.models.registry import build_backbone

    p = params or TrainParams()
    if p.threads is not None:
        torch.set_num_threads(p.threads)
    rng = seed_everything(p.seed)
    model = build_backbone(backbone, data.train, model_params, preset=preset,
                           optimizer=p.optimizer)
    result = fit(model, data, p, rng=rng, on_epoch=on_epoch)
    result["model"] = model
    return result


__all__ = ["BPRBatch", "CFData", "EarlyStopping", "TrainParams", "evaluate_model", "fit",
           "run_cf", "seed_everything", "train_epoch"]
