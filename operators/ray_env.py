"""Starting (or joining) Ray for a job, with the settings that work on small machines too."""

from __future__ import annotations

import os
from typing import Any

_STARTED = False


def quiet_stdout() -> None:
    """In an actor: send stdout (fd 1, so C-level writes too) to stderr. Engines log to
    stdout, and Ray forwards a worker's stdout to the driver's, where the job's last line must
    be its JSON summary."""
    import sys

    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def release_ray() -> None:
    """Shut Ray down if :func:`ensure_ray` started it (a joined cluster is left alone)."""
    global _STARTED
    if _STARTED:
        import ray
        ray.shutdown()
        _STARTED = False


def ensure_ray(min_cpus: float = 0, *, object_store_gib: float = 2.0) -> None:
    """Join ``RAY_ADDRESS`` when set; otherwise start a local Ray.

    Locally, Ray is given at least ``min_cpus`` logical CPUs (plus one for the light stages)
    even on a smaller machine: an actor pool that asks for every core would otherwise starve
    Ray Data's own small tasks (STACK.md), and the engine's threads are set by the engine.
    """
    import ray

    global _STARTED
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "ignore_reinit_error": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return
    cpus = max(os.cpu_count() or 1, int(min_cpus + 0.999) + 1)
    ray.init(num_cpus=cpus, object_store_memory=int(object_store_gib * 2**30), **kwargs)
    _STARTED = True
    try:
        from ray.data import DataContext
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = os.environ.get("RECALIGN_RAY_PROGRESS", "0") == "1"
    except Exception:  # noqa: BLE001 - progress bars are cosmetic
        pass
