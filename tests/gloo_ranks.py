"""Run a test body on N gloo ranks in spawned processes.

Every multi-process test goes through ``spawn_ranks``: one place that picks a free port, starts
and destroys the process group, and ends each rank's process.

A rank that returns normally ends with ``os._exit(0)`` instead of interpreter finalisation. Why:
gloo's worker threads release the last collective's ``Work`` (an all-gather holding Python-owned
tensors) asynchronously, and ``destroy_process_group`` does not wait for them. When that release
races with finalisation, the thread's ``decref`` cannot take the GIL, ``pthread_exit`` unwinds
through a ``noexcept`` destructor and the process aborts after a passing body ("terminate called
without an active exception"; core dump: ``AsyncAllgatherWork::~AsyncAllgatherWork`` in
``ProcessGroupGloo::runLoop`` -> ``take_gil`` -> ``PyThread_exit_thread``). That made CI fail
on a 2-rank training test. Everything a body reports (files, the manager dict) is written before
the exit; a body that raises still fails its rank the usual way.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, body: Callable[..., Any], world: int, port: int, args: tuple) -> None:
    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        body(rank, *args)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_ranks(body: Callable[..., Any], world: int, *args: Any) -> None:
    """``body(rank, *args)`` on ``world`` gloo ranks; a module-level function (it is pickled)."""
    mp.spawn(_entry, args=(body, world, free_port(), args), nprocs=world, join=True)
