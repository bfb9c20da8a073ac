"""The generation engines with the real SmolLM2 model on CPU: vLLM in process (one engine per
session), vLLM as a Ray Data actor pool, transformers with xgrammar-constrained decoding, and the
OpenAI-compatible client against a real vLLM OpenAI server started here on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from llm_fixtures import VLLM_ENV, free_port, small_llm
from recalign.llm.engine import GenerationRequest, SamplingSettings, generate_validated
from recalign.llm.schemas import max_tokens_for, parse_and_validate, profile_schema

pytestmark = pytest.mark.slow

SCHEMA = profile_schema(30, 20)
SAMPLING = SamplingSettings(0.6, 0.95, max_tokens_for(SCHEMA), 1.05)
SYSTEM = ("You will serve as an assistant to help me summarize which types of users would enjoy "
          "a specific book. Answer with one JSON object: {\"summarization\": ..., "
          "\"reasoning\": ...}.")
BOOKS = ["The Herb Garden", "Deep Space Voyages", "Pasta at Home", "Mountain Birds",
         "Jazz for Beginners", "The Lost City", "Knitting Patterns", "Chess Openings"]


def requests(n: int = 8, seed0: int = 0) -> list[GenerationRequest]:
    return [GenerationRequest(f"r{i}", [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": json.dumps({"title": BOOKS[i % len(BOOKS)],
                                                "description": "A friendly book."})}],
        SCHEMA, SAMPLING, seed0 + i) for i in range(n)]


def assert_schema_json(text: str) -> None:
    obj = json.loads(text)  # constrained decoding: always parseable JSON with exactly the keys
    assert set(obj) == {"summarization", "reasoning"}
    assert all(isinstance(v, str) for v in obj.values())
    assert len(obj["summarization"]) <= SCHEMA["properties"]["summarization"]["maxLength"]


def test_vllm_constrained_outputs_seeds_and_tokens(vllm_engine) -> None:
    before = vllm_engine.requests_made
    t0 = time.perf_counter()
    res = vllm_engine.generate(requests(8))
    dt = time.perf_counter() - t0
    assert vllm_engine.requests_made - before == 8
    finished = [r for r in res if r.finish_reason == "stop"]
    assert len(finished) >= 7, [r.text for r in res]  # a degenerate one may hit max_tokens
    for r in finished:  # constrained decoding: every finished output is schema-shaped JSON
        assert_schema_json(r.text)
    for r in res:
        assert r.prompt_tokens > 40 and 5 < r.completion_tokens <= SAMPLING.max_tokens
    print(f"vllm: 8 requests in {dt:.1f}s, startup {vllm_engine.startup_s:.1f}s")
    # per-request seeds: the same seed reproduces, in any batch — up to CPU kernels that are
    # not batch-invariant: a 2-request batch computes slightly different logits than an
    # 8-request one, and a long degenerate answer (the word pattern allows 30 words of up to 14
    # characters) can reach a near-tie late; seen once, diverging after 250 characters
    again = vllm_engine.generate(requests(8)[2:4])
    assert [a.text[:80] for a in again] == [r.text[:80] for r in res[2:4]]
    other = vllm_engine.generate(requests(8, seed0=1000)[2:4])
    assert [a.text for a in other] != [r.text for r in res[2:4]]


def test_vllm_many_long_seeded_prompts_in_one_call(vllm_engine) -> None:
    """More prompt tokens than one scheduler step holds, each request with its own seed: with
    chunked prefill vLLM 0.32's CPU build dies here ("CPU Generator does not use offset")."""
    long = [GenerationRequest(f"l{i}", [{"role": "user", "content": f"Tell me about book {i}. " * 60}],
                              SCHEMA, SamplingSettings(0.6, 0.95, 8, 1.0), i) for i in range(24)]
    res = vllm_engine.generate(long)
    assert len(res) == 24 and all(r.prompt_tokens > 300 and r.completion_tokens > 0 for r in res)


def test_vllm_validated_generation_reaches_full_validity(vllm_engine) -> None:
    outs = generate_validated(vllm_engine, requests(8), parse_and_validate, 3)
    assert all(o.status == "ok" for o in outs), [o.reasons for o in outs]
    assert all(len(o.value["summarization"].split()) <= 30 for o in outs)


def test_transformers_engine_constrained(model_dir: str) -> None:
    from recalign.llm.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(small_llm(engine="transformers"), model_path=model_dir)
    res = engine.generate(requests(4))
    assert sum(r.finish_reason == "stop" for r in res) >= 3, [r.text for r in res]
    for r in res:
        if r.finish_reason == "stop":
            assert_schema_json(r.text)
        assert r.prompt_tokens > 40 and r.completion_tokens > 5
    # the same batch with the same seeds is reproducible
    assert [r.text for r in engine.generate(requests(4))] == [r.text for r in res]


def test_ray_data_actor_pool_runs_vllm(ray_session, model_dir: str) -> None:
    from recalign.operators.llm_pool import RayPoolRunner

    cfg = small_llm(engine="vllm", batch_size=3, num_cpus=2)
    runner = RayPoolRunner(cfg, model_path=model_dir)
    reqs = requests(7)
    batches = list(runner.run(reqs, {"r0": 2}))
    # streamed back as blocks complete (Ray Data may bundle small blocks: not always 3 + 3 + 1)
    assert len(batches) >= 2 and sum(map(len, batches)) == 7
    outs = {o.id: o for b in batches for o in b}
    assert set(outs) == {r.id for r in reqs}
    assert sum(o.status == "ok" for o in outs.values()) >= 6
    for o in outs.values():
        if o.status == "ok":
            assert set(o.value) == {"summarization", "reasoning"}
            assert o.prompt_tokens > 40 and o.completion_tokens > 5


# --- the OpenAI-compatible client against a real vLLM server --------------------------------

@pytest.fixture(scope="module")
def vllm_server(model_dir: str, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("vllm")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, **VLLM_ENV}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
           "--enforce-eager", "--max-model-len", "2048", "--max-num-seqs", "16",
           "--dtype", "bfloat16", "--structured-outputs-config",
           json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vLLM server not ready in 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("form", ["json_schema", "structured_outputs"])
def test_openai_engine_against_vllm_server(vllm_server: str, form: str) -> None:
    from recalign.llm.engines.openai_engine import OpenAIEngine

    engine = OpenAIEngine(small_llm(engine="openai", base_url=vllm_server,
                                    structured_output=form, concurrency=4))
    assert engine.model == "smollm2"  # discovered from /models
    res = engine.generate(requests(6))
    assert sum(r.finish_reason == "stop" for r in res) >= 5, [r.text for r in res]
    for r in res:
        assert r.error is None, r.error
        if r.finish_reason == "stop":
            assert_schema_json(r.text)
        assert r.prompt_tokens > 40 and r.completion_tokens > 5


class FlakyProxy(BaseHTTPRequestHandler):
    """Deliberately injected faults in front of the real server: the first POSTs get a 503 or
    a response slower than the client's timeout, the rest are forwarded unchanged."""

    upstream = ""
    slow_s = 0.0
    faults: list[str] = []
    posts = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _forward(self, method: str, body: bytes | None = None) -> None:
        r = httpx.request(method, self.upstream + self.path.removeprefix("/v1"), content=body,
                          headers={"content-type": "application/json"}, timeout=120)
        self.send_response(r.status_code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        with self.lock:
            n = FlakyProxy.posts
            FlakyProxy.posts += 1
        fault = self.faults[n] if n < len(self.faults) else None
        if fault == "503":
            self.send_response(503)
            self.send_header("retry-after", "0")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if fault == "slow":
            time.sleep(self.slow_s)
        try:
            self._forward("POST", body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_openai_engine_retries_with_backoff_on_injected_faults(vllm_server: str) -> None:
    from recalign.llm.engines.openai_engine import OpenAIEngine

    # a short completion keeps the real response well inside the timeout on a busy machine;
    # the injected slow response takes longer than the timeout
    timeout = 15.0
    FlakyProxy.upstream, FlakyProxy.faults, FlakyProxy.posts = vllm_server, ["503", "slow", "503"], 0
    FlakyProxy.slow_s = timeout + 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/v1"
        engine = OpenAIEngine(small_llm(engine="openai", base_url=base, model="smollm2",
                                        concurrency=1, timeout_s=timeout, http_retries=4,
                                        backoff_s=0.05))
        t0 = time.perf_counter()
        short = requests(1)[0]
        short.sampling = SamplingSettings(0.6, 0.95, 16, 1.05)
        res = engine.generate([short])
        assert res[0].error is None and res[0].completion_tokens > 5
        assert engine.http.http_retries_done == 3 and FlakyProxy.posts == 4
        # out of retries: an engine error for that request, not an exception
        FlakyProxy.faults, FlakyProxy.posts = ["503"] * 10, 0
        engine2 = OpenAIEngine(small_llm(engine="openai", base_url=base, model="smollm2",
                                         http_retries=2, backoff_s=0.01))
        res2 = engine2.generate([short])
        assert res2[0].text == "" and "gave up after 3 tries: HTTP 503" in res2[0].error
        assert time.perf_counter() - t0 < 120
    finally:
        server.shutdown()
