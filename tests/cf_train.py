"""Test drivers for CF models.

``run_cf`` trains through the one trainer (:func:`recalign.train.api.train`, what
``recalign train`` runs in-process) from keyword settings; ``bpr_epoch`` drives one epoch of
BPR steps on a bare model for unit tests of a model or an alignment in isolation (no early
stopping, no evaluation: those belong to the trainer, tested through ``run_cf`` and the job).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recalign.config import Config
from recalign.data.sampler import BPRSampler
from recalign.train.api import train


def run_cf(data: Any, backbone: str = "lightgcn", model_params: dict | None = None, *,
           preset: str | None = None, protocol: str = "rlmrec", select_metric: str | None = None,
           mask_valid_at_test: bool = False, **train_settings: Any) -> dict[str, Any]:
    """Summary of a run with ``train.<key>`` from ``train_settings``; ``"model"`` is the
    trained backbone, ``"history"`` the per-epoch records."""
    cfg = Config.model_validate({
        "model": {"backbone": backbone, "preset": preset, "params": model_params or {}},
        "train": train_settings,
        "eval": {"protocol": protocol, "select_metric": select_metric,
                 "mask_valid_at_test": mask_valid_at_test}})
    out = train(cfg, data, keep_model=True)
    out["model"] = out.pop("task").net
    return out


def bpr_epoch(model: Any, opt: Any, sampler: BPRSampler, rng: np.random.Generator,
              batch_size: int, align: Any = None) -> dict[str, float]:
    """One pass of BPR steps; mean of each loss term (an alignment's terms included)."""
    model.train()
    totals: dict[str, float] = {}
    n = 0
    for batch in sampler.epoch(rng, batch_size):
        opt.zero_grad()
        hook = getattr(align, "layer0_hook", None)
        if hook is not None and not getattr(align, "uses_layer0_hook", True):
            hook = None
        out = model.rec_forward(batch, layer0_hook=hook)
        loss = out.losses["loss"]
        logs = {k: float(v) for k, v in out.losses.items() if k != "loss"}
        if align is not None:
            for k, v in align(out).items():
                loss = loss + v
                logs[k] = float(v.detach())
        loss.backward()
        opt.step()
        logs["loss"] = float(loss.detach())
        for k, v in logs.items():
            totals[k] = totals.get(k, 0.0) + v
        n += 1
    return {k: v / max(n, 1) for k, v in totals.items()}


__all__ = ["bpr_epoch", "run_cf"]
