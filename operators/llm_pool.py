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
each batch as it completes.

:class:`RayActorPoolRunner` is the persistent form for callers that call ``run()`` many times
with small dependent batches (LLMRG walks: step p of a wave needs the answers of step p-1): its
actors are created once and hold their engine for every later call, where a Ray Data pass per
call would start the engines again each time. Requests of a call are cut into
``llm.batch_size`` chunks handed to whichever actor is free.

The validator runs inside the actor and is chosen by name (:data:`VALIDATORS`: a module path
resolved in the actor), so nothing unpicklable travels. Resources: ``llm.num_cpus`` per actor (CPU hosts), ``llm.num_gpus``
per actor on GPUs, ``accelerator_type``; with tensor/pipeline parallelism > 1 the actor takes no
GPU itself and reserves a placement group of TP*PP ``{GPU: 1, CPU: 1}`` bundles in which vLLM's
Ray executor places its workers (the layout ``ray.data.llm`` uses).
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from recalign.llm.engine import (GenerationRequest, Outcome, Validator, chunked,
                                 generate_validated)
from recalign.operators.ray_env import ensure_ray, quiet_stdout

#: validator name -> "module:function" (resolved where the engine runs)
VALIDATORS = {
    "profile": "recalign.llm.schemas:parse_and_validate",
    "llmrg": "recalign.llm.graph_prompts:validate_output",
}


def resolve_validator(name: str) -> Validator:
    try:
        module, func = VALIDATORS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown validator {name!r} (known: {', '.join(VALIDATORS)})") from None
    return getattr(importlib.import_module(module), func)


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
                 max_attempts: int, validator: str = "profile") -> None:
        quiet_stdout()
        t0 = time.perf_counter()
        self.engine = build_engine(engine, cfg, model_path)
        self.startup_s = time.perf_counter() - t0
        self.max_attempts = max_attempts
        self.validate = resolve_validator(validator)

    def generate(self, requests: list[str], first_attempt: list[int]) -> list[str]:
        """JSON requests -> JSON outcomes (validated, retried in place)."""
        reqs = [GenerationRequest.from_dict(json.loads(s)) for s in requests]
        first = {r.id: int(a) for r, a in zip(reqs, first_attempt)}
        outs = generate_validated(self.engine, reqs, self.validate, self.max_attempts,
                                  first_attempt=first)
        return [json.dumps(o.to_dict()) for o in outs]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"outcome": np.array(self.generate(list(batch["request"]),
                                                  list(batch["first_attempt"])), dtype=object)}

    def info(self) -> dict[str, Any]:
        """Engine start time and requests made (the persistent pool's tests read it)."""
        return {"startup_s": self.startup_s, "requests_made": self.engine.requests_made}


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

    def __init__(self, cfg: Any, *, model_path: str | None, validator: str = "profile") -> None:
        resolve_validator(validator)
        self.cfg = cfg
        self.model_path = model_path
        self.validator = validator
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
                                   "max_attempts": self.cfg.max_attempts,
                                   "validator": self.validator},
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


def actor_options(cfg: Any) -> dict[str, Any]:
    """:func:`pool_remote_args` as ``.options()`` of one actor (placement group for TP*PP)."""
    bundles = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    if bundles > 1:
        return {"num_cpus": 1, "num_gpus": 0,
                **_placement(bundles, cfg.accelerator_type, 1)}
    return pool_remote_args(cfg)  # num_cpus, num_gpus, accelerator_type: actor options too


class RayActorPoolRunner:
    """A persistent :class:`recalign.llm.profiles.Runner`: ``llm.pool_size`` Ray actors, each
    holding one engine, created on the first :meth:`run` and reused by every later call until
    :meth:`close`. Chunks of ``llm.batch_size`` requests go to whichever actor is free; each
    chunk's outcomes are yielded as it completes (order of completion)."""

    def __init__(self, cfg: Any, *, model_path: str | None, validator: str = "profile") -> None:
        resolve_validator(validator)  # unknown names fail here, not in the actor
        self.cfg, self.model_path, self.validator = cfg, model_path, validator
        self.actors: list[Any] = []
        self.startup_s: float | None = None
        self.calls = 0
        ensure_ray(cfg.pool_size * cfg.num_cpus)

    def _start(self) -> None:
        import ray

        t0 = time.perf_counter()
        cls = ray.remote(GenerateUDF)
        self.actors = [cls.options(**actor_options(self.cfg)).remote(
            self.cfg.engine, self.cfg.model_dump(mode="json"), self.model_path,
            self.cfg.max_attempts, self.validator) for _ in range(self.cfg.pool_size)]
        ray.get([a.info.remote() for a in self.actors])  # wait until every engine is up
        self.startup_s = time.perf_counter() - t0

    def run(self, requests: list[GenerationRequest],
            first_attempt: dict[str, int]) -> Iterator[list[Outcome]]:
        import ray

        if not requests:
            return
        if not self.actors:
            self._start()
        self.calls += 1
        parts = list(chunked(requests, self.cfg.batch_size))
        chunks = [[json.dumps(r.to_dict()) for r in c] for c in parts]
        firsts = [[first_attempt.get(r.id, 1) for r in c] for c in parts]
        free = list(self.actors)
        running: dict[Any, Any] = {}
        nxt = 0
        while nxt < len(chunks) or running:
            while free and nxt < len(chunks):
                actor = free.pop()
                running[actor.generate.remote(chunks[nxt], firsts[nxt])] = actor
                nxt += 1
            done, _ = ray.wait(list(running), num_returns=1)
            free.append(running.pop(done[0]))
            yield [Outcome(**json.loads(s)) for s in ray.get(done[0])]

    def info(self) -> list[dict[str, Any]]:
        import ray
        return ray.get([a.info.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        from recalign.operators.ray_env import release_ray
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        release_ray()

