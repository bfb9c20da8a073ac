"""Training: one trainer (:mod:`recalign.train.trainer`) for every model family, generic over a
task (:mod:`recalign.train.tasks`), in one process or as Ray Train ranks."""

from recalign.train.data import CFData, seed_everything

__all__ = ["CFData", "seed_everything"]
