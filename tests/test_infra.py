"""Cluster deployment files: every manifest parses and the fields that matter hold.

infra/k8s/*.yaml (KubeRay RayCluster, RayJobs, RayCronJob, a plain CronJob, ServiceAccount),
infra/runtime_env.yaml, infra/submit.sh and infra/docker/*.Dockerfile.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from recalign.config import load_config

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
APP = "/opt/recalign/app"  # WORKDIR of both images: the repository's files live under it
JOBS = {"ingest", "profiles", "embed", "graphs", "train", "export", "nightly"}
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE_RE = re.compile(r"^(?P<registry>[a-z0-9.\-/]+)/recalign-(?P<kind>train|llm):(?P<tag>[\w.\-]+)$")


def _objects() -> list[dict]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if doc.get("kind") == "List":
                assert doc["apiVersion"] == "v1", path
                out.extend(doc["items"])
            else:
                out.append(doc)
    return out


OBJECTS = _objects()


def _by_kind(kind: str) -> list[dict]:
    return [o for o in OBJECTS if o["kind"] == kind]


def _only(kind: str) -> dict:
    objs = _by_kind(kind)
    assert len(objs) == 1, f"expected one {kind}, found {len(objs)}"
    return objs[0]


def _walk(node, key: str):
    """Every value stored under ``key`` anywhere in ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _runtime_env() -> dict:
    return yaml.safe_load((INFRA / "runtime_env.yaml").read_text())


# ------------------------------------------------------------------------------------ kinds

def test_manifest_kinds_and_api_versions():
    kinds = sorted(o["kind"] for o in OBJECTS)
    assert kinds == sorted(["RayCluster", "RayCronJob", "CronJob", "ServiceAccount"]
                           + ["RayJob"] * len(JOBS))
    expected_api = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "RayCronJob": "ray.io/v1",
                    "CronJob": "batch/v1", "ServiceAccount": "v1"}
    for o in OBJECTS:
        assert o["apiVersion"] == expected_api[o["kind"]], o["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", o["metadata"]["name"])
    names = [(o["kind"], o["metadata"]["name"]) for o in OBJECTS]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------------- entrypoints / jobs

def _check_entrypoint(entrypoint: str, job: str) -> None:
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", f"recalign.jobs.{job}"], entrypoint
    assert importlib.util.find_spec(f"recalign.jobs.{job}") is not None, f"no module for {job}"
    assert (REPO / "jobs" / f"{job}.py").is_file()
    assert argv[3] == "--config"
    cfg_path = argv[4]
    assert cfg_path.startswith(APP + "/"), cfg_path
    local = REPO / cfg_path[len(APP) + 1:]
    assert local.is_file(), f"{cfg_path}: {local} does not exist in the repository"
    rest = argv[5:]
    assert len(rest) % 2 == 0 and all(flag == "--set" for flag in rest[::2]), rest
    overrides = [s.replace("$RECALIGN_OUTPUT_ROOT", "s3://bucket/prefix") for s in rest[1::2]]
    assert "output.root=s3://bucket/prefix" in overrides  # snapshots go to the cluster's root
    cfg = load_config(str(local), overrides)  # unknown keys / bad values raise here
    assert cfg.output.root == "s3://bucket/prefix"


def test_one_rayjob_per_job_with_a_real_entrypoint():
    jobs = _by_kind("RayJob")
    assert {j["metadata"]["labels"]["recalign.io/job"] for j in jobs} == JOBS
    for j in jobs:
        job = j["metadata"]["labels"]["recalign.io/job"]
        assert j["metadata"]["name"] == f"recalign-{job}"
        _check_entrypoint(j["spec"]["entrypoint"], job)
        assert j["spec"]["submissionMode"] == "K8sJobMode"
        assert 0 < j["spec"]["activeDeadlineSeconds"] <= 24 * 3600


def test_llm_stages_ask_for_gpus_and_others_do_not():
    for j in _by_kind("RayJob"):
        job = j["metadata"]["labels"]["recalign.io/job"]
        gpus = "llm.num_gpus=1" in j["spec"]["entrypoint"]
        assert gpus == (job in {"profiles", "graphs", "nightly"}), job


def test_rayjobs_and_cronjob_target_the_raycluster():
    cluster = _only("RayCluster")["metadata"]["name"]
    for j in _by_kind("RayJob"):
        assert j["spec"]["clusterSelector"] == {"ray.io/cluster": cluster}
        assert "rayClusterSpec" not in j["spec"]
    tmpl = _only("RayCronJob")["spec"]["jobTemplate"]
    assert tmpl["clusterSelector"] == {"ray.io/cluster": cluster}


def test_raycronjob_runs_the_nightly_like_its_rayjob():
    cron = _only("RayCronJob")
    nightly = next(j for j in _by_kind("RayJob") if j["metadata"]["name"] == "recalign-nightly")
    tmpl = cron["spec"]["jobTemplate"]
    _check_entrypoint(tmpl["entrypoint"], "nightly")
    for key in ("entrypoint", "clusterSelector", "submissionMode", "activeDeadlineSeconds",
                "backoffLimit", "runtimeEnvYAML"):
        assert tmpl[key] == nightly["spec"][key], key
    assert cron["spec"]["suspend"] is False


# --------------------------------------------------------------------------- runtime env

def test_runtime_env_file():
    env = _runtime_env()
    assert set(env) == {"env_vars", "excludes"}  # working_dir on the command line; no pip
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert env["env_vars"]["RECALIGN_CACHE"] == "/opt/recalign/cache"
    assert "OMP_NUM_THREADS" not in env["env_vars"]  # Ray sets it per actor from num_cpus
    for heavy in (".venv/", "recalign-data/", ".git/"):
        assert heavy in env["excludes"]


def test_rayjob_runtime_envs_match_the_file():
    expected = _runtime_env()["env_vars"]
    specs = [j["spec"] for j in _by_kind("RayJob")] + [_only("RayCronJob")["spec"]["jobTemplate"]]
    for spec in specs:
        parsed = yaml.safe_load(spec["runtimeEnvYAML"])
        assert parsed == {"env_vars": expected}


def test_no_credentials_anywhere_in_infra():
    pattern = re.compile(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)|AKIA[0-9A-Z]{16}"
                         r"|aws_secret_access_key", re.IGNORECASE)
    files = [p for p in INFRA.rglob("*") if p.is_file() and p.suffix in
             {".yaml", ".sh", ".Dockerfile", ".txt"}]
    assert len(files) >= 10
    for p in files:
        assert not pattern.search(p.read_text()), f"credential-like text in {p}"
    for o in OBJECTS:
        for env in _walk(o, "env"):
            for item in env:
                if "Secret" in str(item.get("valueFrom", "")) or "secretKeyRef" in item.get(
                        "valueFrom", {}):
                    assert item["name"] == "RAY_AUTH_TOKEN"  # the only secret we read


# ---------------------------------------------------------------------- cluster and images

def _group(cluster: dict, name: str) -> dict:
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu-train", "gpu-llm"}
    return groups[name]


def _container(pod_template: dict) -> dict:
    containers = pod_template["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_raycluster_groups_resources_and_gpu_only_on_llm():
    cluster = _only("RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__ == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_c = _container(head["template"])
    assert {p["containerPort"] for p in head_c["ports"]} == {6379, 8265, 10001}
    assert "nvidia.com/gpu" not in head_c["resources"]["requests"]
    assert "nvidia.com/gpu" not in head_c["resources"]["limits"]

    train = _group(cluster, "cpu-train")
    llm = _group(cluster, "gpu-llm")
    for g in (train, llm):
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = _container(g["template"])
        assert c["resources"]["requests"] == c["resources"]["limits"]  # guaranteed QoS
    train_c, llm_c = _container(train["template"]), _container(llm["template"])
    assert "nvidia.com/gpu" not in train_c["resources"]["limits"]
    assert llm_c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert llm_c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    gpu_keys = [k for o in OBJECTS for r in _walk(o, "resources") if isinstance(r, dict)
                for part in r.values() if isinstance(part, dict) for k in part
                if k == "nvidia.com/gpu"]
    assert len(gpu_keys) == 2  # requests + limits of the LLM group, nowhere else
    llm_pod = llm["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in llm_pod["tolerations"]
    assert llm_pod["nodeSelector"]["recalign.io/pool"] == "gpu"
    assert train["template"]["spec"]["nodeSelector"]["recalign.io/pool"] == "cpu"
    assert "tolerations" not in train["template"]["spec"]
    assert train["labels"] == {"recalign.io/role": "train"}
    assert llm["labels"] == {"recalign.io/role": "llm"}


def test_images_named_consistently():
    images = [img for o in OBJECTS for img in _walk(o, "image")]
    assert len(images) == 4  # head, cpu-train, gpu-llm, CronJob submitter
    parsed = [IMAGE_RE.match(i) for i in images]
    assert all(parsed), images
    assert len({m["registry"] for m in parsed}) == 1
    assert {m["tag"] for m in parsed} == {VERSION}
    cluster = _only("RayCluster")
    kind = lambda tmpl: IMAGE_RE.match(_container(tmpl)["image"])["kind"]  # noqa: E731
    assert kind(cluster["spec"]["headGroupSpec"]["template"]) == "train"
    assert kind(_group(cluster, "cpu-train")["template"]) == "train"
    assert kind(_group(cluster, "gpu-llm")["template"]) == "llm"
    for m in parsed:
        assert (INFRA / "docker" / f"{m['kind']}.Dockerfile").is_file()


def test_service_account_used_by_every_pod():
    sa = _only("ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    accounts = list(_walk(OBJECTS, "serviceAccountName"))
    assert len(accounts) == 4 and set(accounts) == {sa["metadata"]["name"]}


def test_dockerfiles_keep_the_two_stacks_apart():
    train = (INFRA / "docker" / "train.Dockerfile").read_text()
    llm = (INFRA / "docker" / "llm.Dockerfile").read_text()
    run_lines = lambda text: " ".join(ln for ln in text.splitlines()  # noqa: E731
                                      if not ln.lstrip().startswith("#"))
    assert "ARG BASE_IMAGE=rayproject/ray:2.60.0-py311" in train
    assert "ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cu" in llm  # GPU base
    assert 'pip install --no-deps "torchrec==${TORCHREC_VERSION}"' in train
    assert 'fbgemm-gpu==${FBGEMM_VERSION}' in train and "ARG FBGEMM_VERSION=1.8.0" in train
    assert "ARG TORCH_VERSION=2.13.0" in train
    assert "vllm" not in run_lines(train).lower()
    assert 'pip install "vllm==${VLLM_VERSION}"' in llm and "ARG VLLM_VERSION=0.32.0" in llm
    pip_steps = [seg.strip() for seg in re.split(r"&&|\bRUN\b", run_lines(llm))
                 if seg.strip().startswith("pip install")]
    assert len(pip_steps) == 3
    assert not any(re.search(r"torchrec|fbgemm", step) for step in pip_steps)
    # the project's own pins of the training stack are filtered out before installing its deps
    assert "startswith(('torch', 'fbgemm'))" in llm
    for text in (train, llm):
        assert "WORKDIR " + APP in text
        assert "COPY --chown=ray:users infra/configs/ infra/configs/" in text


# ------------------------------------------------------------------------------ schedules

_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def valid_cron(expr: str) -> bool:
    """A standard 5-field cron expression: numbers, ranges, lists, * and steps."""
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, _CRON_RANGES):
        for part in field.split(","):
            m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
            if not m:
                return False
            if m[4] is not None and int(m[4]) == 0:
                return False
            if m[2] is not None:
                a, b = int(m[2]), int(m[3] if m[3] is not None else m[2])
                if not (lo <= a <= b <= hi):
                    return False
    return True


@pytest.mark.parametrize("expr,ok", [("0 2 * * *", True), ("*/15 0-6 1,15 * 1-5", True),
                                     ("60 2 * * *", False), ("0 2 * *", False),
                                     ("0 24 * * *", False), ("0 2 * * 8", False),
                                     ("*/0 * * * *", False), ("@daily", False)])
def test_cron_validator(expr, ok):
    assert valid_cron(expr) is ok


def test_schedules_are_valid_and_agree():
    cron = _only("CronJob")
    raycron = _only("RayCronJob")
    assert valid_cron(cron["spec"]["schedule"])
    assert valid_cron(raycron["spec"]["schedule"])
    assert cron["spec"]["schedule"] == raycron["spec"]["schedule"] == "0 2 * * *"
    assert cron["spec"]["timeZone"] == "Etc/UTC"  # submit.sh dates the submission id in UTC
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0


def test_cronjob_runs_the_submit_script_against_the_head_service():
    cron = _only("CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    c = _container({"spec": pod})
    assert pod["restartPolicy"] == "Never"
    assert c["workingDir"] == APP
    assert c["command"] == ["bash", "infra/submit.sh"]
    assert (REPO / "infra" / "submit.sh").is_file()
    config, address, sep, *job_args = c["args"]
    assert (REPO / config).is_file()
    assert address == f"http://{_only('RayCluster')['metadata']['name']}-head-svc:8265"
    assert sep == "--"
    assert job_args == ["--set", "output.root=$(RECALIGN_OUTPUT_ROOT)", "--set",
                        "llm.num_gpus=1"]
    env = {e["name"]: e for e in c["env"]}
    assert env["RECALIGN_JOB"]["value"] == "nightly"
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    head_env = {e["name"]: e["value"] for e in _container(
        _only("RayCluster")["spec"]["headGroupSpec"]["template"])["env"]}
    assert env["RECALIGN_OUTPUT_ROOT"]["value"] == head_env["RECALIGN_OUTPUT_ROOT"]
    assert head_env["RECALIGN_OUTPUT_ROOT"].startswith("s3://")


# ---------------------------------------------------------------------------- submit.sh

def test_submit_script_syntax_and_id_pattern():
    script = INFRA / "submit.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert 'submission_id="${job}-${run_date}"' in text
    assert "job=${RECALIGN_JOB:-nightly}" in text
    assert "date -u +%Y-%m-%d" in text
    assert os.access(script, os.X_OK)


def test_submit_script_builds_the_exact_ray_command(tmp_path):
    fake = tmp_path / "ray"
    record = tmp_path / "argv"
    fake.write_text(f'#!/bin/sh\npwd > {record}\nfor a in "$@"; do echo "$a" >> {record}; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "RAY": str(fake), "RECALIGN_RUN_DATE": "2026-01-31"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(["bash", str(INFRA / "submit.sh"), "infra/configs/demo.yaml",
                        "http://head:8265", "--", "--set", "x.y=1"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cwd, *argv = record.read_text().splitlines()
    assert Path(cwd) == REPO  # `--working-dir .` is the repository, wherever it is called from
    assert argv == ["job", "submit", "--address", "http://head:8265", "--working-dir", ".",
                    "--runtime-env", str(REPO / "infra" / "runtime_env.yaml"),
                    "--submission-id", "nightly-2026-01-31", "--",
                    "python", "-m", "recalign.jobs.nightly", "--config",
                    "infra/configs/demo.yaml", "--set", "x.y=1"]
    # RAY_ADDRESS as the fallback address, RECALIGN_JOB and --no-wait
    record.unlink()
    env2 = {**env, "RAY_ADDRESS": "http://other:8265", "RECALIGN_JOB": "train",
            "RECALIGN_NO_WAIT": "1"}
    r = subprocess.run(["bash", str(INFRA / "submit.sh"), "infra/configs/demo.yaml"], env=env2,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    argv = record.read_text().splitlines()[1:]
    assert argv[2:4] == ["--address", "http://other:8265"]
    assert argv[argv.index("--submission-id") + 1] == "train-2026-01-31"
    assert "--no-wait" in argv
    assert argv[argv.index("--") + 1:] == ["python", "-m", "recalign.jobs.train", "--config",
                                           "infra/configs/demo.yaml"]
