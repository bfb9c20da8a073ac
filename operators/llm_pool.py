"""The generation engine as a Ray Data actor pool (``map_batches`` with an actor class).

Why a ``map_batches`` actor class holding the engine rather than ``ray.data.llm.build_processor``:

- the actor runs :func:`recalign.llm.engine.generate_validated` next to the engine, so
  invalid outputs are parsed, validated and retried (new seed, bounded) inside the same pass:
  no second dataset pass and no second engine start per retry round;
- per-request seeds and exact token counts come straight from vLLM's ``RequestOutput``;
- it runs the same :class:`~recalign.llm.engines.vllm_engine.VLLMEngine` the tests and the
  single-process path run, so one code path is tested for real on CPU;
- ``ray.data.llm`` is versioned with Ray and pins its own vLLM (Ray 2.60's ``llm`` extra pins
  vLLM 0.29, we run 0.32): the plain actor depends only on ``vllm.LLM``.

Results stream back to the driver block by block (``iter_batches``), so the caller persists
each batch as it completes. Resources: ``llm.num_cpus`` per actor (CPU hosts), ``llm.num_gpus``
per actor on GPUs, ``accelerator_type``; with tensor/pipeline parallelism > 1 the actor takes no
GPU itself and reserves a placement group of TP*PP ``{GPU: 1, CPU: 1}`` bundles in which vLLM's
Ray executor places its workers (the layout ``ray.data.llm`` uses).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from recalign.llm.engine import GenerationRequest, Outcome, generate_validated
from recalign.llm.schemas import parse_and_validate
from recalign.operators.ray_env import ensure_ray, quiet_stdout


def build_engine(engine: str, cfg: dict[str, Any], model_path: str | None) -> Any:
    from recalign.config import LLMConfig

    c = LLMConfig.model_validate(cfg)
    if engine == "vllm":
        from recalign.llm.engines.vllm_engine import VLLMEngine
        return VLLMEngine(c, model_path=model_path)
    if engine == "transformers":
        from recalign.llm.engines.transformers_engine import TransformersEngine
        return TransformersEngine(c, model_path=model_path)
    if engine == "openai":
        from recalign.llm.engines.openai_engine import OpenAIEngine
        return OpenAIEngine(c)
    raise ValueError(f"unknown engine {engine!r}")


class GenerateUDF:
    """One engine per actor; each batch is generated, validated and retried in place."""

    def __init__(self, engine: str, cfg: dict[str, Any], model_path: str | None,
                 max_attempts: int) -> None:
        quiet_stdout()
        self.engine = build_engine(engine, cfg, model_path)
        self.max_attempts = max_attempts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reqs = [GenerationRequest.from_dict(json.loads(s)) for s in batch["request"]]
        first = {r.id: int(a) for r, a in zip(reqs, batch["first_attempt"])}
        outs = generate_validated(self.engine, reqs, parse_and_validate, self.max_attempts,
                                  first_attempt=first)
        return {"outcome": np.array([json.dumps(o.to_dict()) for o in outs], dtype=object)}


def _placement(bundles: int, accelerator_type: str | None, cpu_per_bundle: float) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle: dict[str, float] = {"GPU": 1, "CPU": cpu_per_bundle}
    if accelerator_type:
        bundle[f"accelerator_type:{accelerator_type}"] = 0.001
    pg = ray.util.placement_group([dict(bundle) for _ in range(bundles)], strategy="PACK")
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        pg, placement_group_capture_child_tasks=True)}


def pool_remote_args(cfg: Any) -> dict[str, Any]:
    """Ray resources of one engine actor (see the module docstring)."""
    bundles = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    if bundles > 1:
        return {"num_cpus": 1, "num_gpus": 0, "ray_remote_args_fn": partial(
            _placement, bundles, cfg.accelerator_type, 1)}
    args: dict[str, Any] = {"num_cpus": cfg.num_cpus}
    if cfg.num_gpus:
        args["num_gpus"] = cfg.num_gpus
    if cfg.accelerator_type:
        args["accelerator_type"] = cfg.accelerator_type
    return args


class RayPoolRunner:
    """A :class:`recalign.llm.profiles.Runner`: one Ray Data pass per call of :meth:`run`."""

    def __init__(self, cfg: Any, *, model_path: str | None) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.startup_s: float | None = None  # not separable from the first batch here
        ensure_ray(cfg.pool_size * cfg.num_cpus)

    def dataset(self, requests: list[GenerationRequest], first_attempt: dict[str, int]) -> Any:
        import ray

        rows = [{"request": json.dumps(r.to_dict()), "first_attempt": first_attempt.get(r.id, 1)}
                for r in requests]
        blocks = max(1, math.ceil(len(rows) / self.cfg.batch_size))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        return ds.map_batches(
            GenerateUDF,
            fn_constructor_kwargs={"engine": self.cfg.engine,
                                   "cfg": self.cfg.model_dump(mode="json"),
                                   "model_path": self.model_path,
                                   "max_attempts": self.cfg.max_attempts},
            batch_size=self.cfg.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.cfg.pool_size),
            **pool_remote_args(self.cfg))

    def run(self, requests: list[GenerationRequest],
            first_attempt: dict[str, int]) -> Iterator[list[Outcome]]:
        if not requests:
            return
        for batch in self.dataset(requests, first_attempt).iter_batches(
                batch_size=None, batch_format="numpy"):
            yield [Outcome(**json.loads(s)) for s in batch["outcome"]]

    def close(self) -> None:
        from recalign.operators.ray_env import release_ray
        release_ray()
