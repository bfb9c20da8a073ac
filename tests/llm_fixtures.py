"""Fixtures of the LLM stage's tests: the real local model (SmolLM2, prepared once into a cache),
one in-process vLLM engine per test session, a Ray session, small data sets with text.

Nothing here fakes an engine: tests that inject a fault say so and wrap a real engine.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recalign.config import Config, LLMConfig
from recalign.data.snapshot_io import ingest_to_snapshot
from recalign.storage.snapshot import SnapshotStore

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "TOKENIZERS_PARALLELISM": "false"}

# short outputs keep the real model's runs fast on two cores
SMALL = {"item_words": 30, "user_words": 30, "reasoning_words": 20, "batch_size": 16,
         "user_interactions": 20, "item_reviews": 3, "threads": 2, "max_num_seqs": 16,
         "kv_cache_gib": 1, "max_model_len": 2048}


def model_cache() -> str:
    return os.environ.get("RECALIGN_TEST_MODEL_CACHE",
                          str(Path.home() / ".cache" / "recalign" / "models"))


def small_llm(**kw: Any) -> LLMConfig:
    return LLMConfig(**{**SMALL, "cache_dir": model_cache(), **kw})


@pytest.fixture(scope="session")
def llm_env() -> None:
    for k, v in VLLM_ENV.items():
        os.environ.setdefault(k, v)


@pytest.fixture(scope="session")
def model_dir(llm_env: None) -> str:
    """SmolLM2-135M-Instruct converted from the packaged GGUF (once per cache)."""
    from recalign.llm.models import prepare_default_model
    return str(prepare_default_model(model_cache()))


class SharedEngine:
    """The session's real engine behind a close() that does nothing (the session closes it)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, requests: list) -> list:
        return self._engine.generate(requests)

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def vllm_engine(model_dir: str) -> Any:
    """One real vLLM engine (SmolLM2 on CPU) for the whole test session."""
    pytest.importorskip("vllm")
    from recalign.llm.engines.vllm_engine import VLLMEngine
    engine = VLLMEngine(small_llm(engine="vllm"), model_path=model_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, object_store_memory=512 * 2**20,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")), log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- data -----------------------------------------------------------------------------------

def write_text_dataset(folder: Path, *, n_items: int = 20, n_users: int = 6, per_user: int = 6,
                       titles: dict[int, str] | None = None,
                       reviews: dict[tuple[int, int], str] | None = None) -> Path:
    """A parquet folder with a given split: items with titles (half with descriptions, half
    with attributes), reviews on every interaction; valid/test reviews carry LEAKMARK."""
    folder.mkdir(parents=True, exist_ok=True)
    titles = titles or {}
    items = {"item_id": [], "title": [], "description": [], "attributes": []}
    for i in range(n_items):
        items["item_id"].append(f"i{i}")
        items["title"].append(titles.get(i, f"The Garden Book {i}"))
        items["description"].append(f"A calm guide to growing herbs, volume {i}." if i % 2 else None)
        items["attributes"].append(None if i % 2 else json.dumps(
            {"genres": ["gardening", "nature"], "year": 2000 + i}))
    inter = {"user_id": [], "item_id": [], "rating": [], "timestamp": [], "review": [], "split": []}
    for u in range(n_users):
        for k in range(per_user):
            i = (u * 3 + k * 2) % n_items
            split = "train" if k < per_user - 2 else ("valid" if k == per_user - 2 else "test")
            rev = (reviews or {}).get((u, i))
            if rev is None:
                rev = (f"Lovely book about herbs, said user {u}." if split == "train"
                       else f"LEAKMARK {split} review by user {u} on item {i}")
            inter["user_id"].append(f"u{u}")
            inter["item_id"].append(f"i{i}")
            inter["rating"].append(4.0)
            inter["timestamp"].append(1000 * u + k)
            inter["review"].append(rev)
            inter["split"].append(split)
    pq.write_table(pa.table(items), folder / "items.parquet")
    pq.write_table(pa.table(inter), folder / "interactions.parquet")
    return folder


def ingest_folder(folder: Path, root: Path, name: str = "texty", **llm: Any) -> Config:
    cfg = Config.model_validate({
        "data": {"source": "parquet", "path": str(folder), "name": name,
                 "split": {"method": "given"}},
        "output": {"root": str(root)},
        "llm": {**SMALL, "cache_dir": model_cache(), **llm},
    })
    ingest_to_snapshot(cfg, SnapshotStore(str(root)))
    return cfg
