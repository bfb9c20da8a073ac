"""infra/submit.sh against a real Ray head on this machine.

Starts `ray start --head` with its own --temp-dir, free ports, 2 CPUs and a capped object
store; submits a job with infra/submit.sh (the same `ray job submit` the cluster uses); waits
for it; checks the snapshots and LATEST pointers it wrote; submits again with the same
submission id and checks that Ray rejects it and nothing new is written.

Stopping only our Ray: `ray stop` is NOT safe here. It has no address or temp-dir filter and
terminates every Ray process on the machine (other sessions run their own heads). Instead
`ray start` runs as the leader of a new session (start_new_session=True); every daemon it
spawns (gcs_server, raylet, dashboard, monitor, client server, workers) inherits that session
id, and the job's driver runs under a worker of it (in its own session: Ray starts the
entrypoint with setsid). Teardown kills the processes in our session plus all their
descendants, and nothing else. Linux does not hand out a pid that is still in use as a
session id, so the session id cannot name somebody else's processes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from recalign.storage.snapshot import SnapshotStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
SUBMIT = REPO / "infra" / "submit.sh"

# Tiny synthetic data set on top of the demo config (the config travels in the working dir).
CONFIG = "infra/configs/demo.yaml"
SYNTH = {"users": 200, "items": 60, "interactions": 3000, "topics": 4}
DATASET = f"synthetic-u{SYNTH['users']}-i{SYNTH['items']}-n{SYNTH['interactions']}-s7"
JOB = "nightly"
# the LLM-free night (raw-text MiniLM embeddings, 2 epochs): every stage but profiles, each
# writing its own snapshot; the LLM stage has its own tests (tests/test_llm_*.py)
STAGES = ["ingest", "embed", "train", "export"]
NIGHT = [f"nightly.stages=[{','.join(STAGES)}]", "embed.source=raw", "train.max_epochs=2",
         "train.eval_every=1"]
ARTIFACTS = {"ingest": "dataset", "embed": "semantic-raw", "train": "embeddings",
             "export": "index"}


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all sockets are held open while choosing, because a port
    released by one bind can be handed out again by the next (seen: Ray refused to start when
    its GCS and dashboard-agent ports came out equal)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_processes(sid: int) -> list[psutil.Process]:
    """Processes in session ``sid`` and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    found.pop(os.getpid(), None)  # never ourselves
    return list(found.values())


def _kill_session(sid: int) -> None:
    procs = _session_processes(sid)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def ray_head():
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    dash, gcs, client, node, objects, metrics, agent, agent_grpc, runtime_env = _free_ports(9)
    cmd = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--ray-client-server-port", str(client),
           "--node-manager-port", str(node), "--object-manager-port", str(objects),
           "--metrics-export-port", str(metrics),
           "--dashboard-agent-listen-port", str(agent),
           "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(runtime_env),
           "--num-cpus", "2", "--object-store-memory", str(300 * 2**20),
           "--temp-dir", temp, "--disable-usage-stats"]
    proc = subprocess.Popen(["nice", *cmd], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sid = proc.pid  # the session every daemon of this head belongs to
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"ray start failed:\n{out}"
        yield {"address": f"http://127.0.0.1:{dash}", "temp": temp, "sid": sid, "env": env}
    finally:
        _kill_session(sid)
        leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                     if temp in " ".join(p.info["cmdline"] or [])]
        shutil.rmtree(temp, ignore_errors=True)
        assert not leftovers, f"Ray processes of {temp} survived teardown: {leftovers}"


def _submit(head, out_root: Path, runtime_env: Path, **extra_env) -> subprocess.CompletedProcess:
    env = {**head["env"], "RAY_ADDRESS": head["address"], "RAY": RAY,
           "RECALIGN_JOB": JOB, "RECALIGN_RUNTIME_ENV": str(runtime_env), **extra_env}
    args = [f"--set=data.synthetic.{k}={v}" for k, v in SYNTH.items()]
    args += [f"--set={kv}" for kv in NIGHT] + [f"--set=output.root={out_root}"]
    return subprocess.run(["nice", "bash", str(SUBMIT), CONFIG, "--", *args], env=env,
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def job_env(tmp_path_factory):
    """infra/runtime_env.yaml with RECALIGN_CACHE pointed at this user's model cache (the
    cluster value /opt/recalign/cache exists only in the images); everything else as shipped."""
    d = tmp_path_factory.mktemp("rjenv")
    spec = yaml.safe_load((REPO / "infra" / "runtime_env.yaml").read_text())
    cache = os.environ.get("RECALIGN_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recalign"
    spec["env_vars"]["RECALIGN_CACHE"] = str(cache)
    (d / "runtime_env.yaml").write_text(yaml.safe_dump(spec))
    return d / "runtime_env.yaml"


def test_submit_runs_job_then_rejects_same_day_resubmission(ray_head, job_env, tmp_path,
                                                            monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out_root = tmp_path / "snapshots"
    before = dt.datetime.now(dt.timezone.utc).date().isoformat()
    t0 = time.monotonic()
    first = _submit(ray_head, out_root, job_env)
    took = time.monotonic() - t0
    after = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert first.returncode == 0, f"submission failed:\n{first.stdout}\n{first.stderr}"

    client = JobSubmissionClient(ray_head["address"])
    jobs = client.list_jobs()
    assert len(jobs) == 1
    sub_id = jobs[0].submission_id
    assert sub_id in {f"{JOB}-{before}", f"{JOB}-{after}"}
    assert client.get_job_status(sub_id) == JobStatus.SUCCEEDED
    info = client.get_job_info(sub_id)
    assert info.entrypoint.startswith(f"python -m recalign.jobs.{JOB} --config {CONFIG} ")
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_")  # the uploaded repo
    assert info.runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"

    # the job's last stdout line is its JSON summary; it names what each LATEST now points at
    logs = client.get_job_logs(sub_id)
    summary = json.loads([ln for ln in logs.splitlines() if ln.startswith("{")][-1])
    assert summary["job"] == "nightly" and summary["ran"] == STAGES and summary["skipped"] == []
    by_stage = {st["stage"]: st for st in summary["stages"]}
    store = SnapshotStore(str(out_root))
    versions = {}
    for stage, artifact in ARTIFACTS.items():
        latest = store.latest_version(DATASET, artifact)
        assert latest is not None and latest.startswith("v="), artifact
        pointer = out_root / DATASET / artifact / "LATEST"
        assert pointer.read_text().strip() == latest
        assert (out_root / DATASET / artifact / latest / "_SUCCESS").exists()
        versions[artifact] = [v.version for v in store.list_versions(DATASET, artifact)]
        if stage != "train":  # train's summary nests its snapshots per model
            assert by_stage[stage]["summary"]["version"] == latest, stage
    snap = store.open(DATASET, "dataset")
    assert snap.rows("interactions") == SYNTH["interactions"]
    assert snap.rows("user_map") == SYNTH["users"]
    assert snap.rows("item_map") == SYNTH["items"]
    semantic = store.open(DATASET, "semantic-raw")
    assert semantic.rows("items") == SYNTH["items"] and semantic.rows("users") == SYNTH["users"]
    emb = store.open(DATASET, "embeddings")
    assert emb.rows("items") == SYNTH["items"] and emb.rows("users") == SYNTH["users"]
    assert by_stage["train"]["summary"]["aligned"]["snapshot"] == emb.uri
    latest = store.latest_version(DATASET, "index")
    print(f"\nfirst submission {sub_id}: {took:.1f} s, snapshot {latest}")

    # same day, same submission id: Ray refuses it, the pipeline does not run twice
    second = _submit(ray_head, out_root, job_env, RECALIGN_RUN_DATE=sub_id[len(JOB) + 1:])
    assert second.returncode != 0
    assert f"Job with submission_id {sub_id} already exists" in second.stdout + second.stderr
    assert [j.submission_id for j in client.list_jobs()] == [sub_id]
    for artifact in ARTIFACTS.values():
        assert [v.version for v in store.list_versions(DATASET, artifact)] == versions[artifact]
    assert store.latest_version(DATASET, "index") == latest


def test_submit_usage_errors_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    no_addr = subprocess.run(["bash", str(SUBMIT), CONFIG], env=env, capture_output=True,
                             text=True)
    assert no_addr.returncode == 2 and "no Ray address" in no_addr.stderr
    missing = subprocess.run(["bash", str(SUBMIT), "infra/configs/nope.yaml",
                              "http://127.0.0.1:1"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "config not found" in missing.stderr
    bad_date = subprocess.run(["bash", str(SUBMIT), CONFIG, "http://127.0.0.1:1"],
                              env={**env, "RECALIGN_RUN_DATE": "2026-1-2"},
                              capture_output=True, text=True)
    assert bad_date.returncode == 2 and "YYYY-MM-DD" in bad_date.stderr
