"""Engine interfaces and registries: generation with a JSON schema, and embedding.

A :class:`GenerationEngine` turns chat requests into text, one result per request, in order.
Each request carries its JSON schema (engines that can constrain decoding do so), its sampling
settings and its own seed. Engines never interpret the text: :func:`generate_validated` parses
and validates every output, retries invalid ones with a new seed a bounded number of times, and
records the rest as failed with the reason; it runs wherever the engine lives (in this process,
or inside a Ray actor), so retries never need another pass over the data.

An :class:`EmbeddingEngine` turns texts into a float32 matrix.

Registries map config names (``llm.engine``, ``embed.engine``) to factories; engine modules
register themselves on import and are imported lazily, so a missing optional stack (vLLM,
an HTTP client) only matters to the config that names it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recalign.registry import Registry


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 512
    repetition_penalty: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationRequest:
    """One chat completion constrained by ``schema``. ``id`` is opaque to engines."""

    id: str
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    sampling: SamplingSettings
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.messages, "schema": self.schema,
                "sampling": self.sampling.to_dict(), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerationRequest":
        return cls(d["id"], list(d["messages"]), d["schema"], SamplingSettings(**d["sampling"]),
                   int(d["seed"]))


@dataclass
class GenerationResult:
    id: str
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None  # transport/engine error (the text is then empty)


class GenerationEngine(ABC):
    """Chat requests -> texts. Subclasses count the requests they were sent."""

    name: str = "?"

    def __init__(self) -> None:
        self.requests_made = 0

    @property
    @abstractmethod
    def model_label(self) -> str:
        """Stable model name for fingerprints and manifests."""

    @abstractmethod
    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        ...

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        self.requests_made += len(requests)
        results = self._generate(requests)
        if len(results) != len(requests):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(requests)} requests")
        return results

    def close(self) -> None:  # release the model / connections
        pass

    def __enter__(self) -> "GenerationEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EmbeddingEngine(ABC):
    name: str = "?"

    def __init__(self) -> None:
        self.texts_embedded = 0

    @property
    @abstractmethod
    def model_label(self) -> str:
        ...

    @property
    @abstractmethod
    def dim(self) -> int:
        ...

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray:
        ...

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.texts_embedded += len(texts)
        out = np.asarray(self._embed(texts), dtype=np.float32)
        if out.shape != (len(texts), self.dim):
            raise RuntimeError(f"{self.name}: got shape {out.shape} for {len(texts)} texts")
        return out

    def close(self) -> None:
        pass


# --- registries ---------------------------------------------------------------------------

GenerationFactory = Callable[[Any], GenerationEngine]  # takes recalign.config.LLMConfig
EmbeddingFactory = Callable[[Any], EmbeddingEngine]  # takes recalign.config.EmbedConfig

GENERATION_ENGINES: Registry[GenerationFactory] = Registry("generation engine", {
    "vllm": "recalign.llm.engines.vllm_engine",
    "transformers": "recalign.llm.engines.transformers_engine",
    "openai": "recalign.llm.engines.openai_engine",
}, key="llm.engine", optional_deps=True)
EMBEDDING_ENGINES: Registry[EmbeddingFactory] = Registry("embedding engine", {
    "sentence-transformers": "recalign.llm.engines.st_embed",
    "vllm": "recalign.llm.engines.vllm_engine",
    "openai": "recalign.llm.engines.openai_engine",
}, key="embed.engine", optional_deps=True)


def register_generation(name: str) -> Callable[[GenerationFactory], GenerationFactory]:
    """Decorator: a factory ``cfg -> GenerationEngine`` for ``llm.engine: name``."""
    return GENERATION_ENGINES.register(name)


def register_embedding(name: str) -> Callable[[EmbeddingFactory], EmbeddingFactory]:
    """Decorator: a factory ``cfg -> EmbeddingEngine`` for ``embed.engine: name``."""
    return EMBEDDING_ENGINES.register(name)


def build_generation_engine(cfg: Any) -> GenerationEngine:
    """``cfg`` is an :class:`recalign.config.LLMConfig`."""
    return GENERATION_ENGINES.get(cfg.engine)(cfg)


def build_embedding_engine(cfg: Any) -> EmbeddingEngine:
    """``cfg`` is an :class:`recalign.config.EmbedConfig`."""
    return EMBEDDING_ENGINES.get(cfg.engine)(cfg)


# --- validated generation -----------------------------------------------------------------

Validator = Callable[[str, dict[str, Any]], tuple[dict[str, Any] | None, str | None]]


@dataclass
class Outcome:
    """The end state of one request after validation and retries."""

    id: str
    status: str  # "ok" | "failed"
    value: dict[str, Any] | None
    reason: str | None
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    last_text: str = ""
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attempt_seed(base: int, attempt: int) -> int:
    """A new, reproducible seed per attempt (attempt 1 uses the request's own seed)."""
    if attempt <= 1:
        return base
    h = hashlib.sha256(f"{base}:{attempt}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def generate_validated(engine: GenerationEngine, requests: list[GenerationRequest],
                       validate: Validator, max_attempts: int, *,
                       first_attempt: dict[str, int] | None = None) -> list[Outcome]:
    """Generate, parse and validate; retry invalid outputs with a new seed up to
    ``max_attempts`` in total; then record them as failed with the last reason.

    ``first_attempt`` maps a request id to the attempt number it starts at (attempts already
    spent on it by earlier runs), so that a rerun continues with fresh seeds and a bounded
    total. Never raises for a bad output; an engine exception is raised (it is not an output).
    """
    first_attempt = first_attempt or {}
    state = {r.id: Outcome(r.id, "failed", None, None, 0, 0, 0) for r in requests}
    attempt_no = {r.id: max(1, first_attempt.get(r.id, 1)) for r in requests}
    pending = list(requests)
    rounds = 0
    while pending and rounds < max_attempts:
        rounds += 1
        batch = [GenerationRequest(r.id, r.messages, r.schema, r.sampling,
                                   attempt_seed(r.seed, attempt_no[r.id])) for r in pending]
        results = engine.generate(batch)
        retry = []
        for req, res in zip(pending, results):
            out = state[req.id]
            out.attempts += 1
            out.prompt_tokens += res.prompt_tokens
            out.completion_tokens += res.completion_tokens
            out.last_text = res.text[:2000]
            if res.error:
                value, reason = None, f"engine error: {res.error}"
            else:
                value, reason = validate(res.text, req.schema)
            if value is not None:
                out.status, out.value, out.reason = "ok", value, None
            else:
                out.reason = reason or "invalid output"
                out.reasons.append(out.reason)
                attempt_no[req.id] += 1
                retry.append(req)
        pending = retry
    return [state[r.id] for r in requests]


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf
