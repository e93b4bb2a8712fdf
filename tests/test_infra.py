"""Tests of the deployment files: they parse, point at the real entry point, and pin the tested versions.

No Docker engine, Kubernetes or cloud account is needed: the files are checked as text and YAML, the
entry point is run in-process (its Ray part replaced) and as a subprocess for --help.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from mrseg_cohort.config import load_config

INFRA = REPO / "infra"
ENTRY = REPO / "jobs" / "run_cohort.py"
IMAGE_ROOT = "/app"  # WORKDIR of infra/Dockerfile: the repository's files are copied below it


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "cpu.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[_normalise(name)] = version.strip()
    return pins


def _dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def _docker_pins() -> dict[str, str]:
    text = re.sub(r"#.*", "", _dockerfile())
    return {_normalise(name): version
            for name, version in re.findall(r"[\"']?([A-Za-z0-9][A-Za-z0-9_.\-]*(?:\[[a-z,]+\])?)==([\w.+\-]+)", text)}


def _entry_module():
    spec = importlib.util.spec_from_file_location("run_cohort", ENTRY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the entry point -----------------------------------------------------------------------------------
def test_entry_point_help_works():
    done = subprocess.run([sys.executable, str(ENTRY), "--help"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout and "Exit status" in done.stdout


def test_entry_point_exits_2_when_the_job_cannot_start(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"cohort": {"name": "x", "layout": "phantom"},
                                      "input": {"uri": str(tmp_path / "missing")},
                                      "model": {"weights": "bundled:demo"}, "output": {"uri": str(tmp_path / "o")}}))
    assert _entry_module().main(["--config", str(config)]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("failed, code", [(0, 0), (3, 1)])
def test_entry_point_joins_the_cluster_and_reports(tmp_path, monkeypatch, capsys, failed, code):
    import mrseg_cohort.pipeline.run as run_module

    seen = {}

    def fake_run_job(job, restart=False, progress=None, stop=None):
        seen["address"], seen["output"] = job.resources.address, job.output.uri
        return run_module.RunSummary("r1", job.output.uri, in_manifest=5, scheduled=5, done=5 - failed,
                                     failed=failed, device="cuda",
                                     failures=[{"participant_id": str(i)} for i in range(failed)])

    monkeypatch.setattr(run_module, "run_job", fake_run_job)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"cohort": {"name": "x", "layout": "phantom"}, "input": {"uri": "s3://b/in"},
                                      "model": {"weights": "bundled:demo"}, "output": {"uri": "s3://b/out"}}))
    assert _entry_module().main(["--config", str(config), "--output", "s3://b/other"]) == code
    assert seen == {"address": "auto", "output": "s3://b/other"}  # joins the existing cluster
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["summary"]["failed"] == failed and summary["failures_uri"] == "s3://b/other/tables/failures"


# -- Ray cluster launcher -----------------------------------------------------------------------------------
def test_ray_cluster_launcher_yaml():
    text = (INFRA / "ray-cluster-aws.yaml").read_text()
    cluster = yaml.safe_load(text)
    assert any("RAY_JOB_STOP_WAIT_TIME_S=60" in c for c in cluster["head_start_ray_commands"])
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"] == {"CPU": 0}
    assert cluster["provider"]["type"] == "aws"
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    gpu_types = [t for t in types.values() if re.match(r"(g5|g6|p4d|p5)\.", t["node_config"]["InstanceType"])]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    assert _image_tag(cluster["docker"]["image"]) == _version()
    assert any("ray start --head" in c for c in cluster["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cluster["worker_start_ray_commands"])
    submits = re.findall(r"ray job submit .*?-- \\?\s*#?\s*python (\S+)", text, flags=re.S)
    assert submits and all((REPO / path).is_file() and path == "jobs/run_cohort.py" for path in submits)
    for command in cluster["setup_commands"]:
        for path in re.findall(rf"{IMAGE_ROOT}/(\S+\.py)", command):
            assert (REPO / path).is_file()


# -- KubeRay ------------------------------------------------------------------------------------------------
def test_kuberay_rayjob_manifest(tmp_path):
    docs = {d["kind"]: d for d in yaml.safe_load_all((INFRA / "kuberay-rayjob.yaml").read_text()) if d}
    assert set(docs) == {"ServiceAccount", "ConfigMap", "RayJob"}
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    entry = spec["entrypoint"].split()
    assert entry[0] == "python" and entry[1] == f"{IMAGE_ROOT}/jobs/run_cohort.py"
    assert (REPO / entry[1].removeprefix(IMAGE_ROOT + "/")).is_file()
    config_path = entry[entry.index("--config") + 1]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _lock()["ray"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volume = mounts[str(Path(config_path).parent)]
    config_map = next(v for v in head["volumes"] if v["name"] == volume)["configMap"]["name"]
    assert config_map == docs["ConfigMap"]["metadata"]["name"]
    workers = cluster["workerGroupSpecs"]
    gpu = [w for w in workers if "nvidia.com/gpu" in w["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and all(w["maxReplicas"] >= w["minReplicas"] for w in gpu)
    images = {c["image"] for pod in [head] + [w["template"]["spec"] for w in workers]
              for c in pod["containers"] + pod.get("initContainers", [])}
    assert len(images) == 1 and _image_tag(images.pop()) == _version()
    # the config it carries is a valid job config that joins the cluster
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text(docs["ConfigMap"]["data"][Path(config_path).name])
    job_config = load_config(job_yaml)
    assert job_config.resources.address == "auto"
    assert all(m["mountPath"] != "/models" or m["name"] == "models" for m in head["containers"][0]["volumeMounts"])
    assert job_config.model.weights.startswith("/models/")
    # GPUs are asked for: as many GPU actors as the worker groups can give, none required at submit
    per_pod = [int(w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for w in gpu]
    assert job_config.resources.gpus == sum(w["maxReplicas"] * n for w, n in zip(gpu, per_pod))
    assert job_config.model.device == "cuda" and all(w["replicas"] == 0 for w in gpu)
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # a stop (ray job stop, a deleted RayJob) leaves the driver time to publish what finished
    env = {e["name"]: e["value"] for e in head["containers"][0].get("env", [])}
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30 and head["terminationGracePeriodSeconds"] >= 60


# -- Dockerfile -------------------------------------------------------------------------------------------
def test_dockerfile_pins_the_locked_versions():
    pins, lock = _docker_pins(), _lock()
    for name in ("nnunetv2", "ray", "pydantic", "torch", "torchvision", "numpy", "simpleitk", "nibabel", "pyarrow",
                 "pandas", "fsspec", "s3fs", "typer", "matplotlib", "dynamic-network-architectures"):
        assert name in pins, f"{name} is not pinned in infra/Dockerfile"
    mismatched = {n: (v, lock.get(n)) for n, v in pins.items() if lock.get(n) != v}
    assert not mismatched, f"Dockerfile pins differ from requirements/cpu.lock: {mismatched}"


def test_dockerfile_uses_cuda_python_311_and_files_that_exist():
    text = _dockerfile()
    base = re.search(r"^ARG CUDA_BASE_IMAGE=(\S+)", text, flags=re.M).group(1)
    assert base.startswith("nvidia/cuda:") and re.search(r"^FROM \$\{CUDA_BASE_IMAGE\}", text, flags=re.M)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and "python3.11 -m venv" in text
    copied = [src for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M) for src in line.split()[:-1]]
    assert "requirements/cpu.lock" in copied
    for src in copied:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    for path in re.findall(r"requirements/[\w./-]+", text):
        assert (REPO / path).is_file(), path
    assert "torch.version.cuda" in text  # the build fails on a CPU-only torch
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{src.rstrip('/')}" in [i.rstrip("/") for i in ignore] for src in copied)


def _image_tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def _version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
