"""Ray Train: the CF training worker loop and the TorchTrainer that runs it.

Each worker gets its process group from Ray Train (gloo on CPU, nccl on GPU), builds a
:class:`recalign.train.dist.Dist` from it and runs :func:`recalign.train.trainer.run_training`
— the same code as the in-process run — with checkpoint hooks that go through Ray Train:
``ray.train.report(metrics, checkpoint=...)`` from every rank (Ray merges the ranks' folders
into one checkpoint directory) and ``ray.train.get_checkpoint()`` on start, which is how both
``train.resume`` and ``train.max_failures`` restarts continue from the last checkpoint.
"""

from __future__ import annotations

import os
from typing import Any


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: one worker of the run."""
    import warnings

    warnings.filterwarnings("ignore")
    import ray
    import ray.train
    import torch

    from recalign.storage.uri import fsspec_filesystem
    from recalign.train.dist import Dist
    from recalign.train.trainer import Hooks, run_training

    inputs = ray.get(config["inputs"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cpu")
    if config.get("use_gpu") and torch.cuda.is_available():
        import ray.train.torch as rtt

        device = rtt.get_device()
    d = Dist(rank, world, device, local_world=ctx.get_local_world_size())
    # where this worker runs (operations; the fault-tolerance test kills one by this pid)
    fs, base = fsspec_filesystem(inputs.run_dir)
    fs.makedirs(f"{base}/workers", exist_ok=True)
    with fs.open(f"{base}/workers/rank-{rank}.pid", "w") as f:
        f.write(str(os.getpid()))

    def load() -> str | None:
        ck = ray.train.get_checkpoint()  # this Ray run's own (restarts, a resumed Ray run)
        if ck is not None:
            return private_copy(ck, rank)
        if inputs.config["train"].get("resume"):  # a run that trained in process before
            from recalign.train.checkpoint import latest_checkpoint

            return latest_checkpoint(inputs.run_dir)
        return None

    def save(local: str, epoch: int, metrics: dict[str, Any]) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local),
                         checkpoint_dir_name=f"checkpoint_epoch-{epoch:06d}")

    run_training(inputs, d, Hooks(load=load, save=save))


def private_copy(ck: Any, rank: int) -> str:
    """A local copy of Ray Train checkpoint ``ck`` that this rank alone owns.

    ``Checkpoint.to_directory()`` without a path hands every process on a node the same
    folder (named by the checkpoint, downloaded once under a file lock); the trainer deletes
    its copy after loading, which pulled the files from under a slower rank on the same node
    (CI: ``FileNotFoundError .../checkpoint_tmp_<id>/rank-0.pt`` in the restart test)."""
    from recalign.train.checkpoint import private_copy_dir

    return private_copy_dir(ck.to_directory, prefix=f"recalign-ckpt-r{rank}-")


def worker_resources(cfg: Any) -> dict[str, float]:
    """``train.resources_per_worker`` as Ray resources (GPU 1 by default with use_gpu)."""
    r = cfg.train.resources_per_worker
    out: dict[str, float] = {"CPU": r.CPU}
    gpu = r.GPU if r.GPU is not None else (1.0 if cfg.train.use_gpu else None)
    if gpu:
        out["GPU"] = gpu
    if r.memory:
        out["memory"] = r.memory
    return out


def run_trainer(inputs: Any, *, workers: int, use_gpu: bool, run_name: str, storage: str,
                max_failures: int, keep_checkpoints: int = 2,
                resources: dict[str, float] | None = None) -> Any:
    """Run ``inputs`` on a TorchTrainer with ``workers`` workers; returns the Ray ``Result``.

    A run with the same ``storage``/``run_name`` as an earlier one continues from its latest
    checkpoint (Ray Train restores the run state); ``max_failures`` restarts failed workers.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ref = ray.put(inputs)
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"inputs": ref, "use_gpu": use_gpu},
        # collectives match their tensors: CPU bookkeeping over gloo, CUDA tensors over nccl
        torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=resources or {"CPU": 1}),
        run_config=RunConfig(
            name=run_name, storage_path=_ray_storage(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            worker_runtime_env={"env_vars": env} if env else None),
    )
    return trainer.fit()


def _ray_storage(uri: str) -> str:
    """Ray Train wants an absolute local path or a URI."""
    from recalign.storage.uri import split_uri

    scheme, path = split_uri(uri)
    return path if scheme == "file" else uri
