"""Any OpenAI-compatible server (a vLLM server in production): async HTTP (httpx) with a
concurrency limit, timeouts, and retries with exponential backoff and jitter.

Structured-output request forms (``llm.structured_output``):

- ``json_schema``: ``response_format={"type": "json_schema", "json_schema": {"name", "schema",
  "strict": true}}`` - OpenAI's form, also accepted by vLLM's server;
- ``structured_outputs``: vLLM's own extra body ``{"structured_outputs": {"json": schema}}``;
- ``json_object``: ``response_format={"type": "json_object"}`` (servers without schema
  support; the output is still validated against the schema here).

Retried: connection errors, timeouts, HTTP 408/409/429 and 5xx (``Retry-After`` honoured). Other
HTTP errors are returned as an engine error for that request, which the validated-generation
loop counts as a failed attempt. The API key is read from the environment variable named by
``llm.api_key_env`` and sent only as the ``Authorization`` header; it is never logged.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from typing import Any

import numpy as np

from recalign.errors import ConfigError
from recalign.llm.engine import (EmbeddingEngine, GenerationEngine, GenerationRequest,
                                 GenerationResult, register_embedding, register_generation)
from recalign.llm.schemas import engine_schema

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def _run(coro: Any) -> Any:
    """Run a coroutine from sync code, also when the caller already has an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["e"] = exc
    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


class _Client:
    def __init__(self, base_url: str | None, api_key_env: str, timeout_s: float, retries: int,
                 backoff_s: float, concurrency: int) -> None:
        if not base_url:
            raise ConfigError("base_url is required for the openai engine (e.g. "
                              "http://127.0.0.1:8000/v1)")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.concurrency = concurrency
        self.http_retries_done = 0

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def post(self, client: Any, sem: asyncio.Semaphore, path: str,
                   body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        import httpx

        delay = self.backoff_s
        last = "no attempt"
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                async with sem:
                    r = await client.post(f"{self.base_url}{path}", json=body)
                if r.status_code == 200:
                    return r.json(), None
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in RETRY_STATUS:
                    return None, last
                ra = r.headers.get("retry-after")
                if ra:
                    try:
                        retry_after = min(float(ra), 60.0)
                    except ValueError:
                        retry_after = None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"[:300]
            if attempt < self.retries:
                self.http_retries_done += 1
                wait = retry_after if retry_after is not None else delay * (0.5 + random.random())
                await asyncio.sleep(wait)
                delay *= 2
        return None, f"gave up after {self.retries + 1} tries: {last}"

    def client(self) -> Any:
        import httpx
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), headers=self.headers(),
                                 limits=httpx.Limits(max_connections=self.concurrency))

    def get(self, path: str) -> dict[str, Any]:
        import httpx
        r = httpx.get(f"{self.base_url}{path}", headers=self.headers(), timeout=self.timeout_s)
        r.raise_for_status()
        return r.json()


class OpenAIEngine(GenerationEngine):
    name = "openai"

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.http = _Client(cfg.base_url, cfg.api_key_env, cfg.timeout_s, cfg.http_retries,
                            cfg.backoff_s, cfg.concurrency)
        self.model = cfg.model or self._served_model()

    def _served_model(self) -> str:
        data = self.http.get("/models").get("data") or []
        if not data:
            raise ConfigError(f"{self.http.base_url}/models lists no model; set llm.model")
        return data[0]["id"]

    @property
    def model_label(self) -> str:
        return self.model

    def body(self, r: GenerationRequest) -> dict[str, Any]:
        s = r.sampling
        schema = engine_schema(r.schema)
        body: dict[str, Any] = {"model": self.model, "messages": r.messages,
                                "temperature": s.temperature, "top_p": s.top_p,
                                "max_tokens": s.max_tokens, "seed": r.seed}
        if s.repetition_penalty != 1.0 and "api.openai.com" not in self.http.base_url:
            body["repetition_penalty"] = s.repetition_penalty  # vLLM's sampling extension
        form = self.cfg.structured_output
        if form == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": schema, "strict": True}}
        elif form == "structured_outputs":
            body["structured_outputs"] = {"json": schema}
        else:
            body["response_format"] = {"type": "json_object"}
        return body

    async def _all(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        async with self.http.client() as client:
            async def one(r: GenerationRequest) -> GenerationResult:
                data, err = await self.http.post(client, sem, "/chat/completions", self.body(r))
                if data is None:
                    return GenerationResult(r.id, "", error=err)
                try:
                    choice = data["choices"][0]
                    usage = data.get("usage") or {}
                    return GenerationResult(r.id, choice["message"].get("content") or "",
                                            int(usage.get("prompt_tokens", 0)),
                                            int(usage.get("completion_tokens", 0)),
                                            choice.get("finish_reason"))
                except (KeyError, IndexError, TypeError) as exc:
                    return GenerationResult(r.id, "", error=f"malformed response: {exc!r}")
            return await asyncio.gather(*(one(r) for r in requests))

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return _run(self._all(requests))


@register_generation("openai")
def _make_generation(cfg: Any) -> OpenAIEngine:
    return OpenAIEngine(cfg)


class OpenAIEmbeddingEngine(EmbeddingEngine):
    name = "openai"

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.http = _Client(cfg.base_url, cfg.api_key_env, cfg.timeout_s, cfg.http_retries,
                            1.0, cfg.concurrency)
        self.model = cfg.model or self.http.get("/models")["data"][0]["id"]
        self._dim: int | None = None

    @property
    def model_label(self) -> str:
        return self.model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._embed(["dimension probe"]).shape[1])
        return self._dim

    async def _all(self, texts: list[str]) -> list[list[float]]:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        step = max(1, self.cfg.batch_size)
        async with self.http.client() as client:
            async def one(chunk: list[str]) -> list[list[float]]:
                body: dict[str, Any] = {"model": self.model, "input": chunk}
                if self.cfg.dimensions:
                    body["dimensions"] = self.cfg.dimensions
                data, err = await self.http.post(client, sem, "/embeddings", body)
                if data is None:
                    raise RuntimeError(f"embedding request failed: {err}")
                rows = sorted(data["data"], key=lambda d: d["index"])
                return [d["embedding"] for d in rows]
            parts = await asyncio.gather(*(one(texts[i:i + step])
                                           for i in range(0, len(texts), step)))
        return [v for p in parts for v in p]

    def _embed(self, texts: list[str]) -> np.ndarray:
        m = np.asarray(_run(self._all(texts)), dtype=np.float32)
        if self.cfg.normalize:
            m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        return m


@register_embedding("openai")
def _make_embedding(cfg: Any) -> OpenAIEmbeddingEngine:
    return OpenAIEmbeddingEngine(cfg)
