"""Training loop pieces shared by single-process and distributed runs."""

from recalign.train.loop import (CFData, EarlyStopping, TrainParams, evaluate_model, fit, run_cf,
                                 seed_everything, train_epoch)

__all__ = ["CFData", "EarlyStopping", "TrainParams", "evaluate_model", "fit", "run_cf",
           "seed_everything", "train_epoch"]
