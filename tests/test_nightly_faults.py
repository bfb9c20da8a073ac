"""Faults injected into the nightly pipeline, each checking that nothing is lost (issue 7).

Fault 1 (a Ray Train worker SIGKILLed mid-run; training restarts from the last checkpoint and
finishes with valid metrics) is covered by
``tests/test_train_distributed.py::test_killed_worker_is_restarted_from_checkpoint``.

2. the nightly job SIGKILLed during profile generation: the rerun makes no LLM request for an
   entity finished before the kill, the final profiles snapshot has every entity, later stages
   complete;
3. a crash after the train stage committed its parts but before LATEST moved: readers keep the
   previous version, the rerun completes the stage;
4. the S3 server goes away while the train stage writes its export: a clear error naming the
   stage and the s3:// URI, no partial snapshot visible, the rerun after the server is back
   succeeds.

Faults 3 and 4 are deliberately injected by wrapping one real storage call (said at each
place); everything else is the real pipeline, the real model and a real S3 server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from llm_fixtures import SMALL, VLLM_ENV, SharedEngine, model_cache, write_text_dataset
from s3_server import AWS_ENV
from recalign.config import Config
from recalign.errors import SnapshotError
from recalign.jobs import nightly
from recalign.llm.profiles import ARTIFACT as PROFILES, LocalRunner
from recalign.pipeline.stages import MarkerStore
from recalign.storage.snapshot import SnapshotStore, SnapshotWriter

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS = 150, 100


def tiny(root: str, **over: Any) -> dict[str, Any]:
    """A small synthetic night (no LLM: raw-text embeddings)."""
    cfg = {
        "data": {"source": "synthetic", "name": "tiny",
                 "synthetic": {"users": N_USERS, "items": N_ITEMS, "interactions": 2500,
                               "topics": 4, "seed": 3},
                 "split": {"method": "random", "ratios": [0.6, 0.2, 0.2], "seed": 1}},
        "embed": {"source": "raw", "executor": "local"},
        "model": {"backbone": "lightgcn", "params": {"dim": 16, "layers": 2}},
        "align": {"method": "rlmrec-con",
                  "semantic": {"users": f"{root}/tiny/semantic-raw",
                               "items": f"{root}/tiny/semantic-raw"}},
        "train": {"max_epochs": 4, "eval_every": 2},
        "nightly": {"stages": ["ingest", "embed", "train", "export"]},
        "output": {"root": root},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def night_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    nightly.add_arguments(p)
    return p.parse_args(["--no-progress", *argv])


def run_night(cfg: dict[str, Any], *argv: str, hooks: nightly.Hooks | None = None) -> dict:
    return nightly.run(Config.model_validate(cfg), night_args(*argv), hooks)


def ids(snap: Any, table: str) -> list[int]:
    return sorted(snap.read_table(table, columns=["id"])["id"].to_pylist())


def check_embeddings(snap: Any) -> None:
    """A complete embedding snapshot: every user and item exactly once."""
    assert ids(snap, "users") == list(range(N_USERS))
    assert ids(snap, "items") == list(range(N_ITEMS))


# ---------------------------------------------------------------- 2. killed during profiles

class RecordingEngine(SharedEngine):
    """The session's real vLLM engine; records the id of every request it is sent."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.ids: list[str] = []

    def generate(self, requests: list) -> list:
        self.ids.extend(r.id for r in requests)
        return super().generate(requests)


def finished_rows(version: Path) -> dict[str, tuple[str, str]]:
    """Request id (``items:<id>``) -> (key, summarization) of the ``ok`` rows in a killed run's
    readable parts."""
    done: dict[str, tuple[str, str]] = {}
    for side in ("items", "users"):
        for p in sorted((version / side).glob("part-*.parquet")):
            try:
                rows = pq.read_table(p).to_pylist()
            except Exception:  # a part torn by the kill is not trusted
                continue
            done.update({f"{side}:{r['id']}": (r["key"], r["summarization"])
                         for r in rows if r["status"] == "ok"})
    return done


@pytest.mark.slow
def test_killed_during_profiles_resumes_without_repeating_llm_calls(
        tmp_path: Path, model_dir: str, request: pytest.FixtureRequest) -> None:
    n_items, n_users = 10, 4
    src = write_text_dataset(tmp_path / "src", n_items=n_items, n_users=n_users, per_user=5)
    root = tmp_path / "root"
    sem = f"{root}/texty/semantic"
    cfg = {
        "data": {"source": "parquet", "path": str(src), "name": "texty",
                 "split": {"method": "given"}},
        "llm": {**SMALL, "cache_dir": model_cache(), "engine": "transformers", "batch_size": 2},
        "embed": {"source": "profiles", "executor": "local"},
        "model": {"backbone": "lightgcn", "params": {"dim": 8, "layers": 1}},
        "align": {"method": "rlmrec-con", "semantic": {"users": sem, "items": sem}},
        "train": {"max_epochs": 2, "eval_every": 1},
        "nightly": {"stages": ["ingest", "profiles", "embed", "train", "export"]},
        "output": {"root": str(root)},
    }
    cfg_file = tmp_path / "night.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "night.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recalign.jobs.nightly", "--config", str(cfg_file),
             "--no-progress"], cwd=ROOT, env={**os.environ, **VLLM_ENV}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    art = root / "texty" / PROFILES
    deadline = time.time() + 420  # generous: two shared cores can be very busy
    done: dict[str, tuple[str, str]] = {}  # finished before the kill
    while time.time() < deadline and proc.poll() is None:
        versions = list(art.glob("v=*"))
        # kill once some profile is finished (a 135M model's output may fail validation:
        # such rows are not finished and are redone by the rerun)
        if versions and (done := finished_rows(versions[0])):
            break
        time.sleep(0.5)
    assert proc.poll() is None, log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, midway, no chance to clean up
    proc.wait()
    (killed,) = [p for p in art.iterdir() if p.name.startswith("v=")]
    assert not (killed / "_SUCCESS").exists() and not (art / "LATEST").exists()
    markers = MarkerStore(str(root), "texty")
    assert markers.get("ingest") is not None and markers.get("profiles") is None
    done = finished_rows(killed)  # (parts written between the poll and the kill count too)
    assert len(done) >= 1

    # the rerun, in-process, on the session's real vLLM engine (requests recorded); the
    # engine is started only now, so that it does not compete with the job above
    engine = RecordingEngine(request.getfixturevalue("vllm_engine"))
    llm = Config.model_validate(cfg).llm
    hooks = nightly.Hooks(profiles_runner=lambda: LocalRunner(
        lambda: engine, max_attempts=llm.max_attempts, batch_size=16, close_engine=False))
    out = run_night(cfg, hooks=hooks)
    assert out["ran"] == ["profiles", "embed", "train", "export"] and out["skipped"] == ["ingest"]
    prof = next(s for s in out["stages"] if s["stage"] == "profiles")["summary"]
    requested = set(engine.ids)
    assert requested.isdisjoint(done), requested & set(done)  # no LLM call for them
    # every other entity, and only those (a retry reuses its entity's id)
    assert len(requested) == n_items + n_users - len(done)
    assert prof["requests"] == len(engine.ids) and prof["ok"] + prof["failed"] == len(requested)

    store = SnapshotStore(str(root))
    snap = store.open("texty", PROFILES)
    items = {r["key"]: r for r in snap.read_table("items").to_pylist()}
    users = {r["key"]: r for r in snap.read_table("users").to_pylist()}
    assert sorted(items) == sorted(f"i{i}" for i in range(n_items))
    assert sorted(users) == sorted(f"u{u}" for u in range(n_users))
    for rid, (key, text) in done.items():  # salvaged as written before the kill
        row = (items if rid.startswith("items:") else users)[key]
        assert row["summarization"] == text and row["generated_in"] == killed.name
    # later stages completed on the full profiles: markers name the LATEST versions
    for stage in ("profiles", "embed", "train", "export"):
        m = markers.get(stage)
        assert m is not None and m.outputs
        for artifact, version in m.outputs.items():
            assert store.latest_version("texty", artifact) == version
    assert markers.get("profiles").outputs == {PROFILES: snap.version}
    emb = store.open("texty", "embeddings")
    assert ids(emb, "users") == list(range(n_users)) and ids(emb, "items") == list(range(n_items))


# ------------------------------------------------- 3. crash between commit and LATEST (train)

# Deliberately injected fault: the real SnapshotStore.set_latest, except that this process
# SIGKILLs itself at the moment it would move LATEST of the `embeddings` artifact (the train
# stage's parts, manifest and _SUCCESS are written by then).
CRASH_ENTRY = textwrap.dedent("""
    import os, signal, sys
    from recalign.storage.snapshot import SnapshotStore
    real = SnapshotStore.set_latest
    def set_latest(self, dataset, artifact, version):
        if artifact == "embeddings":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, dataset, artifact, version)
    SnapshotStore.set_latest = set_latest
    from recalign.jobs.nightly import main
    raise SystemExit(main(sys.argv[1:]))
""")


def test_crash_before_latest_moves_keeps_previous_version_and_rerun_completes(
        tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    store = SnapshotStore(root)
    markers = MarkerStore(root, "tiny")
    first = run_night(tiny(root))
    assert first["ran"] == ["ingest", "embed", "train", "export"]
    v1 = store.latest_version("tiny", "embeddings")
    index1 = store.latest_version("tiny", "index")
    assert v1 and index1 and markers.get("train").outputs == {"embeddings": v1}

    # night 2: the train config changed, so train (and export) must run; it dies at LATEST
    cfg2 = tiny(root, train={"max_epochs": 2, "eval_every": 1})
    cfg_file = tmp_path / "night2.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg2))
    proc = subprocess.run([sys.executable, "-c", CRASH_ENTRY, "--config", str(cfg_file),
                           "--no-progress"], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "nightly: train: run" in proc.stderr
    versions = {v.version: v for v in store.list_versions("tiny", "embeddings")}
    (crashed,) = [v for v in versions.values() if v.version != v1]
    assert crashed.committed and not crashed.latest  # its parts and _SUCCESS were written
    # readers still get the previous version
    assert store.latest_version("tiny", "embeddings") == v1
    snap = store.open("tiny", "embeddings")
    assert snap.version == v1
    check_embeddings(snap)
    assert markers.get("train").outputs == {"embeddings": v1}  # the stage is not done
    export_only = run_night(cfg2, "--only", "export")  # the export stage reads v1: unchanged
    assert export_only["skipped"] == ["export"] and export_only["ran"] == []
    assert store.latest_version("tiny", "index") == index1

    # the rerun (no --force) completes the stage and the night
    again = run_night(cfg2)
    assert again["skipped"] == ["ingest", "embed"] and again["ran"] == ["train", "export"]
    v3 = store.latest_version("tiny", "embeddings")
    assert v3 not in (v1, crashed.version)
    snap3 = store.open("tiny", "embeddings")
    check_embeddings(snap3)
    assert markers.get("train").outputs == {"embeddings": v3}
    index3 = store.open("tiny", "index")
    assert index3.version != index1 and markers.get("export").outputs == {"index": index3.version}
    assert v3 in json.dumps(index3.manifest["inputs"])  # the new index is built from v3
    # nothing lost: night 1's version is still complete and readable by name
    check_embeddings(store.open("tiny", "embeddings", v1))
    # a third run has nothing to do
    assert run_night(cfg2)["ran"] == []


# ------------------------------------------------------ 4. the S3 server goes away mid-write

@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A moto S3 server of this test's own (the session's shared one is never stopped)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="nightly")
    state = {"server": server, "host": host, "port": port, "running": True}

    def stop() -> None:
        state["server"].stop()
        state["running"] = False

    def start() -> None:  # again on the same port (moto's data lives in this process)
        state["server"] = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        state["server"].start()
        state["running"] = True

    state.update(stop=stop, start=start)
    yield state
    if state["running"]:
        state["server"].stop()


def test_s3_server_gone_mid_write_fails_cleanly_and_rerun_succeeds(
        own_s3: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root = "s3://nightly/root"
    cfg = tiny(root, train={"max_epochs": 2, "eval_every": 2},
               nightly={"stages": ["ingest", "embed", "train"]})
    store = SnapshotStore(root)
    real_write = SnapshotWriter.write_table
    written: list[str] = []
    stopped_at: list[float] = []

    # Deliberately injected fault: the real write_table, except that after the train stage's
    # first embeddings part is written, the S3 server is stopped (the next write finds it gone).
    def write_table(self: SnapshotWriter, table_name: str, table: Any) -> str:
        uri = real_write(self, table_name, table)
        if self.artifact == "embeddings" and own_s3["running"]:
            written.append(uri)
            own_s3["stop"]()
            stopped_at.append(time.perf_counter())
        return uri

    monkeypatch.setattr(SnapshotWriter, "write_table", write_table)
    with pytest.raises(nightly.PipelineError) as err:
        run_night(cfg)
    failed_after = time.perf_counter() - stopped_at[0]
    msg = str(err.value)
    assert len(written) == 1 and written[0].startswith("s3://nightly/root/tiny/embeddings/v=")
    version_uri = written[0].rsplit("/", 2)[0]
    assert msg.startswith("nightly: stage 'train' failed:"), msg
    assert "s3://nightly/root/tiny/embeddings/v=" in msg and version_uri in msg, msg
    assert failed_after < 60, failed_after  # fails soon, does not hang retrying

    own_s3["start"]()
    monkeypatch.setattr(SnapshotWriter, "write_table", real_write)
    # no partial snapshot is visible; the stages before train stay committed
    assert store.latest_version("tiny", "embeddings") is None
    with pytest.raises(SnapshotError, match="no committed snapshot yet"):
        store.open("tiny", "embeddings")
    (partial,) = store.list_versions("tiny", "embeddings")
    assert not partial.committed and not partial.latest
    markers = MarkerStore(root, "tiny")
    assert markers.get("train") is None and markers.get("embed") is not None
    dataset_v = store.latest_version("tiny", "dataset")

    again = run_night(cfg)
    assert again["skipped"] == ["ingest", "embed"] and again["ran"] == ["train"]
    assert store.latest_version("tiny", "dataset") == dataset_v
    snap = store.open("tiny", "embeddings")
    assert snap.version != partial.version
    check_embeddings(snap)
    assert markers.get("train").outputs == {"embeddings": snap.version}
    assert run_night(cfg)["ran"] == []  # and the night after has nothing left to do
