"""Engine settings pass through to vLLM and to the Ray actor pool (GPU clusters) unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_fixtures import model_cache
from recalign.config import LLMConfig, load_config
from recalign.errors import ConfigError, RecalignError
from recalign.llm.models import MANIFEST, resolve_model, verify_model_dir
from recalign.llm.engines.vllm_engine import engine_args
from recalign.operators.llm_pool import pool_remote_args


def test_vllm_engine_args_pass_through() -> None:
    cfg = LLMConfig(tensor_parallel_size=2, pipeline_parallel_size=2, dtype="bfloat16",
                    max_num_seqs=256, max_model_len=8192, enforce_eager=False,
                    engine_kwargs={"enable_prefix_caching": True, "max_num_seqs": 128})
    kw = engine_args(cfg, "/models/m")
    assert kw["model"] == "/models/m" and kw["tensor_parallel_size"] == 2
    assert kw["pipeline_parallel_size"] == 2 and kw["dtype"] == "bfloat16"
    assert kw["max_model_len"] == 8192 and kw["enforce_eager"] is False
    assert kw["distributed_executor_backend"] == "ray"  # TP*PP > 1
    assert kw["enable_prefix_caching"] is True and kw["max_num_seqs"] == 128  # engine_kwargs win
    assert kw["structured_outputs_config"]["disable_any_whitespace"] is True
    assert engine_args(LLMConfig(), "m")["distributed_executor_backend"] == "uni"
    # on CPU (this machine): no chunked prefill (vLLM 0.32 CPU bug with per-request seeds)
    cpu = engine_args(LLMConfig(max_model_len=8192), "m")
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] == 8192


def test_pool_resources() -> None:
    cpu = pool_remote_args(LLMConfig(num_cpus=2))
    assert cpu == {"num_cpus": 2}
    gpu = pool_remote_args(LLMConfig(num_gpus=1, num_cpus=4, accelerator_type="H100"))
    assert gpu == {"num_cpus": 4, "num_gpus": 1, "accelerator_type": "H100"}
    tp = pool_remote_args(LLMConfig(tensor_parallel_size=4, accelerator_type="A100"))
    # the actor takes no GPU; vLLM's Ray workers go into a placement group of 4 GPU bundles
    assert tp["num_gpus"] == 0 and callable(tp["ray_remote_args_fn"])
    assert tp["ray_remote_args_fn"].args == (4, "A100", 1)


def test_llm_config_errors_name_the_key(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("llm: {engine: vllm, temprature: 0.5}\n")
    with pytest.raises(ConfigError, match="llm.temprature: unknown key"):
        load_config(p)
    with pytest.raises(ConfigError, match="llm.engine"):
        load_config(None, ["llm.engine=llamacpp"])
    assert load_config(None, ["llm.max_attempts=5"]).llm.max_attempts == 5


def test_models_prepare_job_and_checksums(model_dir: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "recalign.jobs.models", "verify", "--cache-dir",
                          model_cache()], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["path"] == model_dir and summary["verified"] and summary["files"] >= 5
    manifest = json.loads((Path(model_dir) / MANIFEST).read_text())
    assert len(manifest["source_sha256"]) == 64 and "model.safetensors" in manifest["files"]
    # a damaged copy is detected
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    verify_model_dir(copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(RecalignError, match="checksum mismatch for config.json"):
        verify_model_dir(copy)
    # llm.model: the default alias, a local folder, or a hub id passed through untouched
    assert resolve_model(None, model_cache()) == model_dir
    assert resolve_model(str(copy)) == str(copy)
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch) -> None:
    """``llm.dtype: auto`` on a CPU: bf16 only where the CPU multiplies it natively, float32 on
    an AVX2-only CPU (emulated bf16 is slower there); an explicit dtype is kept."""
    import torch

    from recalign.llm.engines import transformers_engine, vllm_engine

    for native, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert engine_args(LLMConfig(), "m")["dtype"] == want
        assert engine_args(LLMConfig(dtype="bfloat16"), "m")["dtype"] == "bfloat16"
        assert vllm_engine.resolve_dtype("float16") == "float16"
        assert transformers_engine._torch_dtype("auto", cuda=False) == getattr(torch, want)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # AMX alone: native
    assert engine_args(LLMConfig(), "m")["dtype"] == "bfloat16"
