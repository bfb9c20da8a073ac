"""Where a rank trains: its device, resolved once from the config and the process context.

Under Ray Train a worker's device comes from Ray's context (``cuda:local_rank`` with
``use_gpu``, else CPU); in one process ``train.device`` decides. A device that does not exist
is a :class:`ConfigError` naming the key, never a crash deep in the first step.
"""

from __future__ import annotations

import torch

from recalign.errors import ConfigError


def resolve_device(requested: str, supported: tuple[str, ...] = ("cpu", "cuda")) -> torch.device:
    """``train.device`` (auto | cpu | cuda | cuda:N) for an in-process run of a task that runs
    on ``supported`` device types."""
    if requested == "auto":
        if "cuda" in supported and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type not in supported:
        raise ConfigError(f"train.device {requested!r}: this model family trains on "
                          f"{' or '.join(supported)} in this version")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device {requested!r}: no CUDA device is visible to this "
                              "process (torch.cuda.is_available() is False); use auto or cpu")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train.device {requested!r}: only {torch.cuda.device_count()} "
                              "CUDA devices are visible")
        return torch.device("cuda", index)
    return dev
