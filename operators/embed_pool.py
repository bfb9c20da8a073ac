"""Embedding engines as a Ray Data actor pool: texts -> float32 vectors, streamed back."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from recalign.operators.ray_env import ensure_ray, quiet_stdout


class EmbedUDF:
    def __init__(self, cfg: dict[str, Any]) -> None:
        quiet_stdout()
        from recalign.config import EmbedConfig
        from recalign.llm.engine import build_embedding_engine

        self.engine = build_embedding_engine(EmbedConfig.model_validate(cfg))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vecs = self.engine.embed([str(t) for t in batch["text"]])
        return {"row": batch["row"], "vector": vecs}


class RayEmbedRunner:
    """``run(texts)`` yields ``(row indexes, vectors)`` per completed batch."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        ensure_ray(cfg.pool_size * cfg.num_cpus)

    def run(self, texts: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import ray

        if not texts:
            return
        rows = [{"row": i, "text": t} for i, t in enumerate(texts)]
        blocks = max(1, math.ceil(len(rows) / self.cfg.batch_size))
        args: dict[str, Any] = {"num_cpus": self.cfg.num_cpus}
        if self.cfg.num_gpus:
            args["num_gpus"] = self.cfg.num_gpus
        ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            EmbedUDF, fn_constructor_kwargs={"cfg": self.cfg.model_dump(mode="json")},
            batch_size=self.cfg.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.cfg.pool_size), **args)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield np.asarray(batch["row"], dtype=np.int64), np.stack(batch["vector"]).astype(np.float32)

    def close(self) -> None:
        from recalign.operators.ray_env import release_ray
        release_ray()
