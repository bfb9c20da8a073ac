"""Early stopping on the protocol's selection metric, as plain state a checkpoint carries.

A strictly better validation value resets patience and marks the epoch best (the trainer then
saves the weights); ``patience`` validations in a row without improvement stop the run, but
never before ``min_epochs`` epochs (an early peak — a model that first fits popularity — would
otherwise end a slower-starting run; docs/results.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    patience: int
    min_epochs: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict[str, float] | None = None
    bad: int = 0
    evals: int = 0

    def update(self, value: float, epoch: int, metrics: dict[str, float]) -> bool:
        """Record a validation after ``epoch``; True when it is a new best."""
        self.evals += 1
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_metrics = dict(metrics)
            return True
        self.bad += 1
        return False

    def should_stop(self, epoch: int) -> bool:
        """After ``epoch`` (0-based): patience exhausted and the floor passed."""
        return self.bad >= self.patience and epoch + 1 >= self.min_epochs

    def last_epoch(self, epoch: int, eval_every: int, max_epochs: int) -> int:
        """After validating ``epoch`` (0-based): the epoch after which the run stops if no later
        validation improves — patience's remaining validations (every ``eval_every`` epochs),
        not before ``min_epochs``, at most ``max_epochs``. What a log can say instead of an ETA
        to ``max_epochs``, which early stopping rarely reaches."""
        k = max(0, self.patience - self.bad)  # validations still allowed without a gain
        stop = (epoch // eval_every + k) * eval_every
        floor = -(-max(0, self.min_epochs - 1) // eval_every) * eval_every  # first validation
        return min(max(stop, floor), max_epochs - 1)                        # past the floor

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
