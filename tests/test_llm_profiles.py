"""Profiles with the real SmolLM2 model: incremental (engine calls counted), resumable after a
kill, invalid outputs retried then recorded, and the job's summary line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from llm_fixtures import (SMALL, VLLM_ENV, SharedEngine, ingest_folder, model_cache, small_llm,
                          write_text_dataset)
from recalign.data.snapshot_io import read_dataset
from recalign.jobs.profiles import text_bounder
from recalign.llm.engine import GenerationEngine, GenerationResult
from recalign.llm.models import model_label
from recalign.llm.profiles import ARTIFACT, LocalRunner, generate_profiles
from recalign.storage.snapshot import SnapshotStore

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"requests", "ok", "retried", "failed", "prompt_tokens", "completion_tokens",
                "snapshot"}


def run_profiles(root: Path, engine: GenerationEngine, model_dir: str, **llm) -> dict:
    store = SnapshotStore(str(root))
    snap = store.open("texty", "dataset")
    cfg = small_llm(**llm)
    return generate_profiles(
        read_dataset(snap), cfg, store,
        lambda: LocalRunner(lambda: engine, max_attempts=cfg.max_attempts,
                            batch_size=cfg.batch_size, close_engine=False),
        model=model_label(None, model_dir), bound=text_bounder(model_dir),
        dataset_version=snap.version)


def rows(root: Path, side: str) -> dict[str, dict]:
    snap = SnapshotStore(str(root)).open("texty", ARTIFACT)
    return {r["key"]: r for r in snap.read_table(side).to_pylist()}


def test_incremental_rerun_and_five_percent_change(tmp_path: Path, vllm_engine, model_dir: str) -> None:
    engine = SharedEngine(vllm_engine)
    src, root = tmp_path / "src", tmp_path / "root"
    ingest_folder(write_text_dataset(src), root)
    calls0 = vllm_engine.requests_made
    first = run_profiles(root, engine, model_dir, max_attempts=4)
    calls1 = vllm_engine.requests_made
    assert first["requests"] == calls1 - calls0 >= 26  # 20 items + 6 users, plus retries
    assert first["ok"] == 26 and first["failed"] == 0, first["fail_reasons"]
    assert first["requests"] == 26 + first["retries"]
    assert first["prompt_tokens"] > 26 * 100 and first["completion_tokens"] > 26 * 10
    items1, users1 = rows(root, "items"), rows(root, "users")
    assert len(items1) == 20 and len(users1) == 6
    assert all(r["status"] == "ok" and r["summarization"] for r in [*items1.values(), *users1.values()])

    # unchanged data: zero engine calls, no new version
    again = run_profiles(root, engine, model_dir, max_attempts=4)
    assert vllm_engine.requests_made == calls1 and again["requests"] == 0
    assert again["skipped"] and again["snapshot"] == first["snapshot"]

    # 5% of the items change (1 of 20): only it and the users whose prompts include it
    write_text_dataset(src, titles={7: "Secret Herb Atlas"})
    ingest_folder(src, root)
    third = run_profiles(root, engine, model_dir, max_attempts=4)
    assert third["requests"] == vllm_engine.requests_made - calls1
    items3, users3 = rows(root, "items"), rows(root, "users")
    assert len(items3) == 20 and len(users3) == 6  # reused rows are carried into the version
    assert third["counts"] == {"items": 20, "users": 6}
    new = third["version"]
    regenerated_items = {k for k, r in items3.items() if r["generated_in"] == new}
    regenerated_users = {k for k, r in users3.items() if r["generated_in"] == new}
    # expected from the raw data: users with a *training* interaction on item i7
    ds = read_dataset(SnapshotStore(str(root)).open("texty", "dataset"))
    i7 = int(ds.item_map.lookup(pa.array(["i7"]))[0])
    t = ds.interactions.to_pandas()
    expected_users = set(ds.user_map.key_of(np.unique(
        t[(t.item == i7) & (t.split == 0)].user.to_numpy())).to_pylist())
    assert regenerated_items == {"i7"}
    assert regenerated_users == expected_users and 0 < len(expected_users) < 6
    assert third["ok"] + third["failed"] == 1 + len(expected_users)
    for k in set(items1) - {"i7"}:
        assert items3[k]["summarization"] == items1[k]["summarization"]
    for k in set(users1) - expected_users:
        assert users3[k]["summarization"] == users1[k]["summarization"]
        assert users3[k]["generated_in"] == first["version"]


class CorruptingEngine(GenerationEngine):
    """Deliberately injected fault around the real engine: for chosen prompts the real output is
    truncated (invalid JSON) on the first ``n`` attempts, so retries and failures are exact."""

    name = "corrupting"

    def __init__(self, real: GenerationEngine, corrupt: dict[str, int]) -> None:
        super().__init__()
        self.real, self.corrupt, self.seen = real, corrupt, {}

    @property
    def model_label(self) -> str:
        return self.real.model_label

    def _generate(self, requests):
        out = self.real.generate(requests)
        fixed = []
        for r, res in zip(requests, out):
            n = self.seen[r.id] = self.seen.get(r.id, 0) + 1
            if n <= self.corrupt.get(r.id, 0):
                res = GenerationResult(res.id, res.text[: len(res.text) // 2], res.prompt_tokens,
                                       res.completion_tokens, res.finish_reason)
            fixed.append(res)
        return fixed


def test_invalid_outputs_are_retried_then_recorded_not_fatal(tmp_path: Path, vllm_engine,
                                                             model_dir: str) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    ingest_folder(write_text_dataset(src, n_items=6, n_users=2, per_user=5), root)
    ds = read_dataset(SnapshotStore(str(root)).open("texty", "dataset"))
    i = {k: int(v) for k, v in zip(["i1", "i2"], ds.item_map.lookup(pa.array(["i1", "i2"])))}
    engine = CorruptingEngine(SharedEngine(vllm_engine),
                              {f"items:{i['i1']}": 1, f"items:{i['i2']}": 99})
    s = run_profiles(root, engine, model_dir, max_attempts=3)
    assert SUMMARY_KEYS <= set(s)
    items = rows(root, "items")
    assert items["i2"]["status"] == "failed" and items["i2"]["attempts"] == 3
    assert "not valid JSON" in items["i2"]["reason"] and items["i2"]["summarization"] is None
    assert items["i1"]["status"] == "ok" and items["i1"]["attempts"] >= 2
    assert s["failed"] >= 1 and s["retried"] >= 2 and s["fail_reasons"].get("not valid JSON", 0) >= 1
    assert s["requests"] == engine.requests_made
    assert len(items) == 6 and len(rows(root, "users")) == 2  # nothing dropped
    # the user prompts were still built (the failed item contributes its title only)
    # a rerun tries only the failed item again, continuing its attempt count
    engine.corrupt = {}
    before = engine.requests_made
    s2 = run_profiles(root, engine, model_dir, max_attempts=3)
    assert s2["ok"] + s2["failed"] >= 1 and engine.requests_made - before == s2["requests"]
    items2 = rows(root, "items")
    assert items2["i2"]["status"] == "ok" and items2["i2"]["attempts"] >= 4
    assert len(items2) == 6 and len(rows(root, "users")) == 2


def _job_config(path: Path, root: Path, src: Path, **llm) -> Path:
    cfg = {"data": {"source": "parquet", "path": str(src), "name": "texty",
                    "split": {"method": "given"}},
           "output": {"root": str(root)},
           "llm": {**SMALL, "cache_dir": model_cache(), **llm}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_killed_job_resumes_without_regenerating(tmp_path: Path, model_dir: str) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    ingest_folder(write_text_dataset(src), root)
    cfg = _job_config(tmp_path / "cfg.yaml", root, src, engine="transformers", batch_size=2)
    env = {**os.environ, **VLLM_ENV}
    cmd = [sys.executable, "-m", "recalign.jobs.profiles", "--config", str(cfg), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    art = root / "texty" / ARTIFACT
    deadline = time.time() + 240
    parts: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        parts = sorted(art.glob("v=*/items/part-*.parquet"))
        if len(parts) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # killed midway, no chance to clean up
    proc.wait()
    (killed,) = [p for p in art.iterdir() if p.name.startswith("v=")]
    assert not (killed / "_SUCCESS").exists() and not (art / "LATEST").exists()
    done = {}
    for p in sorted((killed / "items").glob("part-*.parquet")):
        try:
            for r in pq.read_table(p).to_pylist():
                if r["status"] == "ok":
                    done[r["key"]] = r["summarization"]
        except Exception:  # a part torn by the kill is not trusted
            pass
    # at least one finished, valid profile survived the kill (how many depends on machine
    # load: a 135M model's output can also fail validation and is then retried on rerun)
    assert len(done) >= 1

    out = subprocess.run(cmd + ["--set", "llm.batch_size=16"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])  # the last stdout line
    assert SUMMARY_KEYS <= set(summary) and summary["job"] == "profiles"
    assert summary["salvaged"] == len(done)
    assert summary["ok"] + summary["failed"] == 26 - len(done)  # the rest, nothing twice
    assert summary["requests"] == summary["ok"] + summary["failed"] + summary["retries"]
    items = rows(root, "items")
    for key, text in done.items():
        assert items[key]["summarization"] == text and items[key]["generated_in"] == killed.name
    assert len(items) == 20 and len(rows(root, "users")) == 6
    manifest = json.loads((Path(summary["snapshot"]) / "manifest.json").read_text())
    acc = manifest["accounting"]
    assert acc["requests"] == summary["requests"] and acc["wall_s"] > 0
    assert acc["completion_tokens_per_s"] > 0 and "engine_startup_s" in acc
    # the killed run's folder was garbage-collected after the successful commit
    assert not killed.exists()
